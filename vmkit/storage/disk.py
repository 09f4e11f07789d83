"""The disk interface a block device uses, and helpers for scatter-gather buffer lists.

A request names a byte offset on the virtual disk and a list of memoryviews (typically views of
guest RAM): `readv` fills them in order, `writev` writes them in order. Data moves between the
host file and those views with as few copies as the format allows (none for raw files).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from vmkit.storage.errors import DiskRangeError, ReadOnlyError

SECTOR = 512
CacheMode = Literal["writeback", "none", "unsafe"]
CACHE_MODES: tuple[str, ...] = ("writeback", "none", "unsafe")
Buffers = Sequence[memoryview]

_ZEROS = bytes(1 << 20)


class Disk(Protocol):
    """A virtual disk: a fixed number of bytes, readable and (unless read_only) writable.

    Requests must lie inside [0, size); others raise DiskRangeError. A write on a read-only disk
    raises ReadOnlyError. Host failures raise DiskIOError. After `discard` or `write_zeroes` the
    range reads as zeros (vmkit gives that guarantee for discard too, although virtio does not
    require it). `flush` makes every completed write durable (a no-op with cache="unsafe").
    """

    path: str
    format: str

    @property
    def size(self) -> int: ...

    @property
    def read_only(self) -> bool: ...

    def readv(self, offset: int, buffers: Buffers) -> None: ...

    def writev(self, offset: int, buffers: Buffers) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Disk: ...

    def __exit__(self, *exc: object) -> None: ...


def byte_views(buffers: Buffers) -> list[memoryview]:
    """The buffers as flat, unsigned-byte views (a cast, not a copy)."""
    views = []
    for buf in buffers:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        views.append(view)
    return views


def total_length(views: Sequence[memoryview]) -> int:
    return sum(len(v) for v in views)


def check_request(path: str, size: int, offset: int, length: int) -> None:
    """Raise DiskRangeError unless [offset, offset + length) lies inside a disk of `size` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise DiskRangeError(path, offset, length, size)


def check_writable(path: str, read_only: bool, what: str) -> None:
    if read_only:
        raise ReadOnlyError(f"{path}: {what} refused: the disk is open read-only")


def slice_views(views: Sequence[memoryview], start: int, length: int) -> list[memoryview]:
    """The part [start, start + length) of the concatenation of `views`, as views (no copy)."""
    out = []
    for view in views:
        if length <= 0:
            break
        if start >= len(view):
            start -= len(view)
            continue
        piece = view[start:start + length]
        out.append(piece)
        length -= len(piece)
        start = 0
    return out


def fill_zeros(views: Sequence[memoryview]) -> None:
    """Set every byte of the views to zero."""
    for view in views:
        for pos in range(0, len(view), len(_ZEROS)):
            chunk = view[pos:pos + len(_ZEROS)]
            chunk[:] = _ZEROS[:len(chunk)]


def zero_views(length: int) -> list[memoryview]:
    """Read-only views of `length` zero bytes, to write zeros without allocating them."""
    views = []
    while length > 0:
        step = min(length, len(_ZEROS))
        views.append(memoryview(_ZEROS)[:step])
        length -= step
    return views


def gather(views: Sequence[memoryview]) -> bytes:
    """The concatenated bytes of the views (one copy)."""
    return b"".join(views)


def scatter(data: bytes | bytearray | memoryview, views: Sequence[memoryview]) -> None:
    """Copy `data` into the views, in order; len(data) must equal their total length."""
    pos = 0
    source = memoryview(data)
    for view in views:
        view[:] = source[pos:pos + len(view)]
        pos += len(view)
