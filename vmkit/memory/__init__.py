"""Guest physical memory: addresses, memfd-backed regions, bounds-checked access."""

from vmkit.memory.address import GuestAddress
from vmkit.memory.guest_memory import GuestMemory, GuestMemoryError, MemoryRegion, ram_layout

__all__ = ["GuestAddress", "GuestMemory", "GuestMemoryError", "MemoryRegion", "ram_layout"]
