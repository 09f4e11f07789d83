"""Raw disks: a regular file or block device whose bytes are the disk's bytes.

Requests go straight to os.preadv / os.pwritev on the caller's buffers (no copies), except
unaligned requests with cache="none", which use a bounce buffer (hostfile.py). Discard and
write-zeroes punch a hole (fallocate PUNCH_HOLE | KEEP_SIZE), or write zeros where the file system
cannot. Requests are not serialised: positional I/O needs no lock.
"""

from __future__ import annotations

import threading

from vmkit.storage.disk import (
    Buffers,
    CacheMode,
    byte_views,
    check_request,
    check_writable,
    gather,
    slice_views,
    total_length,
)
from vmkit.storage.errors import ProbeGuardError, StorageError, UnsupportedImageError
from vmkit.storage.hostfile import HostFile
from vmkit.storage.probe import PROBE_BYTES, looks_like_image


class RawDisk:
    """A raw image. `probed` says the format was guessed, which arms the first-sector guard."""

    format = "raw"
    cluster_size = None
    backing = None
    backing_name = None

    def __init__(self, host: HostFile, read_only: bool, cache: CacheMode, probed: bool = False) -> None:
        self.host = host
        self.path = host.path
        self.cache = cache
        self.probed = probed
        self._read_only = read_only
        self._size = host.size()
        self._guard_lock = threading.Lock()
        self._closed = False
        if host.direct and not read_only and self._size % host.align:
            raise UnsupportedImageError(
                f"image {self.path!r}: cache='none' needs a size that is a multiple of {host.align} bytes "
                f"(the O_DIRECT alignment here); it has {self._size}")

    @property
    def size(self) -> int:
        return self._size

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self.path}: the disk is closed")

    def readv(self, offset: int, buffers: Buffers) -> None:
        self._check_open()
        views = byte_views(buffers)
        check_request(self.path, self._size, offset, total_length(views))
        self.host.read_into(offset, views)

    def writev(self, offset: int, buffers: Buffers) -> None:
        self._check_open()
        check_writable(self.path, self._read_only, "write")
        views = byte_views(buffers)
        length = total_length(views)
        check_request(self.path, self._size, offset, length)
        if self.probed and offset < PROBE_BYTES and length:
            with self._guard_lock:      # check and write as one, so two writes cannot build a magic
                self._guard_first_sector(offset, views, length)
                self.host.write_from(offset, views)
            return
        self.host.write_from(offset, views)

    def _guard_first_sector(self, offset: int, views: list[memoryview], length: int) -> None:
        head = self.host.pread(0, min(PROBE_BYTES, self._size))
        part = gather(slice_views(views, 0, min(length, PROBE_BYTES - offset)))
        head[offset:offset + len(part)] = part
        fmt = looks_like_image(bytes(head))
        if fmt is not None:
            raise ProbeGuardError(
                f"{self.path}: write to the first sector refused: it would make the image look like "
                f"{fmt}, and its format was guessed as raw (open it with format='raw' to allow this)")

    def flush(self) -> None:
        self._check_open()
        if not self._read_only and self.cache != "unsafe":
            self.host.sync()

    def discard(self, offset: int, length: int) -> None:
        self._zero("discard", offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._zero("write-zeroes", offset, length)

    def _zero(self, what: str, offset: int, length: int) -> None:
        self._check_open()
        check_writable(self.path, self._read_only, what)
        check_request(self.path, self._size, offset, length)
        self.host.punch_hole(offset, length)

    def close(self) -> None:
        """Close the file (releasing its locks). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.host.close()

    def __enter__(self) -> RawDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
