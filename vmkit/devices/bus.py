"""Port-I/O and MMIO address maps, and the one place where a guest access is checked.

A Bus owns sorted, non-overlapping ranges. Devices see offsets into their range, never absolute
addresses. Each device declares the accesses it decodes (its `Access`): the widths it accepts,
whether they must be naturally aligned, and whether it is a byte-wide ISA device. The bus hands a
device only accesses that lie wholly inside its range and match its declaration. Anything else gets
what real hardware gives: the ISA bus splits a wide access to a byte-wide device into byte
accesses (each going to whatever owns that port); any other access reads as all ones and its write
is dropped. An access nobody claims reads as all ones too.

Look-ups take no lock: the map is an immutable snapshot replaced whole by insert and remove, so a
vCPU looking up an address while another thread moves a PCI BAR sees the map before or after the
move, never a half-updated one.
"""

from __future__ import annotations

import bisect
import threading
from typing import NamedTuple, Protocol


class Access(NamedTuple):
    """The accesses a device decodes."""

    widths: frozenset[int]
    aligned: bool = False      # offset must be a multiple of the width
    byte_wide: bool = False    # an 8-bit ISA device: a wider access is split into byte accesses


BYTE_WIDE = Access(frozenset({1}), byte_wide=True)


class BusDevice(Protocol):
    """What a bus needs of a device: a label for messages, its Access, and offset-based accesses.

    read must return exactly `size` bytes. Neither method may raise for any access its Access
    admits: whatever the guest does, the device answers as hardware would.
    """

    label: str
    access: Access

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class BusError(ValueError):
    """A range could not be added to a bus."""


class BusRange(NamedTuple):
    base: int
    length: int
    device: BusDevice

    @property
    def end(self) -> int:
        return self.base + self.length

    def describe(self) -> str:
        return f"{self.device.label} at [{self.base:#x}, {self.end:#x})"

    def admits(self, offset: int, size: int) -> bool:
        """Whether the device decodes an access of `size` bytes at `offset` of this range."""
        access = self.device.access
        return (size in access.widths and offset + size <= self.length
                and not (access.aligned and offset % size))


class _Map(NamedTuple):
    bases: tuple[int, ...]
    ranges: tuple[BusRange, ...]


class Bus:
    """An address map from ranges to devices (one for PIO, one for MMIO)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._map = _Map((), ())
        self._lock = threading.Lock()      # serialises writers; readers use the snapshot

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Claim [base, base+length) for `device`; reject empty and overlapping ranges."""
        if length <= 0:
            raise BusError(f"{self.name} bus: {device.label} asks for an empty range at {base:#x}")
        new = BusRange(base, length, device)
        with self._lock:
            bases, ranges = self._map
            i = bisect.bisect_left(bases, base)
            for neighbour in ranges[max(i - 1, 0) : i + 1]:
                if neighbour.base < new.end and base < neighbour.end:
                    raise BusError(
                        f"{self.name} bus: {new.describe()} overlaps {neighbour.describe()}"
                    )
            self._map = _Map(bases[:i] + (base,) + bases[i:], ranges[:i] + (new,) + ranges[i:])

    def remove(self, device: BusDevice, base: int) -> None:
        """Release the range `device` holds at `base` (a PCI BAR being moved)."""
        with self._lock:
            bases, ranges = self._map
            i = bisect.bisect_left(bases, base)
            if i == len(bases) or bases[i] != base or ranges[i].device is not device:
                raise BusError(f"{self.name} bus: {device.label} holds no range at {base:#x}")
            self._map = _Map(bases[:i] + bases[i + 1 :], ranges[:i] + ranges[i + 1 :])

    def move(self, device: BusDevice, old: int, new: int, length: int) -> bool:
        """Move `device`'s range from `old` to `new` in one step; False (and the device unmapped)
        when the new range would overlap another device. A device not mapped at `old` (an earlier
        move collided) is just placed at `new`."""
        try:
            self.remove(device, old)
        except BusError:
            pass
        try:
            self.insert(device, new, length)
        except BusError:
            return False
        return True

    def find(self, address: int) -> BusRange | None:
        bases, ranges = self._map
        i = bisect.bisect_right(bases, address) - 1
        if i >= 0:
            found = ranges[i]
            if address < found.end:
                return found
        return None

    def read(self, address: int, size: int) -> bytes:
        found = self.find(address)
        if found is None:
            return b"\xff" * size
        offset = address - found.base
        if found.admits(offset, size):
            return found.device.read(offset, size)
        if found.device.access.byte_wide and size > 1:
            return b"".join(self.read(address + i, 1) for i in range(size))
        return b"\xff" * size

    def write(self, address: int, data: bytes) -> bool:
        """Deliver a write; False when no device takes it."""
        found = self.find(address)
        if found is None:
            return False
        offset = address - found.base
        if found.admits(offset, len(data)):
            found.device.write(offset, data)
            return True
        if found.device.access.byte_wide and len(data) > 1:
            taken = [self.write(address + i, data[i : i + 1]) for i in range(len(data))]
            return any(taken)
        return False

    def ranges(self) -> list[BusRange]:
        return list(self._map.ranges)
