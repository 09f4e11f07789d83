"""PCI configuration space, BAR sizing and moves, the 0xCF8/ECAM decoders, and MSI-X."""

import struct

import pytest

from vmkit.devices.bus import Bus
from vmkit.devices.pci.config_space import ConfigSpace
from vmkit.devices.pci.msix import CONTROL_ENABLE, CONTROL_FUNCTION_MASK, MsixTable
from vmkit.devices.pci.root import HostBridge, PciConfigIo, PciConfigMmio, PciRoot


def u32(data: bytes) -> int:
    return struct.unpack("<I", data)[0]


def test_read_only_fields_ignore_writes_and_writable_ones_take_them():
    cfg = ConfigSpace(vendor=0x1AF4, device=0x1044, class_code=0xFF0000)
    cfg.write(0x00, b"\x00\x00\x00\x00")
    assert u32(cfg.read(0x00, 4)) == 0x10441AF4
    cfg.write(0x04, b"\x06\x00")
    assert cfg.read(0x04, 2) == b"\x06\x00"
    assert cfg.read(4095, 2) == b"\xff\xff"          # past the end: all ones


def test_bar_sizing_protocol_and_moves():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(0, 0xC0000000, 0x8000)
    moves = []
    cfg.on_bar_moved = lambda index, old, new: moves.append((index, old, new))
    cfg.write(0x10, b"\xff\xff\xff\xff")
    assert u32(cfg.read(0x10, 4)) == 0xFFFF8000     # size 32 KiB
    cfg.write(0x10, struct.pack("<I", 0xC1000000))
    assert cfg.bar_address(0) == 0xC1000000
    assert moves == [(0, 0xC0000000, 0xFFFF8000), (0, 0xFFFF8000, 0xC1000000)]
    with pytest.raises(ValueError, match="not a power of two"):
        cfg.add_memory_bar(1, 0xC0010000, 0x3000)


def test_capabilities_form_a_chain():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    first = cfg.add_capability(0x09, b"\x10" + bytes(13))
    second = cfg.add_capability(0x11, bytes(10))
    assert cfg.read(0x06, 2)[0] & 0x10
    assert cfg.read(0x34, 1)[0] == first and cfg.read(first + 1, 1)[0] == second
    assert cfg.read(second, 2) == b"\x11\x00"


def test_config_mechanism_one_and_ecam_reach_the_same_function():
    root = PciRoot()
    root.add(HostBridge(), slot=0)
    io, ecam = PciConfigIo(root), PciConfigMmio(root)
    io.write(0, struct.pack("<I", 0x80000000))     # bus 0, device 0, function 0, register 0
    assert u32(io.read(4, 4)) == 0x0D578086
    assert io.read(6, 2) == b"\x57\x0d"             # data port + 2: upper half of the register
    assert u32(ecam.read(0, 4)) == 0x0D578086
    io.write(0, struct.pack("<I", 0x80000800))     # device 1: nothing there
    assert io.read(4, 4) == b"\xff\xff\xff\xff"
    assert ecam.read(1 << 15, 4) == b"\xff\xff\xff\xff"
    io.write(0, struct.pack("<I", 0x00000000))     # enable bit clear: no access
    assert io.read(4, 4) == b"\xff\xff\xff\xff"


def test_slots_are_not_shared():
    root = PciRoot()
    root.add(HostBridge(), slot=0)
    with pytest.raises(ValueError, match="slot 0 holds pci-host-bridge"):
        root.add(HostBridge(), slot=0)


def test_bus_remove_then_insert_moves_a_range():
    bus = Bus("mmio")
    bar = HostBridge()
    bar.read = lambda offset, size: b"\0" * size  # type: ignore[attr-defined]
    bar.write = lambda offset, data: None  # type: ignore[attr-defined]
    bus.insert(bar, 0x1000, 0x100)
    bus.remove(bar, 0x1000)
    bus.insert(bar, 0x2000, 0x100)
    assert bus.find(0x1000) is None and bus.find(0x2050).device is bar


def test_msix_masking_keeps_vectors_pending_until_unmasked():
    control = [0]
    sent = []
    table = MsixTable(2, lambda: control[0], lambda address, data: sent.append((address, data)))
    table.write_table(0, struct.pack("<II", 0xFEE00000, 0))             # entry 0: address (a qword)
    table.write_table(8, struct.pack("<II", 0x41, 1))                   # data, vector control: masked
    assert table.notify(0) and sent == []                                 # MSI-X disabled
    control[0] = CONTROL_ENABLE | CONTROL_FUNCTION_MASK
    table.notify(0)
    assert sent == [] and table.read_pba(0, 8)[0] & 1
    control[0] = CONTROL_ENABLE
    table.write_table(12, struct.pack("<I", 0))                           # unmask entry 0
    assert sent == [(0xFEE00000, 0x41)] and not table.read_pba(0, 8)[0] & 1
    assert not table.notify(5)                                            # no such vector
