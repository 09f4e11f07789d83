"""GuestMemory: one object over the memfd-backed mmap regions of a VM.

Every access is checked against the regions: an access that is not wholly
inside one region raises GuestMemoryError and touches nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from typing import NamedTuple

from vmkit.memory.address import GuestAddress

MIB = 1 << 20
GIB = 1 << 30
MMIO_HOLE_START = 3 * GIB  # 32-bit MMIO (LAPIC, IOAPIC, device windows) lives in [3 GiB, 4 GiB)
MMIO_HOLE_END = 4 * GIB


class GuestMemoryError(Exception):
    """A guest-physical access fell outside guest RAM."""

    def __init__(self, address: int, length: int, reason: str = "not inside guest RAM") -> None:
        self.address = address
        self.length = length
        super().__init__(f"guest access [{address:#x}, +{length:#x}) is {reason}")


class MemoryRegion(NamedTuple):
    """One contiguous guest-physical range backed by a shared mmap."""

    start: GuestAddress
    size: int
    mapping: mmap.mmap
    host_address: int

    @property
    def end(self) -> int:
        return int(self.start) + self.size


def ram_layout(size: int) -> list[tuple[GuestAddress, int]]:
    """Split `size` bytes of RAM around the 32-bit MMIO hole below 4 GiB."""
    if size <= 0:
        raise ValueError("memory size must be positive")
    low = min(size, MMIO_HOLE_START)
    ranges = [(GuestAddress(0), low)]
    if size > low:
        ranges.append((GuestAddress(MMIO_HOLE_END), size - low))
    return ranges


class GuestMemory:
    """Guest RAM as memfd-backed regions, with bounds-checked read/write/view."""

    def __init__(self, regions: list[MemoryRegion], memfd: int) -> None:
        self.regions = sorted(regions, key=lambda r: int(r.start))
        self.memfd = memfd
        self._views = [memoryview(r.mapping) for r in self.regions]
        # (start, end, whole view) per region as plain ints: the hot path of every device access
        self._spans = tuple((int(r.start), r.end, view) for r, view in zip(self.regions, self._views, strict=True))

    @classmethod
    def create(cls, size: int, name: str = "vmkit-guest-ram") -> GuestMemory:
        """Allocate `size` bytes of zeroed guest RAM in one memfd, mapped region by region."""
        layout = ram_layout(size)
        memfd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, size)
            regions = []
            offset = 0
            for start, length in layout:
                mapping = mmap.mmap(memfd, length, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
                host = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
                regions.append(MemoryRegion(start, length, mapping, host))
                offset += length
        except BaseException:
            os.close(memfd)
            raise
        return cls(regions, memfd)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def _locate(self, address: int, length: int) -> tuple[int, int]:
        """(region index, offset in region) for an access wholly inside one region."""
        if length < 0 or address < 0:
            raise GuestMemoryError(address, length, "malformed")
        for i, region in enumerate(self.regions):
            start = int(region.start)
            if start <= address < region.end:
                if address + length > region.end:
                    raise GuestMemoryError(address, length, "crossing the end of guest RAM")
                return i, address - start
        raise GuestMemoryError(address, length)

    def contains(self, address: int, length: int = 1) -> bool:
        for start, end, _ in self._spans:
            if start <= address < end:
                return 0 <= length <= end - address
        return False

    def view(self, address: int, length: int) -> memoryview:
        """A writable memoryview of guest RAM (zero-copy); bounds-checked."""
        for start, end, whole in self._spans:
            if start <= address < end and 0 <= length <= end - address:
                return whole[address - start : address - start + length]
        self._locate(address, length)           # raises the error that says what is wrong
        raise AssertionError("unreachable: _locate accepted what view refused")

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.view(address, length))

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        self.view(address, len(data))[:] = data

    def zero(self, address: int, length: int) -> None:
        """Make [address, address + length) read as zeros. Whole pages are handed back to the memfd
        (MADV_REMOVE) instead of written, so zeroing fresh RAM (a kernel's BSS) allocates nothing."""
        view = self.view(address, length)       # bounds-checked before anything changes
        index, offset = self._locate(address, length) if length else (0, 0)
        first = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (offset + length) // mmap.PAGESIZE * mmap.PAGESIZE
        if first >= last:
            view[:] = bytes(length)
            return
        view[: first - offset] = bytes(first - offset)
        self.regions[index].mapping.madvise(mmap.MADV_REMOVE, first, last - first)
        view[last - offset :] = bytes(offset + length - last)

    def read_u32(self, address: int) -> int:
        return struct.unpack_from("<I", self.view(address, 4))[0]

    def write_u64(self, address: int, value: int) -> None:
        struct.pack_into("<Q", self.view(address, 8), 0, value)

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        self._spans = ()
        for region in self.regions:
            try:
                region.mapping.close()
            except BufferError:
                pass  # a ctypes export keeps it alive until the process ends
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1
