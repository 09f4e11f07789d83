"""The guest's physical memory map (e820 / PVH memmap entries)."""

from __future__ import annotations

from typing import NamedTuple

from vmkit.arch.x86.layout import (
    ACPI_ADDR,
    E820_RAM,
    E820_RESERVED,
    EBDA_START,
    HIGH_MEMORY_START,
    PCI_ECAM_ADDR,
    PCI_ECAM_SIZE,
)
from vmkit.memory import GuestMemory


class E820Entry(NamedTuple):
    address: int
    size: int
    type: int


def memory_map(memory: GuestMemory) -> list[E820Entry]:
    """RAM below the EBDA; the EBDA and the ACPI area reserved; RAM from 1 MiB and above 4 GiB;
    PCI's ECAM window reserved (Linux uses ECAM only where the firmware reserves it)."""
    entries: list[E820Entry] = []
    for region in memory.regions:
        start, end = int(region.start), region.end
        if start == 0:
            entries.append(E820Entry(0, EBDA_START, E820_RAM))
            entries.append(E820Entry(EBDA_START, 0xA0000 - EBDA_START, E820_RESERVED))
            entries.append(E820Entry(ACPI_ADDR, HIGH_MEMORY_START - ACPI_ADDR, E820_RESERVED))
            if end > HIGH_MEMORY_START:
                entries.append(E820Entry(HIGH_MEMORY_START, end - HIGH_MEMORY_START, E820_RAM))
        else:
            entries.append(E820Entry(start, end - start, E820_RAM))
    entries.append(E820Entry(PCI_ECAM_ADDR, PCI_ECAM_SIZE, E820_RESERVED))
    return sorted(entries)
