"""Creating an empty version 3 qcow2 image.

Layout, as qemu-img lays it out: the header cluster (fields, a backing-format extension, the backing
file name), the refcount table, the refcount blocks, then the L1 table (all zeros: nothing is
allocated). Every one of those clusters has refcount 1; refcounts are 16 bits wide.
"""

from __future__ import annotations

import os
import struct

from vmkit.storage.errors import UnsupportedImageError
from vmkit.storage.qcow2.header import (
    MAX_CLUSTER_BITS,
    MAX_L1_BYTES,
    MAX_REFCOUNT_TABLE_BYTES,
    MIN_CLUSTER_BITS,
    Header,
    build_header,
    l1_entries_needed,
)

REFCOUNT_ORDER = 4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def qcow2_layout(size: int, cluster_size: int) -> Header:
    """The header of an empty image of `size` bytes with clusters of `cluster_size` bytes."""
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise ValueError(f"cluster size {cluster_size} must be a power of two from 512 to 2 MiB")
    l1_size = l1_entries_needed(size, bits)
    if l1_size * 8 > MAX_L1_BYTES:
        raise UnsupportedImageError(f"a virtual size of {size} bytes needs an L1 table of {l1_size * 8} bytes "
                                    f"with {cluster_size}-byte clusters, more than {MAX_L1_BYTES}: "
                                    f"use larger clusters")
    l1_clusters = _ceil_div(l1_size * 8, cluster_size)         # none for an empty disk, as QEMU
    block_entries = cluster_size * 8 // (1 << REFCOUNT_ORDER)
    table_clusters, blocks = 1, 1
    while True:
        used = 1 + table_clusters + blocks + l1_clusters
        new_blocks = _ceil_div(used, block_entries)
        new_table = _ceil_div(new_blocks * 8, cluster_size)
        if (new_blocks, new_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = new_blocks, new_table
    if table_clusters * cluster_size > MAX_REFCOUNT_TABLE_BYTES:
        raise UnsupportedImageError(f"a virtual size of {size} bytes is too large for {cluster_size}-byte clusters")
    return Header(version=3, cluster_bits=bits, size=size, l1_size=l1_size,
                  l1_table_offset=(1 + table_clusters + blocks) * cluster_size,
                  refcount_table_offset=cluster_size, refcount_table_clusters=table_clusters,
                  refcount_order=REFCOUNT_ORDER)


def write_new_qcow2(fd: int, header: Header) -> None:
    """Write an empty image with `header`'s layout to the empty file `fd`."""
    cs = header.cluster_size
    table_clusters = header.refcount_table_clusters
    first_block = 1 + table_clusters
    blocks = header.l1_table_offset // cs - first_block
    used = header.l1_table_offset // cs + _ceil_div(header.l1_size * 8, cs)
    table = struct.pack(f">{blocks}Q", *((first_block + i) * cs for i in range(blocks)))
    refcounts = bytearray(blocks * cs)
    struct.pack_into(f">{used}H", refcounts, 0, *([1] * used))
    os.pwrite(fd, build_header(header), 0)
    os.pwrite(fd, table, header.refcount_table_offset)
    os.pwrite(fd, bytes(refcounts), first_block * cs)
    os.ftruncate(fd, used * cs)
