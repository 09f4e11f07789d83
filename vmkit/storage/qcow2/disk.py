"""A qcow2 disk: reads, writes, zeroing and a crash-safe flush over the mapping and refcount tables.

Reads go cluster by cluster, merged into runs: contiguous standard clusters are one preadv straight
into the caller's buffers; unallocated clusters read the backing file (zeros past its end, or with
none); zero clusters read zeros; compressed clusters are inflated (raw deflate) and copied.

A write lands in place when its cluster is standard with COPIED set (refcount 1). Otherwise the
cluster gets a new host cluster, filled with what the guest cluster held (copied from the shared
cluster, inflated from a compressed one, read from the backing file, or zeros) merged with the new
bytes; the old cluster is released after the L2 entry that pointed at it is on disk. An L2 table
that is shared (its L1 entry lacks COPIED, e.g. with an internal snapshot) is copied first.

Metadata changes stay in memory until a flush (or cache pressure, or close) writes them back in
an order that leaves leaks at worst after a crash, never corruption:

  1. data (already written) and the refcounts of newly allocated clusters  -> fdatasync
     (new refcount blocks before the table entries pointing at them        -> fdatasync;
      the header, if the refcount table moved                              -> fdatasync)
  2. L2 tables                                                            -> fdatasync
  3. L1 entries                                                           -> fdatasync
  4. refcount decrements of clusters nothing references any more          -> fdatasync

New clusters are counted before anything points at them, and old ones are released only after
nothing points at them. (Writing refcounts last, after L2 and L1, would not be safe: a crash
between the two leaves a cluster in use with refcount 0, which the next allocation hands out
twice.) With cache="unsafe" the same writes happen without the fdatasyncs, and flush() does nothing.

Requests are serialised by one lock per disk.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from vmkit.storage.disk import (
    Buffers,
    CacheMode,
    Disk,
    byte_views,
    check_request,
    check_writable,
    fill_zeros,
    scatter,
    slice_views,
    total_length,
    zero_views,
)
from vmkit.storage.errors import ImageCorruptError, StorageError
from vmkit.storage.hostfile import HostFile
from vmkit.storage.qcow2.header import AUTOCLEAR_OFFSET, COPIED, REFCOUNT_TABLE_FIELDS_OFFSET, Header
from vmkit.storage.qcow2.refcount import Refcounts
from vmkit.storage.qcow2.tables import (
    COMPRESSED_KIND,
    NORMAL,
    STD_OFFSET_MASK,
    UNALLOCATED,
    ZERO,
    ZERO_ALLOC,
    ZERO_PLAIN,
    Tables,
    kind_of,
)

DEFAULT_CACHE_BYTES = 32 << 20


@dataclass
class _Run:
    kind: int
    guest: int
    length: int
    host: int
    entry: int


class Qcow2Disk:
    """An open qcow2 image. Build it with vmkit.storage.open_disk()."""

    format = "qcow2"

    def __init__(self, host: HostFile, header: Header, read_only: bool, cache: CacheMode,
                 backing: Disk | None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.host = host
        self.path = host.path
        self.header = header
        self.cache = cache
        self.backing = backing
        self.backing_name = header.backing_file
        self.cluster_size = header.cluster_size
        self.cache_bytes = cache_bytes
        self._read_only = read_only
        self._lock = threading.Lock()
        self._closed = False
        self._inflated: tuple[int, bytes] | None = None
        file_size = host.size()
        self.refcounts = Refcounts(host, header, file_size)
        self.tables = Tables(host, header, self.refcounts.regions)
        if not header.dirty:
            self._check_not_truncated(file_size)
        if not read_only and header.autoclear:
            # The spec: a writer must clear the autoclear bits it does not maintain (all of them here).
            host.pwrite(AUTOCLEAR_OFFSET, bytes(8))
            host.sync()
            header.autoclear = 0

    def _check_not_truncated(self, file_size: int) -> None:
        last = self.refcounts.last_used_cluster()
        if last is not None and last * self.cluster_size >= file_size:
            raise ImageCorruptError(f"{self.path}: cluster {last * self.cluster_size:#x} is in use, but the file "
                                    f"ends at {file_size} bytes: the image is truncated")

    # ---- the Disk interface

    @property
    def size(self) -> int:
        return self.header.size

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self.path}: the disk is closed")

    def readv(self, offset: int, buffers: Buffers) -> None:
        views = byte_views(buffers)
        length = total_length(views)
        check_request(self.path, self.size, offset, length)
        with self._lock:
            self._check_open()
            host = self.tables.contiguous_data(offset, length, self.cluster_size)
            if host is not None:                 # one run of data clusters: one preadv
                self.host.read_into(host, views)
                self._trim_cache()
                return
            pos = 0
            for run in self._runs(offset, length):
                self._read_run(run, slice_views(views, pos, run.length))
                pos += run.length
            self._trim_cache()

    def writev(self, offset: int, buffers: Buffers) -> None:
        check_writable(self.path, self._read_only, "write")
        views = byte_views(buffers)
        length = total_length(views)
        check_request(self.path, self.size, offset, length)
        with self._lock:
            self._check_open()
            host = self.tables.contiguous_data(offset, length, self.cluster_size, in_place=True)
            if host is not None:                 # one run of clusters written in place: one pwritev
                self.host.write_from(host, views)
                self._trim_cache()
                return
            pos = 0
            run_host, run_pos, run_length = 0, 0, 0   # consecutive in-place pieces, contiguous in the file
            for cluster, within, count in self._pieces(offset, length):
                entry = self.tables.entry(cluster)
                in_place = kind_of(entry) == NORMAL and bool(entry & COPIED)
                host = (entry & STD_OFFSET_MASK) + within
                if in_place and run_length and run_host + run_length == host:
                    run_length += count
                else:
                    if run_length:
                        self.host.write_from(run_host, slice_views(views, run_pos, run_length))
                        run_length = 0
                    if in_place:
                        run_host, run_pos, run_length = host, pos, count
                    else:
                        self._write_cluster(cluster, within, slice_views(views, pos, count))
                pos += count
            if run_length:
                self.host.write_from(run_host, slice_views(views, run_pos, run_length))
            self._trim_cache()

    def discard(self, offset: int, length: int) -> None:
        self._zero_range("discard", offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._zero_range("write-zeroes", offset, length)

    def flush(self) -> None:
        with self._lock:
            self._check_open()
            if not self._read_only and self.cache != "unsafe":
                self._write_back(sync=True)

    def close(self) -> None:
        """Write back the metadata, close the file (releasing its locks) and the backing chain."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._read_only:
                    self._write_back(sync=self.cache != "unsafe")
            finally:
                self.host.close()
                if self.backing is not None:
                    self.backing.close()

    def __enter__(self) -> Qcow2Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(guest cluster, offset in it, byte count) for each cluster the range touches."""
        end = offset + length
        while offset < end:
            cluster, within = divmod(offset, self.cluster_size)
            count = min(self.cluster_size - within, end - offset)
            yield cluster, within, count
            offset += count

    def _runs(self, offset: int, length: int) -> Iterator[_Run]:
        run: _Run | None = None
        for cluster, within, count in self._pieces(offset, length):
            entry = self.tables.entry(cluster)
            kind = kind_of(entry)
            if kind == ZERO_ALLOC:
                kind = ZERO_PLAIN
            host = (entry & STD_OFFSET_MASK) + within if kind == NORMAL else 0
            if (run is not None and run.kind == kind and kind != COMPRESSED_KIND
                    and (kind != NORMAL or run.host + run.length == host)):
                run.length += count
                continue
            if run is not None:
                yield run
            run = _Run(kind, cluster * self.cluster_size + within, count, host, entry)
        if run is not None:
            yield run

    def _read_run(self, run: _Run, views: list[memoryview]) -> None:
        if run.kind == NORMAL:
            self.host.read_into(run.host, views)
        elif run.kind == ZERO_PLAIN:
            fill_zeros(views)
        elif run.kind == UNALLOCATED:
            self._read_backing(run.guest, run.length, views)
        else:
            within = run.guest % self.cluster_size
            scatter(memoryview(self._inflate(run.entry))[within:within + run.length], views)

    def _read_backing(self, offset: int, length: int, views: list[memoryview]) -> None:
        inside = 0 if self.backing is None else max(0, min(length, self.backing.size - offset))
        if inside:
            assert self.backing is not None
            self.backing.readv(offset, slice_views(views, 0, inside))
        if inside < length:
            fill_zeros(slice_views(views, inside, length - inside))

    def _inflate(self, entry: int) -> bytes:
        """The guest cluster a compressed L2 entry describes."""
        if self._inflated is not None and self._inflated[0] == entry:
            return self._inflated[1]
        host, count = self.tables.compressed_range(entry)
        compressed = self.host.pread(host, count)
        try:
            data = zlib.decompressobj(-15).decompress(compressed, self.cluster_size)
        except zlib.error as exc:
            raise ImageCorruptError(f"{self.path}: the compressed cluster at {host:#x} cannot be inflated: "
                                    f"{exc}") from None
        if len(data) != self.cluster_size:
            raise ImageCorruptError(f"{self.path}: the compressed cluster at {host:#x} inflates to {len(data)} "
                                    f"bytes, not a cluster ({self.cluster_size})")
        self._inflated = (entry, data)
        return data

    def _cluster_content(self, cluster: int, entry: int, kind: int) -> bytearray:
        """What guest cluster `cluster` reads as now."""
        if kind == NORMAL:
            return self.host.pread(entry & STD_OFFSET_MASK, self.cluster_size)
        if kind == COMPRESSED_KIND:
            return bytearray(self._inflate(entry))
        content = bytearray(self.cluster_size)
        if kind == UNALLOCATED:
            self._read_backing(cluster * self.cluster_size, self.cluster_size, [memoryview(content)])
        return content

    # ---- writing

    def _writable_l2(self, l1_index: int) -> int:
        """The offset of an L2 table for `l1_index` that may be changed in place (refcount 1)."""
        tables = self.tables
        old = tables.l2_offset(l1_index)
        if old and tables.l1[l1_index] & COPIED:
            tables.table(old)
            return old
        content = bytearray(tables.table(old)) if old else bytearray(self.cluster_size)
        new = self.refcounts.allocate()
        tables.add_table(new, content)
        tables.set_l1(l1_index, new)
        if old:
            self.refcounts.free_later(old, self.cluster_size)
        return new

    def _release(self, entry: int, kind: int) -> None:
        """Queue the release of the host cluster(s) an L2 entry no longer references."""
        if kind in (NORMAL, ZERO_ALLOC):
            self.refcounts.free_later(entry & STD_OFFSET_MASK, self.cluster_size)
        elif kind == COMPRESSED_KIND:
            self.refcounts.free_later(*self.tables.compressed_range(entry))
            self._inflated = None

    def _write_cluster(self, cluster: int, within: int, views: list[memoryview]) -> None:
        entry = self.tables.entry(cluster)
        kind = kind_of(entry)
        if kind == NORMAL and entry & COPIED:
            self.host.write_from((entry & STD_OFFSET_MASK) + within, views)
            return
        l1_index, l2_index = divmod(cluster, self.tables.l2_entries)
        table = self._writable_l2(l1_index)
        whole = total_length(views) == self.cluster_size
        in_place = kind == ZERO_ALLOC and bool(entry & COPIED)
        target = entry & STD_OFFSET_MASK if in_place else self.refcounts.allocate()
        if whole:
            self.host.write_from(target, views)
        else:
            content = self._cluster_content(cluster, entry, ZERO_PLAIN if in_place else kind)
            pos = within
            for view in views:
                content[pos:pos + len(view)] = view
                pos += len(view)
            self.host.pwrite(target, content)
        self.tables.set_entry(table, l2_index, target | COPIED)
        if not in_place:
            self._release(entry, kind)

    # ---- zeroing

    def _zero_range(self, what: str, offset: int, length: int) -> None:
        check_writable(self.path, self._read_only, what)
        check_request(self.path, self.size, offset, length)
        with self._lock:
            self._check_open()
            for cluster, within, count in self._pieces(offset, length):
                entry = self.tables.entry(cluster)
                kind = kind_of(entry)
                if count == self.cluster_size:
                    self._zero_cluster(cluster, entry, kind)
                elif not self._reads_zero(cluster * self.cluster_size + within, kind):
                    self._write_cluster(cluster, within, zero_views(count))
            self._trim_cache()

    def _reads_zero(self, offset: int, kind: int) -> bool:
        if kind in (ZERO_PLAIN, ZERO_ALLOC):
            return True
        return kind == UNALLOCATED and (self.backing is None or offset >= self.backing.size)

    def _zero_cluster(self, cluster: int, entry: int, kind: int) -> None:
        """Make a whole guest cluster read as zeros and release its host cluster."""
        if kind == ZERO_PLAIN or (kind == UNALLOCATED and self._reads_zero(cluster * self.cluster_size, kind)):
            return
        # Without a backing file an unallocated cluster reads as zeros; with one, it needs the zero flag.
        value = ZERO if self.backing is not None else 0
        l1_index, l2_index = divmod(cluster, self.tables.l2_entries)
        table = self._writable_l2(l1_index)
        self.tables.set_entry(table, l2_index, value)
        self._release(entry, kind)

    # ---- writing metadata back

    def _write_back(self, sync: bool) -> None:
        """Write every metadata change to the file, in the crash-safe order (module docstring)."""
        refcounts, tables, host = self.refcounts, self.tables, self.host
        barriers = 0

        def barrier() -> None:
            nonlocal barriers
            barriers += 1
            if sync:
                host.sync()

        if refcounts.dirty:
            refcounts.write_back(barrier)
            barrier()
            if refcounts.table_moved:
                host.pwrite(REFCOUNT_TABLE_FIELDS_OFFSET, refcounts.table_fields())
                barrier()
                refcounts.table_moved = False
        if tables.l2_dirty:
            tables.write_l2()
            barrier()
        if tables.l1_dirty:
            tables.write_l1()
            barrier()
        if refcounts.apply_frees():
            refcounts.write_back(barrier)
            barrier()
        if not barriers:
            barrier()          # in-place data writes

    def _trim_cache(self) -> None:
        if self.tables.cached_bytes() + self.refcounts.cached_bytes() <= self.cache_bytes:
            return
        if not self._read_only:
            self._write_back(sync=self.cache != "unsafe")
        self.tables.drop_clean()
        self.refcounts.drop_clean()

