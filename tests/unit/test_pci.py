"""PCI configuration space, BAR sizing and moves, the 0xCF8/ECAM decoders, and MSI-X."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.devices.bus import Bus
from vmkit.devices.pci.config_space import ConfigSpace
from vmkit.devices.pci.msix import MsixTable
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
    control[0] = 1 << 15 | 1 << 14                                     # enabled, function masked
    table.notify(0)
    assert sent == [] and table.read_pba(0, 8)[0] & 1
    control[0] = 1 << 15
    table.write_table(12, struct.pack("<I", 0))                           # unmask entry 0
    assert sent == [(0xFEE00000, 0x41)] and not table.read_pba(0, 8)[0] & 1
    assert not table.notify(5)                                            # no such vector


# --- configuration header: offsets from the PCI Local Bus Specification 3.0, section 6.1 -------------

def test_the_type_0_header_holds_what_the_function_was_made_with():
    cfg = ConfigSpace(vendor=0x1234, device=0x5678, class_code=0x0C0330, revision=0x42,
                      subsystem_vendor=0xABCD, subsystem=0xEF01)
    assert cfg.read(0x00, 4) == bytes([0x34, 0x12, 0x78, 0x56])
    assert cfg.read(0x08, 4) == bytes([0x42, 0x30, 0x03, 0x0C])      # revision, prog-if, subclass, class
    assert cfg.read(0x2C, 4) == bytes([0xCD, 0xAB, 0x01, 0xEF])
    assert cfg.read(0x0E, 1) == b"\0"                                 # header type 0, one function
    assert cfg.read(0x34, 1) == b"\0" and cfg.read(0x06, 2) == b"\0\0"  # no capabilities yet
    assert (cfg.u16(0x02), cfg.u32(0x08)) == (0x5678, 0x0C033042)
    plain = ConfigSpace(vendor=0xFFFE, device=0x8001, class_code=0xFF0000)
    assert plain.read(0x08, 1) == b"\0" and plain.read(0x2C, 4) == b"\0\0\0\0"
    assert plain.u16(0x00) == 0xFFFE and plain.u16(0x02) == 0x8001     # unsigned


def test_command_and_interrupt_line_are_the_only_writable_header_bits():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.write(0x04, b"\xff\xff\xff\xff")
    # I/O, memory, bus master, parity error response, SERR#, interrupt disable; status is not writable
    assert cfg.read(0x04, 4) == bytes([0x47, 0x05, 0x00, 0x00])
    cfg.write(0x3C, b"\xff\xff")
    assert cfg.read(0x3C, 2) == b"\xff\x00"                           # the line, not the pin
    cfg.write(0x00, b"\xff" * 0x40)
    assert cfg.read(0x00, 4) == bytes([1, 0, 2, 0])


def test_accesses_past_the_4_kib_of_configuration_space():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    written = []
    cfg.on_written = lambda offset, length: written.append((offset, length))
    assert cfg.read(4094, 2) == b"\0\0" and cfg.read(4095, 1) == b"\0"
    assert cfg.read(4095, 2) == b"\xff\xff" and cfg.read(-1, 1) == b"\xff"
    cfg.write(4092, b"\0\0\0\0")                                      # the last dword: a write
    cfg.write(0, b"\0")
    cfg.write(4095, b"\0\0")                                          # past the end: no write at all
    cfg.write(-1, b"\0")
    assert written == [(4092, 4), (0, 1)]


def test_memory_bars_are_size_aligned_powers_of_two_of_at_least_16_bytes():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(1, 0xC0000010, 16)                             # the smallest memory BAR
    assert cfg.read(0x14, 4) == bytes([0x10, 0x00, 0x00, 0xC0])       # BAR 1, 32-bit memory
    assert cfg.bar_address(1) == 0xC0000010
    for size in (8, 0x3000, 0x18):
        with pytest.raises(ValueError, match=rf"^BAR 2: size {size:#x} is not a power of two >= 16$"):
            cfg.add_memory_bar(2, 0xC0000000, size)
    for address in (0xC0000010, 0xC0000001, 0xC0000008):
        with pytest.raises(ValueError, match=rf"^BAR 2: address {address:#x} is not aligned to its size 0x20$"):
            cfg.add_memory_bar(2, address, 0x20)
    cfg.add_memory_bar(2, 0xC0000020, 0x20)
    assert cfg.read(0x18, 4) == bytes([0x20, 0x00, 0x00, 0xC0]) and cfg.read(0x10, 4) == b"\0\0\0\0"


def test_a_64_bit_bar_spans_two_registers_and_sizes_as_one():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(2, 0x12_C000_0000, 0x8000, is_64bit=True)
    assert cfg.read(0x18, 4) == bytes([0x04, 0x00, 0x00, 0xC0])       # type 10b: 64-bit memory
    assert cfg.read(0x1C, 4) == bytes([0x12, 0x00, 0x00, 0x00])
    assert cfg.bar_address(2) == 0x12_C000_0000
    moves = []
    cfg.on_bar_moved = lambda index, old, new: moves.append((index, old, new))
    cfg.write(0x18, b"\xff\xff\xff\xff")
    cfg.write(0x1C, b"\xff\xff\xff\xff")
    assert cfg.read(0x18, 8) == bytes([0x04, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
    assert moves == [(2, 0x12_C000_0000, 0x12_FFFF_8000), (2, 0x12_FFFF_8000, 0xFFFF_FFFF_FFFF_8000)]
    cfg.write(0x18, struct.pack("<II", 0xE0000000, 0x1))
    assert cfg.bar_address(2) == 0x1_E000_0000


def test_a_32_bit_bar_ignores_the_next_register():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(0, 0xC0000000, 0x1000)
    cfg.write(0x14, b"\xff\xff\xff\xff")
    assert cfg.bar_address(0) == 0xC0000000 and cfg.read(0x14, 4) == b"\0\0\0\0"
    cfg.write(0x10, b"\x0f\x10\x00\xc0")                              # the flag bits are read-only
    assert cfg.read(0x10, 4) == bytes([0x00, 0x10, 0x00, 0xC0]) and cfg.bar_address(0) == 0xC0001000


def test_capabilities_are_dword_aligned_with_a_writable_mask_and_must_fit_the_header():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    first = cfg.add_capability(0x05, b"\xaa")                         # 3 bytes, padded to 4
    second = cfg.add_capability(0x11, b"\x01\x02\x03\x04", writable=b"\x00\xf0")
    assert (first, second) == (0x40, 0x44)
    assert cfg.read(0x40, 4) == bytes([0x05, 0x44, 0xAA, 0x00])      # id, next, body
    assert cfg.read(0x44, 6) == bytes([0x11, 0x00, 1, 2, 3, 4])      # the last one: next = 0
    cfg.write(0x44, b"\xff" * 8)
    assert cfg.read(0x44, 6) == bytes([0x11, 0x00, 1, 0xF2, 3, 4])    # only the masked bits changed
    third = cfg.add_capability(0x09, bytes(0xB2))                     # ends exactly at 0x100
    assert third == 0x4C and cfg.read(0x45, 1) == b"\x4c"
    with pytest.raises(ValueError, match="^capabilities do not fit in the 256-byte configuration header$"):
        cfg.add_capability(0x09, b"")
    assert cfg.read(0x06, 2) == b"\x10\x00"                           # status: capabilities list


# --- the root complex ------------------------------------------------------------------------

class Function:
    def __init__(self, label, vendor=0x1AF4, device=0x1044):
        self.label = label
        self.config = ConfigSpace(vendor=vendor, device=device, class_code=0xFF0000)


def test_functions_fill_the_lowest_free_slot_of_the_32():
    root = PciRoot()
    assert root.add(Function("a")) == 0
    assert root.add(Function("b"), slot=2) == 2
    assert root.add(Function("c")) == 1 and root.add(Function("d")) == 3
    assert root.add(Function("last"), slot=31) == 31
    for slot in (-1, 32):
        with pytest.raises(ValueError, match=rf"^PCI slot {slot} does not exist on bus 0 \(slots 0\.\.31\)$"):
            root.add(Function("x"), slot=slot)
    for _ in range(4, 31):
        root.add(Function("filler"))
    with pytest.raises(ValueError, match=r"^PCI bus 0 is full \(32 devices\)$"):
        root.add(Function("one too many"))


def test_only_bus_0_function_0_of_a_populated_slot_answers():
    root = PciRoot()
    dev = Function("dev")
    root.add(dev, slot=3)
    assert root.config_read(0, 3, 0, 0, 2) == b"\xf4\x1a"
    assert root.config_read(1, 3, 0, 0, 2) == b"\xff\xff"
    assert root.config_read(0, 3, 1, 0, 2) == b"\xff\xff"
    assert root.config_read(0, 4, 0, 0, 4) == b"\xff" * 4
    root.config_write(0, 3, 0, 0x3C, b"\x0b")
    root.config_write(1, 3, 0, 0x3C, b"\x0c")
    root.config_write(0, 3, 1, 0x3C, b"\x0d")
    root.config_write(0, 4, 0, 0x3C, b"\x0e")
    assert dev.config.read(0x3C, 1) == b"\x0b"


def config_address(bus, device, function, register):
    """Configuration mechanism #1 (PCI 3.0, 3.2.2.3.2): enable bit 31, bus 23:16, device 15:11,
    function 10:8, register 7:2."""
    return (1 << 31) | bus << 16 | device << 11 | function << 8 | register


@pytest.fixture
def pio():
    root = PciRoot()
    target = Function("target", vendor=0x8086, device=0x1237)
    root.add(HostBridge(), slot=0)
    root.add(target, slot=5)
    bus = Bus("pio")
    bus.insert(PciConfigIo(root), 0xCF8, 8)
    return bus, target


def test_0xcf8_takes_only_dword_accesses_and_keeps_its_defined_bits(pio):
    bus, _ = pio
    assert bus.read(0xCF8, 4) == b"\0\0\0\0"
    assert bus.read(0xCFC, 4) == b"\xff" * 4                          # enable bit clear
    bus.write(0xCF8, b"\xff\xff\xff\xff")
    assert bus.read(0xCF8, 4) == struct.pack("<I", 0x80FFFFFC)        # reserved 30:24 and 1:0 read 0
    bus.write(0xCF8, b"\x00\x00")                                     # a word: not the address register
    bus.write(0xCFA, b"\x00")
    assert bus.read(0xCF8, 4) == struct.pack("<I", 0x80FFFFFC)
    assert bus.read(0xCF8, 2) == b"\xff\xff" and bus.read(0xCF9, 1) == b"\xff"
    assert bus.read(0xCFB, 2) == b"\xff\xff"                          # straddling into the data port


@pytest.mark.parametrize("address,expected", [
    (config_address(0, 5, 0, 0x00), struct.pack("<HH", 0x8086, 0x1237)),
    (config_address(0, 5, 0, 0x08), struct.pack("<I", 0xFF000000)),
    (config_address(0, 0, 0, 0x00), struct.pack("<HH", 0x8086, 0x0D57)),
    (config_address(1, 5, 0, 0x00), b"\xff" * 4),                    # bus 1
    (config_address(0, 5, 1, 0x00), b"\xff" * 4),                    # function 1
    (config_address(0, 5, 4, 0x00), b"\xff" * 4),                    # function 4
    (config_address(0, 6, 0, 0x00), b"\xff" * 4),                    # an empty slot
    (config_address(0, 5, 0, 0x00) | 0x3, struct.pack("<HH", 0x8086, 0x1237)),   # bits 1:0 ignored
    (config_address(0, 5, 0, 0x00) & ~(1 << 31), b"\xff" * 4),
])
def test_0xcfc_reaches_the_function_the_address_register_names(pio, address, expected):
    bus, _ = pio
    bus.write(0xCF8, struct.pack("<I", address))
    assert bus.read(0xCFC, 4) == expected


def test_0xcfc_byte_and_word_accesses_reach_the_register_bytes(pio):
    bus, target = pio
    bus.write(0xCF8, struct.pack("<I", config_address(0, 5, 0, 0x3C)))
    bus.write(0xCFC, b"\x0a")
    assert target.config.read(0x3C, 1) == b"\x0a"
    bus.write(0xCF8, struct.pack("<I", config_address(0, 5, 0, 0x04)))
    bus.write(0xCFC, b"\x06\x00")
    assert bus.read(0xCFC, 2) == b"\x06\x00" and bus.read(0xCFD, 1) == b"\x00"
    bus.write(0xCF8, struct.pack("<I", config_address(0, 5, 0, 0x00)))
    assert bus.read(0xCFE, 2) == b"\x37\x12" and bus.read(0xCFF, 1) == b"\x12"
    bus.write(0xCF8, struct.pack("<I", config_address(0, 5, 0, 0x00) & ~(1 << 31)))
    bus.write(0xCFC, b"\x55")                                         # disabled: dropped
    bus.write(0xCF8, struct.pack("<I", config_address(0, 5, 0, 0x3C)))
    assert bus.read(0xCFC, 1) == b"\x0a"


def test_ecam_decodes_bus_device_function_and_register():
    root = PciRoot()
    target = Function("target", vendor=0x8086, device=0x1237)
    root.add(target, slot=5)
    ecam = PciConfigMmio(root)
    base = 5 << 15                                                    # bus 0, device 5, function 0
    assert ecam.read(base, 4) == struct.pack("<HH", 0x8086, 0x1237)
    assert ecam.read(base + 0x102, 2) == b"\0\0"                      # extended space: present
    assert ecam.read(base | 1 << 12, 4) == b"\xff" * 4                # function 1
    assert ecam.read(base | 1 << 20, 4) == b"\xff" * 4                # bus 1
    assert ecam.read(6 << 15, 4) == b"\xff" * 4
    ecam.write(base + 0x3C, b"\x07")
    ecam.write((base | 1 << 12) + 0x3C, b"\x08")
    assert target.config.read(0x3C, 1) == b"\x07"
    assert PciConfigIo.label == "pci-config-io" and ecam.label == "pci-ecam"


# --- MSI-X: PCI 3.0 section 6.8.2 ------------------------------------------------------------------
ENABLE, FUNCTION_MASK = 1 << 15, 1 << 14       # message control bits 15 and 14
MASKED = 1                                     # vector control bit 0


def msix(vectors=2):
    control = [0]
    sent = []
    table = MsixTable(vectors, lambda: control[0], lambda address, data: sent.append((address, data)))
    return table, control, sent


def program(table, vector, address, data, masked):
    """Message address (low, high), message data, vector control: four dwords per 16-byte entry."""
    entry = 16 * vector
    table.write_table(entry, struct.pack("<I", address & 0xFFFFFFFF))
    table.write_table(entry + 4, struct.pack("<I", address >> 32))
    table.write_table(entry + 8, struct.pack("<I", data))
    table.write_table(entry + 12, struct.pack("<I", MASKED if masked else 0))


def test_msix_entries_start_masked_and_zeroed():
    table, _, _ = msix(3)
    for vector in range(3):
        assert table.read_table(16 * vector, 8) == bytes(8)
        assert table.read_table(16 * vector + 8, 8) == struct.pack("<II", 0, 1)
    assert table.read_pba(0, 8) == bytes(8)


@pytest.mark.parametrize("enable", [False, True])
@pytest.mark.parametrize("function_mask", [False, True])
@pytest.mark.parametrize("vector_mask", [False, True])
def test_msix_delivers_only_when_enabled_and_neither_mask_is_set(enable, function_mask, vector_mask):
    table, control, sent = msix()
    control[0] = (ENABLE if enable else 0) | (FUNCTION_MASK if function_mask else 0) | 0x0001
    program(table, 1, 0x1_FEE0_1000, 0x4041, vector_mask)
    assert table.notify(1) is True
    delivered = enable and not function_mask and not vector_mask
    assert sent == ([(0x1_FEE0_1000, 0x4041)] if delivered else [])
    assert table.read_pba(0, 8) == struct.pack("<Q", 0 if delivered else 0b10)


def test_a_pending_vector_is_sent_once_when_its_masks_clear():
    table, control, sent = msix()
    program(table, 0, 0xFEE00000, 0x31, masked=True)
    control[0] = ENABLE
    table.notify(0)
    table.notify(0)                                 # still one pending message
    assert sent == [] and table.read_pba(0, 4) == b"\x01\0\0\0"
    table.write_table(0, struct.pack("<I", 0xFEE01000))                   # masked: nothing yet
    assert sent == []
    table.write_table(12, struct.pack("<I", 0))                           # unmask
    assert sent == [(0xFEE01000, 0x31)] and table.read_pba(0, 8) == bytes(8)
    table.write_table(12, struct.pack("<I", 0))
    assert sent == [(0xFEE01000, 0x31)]
    control[0] = ENABLE | FUNCTION_MASK
    table.notify(0)
    table.deliver_pending()
    assert len(sent) == 1
    control[0] = ENABLE
    table.deliver_pending()
    assert sent == [(0xFEE01000, 0x31)] * 2


def test_msix_table_and_pba_take_aligned_dwords_and_qwords_only():
    table, _, _ = msix(2)
    table.write_table(16, struct.pack("<Q", 0x1122334455667788))
    assert table.read_table(16, 8) == struct.pack("<Q", 0x1122334455667788)
    assert table.read_table(20, 4) == struct.pack("<I", 0x11223344)
    for offset, size in ((18, 4), (16, 2), (16, 1), (20, 8), (32, 4), (28, 8), (-4, 4)):
        assert table.read_table(offset, size) == b"\xff" * size
    table.write_table(16, b"\0\0")                                        # a word: dropped
    table.write_table(18, b"\0\0\0\0")                                    # unaligned: dropped
    table.write_table(32, b"\0\0\0\0")                                    # past the table
    assert table.read_table(16, 8) == struct.pack("<Q", 0x1122334455667788)
    assert table.read_table(28, 4) == struct.pack("<I", MASKED)
    for offset, size in ((0, 1), (0, 2), (2, 4), (8, 4), (4, 8), (-8, 8)):
        assert table.read_pba(offset, size) == b"\xff" * size
    assert table.read_pba(4, 4) == bytes(4) and table.pba_size == 8


def test_the_pba_has_one_bit_per_vector_in_qwords():
    table, _, _ = msix(70)
    assert table.pba_size == 16 and msix(64)[0].pba_size == 8 and msix(65)[0].pba_size == 16
    for vector in (0, 33, 64, 69):
        table.notify(vector)
    assert table.read_pba(0, 8) == struct.pack("<Q", 1 | 1 << 33)
    assert table.read_pba(4, 4) == struct.pack("<I", 1 << 1)
    assert table.read_pba(8, 8) == struct.pack("<Q", 1 | 1 << 5)
    assert table.read_pba(16, 4) == b"\xff" * 4


@pytest.mark.parametrize("vector", [-1, 2, 0xFFFF])
def test_a_vector_outside_the_table_is_refused(vector):
    table, control, sent = msix(2)
    control[0] = ENABLE
    assert table.notify(vector) is False
    assert sent == [] and table.read_pba(0, 8) == bytes(8)


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(-8, 40), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("read"), st.integers(-8, 40), st.sampled_from([1, 2, 4, 8]), st.just(0)),
    st.tuples(st.just("pba"), st.integers(-8, 16), st.sampled_from([1, 2, 4, 8]), st.just(0)),
    st.tuples(st.just("control"), st.just(0), st.just(0), st.integers(0, 0xFFFF)),
    st.tuples(st.just("notify"), st.integers(-1, 2), st.just(0), st.just(0)),
), max_size=40))
def test_msix_never_sends_a_masked_vector(steps):
    control = [0]
    sent = []
    table = MsixTable(2, lambda: control[0], lambda address, data: sent.append((address, data)))

    def deliverable(vector):
        vector_control = struct.unpack_from("<I", table.table, 16 * vector + 12)[0]
        return control[0] & ENABLE and not control[0] & FUNCTION_MASK and not vector_control & MASKED

    for kind, offset, size, value in steps:
        before = len(sent)
        if kind == "write":
            table.write_table(offset, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
        elif kind == "read":
            assert len(table.read_table(offset, size)) == size
        elif kind == "pba":
            assert len(table.read_pba(offset, size)) == size
        elif kind == "control":
            control[0] = value
            table.deliver_pending()
        else:
            table.notify(offset)
        for address, data in sent[before:]:            # whatever was sent came from an unmasked vector
            assert any(deliverable(v) and table._entry(v)[:2] == (address, data) for v in range(2))
        for vector in range(2):                       # and nothing deliverable is left pending
            assert not (table.pending[vector] and deliverable(vector))


def test_the_host_bridge_is_an_intel_host_bridge():
    config = HostBridge().config
    assert config.read(0x00, 4) == struct.pack("<HH", 0x8086, 0x0D57)
    assert config.read(0x09, 3) == b"\x00\x00\x06"                    # class 06h, subclass 00h: host bridge
    assert HostBridge.label == "pci-host-bridge"


def test_bars_added_in_any_order_keep_their_own_masks_and_the_header_s():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(3, 0xC0000000, 16)                              # 32-bit, after BAR 1-2
    cfg.add_memory_bar(1, 0x10_0000_0000, 16, is_64bit=True)          # BARs 1 and 2
    cfg.add_memory_bar(0, 0xC0010000, 0x1000)
    for offset in range(0x10, 0x20, 4):
        cfg.write(offset, b"\xff" * 4)
    assert cfg.read(0x10, 16) == struct.pack("<IIII", 0xFFFFF000, 0xFFFFFFF4, 0xFFFFFFFF, 0xFFFFFFF0)
    assert cfg.bar_address(0) == 0xFFFFF000 and cfg.bar_address(3) == 0xFFFFFFF0
    cfg.write(0x3C, b"\x0b")                                          # the header's masks are untouched
    assert cfg.read(0x3C, 1) == b"\x0b" and cfg.read(0x04, 2) == b"\0\0"
    cfg.write(0x04, b"\x02\x00")
    assert cfg.read(0x04, 2) == b"\x02\x00"


def test_a_32_bit_bar_s_address_is_its_own_register_only():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(0, 0xC0000000, 0x1000)
    cfg.add_memory_bar(1, 0xC0001000, 0x1000)
    assert (cfg.bar_address(0), cfg.bar_address(1)) == (0xC0000000, 0xC0001000)
    moves = []
    cfg.on_bar_moved = lambda index, old, new: moves.append((index, old, new))
    cfg.write(0x14, struct.pack("<I", 0xD0000000))
    assert moves == [(1, 0xC0001000, 0xD0000000)]


def test_a_64_bit_bar_can_sit_anywhere_in_64_bits():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_memory_bar(0, 0xFFFF_FFFF_0000_0000, 0x8000, is_64bit=True)
    assert cfg.read(0x10, 8) == struct.pack("<Q", 0xFFFF_FFFF_0000_0004)
    assert cfg.bar_address(0) == 0xFFFF_FFFF_0000_0000


def test_capabilities_leave_the_rest_of_configuration_space_4_kib_and_writable_to_its_end():
    cfg = ConfigSpace(vendor=1, device=2, class_code=0)
    cfg.add_capability(0x09, bytes(14), writable=b"\xff")
    cfg.add_capability(0x11, bytes(10), writable=b"\x00\xc0")
    assert cfg.read(4095, 1) == b"\0" and cfg.read(4092, 4) == bytes(4)
    cfg.write(4095, b"\xff")                                          # read-only, but a valid access
    assert cfg.read(4095, 1) == b"\0" and cfg.read(0x42, 1) == b"\0"


def test_0xcfc_dword_writes_reach_the_register(pio):
    bus, target = pio
    target.config.add_memory_bar(0, 0xC0000000, 0x1000)
    bus.write(0xCF8, struct.pack("<I", config_address(0, 5, 0, 0x10)))
    bus.write(0xCFC, b"\xff\xff\xff\xff")
    assert bus.read(0xCFC, 4) == struct.pack("<I", 0xFFFFF000)
