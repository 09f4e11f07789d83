"""Errors of the disk-image layer.

Two families, because their callers differ:

- `DiskRequestError` and `DiskIOError`: one request of a running disk failed. A virtio-blk device
  turns these into a request status (IOERR); the VM goes on.
- `ImageError`: an image cannot be opened or used as asked (damaged, unsupported, locked, a broken
  backing chain). The CLI turns these into one line and status 125.

Every message names the file, and the offset or field where it went wrong.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error this package raises on purpose."""


class DiskRequestError(StorageError):
    """A request the disk refuses: out of range, a write to a read-only disk, a guarded write."""


class DiskRangeError(DiskRequestError):
    """A request reaches outside the disk (or has a negative offset or length)."""

    def __init__(self, path: str, offset: int, length: int, size: int) -> None:
        super().__init__(f"{path}: a request of {length} bytes at offset {offset} is outside the disk "
                         f"of {size} bytes")
        self.offset = offset
        self.length = length
        self.size = size


class ReadOnlyError(DiskRequestError):
    """A write, discard or write-zeroes on a disk opened read-only."""


class ProbeGuardError(DiskRequestError):
    """A write to the first sector of an image whose format was guessed as raw would make it look
    like another format (see vmkit.storage.probe)."""


class DiskIOError(StorageError):
    """The host refused a read, write or flush (EIO, ENOSPC...); `errno` is the host's."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class ImageError(StorageError):
    """An image cannot be opened or used as asked."""


class ImageOpenError(ImageError):
    """The file cannot be opened: missing, permission denied, not a regular file or block device."""


class ImageCorruptError(ImageError):
    """The image is damaged: a bad header field, a table outside the file, a truncated file."""


class UnsupportedImageError(ImageError):
    """The image is valid but uses something vmkit does not implement (encryption, an unknown
    incompatible feature, a version 2 image opened for writing...)."""


class BackingChainError(ImageError):
    """A backing file is missing, the chain loops, or it is deeper than the limit."""


class ImageLockedError(ImageError):
    """Another process (a vmkit or a QEMU) holds a lock that conflicts with this open."""
