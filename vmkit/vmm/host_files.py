"""The host files a user names for a VM (kernel, initrd, console log), opened without trusting them.

A file the guest is booted from must be a regular file of a sane size: a FIFO would block start-up,
a character device (/dev/zero) would be read without end, a directory or an empty file is a mistake.
Every failure is a ConfigError whose message names the option and the path.
"""

from __future__ import annotations

import errno
import os
import stat

from vmkit.vmm.config import ConfigError

MIB = 1 << 20
READ_CHUNK = 1 << 24

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def _describe_size(size: int) -> str:
    return f"{size} bytes" if size < MIB else f"{size / MIB:.1f} MiB"


def _open(path: str, what: str, flags: int, mode: int = 0o666) -> int:
    if not path:
        raise ConfigError(f"{what}: the path is empty")
    try:
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, mode)
    except ValueError:
        raise ConfigError(f"{what} {path!r}: a path cannot contain a NUL byte") from None
    except FileExistsError:             # O_EXCL: the caller decides
        raise
    except FileNotFoundError:
        raise ConfigError(f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path!r} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path!r}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ConfigError(f"{what} {path!r} is a FIFO that nobody reads, or a socket") from None
        raise ConfigError(f"{what} {path!r}: cannot open it: {exc.strerror}") from None


def read_input_file(path: str, what: str, limit: int) -> bytes:
    """The whole content of the regular file at `path`, which must hold 1..`limit` bytes."""
    fd = _open(path, what, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        kind = stat.S_IFMT(info.st_mode)
        if kind != stat.S_IFREG:
            raise ConfigError(f"{what} {path!r} is {_KINDS.get(kind, 'not a file')}, not a regular file")
        if info.st_size == 0:
            raise ConfigError(f"{what} {path!r} is empty")
        if info.st_size > limit:
            raise ConfigError(f"{what} {path!r} is {_describe_size(info.st_size)}, "
                              f"more than the {_describe_size(limit)} it may be here")
        chunks = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(READ_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ConfigError(f"{what} {path!r} grew past {_describe_size(limit)} while it was read")
        if total == 0:
            raise ConfigError(f"{what} {path!r} is empty")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{what} {path!r}: cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)


def open_output_file(path: str, what: str) -> int:
    """A descriptor for writing to `path`: created or truncated when it is a regular file; a
    character device or a FIFO with a reader is written as it is. Never blocks opening a FIFO."""
    fd = _open(path, what, os.O_WRONLY | os.O_CREAT)
    try:
        info = os.fstat(fd)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFREG:
            os.ftruncate(fd, 0)
        elif kind not in (stat.S_IFCHR, stat.S_IFIFO):
            raise ConfigError(f"{what} {path!r} is {_KINDS.get(kind, 'not a file')}, not a file to write to")
        os.set_blocking(fd, kind != stat.S_IFIFO)
        return fd
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"{what} {path!r}: cannot write to it: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


def check_output_file(path: str, what: str) -> None:
    """That vmkit will be able to write `path` at the end of a run (a report), checked now: a file
    that does not exist is created and removed again, one that exists is opened but not truncated.
    It must be a regular file or a character device (/dev/null)."""
    try:
        fd = _open(path, what, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        created = True
    except FileExistsError:
        fd = _open(path, what, os.O_WRONLY)
        created = False
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind not in (stat.S_IFREG, stat.S_IFCHR):
            raise ConfigError(f"{what} {path!r} is {_KINDS.get(kind, 'not a file')}, not a file to write to")
    finally:
        os.close(fd)
        if created:
            try:
                os.unlink(path)
            except OSError:
                pass
