"""Image locks, compatible with QEMU's, so two VMs (vmkit or QEMU) never open one image for writing.

QEMU (block/file-posix.c) takes shared OFD locks on single bytes of the image file: byte 100 + b
while it holds permission b, byte 200 + b while it refuses to share permission b with others. The
permission bits are 0 consistent read, 1 write, 2 write-unchanged, 3 resize. After taking its own
bytes it tests the others' bytes (F_OFD_GETLK): a permission it wants that someone refuses to
share, or one it refuses to share that someone holds, is a conflict. vmkit does the same, with
QEMU's choices for a qcow2 image:

- read-only open: holds consistent read (100); refuses to share write and resize (201, 203).
  So any number of readers may share an image, but no writer may join them.
- writable open: holds consistent read, write and resize (100, 101, 103); refuses to share write
  and resize (201, 203). So a second writer, or a reader, is refused.

OFD locks belong to the open file description, so two opens in one process conflict as they
should, and closing the file drops them. Python's fcntl module has F_OFD_SETLK / F_OFD_GETLK on
Linux. Where the file system refuses OFD locks (EINVAL), process-associated F_SETLK locks are used
instead, as QEMU does; those cannot see conflicts inside one process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from vmkit.storage.errors import ImageLockedError, ImageOpenError

PERM_BASE = 100
SHARED_BASE = 200
CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = 0, 1, 2, 3
PERMISSION_NAMES = {CONSISTENT_READ: "consistent read", WRITE: "write",
                    WRITE_UNCHANGED: "write unchanged", RESIZE: "resize"}
UNSHARED = (WRITE, RESIZE)

# struct flock on Linux x86_64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("@hhqqi4x")

_OFD = (getattr(fcntl, "F_OFD_SETLK", 37), getattr(fcntl, "F_OFD_GETLK", 36))
_POSIX = (fcntl.F_SETLK, fcntl.F_GETLK)


def _set(fd: int, cmds: tuple[int, int], lock_type: int, byte: int) -> None:
    fcntl.fcntl(fd, cmds[0], _FLOCK.pack(lock_type, 0, byte, 1, 0))


def _held_by_others(fd: int, cmds: tuple[int, int], byte: int) -> bool:
    answer = fcntl.fcntl(fd, cmds[1], _FLOCK.pack(fcntl.F_WRLCK, 0, byte, 1, 0))
    return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK


def held_permissions(writable: bool) -> tuple[int, ...]:
    return (CONSISTENT_READ, WRITE, RESIZE) if writable else (CONSISTENT_READ,)


def lock_image(fd: int, path: str, writable: bool) -> None:
    """Take this open's lock bytes, then check nobody conflicts; raise ImageLockedError if they do."""
    cmds = _OFD
    try:
        try:
            _set(fd, cmds, fcntl.F_RDLCK, PERM_BASE)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            cmds = _POSIX
        for perm in held_permissions(writable):
            _set(fd, cmds, fcntl.F_RDLCK, PERM_BASE + perm)
        for perm in UNSHARED:
            _set(fd, cmds, fcntl.F_RDLCK, SHARED_BASE + perm)
        for perm in held_permissions(writable):
            if _held_by_others(fd, cmds, SHARED_BASE + perm):
                raise ImageLockedError(
                    f"image {path!r} is in use: another process (a VM?) does not share the "
                    f"\"{PERMISSION_NAMES[perm]}\" permission this open needs")
        for perm in UNSHARED:
            if _held_by_others(fd, cmds, PERM_BASE + perm):
                raise ImageLockedError(
                    f"image {path!r} is in use: another process (a VM?) has it open with the "
                    f"\"{PERMISSION_NAMES[perm]}\" permission")
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise ImageLockedError(f"image {path!r} is locked by another process") from None
        raise ImageOpenError(f"image {path!r}: cannot lock it: {exc.strerror}") from None


def is_locked_by_others(path: str, writable: bool) -> bool:
    """Whether an open of `path` (for writing or not) would meet a conflicting lock; for tests."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        perms = [SHARED_BASE + p for p in held_permissions(writable)] + [PERM_BASE + p for p in UNSHARED]
        return any(_held_by_others(fd, _OFD, byte) for byte in perms)
    finally:
        os.close(fd)
