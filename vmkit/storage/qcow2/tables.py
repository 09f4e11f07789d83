"""qcow2 address mapping: the L1 table and the L2 tables it points at, cached in memory.

A guest offset maps through L1[cluster // l2_entries] to an L2 table, whose entry
[cluster % l2_entries] describes the guest cluster: unallocated (0: read the backing file),
zero (bit 0), standard (host offset in bits 9-55) or compressed (bit 62). Bit 63 (COPIED) says the
cluster's refcount is exactly 1, so it may be written in place.

Tables are checked when they are read: the L1 table at open, each L2 table when first used, so a
bad entry is an ImageCorruptError naming the table and entry, never a wrong read.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable

from vmkit.storage.errors import ImageCorruptError
from vmkit.storage.hostfile import HostFile
from vmkit.storage.qcow2.header import (
    COPIED,
    L1_OFFSET_MASK,
    L1_RESERVED_MASK,
    Header,
    be64_array,
    be64_bytes,
)

COMPRESSED = 1 << 62
ZERO = 1
STD_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
STD_RESERVED_MASK = 0x3F00_0000_0000_01FE

UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED_KIND = range(5)


def kind_of(entry: int) -> int:
    """The kind of cluster an L2 entry describes."""
    if entry & COMPRESSED:
        return COMPRESSED_KIND
    if entry & ZERO:
        return ZERO_ALLOC if entry & STD_OFFSET_MASK else ZERO_PLAIN
    return NORMAL if entry & STD_OFFSET_MASK else UNALLOCATED


class Tables:
    """The L1 table (in memory) and a cache of L2 tables, with dirty tracking."""

    def __init__(self, host: HostFile, header: Header, regions: Callable[[], list[tuple[int, int, str]]]) -> None:
        self.host = host
        self.path = host.path
        self.cluster_size = header.cluster_size
        self.l2_entries = header.l2_entries
        self.l1_offset = header.l1_table_offset
        self.regions = regions              # metadata no L2 or data cluster may overlap
        bits = header.cluster_bits
        self.compressed_shift = 62 - (bits - 8)
        self.compressed_offset_mask = (1 << self.compressed_shift) - 1
        self.compressed_sectors_mask = (1 << (bits - 8)) - 1
        self.l1 = self._load_l1(header.l1_size)
        self.l1_dirty: set[int] = set()
        self.l2: dict[int, bytearray] = {}
        self.l2_dirty: set[int] = set()

    # ---- L1

    def _load_l1(self, count: int) -> array[int]:
        l1 = be64_array(self.host.pread(self.l1_offset, count * 8))
        file_size = self.host.size()
        for index, entry in enumerate(l1):
            if not entry & L1_OFFSET_MASK:
                continue
            offset = entry & L1_OFFSET_MASK
            if entry & L1_RESERVED_MASK:
                raise ImageCorruptError(f"{self.path}: L1 entry {index} ({entry:#x}) has reserved bits set "
                                        f"(its L2 offset is not cluster-aligned)")
            if offset % self.cluster_size:
                raise ImageCorruptError(f"{self.path}: L1 entry {index}: the L2 table offset {offset:#x} is not "
                                        f"aligned to the cluster size")
            if offset + self.cluster_size > file_size:
                raise ImageCorruptError(f"{self.path}: L1 entry {index}: the L2 table at {offset:#x} lies past the "
                                        f"end of the file ({file_size} bytes): the image is truncated or damaged")
            self._check_overlap(offset, f"the L2 table of L1 entry {index}")
        return l1

    def _check_overlap(self, offset: int, what: str) -> None:
        for low, high, region in self.regions():
            if low < offset + self.cluster_size and offset < high:
                raise ImageCorruptError(f"{self.path}: {what} at {offset:#x} overlaps the {region}")

    def l2_offset(self, l1_index: int) -> int:
        return self.l1[l1_index] & L1_OFFSET_MASK

    def set_l1(self, l1_index: int, l2_offset: int) -> None:
        self.l1[l1_index] = l2_offset | COPIED
        self.l1_dirty.add(l1_index)

    # ---- L2

    def table(self, offset: int) -> bytearray:
        """The L2 table at `offset` (read and checked on first use)."""
        table = self.l2.get(offset)
        if table is None:
            table = self.host.pread(offset, self.cluster_size)
            self._check_l2(offset, table)
            self.l2[offset] = table
        return table

    def _check_l2(self, offset: int, table: bytearray) -> None:
        file_size = self.host.size()
        for index, entry in enumerate(be64_array(table)):
            if not entry:
                continue
            where = f"L2 table at {offset:#x}, entry {index}"
            if entry & COMPRESSED:
                host = entry & self.compressed_offset_mask
                if host < self.cluster_size or host >= file_size:
                    raise ImageCorruptError(f"{self.path}: {where}: compressed data at {host:#x} is outside the "
                                            f"file's data area (the file has {file_size} bytes)")
                continue
            if entry & STD_RESERVED_MASK:
                raise ImageCorruptError(f"{self.path}: {where} ({entry:#x}) has reserved bits set")
            host = entry & STD_OFFSET_MASK
            if not host:
                if entry & COPIED and not entry & ZERO:
                    raise ImageCorruptError(f"{self.path}: {where} is marked in use (COPIED) with no host offset")
                continue
            if host >= file_size:
                raise ImageCorruptError(f"{self.path}: {where}: the data cluster at {host:#x} lies past the end of "
                                        f"the file ({file_size} bytes): the image is truncated or damaged")
            self._check_overlap(host, where)

    def contiguous_data(self, offset: int, length: int, cluster_size: int, *, in_place: bool = False) -> int | None:
        """Where guest bytes [offset, +length) are in the file when they are allocated data held in
        one run of consecutive host clusters under one L2 table (the usual request), else None;
        `in_place`: the clusters must also be COPIED (a write may go straight to them)."""
        first, within = divmod(offset, cluster_size)
        count = (within + length - 1) // cluster_size + 1
        l1_index, l2_index = divmod(first, self.l2_entries)
        if length <= 0 or l2_index + count > self.l2_entries:
            return None
        table_offset = self.l2_offset(l1_index)
        if not table_offset:
            return None
        entries = struct.unpack_from(f">{count}Q", self.table(table_offset), l2_index * 8)
        start = entries[0] & STD_OFFSET_MASK
        flags, wanted = (COMPRESSED | ZERO | COPIED, COPIED) if in_place else (COMPRESSED | ZERO, 0)
        for i, entry in enumerate(entries):
            if (entry & flags != wanted
                    or entry & STD_OFFSET_MASK != start + i * cluster_size):
                return None
        return start + within if start else None

    def entry(self, cluster: int) -> int:
        """The L2 entry of guest cluster `cluster` (0 when it has no L2 table)."""
        l1_index, l2_index = divmod(cluster, self.l2_entries)
        offset = self.l2_offset(l1_index)
        if not offset:
            return 0
        return struct.unpack_from(">Q", self.table(offset), l2_index * 8)[0]

    def set_entry(self, l2_table_offset: int, l2_index: int, value: int) -> None:
        struct.pack_into(">Q", self.l2[l2_table_offset], l2_index * 8, value)
        self.l2_dirty.add(l2_table_offset)

    def add_table(self, offset: int, content: bytearray) -> None:
        """A new L2 table (not yet in the file)."""
        self.l2[offset] = content
        self.l2_dirty.add(offset)

    def compressed_range(self, entry: int) -> tuple[int, int]:
        """(host offset, byte count) of a compressed cluster's data: through the end of its last sector."""
        host = entry & self.compressed_offset_mask
        sectors = (entry >> self.compressed_shift) & self.compressed_sectors_mask
        end = (host // 512 + sectors + 1) * 512
        return host, end - host

    # ---- writing back

    def write_l2(self) -> None:
        for offset in sorted(self.l2_dirty):
            self.host.pwrite(offset, self.l2[offset])
        self.l2_dirty.clear()

    def write_l1(self) -> None:
        for sector in sorted({index // 64 for index in self.l1_dirty}):
            self.host.pwrite(self.l1_offset + sector * 512, be64_bytes(self.l1[sector * 64:sector * 64 + 64]))
        self.l1_dirty.clear()

    def drop_clean(self) -> None:
        for offset in [o for o in self.l2 if o not in self.l2_dirty]:
            del self.l2[offset]

    def cached_bytes(self) -> int:
        return len(self.l2) * self.cluster_size
