"""A host file (regular file or block device) with positional scatter-gather I/O.

Reads and writes go straight between the file and the caller's memoryviews with os.preadv and
os.pwritev. A read past the end of the file yields zeros. With O_DIRECT (cache="none") the kernel
wants the offset, every buffer's address and every length aligned to the device's block size: an
aligned request goes straight through, any other goes through a page-aligned bounce buffer (a
read-modify-write of the edge blocks for writes, under a lock so two such writes to one block do
not lose each other).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import threading
from collections.abc import Sequence

from vmkit.storage.disk import fill_zeros, scatter, zero_views
from vmkit.storage.errors import DiskIOError, ImageOpenError

IOV_MAX = 1024
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_DIRECT_ALIGNMENTS = (512, 1024, 2048, 4096)

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFSOCK: "a socket",
}

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def _advance(views: list[memoryview], count: int) -> list[memoryview]:
    """Drop the first `count` bytes of a buffer list."""
    while views and count >= len(views[0]):
        count -= len(views[0])
        views = views[1:]
    if views and count:
        views = [views[0][count:], *views[1:]]
    return views


def _address(view: memoryview) -> int | None:
    """The address of a writable view's first byte, or None when it cannot be known."""
    if view.readonly:
        return None
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


class HostFile:
    """An open host file. Use open_host_file(); close() when done."""

    def __init__(self, path: str, fd: int, writable: bool, direct: bool, block_device: bool) -> None:
        self.path = path
        self.fd = fd
        self.writable = writable
        self.direct = direct
        self.block_device = block_device
        self.align = self._probe_alignment() if direct else 1
        self._rmw_lock = threading.Lock()
        self._can_punch = True

    # ---- facts about the file

    def size(self) -> int:
        """The file's size in bytes (a block device's capacity)."""
        try:
            if self.block_device:
                return os.lseek(self.fd, 0, os.SEEK_END)
            return os.fstat(self.fd).st_size
        except OSError as exc:
            raise DiskIOError(f"{self.path}: cannot find its size: {exc.strerror}", exc.errno) from None

    def identity(self) -> tuple[int, int]:
        """(device, inode): the same file reached by two names has one identity."""
        info = os.fstat(self.fd)
        return info.st_dev, info.st_ino

    def allocated_bytes(self) -> int:
        """Bytes the file occupies on the host (holes excluded)."""
        return os.fstat(self.fd).st_blocks * 512

    def _probe_alignment(self) -> int:
        """The smallest request alignment O_DIRECT accepts here (as QEMU does, by trying reads)."""
        buf = mmap.mmap(-1, max(_DIRECT_ALIGNMENTS))
        view = memoryview(buf)
        try:
            for align in _DIRECT_ALIGNMENTS:
                try:
                    got = os.preadv(self.fd, [view[:align]], 0)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        continue
                    raise DiskIOError(f"{self.path}: cannot read it: {exc.strerror}", exc.errno) from None
                if got > 0:
                    return align
                break              # an empty file tells nothing: stay safe
            return max(_DIRECT_ALIGNMENTS)
        finally:
            view.release()
            buf.close()

    # ---- I/O

    def _is_aligned(self, offset: int, views: Sequence[memoryview]) -> bool:
        align = self.align
        if offset % align:
            return False
        for view in views:
            address = _address(view)
            if len(view) % align or address is None or address % align:
                return False
        return True

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """Fill the views from the file at `offset`; bytes past the end of the file read as zeros."""
        pending = [v for v in views if len(v)]
        if not pending:
            return
        if self.direct and not self._is_aligned(offset, pending):
            self._bounce_read(offset, pending)
            return
        while pending:
            batch = pending[:IOV_MAX]
            want = sum(len(v) for v in batch)
            try:
                got = os.preadv(self.fd, batch, offset)
            except OSError as exc:
                raise DiskIOError(f"{self.path}: read of {want} bytes at offset {offset} failed: "
                                  f"{exc.strerror}", exc.errno) from None
            if got == want and len(pending) <= IOV_MAX:
                return                                     # the usual case: all of it at once
            if got == 0 or (self.direct and got < want):   # end of file (O_DIRECT stops at it)
                fill_zeros(_advance(pending, got))
                return
            offset += got
            pending = _advance(pending, got)

    def write_from(self, offset: int, views: Sequence[memoryview]) -> None:
        """Write the views to the file at `offset`, in order."""
        pending = [v for v in views if len(v)]
        if not pending:
            return
        if self.direct and not self._is_aligned(offset, pending):
            self._bounce_write(offset, pending)
            return
        while pending:
            batch = pending[:IOV_MAX]
            want = sum(len(v) for v in batch)
            try:
                done = os.pwritev(self.fd, batch, offset)
            except OSError as exc:
                raise DiskIOError(f"{self.path}: write of {want} bytes at offset {offset} failed: "
                                  f"{exc.strerror}", exc.errno) from None
            if done == 0:
                raise DiskIOError(f"{self.path}: write of {want} bytes at offset {offset} wrote nothing",
                                  errno.EIO)
            if done == want and len(pending) <= IOV_MAX:
                return
            offset += done
            pending = _advance(pending, done)

    def _aligned_span(self, offset: int, length: int) -> tuple[int, int]:
        start = offset - offset % self.align
        end = -(-(offset + length) // self.align) * self.align
        return start, end

    def _bounce_read(self, offset: int, views: list[memoryview]) -> None:
        length = sum(len(v) for v in views)
        start, end = self._aligned_span(offset, length)
        buf = mmap.mmap(-1, end - start)
        whole = memoryview(buf)
        try:
            self.read_into(start, [whole])
            scatter(whole[offset - start:offset - start + length], views)
        finally:
            whole.release()
            buf.close()

    def _bounce_write(self, offset: int, views: list[memoryview]) -> None:
        length = sum(len(v) for v in views)
        start, end = self._aligned_span(offset, length)
        align = self.align
        with self._rmw_lock:
            buf = mmap.mmap(-1, end - start)
            whole = memoryview(buf)
            try:
                head_read = offset != start
                if head_read:
                    self.read_into(start, [whole[:align]])
                if offset + length != end and not (head_read and end - start == align):
                    self.read_into(end - align, [whole[end - align - start:]])
                pos = offset - start
                for view in views:
                    whole[pos:pos + len(view)] = view
                    pos += len(view)
                self.write_from(start, [whole])
            finally:
                whole.release()
                buf.close()

    def pread(self, offset: int, length: int) -> bytearray:
        """`length` bytes at `offset` (zeros past the end of the file)."""
        data = bytearray(length)
        self.read_into(offset, [memoryview(data)])
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.write_from(offset, [memoryview(data).cast("B")])

    def sync(self) -> None:
        """fdatasync: every write so far is durable when this returns."""
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise DiskIOError(f"{self.path}: flush (fdatasync) failed: {exc.strerror}", exc.errno) from None

    def punch_hole(self, offset: int, length: int) -> None:
        """Make [offset, offset + length) read as zeros, freeing host space where the file system can
        (fallocate PUNCH_HOLE | KEEP_SIZE); otherwise write zeros."""
        if length <= 0:
            return
        if self._can_punch:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            if _fallocate(self.fd, mode, offset, length) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
                raise DiskIOError(f"{self.path}: punching a hole of {length} bytes at offset {offset} failed: "
                                  f"{os.strerror(err)}", err)
            self._can_punch = False
        self.write_from(offset, zero_views(length))

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def open_host_file(path: str, writable: bool, direct: bool = False) -> HostFile:
    """Open a regular file or block device; anything else is refused with a message naming it."""
    if not path:
        raise ImageOpenError("the image path is empty")
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if direct:
        flags |= os.O_DIRECT
    how = "for writing" if writable else "for reading"
    try:
        fd = os.open(path, flags)
    except ValueError:
        raise ImageOpenError(f"image {path!r}: a path cannot contain a NUL byte") from None
    except FileNotFoundError:
        raise ImageOpenError(f"image {path!r} does not exist") from None
    except IsADirectoryError:
        raise ImageOpenError(f"image {path!r} is a directory, not a disk image") from None
    except PermissionError:
        raise ImageOpenError(f"image {path!r}: permission denied {how}") from None
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise ImageOpenError(f"image {path!r} is on a read-only file system: open it read-only") from None
        if exc.errno == errno.EINVAL and direct:
            raise ImageOpenError(f"image {path!r}: its file system does not support O_DIRECT "
                                 f"(cache='none'); use cache='writeback'") from None
        if exc.errno == errno.ENXIO:
            raise ImageOpenError(f"image {path!r} is a FIFO that nobody writes, or a socket") from None
        raise ImageOpenError(f"image {path!r}: cannot open it {how}: {exc.strerror}") from None
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind not in (stat.S_IFREG, stat.S_IFBLK):
            raise ImageOpenError(f"image {path!r} is {_KINDS.get(kind, 'not a file')}, "
                                 f"not a regular file or a block device")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return HostFile(path, fd, writable, direct, kind == stat.S_IFBLK)
    except BaseException:
        os.close(fd)
        raise
