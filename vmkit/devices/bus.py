"""Port-I/O and MMIO address maps.

A Bus owns sorted, non-overlapping ranges. Devices see offsets into their
range, never absolute addresses. An access nobody claims reads as all ones and
writes are dropped, as on a real bus.
"""

from __future__ import annotations

import bisect
import threading
from typing import NamedTuple, Protocol


class BusDevice(Protocol):
    """What a bus needs of a device: a label for messages, and offset-based accesses."""

    label: str

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


class Bus:
    """An address map from ranges to devices (one for PIO, one for MMIO)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: list[int] = []
        self._ranges: list[BusRange] = []
        self._lock = threading.Lock()

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Claim [base, base+length) for `device`; reject empty and overlapping ranges."""
        if length <= 0:
            raise BusError(f"{self.name} bus: {device.label} asks for an empty range at {base:#x}")
        new = BusRange(base, length, device)
        with self._lock:
            i = bisect.bisect_left(self._bases, base)
            for neighbour in self._ranges[max(i - 1, 0) : i + 1]:
                if neighbour.base < new.end and base < neighbour.end:
                    raise BusError(
                        f"{self.name} bus: {new.describe()} overlaps {neighbour.describe()}"
                    )
            self._bases.insert(i, base)
            self._ranges.insert(i, new)

    def remove(self, device: BusDevice, base: int) -> None:
        """Release the range `device` holds at `base` (a PCI BAR being moved)."""
        with self._lock:
            i = bisect.bisect_left(self._bases, base)
            if i == len(self._bases) or self._bases[i] != base or self._ranges[i].device is not device:
                raise BusError(f"{self.name} bus: {device.label} holds no range at {base:#x}")
            del self._bases[i], self._ranges[i]

    def find(self, address: int) -> BusRange | None:
        i = bisect.bisect_right(self._bases, address) - 1
        if i >= 0:
            found = self._ranges[i]
            if address < found.end:
                return found
        return None

    def read(self, address: int, size: int) -> bytes:
        found = self.find(address)
        if found is None:
            return b"\xff" * size
        return found.device.read(address - found.base, size)

    def write(self, address: int, data: bytes) -> bool:
        """Deliver a write; False when no device claims the address."""
        found = self.find(address)
        if found is None:
            return False
        found.device.write(address - found.base, data)
        return True

    def ranges(self) -> list[BusRange]:
        return list(self._ranges)
