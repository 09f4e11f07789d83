"""The jail: how the share touches the host's file system.

Every name the guest sends is one path component (no "/", not "." or "..", no NUL), resolved by
the kernel with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) relative to
an O_PATH directory fd that is itself beneath the shared directory, so no symlink, `..` or rename
race can lead outside it. Symlinks are never followed on the host: a walk stops at the link itself
and the guest reads its target. Files are opened for I/O only when they are regular files with one
link (a second link may be a name outside the share) or directories, by reopening the fid's own
O_PATH fd through /proc/self/fd (the same inode, no second lookup); FIFOs, sockets and device
nodes are never opened. Metadata changes go through the same reopening.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

SYS_OPENAT2 = 437                # the same number on every Linux architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
JAILED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
NAME_MAX = 255
PATH_MAX = 4096
PERMISSION_BITS = 0o777          # set-uid, set-gid and sticky are never set by the guest
REFUSED = errno.EACCES           # what the policy answers for a file it will not open


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = JAILED) -> int:
    """openat2(2): open `path` relative to `dirfd` under the `resolve` restrictions."""
    if b"\0" in path:
        raise OSError(errno.EINVAL, "a name with a NUL byte")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


def check_name(name: bytes) -> None:
    """A name the guest may use in a directory: one component, not "." or ".."."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, f"{name[:64]!r} is not a file name")
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")


def lookup(dirfd: int, name: bytes) -> int:
    """An O_PATH fd for `name` in the directory `dirfd` (a symlink itself, never its target)."""
    check_name(name)
    return openat2(dirfd, name, os.O_PATH | os.O_NOFOLLOW)


def resolve(root_fd: int, parts: tuple[bytes, ...]) -> int:
    """An O_PATH fd for the directory `parts` names beneath the root (for `..` and parents)."""
    for part in parts:
        check_name(part)
    return openat2(root_fd, b"/".join(parts) or b".", os.O_PATH | os.O_DIRECTORY)


def _proc_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def check_openable(info: os.stat_result) -> None:
    """Refuse what the share never opens: symlinks, special files, files with several links."""
    if stat.S_ISLNK(info.st_mode):
        raise OSError(errno.ELOOP, "a symbolic link is not opened on the host")
    if stat.S_ISDIR(info.st_mode):
        return
    if not stat.S_ISREG(info.st_mode):
        raise OSError(REFUSED, "only regular files and directories are opened")
    if info.st_nlink != 1:
        raise OSError(REFUSED, "a file with several hard links may be named outside the share")


def reopen(path_fd: int, flags: int) -> int:
    """Open the file an O_PATH fd holds for I/O (`flags`: access mode, O_TRUNC, O_APPEND, ...)."""
    info = os.stat(path_fd)
    check_openable(info)
    if stat.S_ISDIR(info.st_mode):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EISDIR, "a directory opened for writing")
        flags = os.O_RDONLY | os.O_DIRECTORY
    fd = os.open(_proc_path(path_fd), flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    opened = os.stat(fd)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):     # cannot happen; checked anyway
        os.close(fd)
        raise OSError(errno.EIO, "the reopened file is not the one walked to")
    return fd


def path_of(fd: int) -> int:
    """An O_PATH fd for the file an open fd holds."""
    return os.open(_proc_path(fd), os.O_PATH | os.O_CLOEXEC)


def create(dirfd: int, name: bytes, flags: int, mode: int, exclusive: bool) -> int:
    """Create and open a regular file; without `exclusive`, open an existing one under the policy."""
    check_name(name)
    try:
        return openat2(dirfd, name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                       mode & PERMISSION_BITS)
    except FileExistsError:
        if exclusive:
            raise
    path_fd = lookup(dirfd, name)
    try:
        return reopen(path_fd, flags)
    finally:
        os.close(path_fd)


def change_mode(path_fd: int, mode: int) -> None:
    info = os.stat(path_fd)
    check_openable(info)
    os.chmod(_proc_path(path_fd), mode & PERMISSION_BITS)


def truncate(path_fd: int, size: int) -> None:
    info = os.stat(path_fd)
    check_openable(info)
    if stat.S_ISDIR(info.st_mode):
        raise OSError(errno.EISDIR, "a directory has no size to set")
    os.truncate(_proc_path(path_fd), size)


def set_times(path_fd: int, times_ns: tuple[int, int]) -> None:
    check_openable(os.stat(path_fd))
    os.utime(_proc_path(path_fd), ns=times_ns)


def stat_at(dirfd: int, name: bytes) -> os.stat_result:
    check_name(name)
    return os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def make_directory(dirfd: int, name: bytes, mode: int) -> os.stat_result:
    check_name(name)
    os.mkdir(name, mode & PERMISSION_BITS, dir_fd=dirfd)
    return os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def make_symlink(dirfd: int, name: bytes, target: bytes) -> os.stat_result:
    """A symlink in the share: stored as given, never followed by the host side of the share."""
    check_name(name)
    if not target or b"\0" in target or len(target) >= PATH_MAX:
        raise OSError(errno.EINVAL, "not a symlink target")
    os.symlink(target, name, dir_fd=dirfd)
    return os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def remove(dirfd: int, name: bytes, directory: bool) -> None:
    check_name(name)
    if directory:
        os.rmdir(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def rename(old_dirfd: int, old_name: bytes, new_dirfd: int, new_name: bytes) -> None:
    check_name(old_name)
    check_name(new_name)
    os.rename(old_name, new_name, src_dir_fd=old_dirfd, dst_dir_fd=new_dirfd)


def read_link(path_fd: int) -> bytes:
    if not stat.S_ISLNK(os.stat(path_fd).st_mode):
        raise OSError(errno.EINVAL, "not a symbolic link")
    return os.readlink(b"", dir_fd=path_fd)


def openat2_works(dirfd: int) -> bool:
    """Whether this kernel has openat2 (Linux 5.6 and later)."""
    try:
        os.close(openat2(dirfd, b".", os.O_PATH))
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return False
        raise
    return True
