"""The PCI root complex: functions on bus 0, reached through 0xCF8/0xCFC or ECAM (MMIO)."""

from __future__ import annotations

import threading
from typing import Protocol

from vmkit.devices.bus import Access
from vmkit.devices.pci.config_space import ConfigSpace

CONFIG_ADDRESS_PORT = 0xCF8   # 0xCF8..0xCFB: address, 0xCFC..0xCFF: data
MAX_DEVICES = 32


class PciFunction(Protocol):
    label: str
    config: ConfigSpace


class PciRoot:
    """Bus 0 with up to 32 single-function devices; slot 0 is the host bridge."""

    def __init__(self) -> None:
        self.functions: dict[int, PciFunction] = {}

    def add(self, function: PciFunction, slot: int | None = None) -> int:
        if slot is None:
            slot = next((s for s in range(MAX_DEVICES) if s not in self.functions), None)
            if slot is None:
                raise ValueError("PCI bus 0 is full (32 devices)")
        if not 0 <= slot < MAX_DEVICES:
            raise ValueError(f"PCI slot {slot} does not exist on bus 0 (slots 0..{MAX_DEVICES - 1})")
        if slot in self.functions:
            raise ValueError(f"PCI slot {slot} holds {self.functions[slot].label} already")
        self.functions[slot] = function
        return slot

    def config_read(self, bus: int, slot: int, function: int, offset: int, size: int) -> bytes:
        target = self.functions.get(slot) if bus == 0 and function == 0 else None
        if target is None:
            return b"\xff" * size          # no device: all ones, as on real hardware
        return target.config.read(offset, size)

    def config_write(self, bus: int, slot: int, function: int, offset: int, data: bytes) -> None:
        target = self.functions.get(slot) if bus == 0 and function == 0 else None
        if target is not None:
            target.config.write(offset, data)


class PciConfigIo:
    """Configuration mechanism #1: the address register at 0xCF8 and data at 0xCFC (PIO bus).

    As on PC chipsets, only a 4-byte access to 0xCF8 reaches the address register (narrower ones
    read as all ones and are dropped); the data window takes 1-, 2- and 4-byte accesses that stay
    inside its 4 bytes.
    """

    label = "pci-config-io"
    access = Access(frozenset({1, 2, 4}))
    DATA = 4

    def __init__(self, root: PciRoot) -> None:
        self._root = root
        self._address = 0
        self._lock = threading.Lock()

    def _target(self, data_offset: int) -> tuple[int, int, int, int] | None:
        address = self._address
        if not address & 0x80000000:
            return None
        bus, slot, function = (address >> 16) & 0xFF, (address >> 11) & 0x1F, (address >> 8) & 0x7
        return bus, slot, function, (address & 0xFC) + data_offset

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if offset < self.DATA:
                if offset == 0 and size == 4:
                    return self._address.to_bytes(4, "little")
                return b"\xff" * size
            target = self._target(offset - self.DATA) if offset + size <= self.DATA + 4 else None
        if target is None:
            return b"\xff" * size
        return self._root.config_read(*target, size)

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if offset < self.DATA:
                if offset == 0 and len(data) == 4:
                    self._address = int.from_bytes(data, "little") & 0x80FFFFFC
                return
            target = self._target(offset - self.DATA) if offset + len(data) <= self.DATA + 4 else None
        if target is not None:
            self._root.config_write(*target, data)


class PciConfigMmio:
    """ECAM: bus 0's configuration space mapped as 1 MiB of MMIO (offset = dev << 15 | fn << 12 | reg).

    Configuration requests are naturally aligned 1-, 2- or 4-byte accesses; others read as all ones.
    """

    label = "pci-ecam"
    access = Access(frozenset({1, 2, 4}), aligned=True)

    def __init__(self, root: PciRoot) -> None:
        self._root = root

    @staticmethod
    def _split(offset: int) -> tuple[int, int, int, int]:
        return offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 0x7, offset & 0xFFF

    def read(self, offset: int, size: int) -> bytes:
        return self._root.config_read(*self._split(offset), size)

    def write(self, offset: int, data: bytes) -> None:
        self._root.config_write(*self._split(offset), data)


class HostBridge:
    """00:00.0, the host bridge: present so guests find a PCI hierarchy."""

    label = "pci-host-bridge"

    def __init__(self) -> None:
        self.config = ConfigSpace(vendor=0x8086, device=0x0D57, class_code=0x060000)
