"""Disk images for block devices: raw and qcow2, behind one Disk interface.

    disk = open_disk("vm.qcow2")                 # format probed, writable, cache="writeback"
    disk.readv(0, [memoryview(buf)])             # straight into the caller's buffers
    disk.writev(4096, [view1, view2]); disk.flush(); disk.close()
    create("vm.qcow2", 8 << 30, format="qcow2", backing="base.raw", backing_format="raw")
    info("vm.qcow2").chain()                     # the image and its backing files

Modules: disk (the Disk protocol, buffer helpers), errors, hostfile (positional I/O, O_DIRECT),
locking (QEMU-compatible image locks), probe (format probing and its guard), raw, qcow2/ (header,
tables, refcount, disk, opener, create), open (open_disk, backing chains, what is trusted), image
(create, info). This package uses only the standard library and imports nothing else of vmkit.
"""

from vmkit.storage.disk import CACHE_MODES, CacheMode, Disk
from vmkit.storage.errors import (
    BackingChainError,
    DiskIOError,
    DiskRangeError,
    DiskRequestError,
    ImageCorruptError,
    ImageError,
    ImageLockedError,
    ImageOpenError,
    ProbeGuardError,
    ReadOnlyError,
    StorageError,
    UnsupportedImageError,
)
from vmkit.storage.image import ImageInfo, create, info
from vmkit.storage.open import MAX_BACKING_DEPTH, open_disk

__all__ = [
    "CACHE_MODES", "MAX_BACKING_DEPTH", "BackingChainError", "CacheMode", "Disk", "DiskIOError", "DiskRangeError",
    "DiskRequestError", "ImageCorruptError", "ImageError", "ImageInfo", "ImageLockedError", "ImageOpenError",
    "ProbeGuardError", "ReadOnlyError", "StorageError", "UnsupportedImageError", "create", "info", "open_disk",
]
