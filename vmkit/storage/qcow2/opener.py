"""Opening a qcow2 image: read and check the header, decide whether this open is allowed, open the
backing file through the caller's opener, and build the Qcow2Disk.

What an open refuses, and why:

- the corrupt bit: QEMU found the image damaged; nothing may be read as if it were fine
  (`qemu-img check -r all` repairs it). `info()` still describes such an image.
- the dirty bit, for a writable open: refcounts may be behind the L1/L2 tables (lazy refcounts).
  Repairing means rebuilding every refcount from a scan of all tables; qemu-img does that well,
  a second implementation would be a second place to corrupt images, so vmkit refuses and says
  to run `qemu-img check -r all`. A read-only open is allowed: reads never use refcounts. (vmkit
  itself never sets the dirty bit: it does not use lazy refcounts.)
- version 2 for a writable open (it has no zero clusters): convert with `qemu-img amend -o compat=1.1`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vmkit.storage.disk import CacheMode, Disk
from vmkit.storage.errors import BackingChainError, ImageCorruptError, UnsupportedImageError
from vmkit.storage.hostfile import HostFile
from vmkit.storage.qcow2.disk import DEFAULT_CACHE_BYTES, Qcow2Disk
from vmkit.storage.qcow2.header import (
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    V3_MIN_HEADER_LENGTH,
    Header,
    parse_header,
)

BACKING_FORMATS = ("raw", "qcow2")
BackingOpener = Callable[[str, "str | None"], Disk]


def read_header(host: HostFile) -> Header:
    """Read the header cluster of an open file and parse it (parse_header says what is wrong)."""
    file_size = host.size()
    data = bytes(host.pread(0, min(file_size, V3_MIN_HEADER_LENGTH)))
    if len(data) >= 24:
        cluster_bits = struct.unpack_from(">I", data, 20)[0]
        if MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            data = bytes(host.pread(0, min(file_size, 1 << cluster_bits)))
    return parse_header(host.path, data, file_size)


def check_open_allowed(path: str, header: Header, writable: bool, inspect: bool = False) -> None:
    """Refuse opens the header's state does not allow (see the module docstring)."""
    if header.corrupt and not inspect:
        raise ImageCorruptError(f"{path}: the image is marked corrupt (incompatible feature bit 1): run "
                                f"`qemu-img check -r all {path}` to repair it")
    if not writable:
        return
    if header.version == 2:
        raise UnsupportedImageError(f"{path}: vmkit writes only version 3 qcow2 images; open it read-only, or "
                                    f"upgrade it with `qemu-img amend -o compat=1.1 {path}`")
    if header.dirty:
        raise UnsupportedImageError(f"{path}: the dirty bit is set (its refcounts may be stale); vmkit does not "
                                    f"repair refcounts: run `qemu-img check -r all {path}`, or open it read-only")


def open_qcow2(host: HostFile, read_only: bool, cache: CacheMode, open_backing: BackingOpener | None,
               inspect: bool = False, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Qcow2Disk:
    """A Qcow2Disk on `host`. `open_backing(name, format)` opens the backing file (None: refuse one)."""
    header = read_header(host)
    check_open_allowed(host.path, header, writable=not read_only, inspect=inspect)
    backing = None
    if header.backing_file:
        if open_backing is None:
            raise BackingChainError(f"{host.path}: it has a backing file ({header.backing_file!r}), and backing "
                                    f"files are not followed here")
        if header.backing_format is not None and header.backing_format not in BACKING_FORMATS:
            raise UnsupportedImageError(f"{host.path}: its backing file {header.backing_file!r} is in format "
                                        f"{header.backing_format!r}; vmkit reads only raw and qcow2")
        backing = open_backing(header.backing_file, header.backing_format)
    try:
        return Qcow2Disk(host, header, read_only, cache, backing, cache_bytes)
    except BaseException:
        if backing is not None:
            backing.close()
        raise
