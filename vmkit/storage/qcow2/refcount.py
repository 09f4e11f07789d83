"""qcow2 reference counts: the two-level table, and the cluster allocator built on it.

Every cluster of the file that is in use has a refcount of at least 1 in a refcount block, and
the refcount table points at the blocks. The allocator takes the first free cluster from a hint
upwards and refcounts it in memory at once; so do the structures it may need on the way:

- a missing refcount block for a range of clusters goes at the first cluster of that range (the
  table entry is 0, so every cluster of the range is free) and counts itself;
- when the file outgrows the table, a larger table and the blocks that cover it go together
  past the end of everything in use, counted by those blocks; the old table is freed once the
  header points at the new one.

New blocks reach the file before the table entries that point at them.

Decrements are never applied at once: `free_later` queues them, and the disk applies them
(`apply_frees`) only after the metadata that stopped referencing those clusters is on disk. A crash
then leaks clusters at worst; it never leaves a cluster both in use and free.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

from vmkit.storage.errors import ImageCorruptError
from vmkit.storage.hostfile import HostFile
from vmkit.storage.qcow2.header import Header, be64_array, be64_bytes

ENTRY_MASK = 0xFFFF_FFFF_FFFF_FE00


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Refcounts:
    """The refcount table and blocks of one open image, cached in memory."""

    def __init__(self, host: HostFile, header: Header, file_size: int) -> None:
        self.host = host
        self.path = host.path
        self.cluster_size = header.cluster_size
        self.bits = header.refcount_bits
        self.max_refcount = (1 << self.bits) - 1
        self.block_entries = header.refcount_block_entries
        self.table_offset = header.refcount_table_offset
        self.table_clusters = header.refcount_table_clusters
        self.protected = [(0, self.cluster_size, "header")]     # (start, end, what): never allocated
        if header.l1_size:
            self.protected.append((header.l1_table_offset, header.l1_table_offset + header.l1_size * 8, "L1 table"))
        self.table = self._load_table(file_size)
        self.blocks: dict[int, bytearray] = {}
        self.dirty_blocks: set[int] = set()
        self.dirty_entries: set[int] = set()
        self.table_moved = False
        self.pending_free: list[tuple[int, int]] = []
        self.hint = 0
        self.end_cluster = _ceil_div(file_size, self.cluster_size)

    # ---- loading

    def _load_table(self, file_size: int) -> array[int]:
        table = be64_array(self.host.pread(self.table_offset, self.table_clusters * self.cluster_size))
        for index, entry in enumerate(table):
            if not entry:
                continue
            if entry & ~ENTRY_MASK or entry % self.cluster_size:
                raise ImageCorruptError(f"{self.path}: refcount table entry {index} ({entry:#x}) is not a "
                                        f"cluster-aligned offset")
            if entry + self.cluster_size > file_size:
                raise ImageCorruptError(f"{self.path}: refcount block {index} at {entry:#x} lies past the end of "
                                        f"the file ({file_size} bytes): the image is truncated or damaged")
            for low, high, what in self.regions():
                if low < entry + self.cluster_size and entry < high:
                    raise ImageCorruptError(f"{self.path}: refcount block {index} at {entry:#x} overlaps the {what}")
        return table

    def regions(self) -> list[tuple[int, int, str]]:
        """The metadata no data cluster, L2 table or refcount block may overlap."""
        end = self.table_offset + self.table_clusters * self.cluster_size
        return [*self.protected, (self.table_offset, end, "refcount table")]

    def _block(self, index: int) -> bytearray:
        block = self.blocks.get(index)
        if block is None:
            block = self.host.pread(self.table[index], self.cluster_size)
            self.blocks[index] = block
        return block

    def last_used_cluster(self) -> int | None:
        """The highest cluster with a non-zero refcount, or None if there is none."""
        for index in range(len(self.table) - 1, -1, -1):
            if not self.table[index]:
                continue
            block = self._block(index)
            used_bytes = len(block.rstrip(b"\0"))
            if not used_bytes:
                continue
            if self.bits >= 8:
                return index * self.block_entries + (used_bytes - 1) // (self.bits // 8)
            per_byte = 8 // self.bits
            for entry in range(used_bytes * per_byte - 1, (used_bytes - 1) * per_byte - 1, -1):
                if self._read(block, entry):
                    return index * self.block_entries + entry
        return None

    # ---- entries

    def _read(self, block: bytearray, entry: int) -> int:
        bits = self.bits
        if bits >= 8:
            width = bits // 8
            return int.from_bytes(block[entry * width:(entry + 1) * width], "big")
        per_byte = 8 // bits
        return (block[entry // per_byte] >> (entry % per_byte * bits)) & self.max_refcount

    def _write(self, block: bytearray, entry: int, value: int) -> None:
        bits = self.bits
        if bits >= 8:
            width = bits // 8
            block[entry * width:(entry + 1) * width] = value.to_bytes(width, "big")
            return
        per_byte = 8 // bits
        shift = entry % per_byte * bits
        byte = block[entry // per_byte] & ~(self.max_refcount << shift)
        block[entry // per_byte] = byte | value << shift

    def get(self, cluster: int) -> int:
        """The refcount of cluster number `cluster` (0 where no block covers it)."""
        index, entry = divmod(cluster, self.block_entries)
        if index >= len(self.table) or not self.table[index]:
            return 0
        return self._read(self._block(index), entry)

    def _set(self, cluster: int, value: int) -> None:
        index, entry = divmod(cluster, self.block_entries)
        self._write(self._block(index), entry, value)
        self.dirty_blocks.add(index)

    def _first_free(self, block: bytearray, start: int) -> int | None:
        if self.bits >= 8:       # a zero entry is `width` zero bytes at a multiple of width
            width = self.bits // 8
            zero = bytes(width)
            pos = start * width
            while True:
                pos = block.find(zero, pos)
                if pos < 0:
                    return None
                if pos % width == 0:
                    return pos // width
                pos += width - pos % width
        for entry in range(start, self.block_entries):
            if not self._read(block, entry):
                return entry
        return None

    # ---- allocation

    def _check_free_for_use(self, cluster: int) -> None:
        start = cluster * self.cluster_size
        for low, high, what in self.regions():
            if low < start + self.cluster_size and start < high:
                raise ImageCorruptError(f"{self.path}: the refcounts say cluster {start:#x} is free, but it holds "
                                        f"the {what}: the image is damaged (run qemu-img check -r all)")

    def allocate(self) -> int:
        """A free cluster, now counted as used (refcount 1, in memory): its file offset."""
        while True:
            cluster = self._find_free(self.hint)
            index = cluster // self.block_entries
            if index >= len(self.table):
                self._grow_table(index)
                continue
            if not self.table[index]:
                self._create_block(index)
                continue
            self._check_free_for_use(cluster)
            self._set(cluster, 1)
            self.hint = cluster + 1
            self.end_cluster = max(self.end_cluster, cluster + 1)
            return cluster * self.cluster_size

    def _find_free(self, cluster: int) -> int:
        while True:
            index = cluster // self.block_entries
            if index >= len(self.table) or not self.table[index]:
                return cluster
            entry = self._first_free(self._block(index), cluster % self.block_entries)
            if entry is not None:
                return index * self.block_entries + entry
            cluster = (index + 1) * self.block_entries

    def _create_block(self, index: int) -> None:
        """A refcount block for range `index`, at that range's first cluster, counting itself."""
        cluster = index * self.block_entries
        self._check_free_for_use(cluster)
        self.blocks[index] = bytearray(self.cluster_size)
        self.table[index] = cluster * self.cluster_size
        self._set(cluster, 1)
        self.dirty_entries.add(index)
        self.end_cluster = max(self.end_cluster, cluster + 1)

    def _grow_table(self, needed: int) -> None:
        """Replace the table by one with room for entry `needed`, placed past everything in use."""
        per_cluster = self.cluster_size // 8
        first = max(_ceil_div(self.end_cluster, self.block_entries), len(self.table))
        clusters = _ceil_div(max(needed, first) + 1, per_cluster)
        while True:
            blocks = _ceil_div(clusters, self.block_entries - 1)   # blocks + table fit in `blocks` ranges
            entries = max(needed + 1, first + blocks, len(self.table))
            if _ceil_div(entries, per_cluster) <= clusters:
                break
            clusters = _ceil_div(entries, per_cluster)
        base = first * self.block_entries
        old_offset, old_clusters = self.table_offset, self.table_clusters
        self.table.extend(array("Q", bytes(8 * (clusters * per_cluster - len(self.table)))))
        for number in range(blocks):
            self.blocks[first + number] = bytearray(self.cluster_size)
            self.table[first + number] = (base + number) * self.cluster_size
        for cluster in range(base, base + blocks + clusters):
            self._set(cluster, 1)
        self.table_offset = (base + blocks) * self.cluster_size
        self.table_clusters = clusters
        self.table_moved = True
        self.end_cluster = max(self.end_cluster, base + blocks + clusters)
        self.free_later(old_offset, old_clusters * self.cluster_size)

    # ---- freeing

    def free_later(self, offset: int, length: int) -> None:
        """Queue a decrement of every cluster overlapping [offset, offset + length)."""
        self.pending_free.append((offset, length))

    def apply_frees(self) -> bool:
        """Apply the queued decrements (call only once nothing on disk references them)."""
        if not self.pending_free:
            return False
        pending, self.pending_free = self.pending_free, []
        for offset, length in pending:
            first = offset // self.cluster_size
            for cluster in range(first, _ceil_div(offset + length, self.cluster_size)):
                value = self.get(cluster)
                if value == 0:
                    raise ImageCorruptError(f"{self.path}: cluster {cluster * self.cluster_size:#x} is freed but its "
                                            f"refcount is already 0: the image is damaged")
                self._set(cluster, value - 1)
                if value == 1:
                    self.hint = min(self.hint, cluster)
        return True

    # ---- writing back

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_blocks or self.dirty_entries or self.table_moved)

    def write_back(self, barrier: Callable[[], None]) -> None:
        """Write changed blocks, then (after `barrier`, so no entry ever points at a block not yet
        written) changed table entries."""
        for index in sorted(self.dirty_blocks):
            self.host.pwrite(self.table[index], self.blocks[index])
        self.dirty_blocks.clear()
        if not (self.table_moved or self.dirty_entries):
            return
        barrier()
        if self.table_moved:
            self.host.pwrite(self.table_offset, be64_bytes(self.table))
        else:
            for sector in sorted({index // 64 for index in self.dirty_entries}):
                self.host.pwrite(self.table_offset + sector * 512, be64_bytes(self.table[sector * 64:sector * 64 + 64]))
        self.dirty_entries.clear()

    def table_fields(self) -> bytes:
        """The header's refcount_table_offset and refcount_table_clusters, packed as on disk."""
        return self.table_offset.to_bytes(8, "big") + self.table_clusters.to_bytes(4, "big")

    def drop_clean(self) -> None:
        """Forget cached blocks that need no writing."""
        for index in [i for i in self.blocks if i not in self.dirty_blocks]:
            del self.blocks[index]

    def cached_bytes(self) -> int:
        return len(self.blocks) * self.cluster_size
