"""A PCI function's configuration space: registers with write masks, BARs and capabilities."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

CONFIG_SIZE = 4096          # PCI Express extended configuration space
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_PROG = 0x08, 0x09
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
CAPABILITIES_POINTER = 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
STATUS_CAPABILITIES_LIST = 1 << 4
COMMAND_MEMORY = 1 << 1
COMMAND_BUS_MASTER = 1 << 2
BAR_MEM64 = 0x4

BarMoved = Callable[[int, int, int], None]   # (bar index, old address, new address)


class ConfigSpace:
    """Bytes the guest reads, and a mask of the bits it may change; BARs follow the sizing protocol."""

    def __init__(self, vendor: int, device: int, class_code: int, revision: int = 0,
                 subsystem_vendor: int = 0, subsystem: int = 0) -> None:
        self.data = bytearray(CONFIG_SIZE)
        self.writable = bytearray(CONFIG_SIZE)
        self._lock = threading.Lock()
        self._bars: dict[int, tuple[int, bool]] = {}   # index -> (size, 64-bit)
        self._last_cap: int | None = None
        self._next_cap = 0x40
        self.on_bar_moved: BarMoved | None = None
        self.on_written: Callable[[int, int], None] | None = None   # (offset, length), after each write
        struct.pack_into("<HH", self.data, VENDOR_ID, vendor, device)
        struct.pack_into("<I", self.data, REVISION, revision | (class_code << 8))
        struct.pack_into("<HH", self.data, SUBSYSTEM_VENDOR_ID, subsystem_vendor, subsystem)
        self._set_writable(COMMAND, 2, 0x0547)          # I/O, memory, bus master, parity, SERR, INTx disable
        self._set_writable(INTERRUPT_LINE, 1, 0xFF)

    def _set_writable(self, offset: int, size: int, mask: int) -> None:
        self.writable[offset : offset + size] = mask.to_bytes(size, "little")

    def u16(self, offset: int) -> int:
        return struct.unpack_from("<H", self.data, offset)[0]

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.data, offset)[0]

    # --- set-up (by the VMM) -------------------------------------------------
    def add_memory_bar(self, index: int, address: int, size: int, is_64bit: bool = False) -> None:
        if size & (size - 1) or size < 16:
            raise ValueError(f"BAR {index}: size {size:#x} is not a power of two >= 16")
        if address & (size - 1):
            raise ValueError(f"BAR {index}: address {address:#x} is not aligned to its size {size:#x}")
        self._bars[index] = (size, is_64bit)
        flags = BAR_MEM64 if is_64bit else 0
        struct.pack_into("<I", self.data, BAR0 + 4 * index, (address & 0xFFFFFFF0) | flags)
        self._set_writable(BAR0 + 4 * index, 4, ~(size - 1) & 0xFFFFFFF0)
        if is_64bit:
            struct.pack_into("<I", self.data, BAR0 + 4 * (index + 1), address >> 32)
            self._set_writable(BAR0 + 4 * (index + 1), 4, 0xFFFFFFFF)

    def bar_address(self, index: int) -> int:
        low = self.u32(BAR0 + 4 * index) & 0xFFFFFFF0
        size, is_64bit = self._bars[index]
        return low | (self.u32(BAR0 + 4 * (index + 1)) << 32 if is_64bit else 0)

    def add_capability(self, cap_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability (id, next, body); return its offset."""
        offset = self._next_cap
        length = (2 + len(body) + 3) & ~3
        if offset + length > 0x100:
            raise ValueError("capabilities do not fit in the 256-byte configuration header")
        self.data[offset] = cap_id
        self.data[offset + 2 : offset + 2 + len(body)] = body
        if writable:
            self.writable[offset + 2 : offset + 2 + len(writable)] = writable
        if self._last_cap is None:
            self.data[CAPABILITIES_POINTER] = offset
        else:
            self.data[self._last_cap + 1] = offset      # the previous capability's "next"
        self._last_cap = offset
        self._next_cap = offset + length
        struct.pack_into("<H", self.data, STATUS, self.u16(STATUS) | STATUS_CAPABILITIES_LIST)
        return offset

    # --- guest accesses --------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > CONFIG_SIZE:
            return b"\xff" * size
        with self._lock:
            return bytes(self.data[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > CONFIG_SIZE:
            return
        moved = []
        with self._lock:
            before = {i: self.bar_address(i) for i in self._bars}
            for i, byte in enumerate(data):
                mask = self.writable[offset + i]
                self.data[offset + i] = (self.data[offset + i] & ~mask) | (byte & mask)
            for index, old in before.items():
                new = self.bar_address(index)
                if new != old:
                    moved.append((index, old, new))
        if self.on_bar_moved:
            for index, old, new in moved:
                self.on_bar_moved(index, old, new)
        if self.on_written:
            self.on_written(offset, len(data))
