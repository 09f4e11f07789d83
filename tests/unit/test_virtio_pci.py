"""The virtio-pci transport, driven as a driver drives it: found through its PCI capabilities, set up
through the common configuration, fed through a virtqueue.

Expected values come from the virtio 1.x specification (section 4.1, "Virtio Over PCI Bus"; 2.1, the
device status field; 2.7, split virtqueues) and the PCI specification (MSI-X, 6.8.2), never from the
module's constants.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.devices.bus import Bus
from vmkit.devices.virtio.pci_transport import VirtioPciDevice
from vmkit.devices.virtio.queue import Virtqueue
from vmkit.devices.virtio.rng import VirtioRng
from vmkit.memory import GuestMemory

BAR = 0xC0000000
MIB = 1 << 20

# device status bits (2.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 0x40, 0x80
VERSION_1 = 1 << 32                             # VIRTIO_F_VERSION_1 (6)
NO_VECTOR = 0xFFFF                              # VIRTIO_MSI_NO_VECTOR (4.1.5.1.2)
# virtio_pci_common_cfg field offsets (4.1.4.3)
DFSELECT, DF, GFSELECT, GF, MSIX_CONFIG, NUM_QUEUES, STATUS, CONFIG_GENERATION = (
    0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x15)
Q_SELECT, Q_SIZE, Q_MSIX, Q_ENABLE, Q_NOTIFY_OFF, Q_DESC, Q_DRIVER, Q_DEVICE = (
    0x16, 0x18, 0x1A, 0x1C, 0x1E, 0x20, 0x28, 0x30)
# MSI-X message control (PCI 6.8.2.3) and vector control (6.8.2.9)
MSIX_ENABLE, MSIX_FUNCTION_MASK, VECTOR_MASKED = 1 << 15, 1 << 14, 1

DESC, AVAIL, USED, BUFFERS = 0x10000, 0x11000, 0x12000, 0x20000


def find_layout(config) -> dict:
    """Walk the capability list as a driver does; return where each structure is."""
    found = {}
    pointer = config.read(0x34, 1)[0]
    for _ in range(48):                                             # a loop in the list ends the walk
        if not pointer:
            break
        cap_id, next_pointer = config.read(pointer, 2)
        if cap_id == 0x09:                                          # vendor-specific: a virtio_pci_cap
            cap_len, cfg_type, bar, _id, _pad1, _pad2, offset, length = struct.unpack(
                "<BBBBBBII", config.read(pointer + 2, 14))
            entry = {"cap_len": cap_len, "bar": bar, "offset": offset, "length": length,
                     "id": _id, "padding": (_pad1, _pad2)}
            if cfg_type == 2:
                entry["multiplier"] = struct.unpack("<I", config.read(pointer + 16, 4))[0]
            found.setdefault(cfg_type, entry)
        elif cap_id == 0x11:                                        # MSI-X
            control, table, pba = struct.unpack("<HII", config.read(pointer + 2, 10))
            found["msix"] = {"at": pointer, "control": control, "table": table, "pba": pba}
        pointer = next_pointer
    return found


class Driver:
    """A virtio driver's view of one virtio-rng function: config space plus BAR 0 on an MMIO bus."""

    def __init__(self, memory_size: int = 4 * MIB) -> None:
        self.memory = GuestMemory.create(memory_size)
        self.sent: list[tuple[int, int]] = []
        self.dev = VirtioPciDevice(VirtioRng(), self.memory, BAR, lambda a, d: self.sent.append((a, d)))
        self.bus = Bus("mmio")
        self.bus.insert(self.dev.bar, BAR, 0x8000)
        self.config = self.dev.config
        self.layout = find_layout(self.config)

    def close(self) -> None:
        self.memory.close()

    # BAR 0 regions, at the offsets the capabilities give
    def snapshot(self):
        """The whole common configuration, read in quadwords."""
        return b"".join(self.bus.read(BAR + self.layout[1]["offset"] + offset, 8) for offset in range(0, 0x38, 8))

    def common_write(self, offset, value, size):
        self.bus.write(BAR + self.layout[1]["offset"] + offset, value.to_bytes(size, "little"))

    def common(self, offset, size):
        return int.from_bytes(self.bus.read(BAR + self.layout[1]["offset"] + offset, size), "little")

    def isr(self):
        return self.bus.read(BAR + self.layout[3]["offset"], 1)[0]

    def notify(self, queue=0):
        notify = self.layout[2]
        self.bus.write(BAR + notify["offset"] + self.common(Q_NOTIFY_OFF, 2) * notify["multiplier"],
                       struct.pack("<H", queue))

    def msix_entry(self, vector, address, data, masked):
        table = BAR + (self.layout["msix"]["table"] & ~7)
        self.bus.write(table + 16 * vector, struct.pack("<Q", address))               # aligned qwords
        self.bus.write(table + 16 * vector + 8, struct.pack("<II", data, VECTOR_MASKED if masked else 0))

    def msix_control(self, value):
        self.config.write(self.layout["msix"]["at"] + 2, struct.pack("<H", value))

    # the initialisation sequence of 3.1.1
    def negotiate(self, features=VERSION_1):
        self.common_write(STATUS, ACKNOWLEDGE, 1)
        self.common_write(STATUS, ACKNOWLEDGE | DRIVER, 1)
        for half in (0, 1):
            self.common_write(GFSELECT, half, 4)
            self.common_write(GF, (features >> (32 * half)) & 0xFFFFFFFF, 4)
        self.common_write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK, 1)
        return self.common(STATUS, 1)

    def set_up_queue(self, size=8, desc=DESC, avail=AVAIL, used=USED, vector=None):
        self.common_write(Q_SELECT, 0, 2)
        self.common_write(Q_SIZE, size, 2)
        self.common_write(Q_DESC, desc, 8)
        self.common_write(Q_DRIVER, avail, 8)
        self.common_write(Q_DEVICE, used, 8)
        if vector is not None:
            self.common_write(Q_MSIX, vector, 2)
        self.common_write(Q_ENABLE, 1, 2)

    def start(self, size=8, vector=None):
        assert self.negotiate() & FEATURES_OK
        self.set_up_queue(size, vector=vector)
        self.common_write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, 1)

    # the split virtqueue of 2.7
    def descriptor(self, index, address, length, flags=0, next_=0):
        self.memory.write(DESC + 16 * index, struct.pack("<QIHH", address, length, flags, next_))

    def offer(self, *heads, flags=0):
        idx = struct.unpack("<H", self.memory.read(AVAIL + 2, 2))[0]
        for head in heads:
            self.memory.write(AVAIL + 4 + 2 * (idx % 8), struct.pack("<H", head))
            idx = (idx + 1) & 0xFFFF
        self.memory.write(AVAIL, struct.pack("<H", flags))
        self.memory.write(AVAIL + 2, struct.pack("<H", idx))

    def used(self):
        """(used idx, [(id, len) ...]) as the device left them."""
        idx = struct.unpack("<H", self.memory.read(USED + 2, 2))[0]
        return idx, [struct.unpack("<II", self.memory.read(USED + 4 + 8 * i, 8)) for i in range(min(idx, 8))]


@pytest.fixture
def drv():
    driver = Driver()
    yield driver
    driver.close()


# --- discovery (4.1.2, 4.1.4) -----------------------------------------------------------------------

def test_a_modern_virtio_rng_function_is_found_by_its_ids(drv):
    cfg = drv.config
    assert cfg.read(0x00, 4) == struct.pack("<HH", 0x1AF4, 0x1040 + 4)   # entropy device: ID 4
    assert cfg.read(0x08, 1)[0] >= 1                                   # non-transitional: revision >= 1
    assert struct.unpack("<H", cfg.read(0x2E, 2))[0] >= 0x40           # and subsystem ID >= 0x40
    assert cfg.read(0x08, 4) == bytes([0x01, 0x00, 0x00, 0xFF])        # revision 1, class 0xFF0000
    assert cfg.read(0x2C, 4) == struct.pack("<HH", 0x1AF4, 0x40)
    assert cfg.read(0x06, 2)[0] & 0x10                                 # a capability list
    assert drv.dev.label == "virtio-pci (virtio-rng)" and drv.dev.bar.label == "virtio-pci (virtio-rng) BAR0"


def test_bar_0_is_a_32_kib_memory_bar(drv):
    assert drv.config.read(0x10, 4) == struct.pack("<I", BAR)          # 32-bit memory, not prefetchable
    drv.config.write(0x10, b"\xff\xff\xff\xff")
    assert drv.config.read(0x10, 4) == struct.pack("<I", 0xFFFF8000)
    assert drv.config.read(0x14, 4) == b"\0\0\0\0"


def test_the_capabilities_describe_every_structure_in_bar_0(drv):
    layout = drv.layout
    common, notify, isr, device = layout[1], layout[2], layout[3], layout[4]
    for cap in (common, notify, isr, device):
        assert cap["bar"] == 0 and cap["id"] == 0 and cap["padding"] == (0, 0)
        assert cap["offset"] % 4 == 0 and cap["offset"] + cap["length"] <= 0x8000
    assert common["cap_len"] == 16 and common["length"] >= 0x38
    assert notify["cap_len"] == 20                                      # virtio_pci_notify_cap
    assert notify["multiplier"] == 4                                    # an even power of 2
    assert notify["length"] >= 0 * notify["multiplier"] + 2             # queue 0's notify_off is 0
    assert (isr["cap_len"], isr["length"]) == (16, 1)
    assert device["cap_len"] == 16 and device["length"] >= 1
    regions = sorted((cap["offset"], cap["offset"] + cap["length"]) for cap in (common, notify, isr, device))
    assert all(end <= start for (_, end), (start, _) in zip(regions, regions[1:], strict=False))
    assert (common["offset"], isr["offset"], device["offset"], notify["offset"]) == (0, 0x1000, 0x2000, 0x3000)
    assert common["length"] == 0x38 and notify["length"] == 4 and device["length"] == 4


def test_msix_has_one_vector_per_queue_and_one_for_configuration(drv):
    msix = drv.layout["msix"]
    assert msix["control"] == 1                                        # table size N-1: 2 vectors, off
    assert (msix["table"], msix["pba"]) == (0x4000, 0x5000)            # BIR 0: both in BAR 0
    drv.msix_control(0xFFFF)
    assert find_layout(drv.config)["msix"]["control"] == MSIX_ENABLE | MSIX_FUNCTION_MASK | 1
    cap = msix["at"]
    drv.config.write(cap + 4, b"\xff" * 8)                             # table and PBA offsets: read-only
    assert find_layout(drv.config)["msix"]["table"] == 0x4000


# --- the common configuration (4.1.4.3) -------------------------------------------------------------

def test_common_configuration_after_reset(drv):
    assert drv.common(DFSELECT, 4) == 0 and drv.common(DF, 4) == 0     # bits 0-31: none offered
    assert drv.common(GFSELECT, 4) == 0 and drv.common(GF, 4) == 0
    assert drv.common(MSIX_CONFIG, 2) == NO_VECTOR
    assert drv.common(NUM_QUEUES, 2) == 1
    assert drv.common(STATUS, 1) == 0 and drv.common(CONFIG_GENERATION, 1) == 0
    assert drv.common(Q_SELECT, 2) == 0
    assert drv.common(Q_SIZE, 2) == 256                                 # the maximum
    assert drv.common(Q_MSIX, 2) == NO_VECTOR
    assert drv.common(Q_ENABLE, 2) == 0 and drv.common(Q_NOTIFY_OFF, 2) == 0
    assert drv.common(Q_DESC, 8) == drv.common(Q_DRIVER, 8) == drv.common(Q_DEVICE, 8) == 0
    assert drv.bus.read(BAR + 0x38, 8) == bytes(8)                     # past the structure: zeros


def test_a_read_running_past_the_structure_is_padded_after_its_bytes(drv):
    drv.common_write(Q_DEVICE, 0x11223344_55667788, 8)
    assert drv.bus.read(BAR + 0x34, 8) == bytes([0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0])
    assert drv.bus.read(BAR + 0x37, 2) == b"\x11\x00"


@pytest.mark.parametrize("select,word", [(0, 0), (1, 1), (2, 0), (0xFFFFFFFF, 0)])
def test_device_features_are_shown_32_bits_at_a_time(drv, select, word):
    drv.common_write(DFSELECT, select, 4)
    assert drv.common(DFSELECT, 4) == select
    assert drv.common(DF, 4) == word                                   # VERSION_1 is bit 32


def test_driver_features_read_back_per_half_and_nothing_beyond_64_bits(drv):
    for select, value in ((0, 0x89ABCDEF), (1, 0xFFFFFFFF), (1, 0x80000001), (2, 0xFFFFFFFF)):
        drv.common_write(GFSELECT, select, 4)
        drv.common_write(GF, value, 4)
    for select, value in ((0, 0x89ABCDEF), (1, 0x80000001), (2, 0)):
        drv.common_write(GFSELECT, select, 4)
        assert (drv.common(GFSELECT, 4), drv.common(GF, 4)) == (select, value)
    drv.common_write(GFSELECT, 0, 4)
    drv.common_write(GF, 0x1, 4)                                       # rewriting one half keeps the other
    drv.common_write(GFSELECT, 1, 4)
    assert drv.common(GF, 4) == 0x80000001


def test_feature_bits_beyond_63_are_never_offered_and_writes_to_them_are_ignored(drv):
    """4.1.4.3.1: a device may ignore writes for feature bits it never offers and present 0."""
    drv.common_write(STATUS, ACKNOWLEDGE | DRIVER, 1)
    drv.common_write(GFSELECT, 2, 4)
    drv.common_write(GF, 0xFFFFFFFF, 4)
    assert drv.negotiate(VERSION_1) == ACKNOWLEDGE | DRIVER | FEATURES_OK


def test_features_ok_is_refused_without_version_1_or_with_unknown_bits(drv):
    assert drv.negotiate(0) == ACKNOWLEDGE | DRIVER
    drv.common_write(STATUS, 0, 1)
    assert drv.negotiate(VERSION_1 | 1 << 5) == ACKNOWLEDGE | DRIVER
    drv.common_write(STATUS, 0, 1)
    assert drv.negotiate(VERSION_1 | 1 << 63) == ACKNOWLEDGE | DRIVER
    drv.common_write(STATUS, 0, 1)
    assert drv.negotiate(VERSION_1) == ACKNOWLEDGE | DRIVER | FEATURES_OK


def test_negotiated_features_cannot_change_after_features_ok(drv):
    assert drv.negotiate(VERSION_1) & FEATURES_OK
    drv.common_write(GFSELECT, 0, 4)
    drv.common_write(GF, 1 << 5, 4)                                     # not offered: too late anyway
    assert drv.common(GF, 4) == 0
    drv.common_write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK, 1)
    assert drv.common(STATUS, 1) == ACKNOWLEDGE | DRIVER | FEATURES_OK
    assert drv.dev.driver_features == VERSION_1


def test_status_reads_back_what_the_driver_wrote(drv):
    for value in (ACKNOWLEDGE, ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | FAILED, 0x03):
        drv.common_write(STATUS, value, 1)
        assert drv.common(STATUS, 1) == value
    drv.common_write(STATUS, 0, 1)
    assert drv.common(STATUS, 1) == 0


@pytest.mark.parametrize("offset,size", [
    (DFSELECT, 2), (DFSELECT, 1), (DFSELECT, 8), (GFSELECT, 2), (GF, 2), (MSIX_CONFIG, 4),
    (MSIX_CONFIG, 1), (STATUS, 2), (STATUS, 4), (Q_SELECT, 1), (Q_SELECT, 4), (Q_SIZE, 4), (Q_SIZE, 1),
    (Q_MSIX, 4), (Q_ENABLE, 4), (Q_ENABLE, 1), (Q_DESC, 2), (Q_DESC + 4, 8), (Q_DESC + 2, 4),
    (Q_DEVICE + 4, 2), (0x01, 4), (0x13, 1), (0x17, 2), (0x19, 2),
])
def test_only_a_field_s_natural_width_reaches_it(drv, offset, size):
    before = drv.snapshot()
    drv.common_write(offset, (1 << 8 * size) - 2, size)                # all ones but bit 0
    assert drv.snapshot() == before


@pytest.mark.parametrize("offset,size", [(DF, 4), (NUM_QUEUES, 2), (CONFIG_GENERATION, 1), (Q_NOTIFY_OFF, 2)])
def test_read_only_fields_ignore_writes(drv, offset, size):
    before = drv.snapshot()
    drv.common_write(offset, (1 << 8 * size) - 1, size)
    assert drv.snapshot() == before


def test_ring_addresses_take_64_bits_at_once_or_as_two_32_bit_halves(drv):
    drv.common_write(Q_DESC, 0x1122334455667788, 8)
    drv.common_write(Q_DRIVER, 0x99AABBCC, 4)                          # low half
    drv.common_write(Q_DRIVER + 4, 0x00000001, 4)                      # high half
    drv.common_write(Q_DEVICE + 4, 0xFFFFFFFF, 4)
    drv.common_write(Q_DEVICE, 0x12345678, 4)
    assert drv.common(Q_DESC, 8) == 0x1122334455667788
    assert drv.common(Q_DRIVER, 8) == 0x1_99AABBCC
    assert drv.common(Q_DEVICE, 8) == 0xFFFFFFFF_12345678
    assert drv.common(Q_DESC + 4, 4) == 0x11223344 and drv.common(Q_DESC, 2) == 0x7788
    drv.common_write(Q_DESC + 4, 0, 4)                                 # the high half alone
    assert drv.common(Q_DESC, 8) == 0x55667788
    drv.common_write(Q_DEVICE, 0, 8)
    assert drv.common(Q_DEVICE, 8) == 0


def test_a_queue_that_does_not_exist_reads_as_absent(drv):
    drv.common_write(Q_SIZE, 16, 2)
    drv.common_write(Q_DESC, DESC, 8)
    drv.common_write(Q_SELECT, 1, 2)
    assert drv.common(Q_SELECT, 2) == 1
    assert drv.common(Q_SIZE, 2) == 0                                   # "unavailable"
    assert drv.common(Q_MSIX, 2) == NO_VECTOR and drv.common(Q_ENABLE, 2) == 0
    assert drv.common(Q_NOTIFY_OFF, 2) == 0 and drv.common(Q_DESC, 8) == 0
    assert drv.common(Q_DRIVER, 8) == 0 and drv.common(Q_DEVICE, 8) == 0
    for offset, size, value in ((Q_SIZE, 2, 4), (Q_MSIX, 2, 0), (Q_ENABLE, 2, 1), (Q_DESC, 8, 0x1000)):
        drv.common_write(offset, value, size)                          # dropped
    drv.common_write(Q_SELECT, 0, 2)
    assert (drv.common(Q_SIZE, 2), drv.common(Q_DESC, 8)) == (16, DESC)
    assert drv.common(Q_MSIX, 2) == NO_VECTOR and drv.common(Q_ENABLE, 2) == 0


@pytest.mark.parametrize("register", [MSIX_CONFIG, Q_MSIX])
def test_an_msix_vector_the_table_does_not_have_reads_back_as_no_vector(drv, register):
    """4.1.5.1.2.1: a device reports a mapping it cannot make by returning NO_VECTOR."""
    for vector, shown in ((0, 0), (1, 1), (2, NO_VECTOR), (0x7FF, NO_VECTOR), (NO_VECTOR, NO_VECTOR), (1, 1)):
        drv.common_write(register, vector, 2)
        assert drv.common(register, 2) == shown


def test_enabling_a_queue_fixes_its_layout(drv):
    drv.negotiate()
    drv.set_up_queue(size=8)
    assert drv.common(Q_ENABLE, 2) == 1
    drv.common_write(Q_SIZE, 4, 2)
    drv.common_write(Q_DESC, 0x30000, 8)
    drv.common_write(Q_DRIVER + 4, 1, 4)
    drv.common_write(Q_DEVICE, 0x30000, 4)
    assert (drv.common(Q_SIZE, 2), drv.common(Q_DESC, 8)) == (8, DESC)
    assert (drv.common(Q_DRIVER, 8), drv.common(Q_DEVICE, 8)) == (AVAIL, USED)
    drv.common_write(Q_MSIX, 1, 2)                                     # the vector may still change
    assert drv.common(Q_MSIX, 2) == 1
    drv.common_write(Q_ENABLE, 0, 2)                                   # drivers MUST NOT write 0
    assert drv.common(Q_ENABLE, 2) == 1


@pytest.mark.parametrize("value", [0, 2, 0xFFFF])
def test_only_a_1_enables_a_queue(drv, value):
    drv.negotiate()
    drv.common_write(Q_SIZE, 8, 2)
    drv.common_write(Q_DESC, DESC, 8)
    drv.common_write(Q_DRIVER, AVAIL, 8)
    drv.common_write(Q_DEVICE, USED, 8)
    drv.common_write(Q_ENABLE, value, 2)
    assert drv.common(Q_ENABLE, 2) == 0 and not drv.common(STATUS, 1) & NEEDS_RESET


def test_reset_returns_every_field_to_its_initial_value(drv):
    drv.start(vector=0)
    drv.common_write(MSIX_CONFIG, 1, 2)
    drv.common_write(DFSELECT, 1, 4)
    drv.common_write(GFSELECT, 1, 4)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()                                                       # ISR now has the queue bit
    drv.common_write(STATUS, 0, 1)
    assert drv.common(STATUS, 1) == 0 and drv.isr() == 0
    assert (drv.common(DFSELECT, 4), drv.common(GFSELECT, 4), drv.common(GF, 4)) == (0, 0, 0)
    drv.common_write(GFSELECT, 1, 4)
    assert drv.common(GF, 4) == 0                                      # VERSION_1 forgotten too
    assert (drv.common(MSIX_CONFIG, 2), drv.common(Q_MSIX, 2)) == (NO_VECTOR, NO_VECTOR)
    assert (drv.common(Q_SIZE, 2), drv.common(Q_ENABLE, 2)) == (256, 0)
    assert drv.common(Q_DESC, 8) == drv.common(Q_DRIVER, 8) == drv.common(Q_DEVICE, 8) == 0
    drv.start()                                                        # and it starts afresh: index 0
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.memory.write(AVAIL + 2, b"\0\0")
    drv.memory.write(USED + 2, b"\0\0")
    drv.offer(0)
    drv.notify()
    assert drv.used() == (1, [(0, 16)])


# --- DEVICE_NEEDS_RESET (2.1.2) -------------------------------------------------------------------

def test_enabling_a_queue_outside_memory_sets_needs_reset(drv):
    drv.negotiate()
    drv.set_up_queue(size=16, desc=0x7FFF00000000)
    assert drv.common(Q_ENABLE, 2) == 0
    assert drv.common(STATUS, 1) == ACKNOWLEDGE | DRIVER | FEATURES_OK | NEEDS_RESET
    assert drv.dev.error == ("queue 0: descriptor table [0x7fff00000000, +0x100) is outside guest memory")
    assert drv.isr() == 2                                              # a configuration change
    drv.common_write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, 1)
    assert drv.common(STATUS, 1) & NEEDS_RESET                         # stays until the driver resets
    drv.common_write(STATUS, 0, 1)
    assert drv.common(STATUS, 1) == 0


def test_a_hostile_chain_stops_the_device_until_it_is_reset(drv):
    drv.start()
    drv.descriptor(0, BUFFERS, 16, flags=3, next_=8)                   # next = 8: outside a queue of 8
    drv.offer(0)
    drv.notify()
    assert drv.common(STATUS, 1) == 0x0F | NEEDS_RESET
    assert drv.dev.error == "queue 0: descriptor index 8 is outside the queue (size 8)"
    assert drv.isr() == 2 and drv.used() == (0, [])
    drv.descriptor(0, BUFFERS, 16, flags=2)                            # repaired, but too late
    drv.notify()
    assert drv.used() == (0, [])


# --- notifications and interrupts (4.1.5) -----------------------------------------------------------

def test_a_request_is_served_and_the_driver_told(drv):
    drv.start()
    drv.descriptor(0, BUFFERS, 8, flags=1, next_=1)                    # device-readable: left alone
    drv.descriptor(1, BUFFERS + 0x100, 32, flags=2)                     # device-writable: random bytes
    drv.offer(0)
    drv.notify()
    assert drv.used() == (1, [(0, 32)])
    assert drv.memory.read(BUFFERS, 8) == bytes(8)
    assert drv.memory.read(BUFFERS + 0x100, 32) != bytes(32)
    assert drv.memory.read(BUFFERS + 0x120, 16) == bytes(16)
    assert drv.isr() == 1 and drv.isr() == 0                           # reading the ISR clears it
    assert drv.sent == []                                              # MSI-X is off


def test_notify_before_driver_ok_is_ignored(drv):
    assert drv.negotiate() & FEATURES_OK
    drv.set_up_queue()
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.used() == (0, []) and drv.isr() == 0 and drv.common(STATUS, 1) == 0x0B
    drv.common_write(STATUS, 0x0F, 1)
    drv.notify()
    assert drv.used() == (1, [(0, 16)])


def test_notify_of_a_queue_not_enabled_or_not_there_is_ignored(drv):
    drv.negotiate()
    drv.common_write(STATUS, 0x0F, 1)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.bus.write(BAR + 0x3000, b"\0\0")                               # queue 0, not enabled
    drv.bus.write(BAR + 0x3004, b"\1\0")                               # queue 1: there is none
    drv.bus.write(BAR + 0x3FFC, b"\0\0\0\0")
    assert drv.used() == (0, []) and drv.common(STATUS, 1) == 0x0F


def test_any_write_in_a_queue_s_notify_slot_notifies_it(drv):
    drv.start()
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.bus.write(BAR + 0x3002, b"\x00")
    assert drv.used() == (1, [(0, 16)])
    assert drv.bus.read(BAR + 0x3000, 4) == bytes(4)                   # notify reads as zeros


def test_no_new_buffers_no_interrupt(drv):
    drv.start()
    drv.notify()
    assert drv.isr() == 0 and drv.used() == (0, [])


def test_no_interrupt_when_the_driver_asks_for_none(drv):
    drv.start(vector=0)
    drv.msix_entry(0, 0xFEE00000, 0x41, masked=False)
    drv.msix_control(MSIX_ENABLE)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0, flags=1)                                              # VIRTQ_AVAIL_F_NO_INTERRUPT
    drv.notify()
    assert drv.used() == (1, [(0, 16)]) and drv.isr() == 0 and drv.sent == []
    drv.offer(0, flags=2)                                              # another flag: not that one
    drv.notify()
    assert drv.sent == [(0xFEE00000, 0x41)]


def test_a_queue_interrupt_goes_to_its_msix_vector(drv):
    drv.start(vector=1)
    drv.common_write(MSIX_CONFIG, 0, 2)
    drv.msix_entry(0, 0xFEE00000, 0x30, masked=False)
    drv.msix_entry(1, 0x1_FEE0_1000, 0x31, masked=False)
    drv.msix_control(MSIX_ENABLE)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.sent == [(0x1_FEE0_1000, 0x31)]


def test_no_vector_means_no_message(drv):
    drv.start()                                                        # queue vector: NO_VECTOR
    drv.msix_entry(0, 0xFEE00000, 0x30, masked=False)
    drv.msix_entry(1, 0xFEE00000, 0x31, masked=False)
    drv.msix_control(MSIX_ENABLE)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.sent == [] and drv.isr() == 1


def test_isr_collects_queue_and_configuration_bits(drv):
    drv.start()
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.descriptor(1, 0x7FFF0000, 16, flags=2)                          # outside RAM
    drv.offer(0)
    drv.notify()
    drv.offer(1)
    drv.notify()
    assert drv.isr() == 3 and drv.isr() == 0


def test_a_configuration_interrupt_goes_to_the_configuration_vector(drv):
    drv.negotiate()
    drv.common_write(MSIX_CONFIG, 1, 2)
    drv.msix_entry(1, 0xFEE02000, 0x55, masked=False)
    drv.msix_control(MSIX_ENABLE)
    drv.set_up_queue(size=3)                                           # not a power of two
    assert drv.sent == [(0xFEE02000, 0x55)]
    assert drv.dev.error == "queue 0: queue size 3 is not a power of two in 1..256"


def test_a_message_held_by_the_function_mask_is_sent_when_the_mask_clears(drv):
    drv.start(vector=0)
    drv.msix_entry(0, 0xFEE00000, 0x30, masked=False)
    drv.msix_control(MSIX_ENABLE | MSIX_FUNCTION_MASK)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.sent == [] and drv.bus.read(BAR + 0x5000, 8) == struct.pack("<Q", 1)   # pending
    drv.msix_control(MSIX_ENABLE)
    assert drv.sent == [(0xFEE00000, 0x30)] and drv.bus.read(BAR + 0x5000, 8) == bytes(8)


@pytest.mark.parametrize("write", [
    lambda cfg, cap: cfg.write(cap + 2, struct.pack("<H", MSIX_ENABLE)),          # the control word
    lambda cfg, cap: cfg.write(cap + 3, bytes([MSIX_ENABLE >> 8])),                # its high byte
    lambda cfg, cap: cfg.write(cap, struct.pack("<BBH", 0, 0, MSIX_ENABLE)),      # the dword around it
])
def test_enabling_msix_in_configuration_space_sends_what_was_pending(drv, write):
    drv.start(vector=1)
    drv.msix_entry(1, 0xFEE00000, 0x31, masked=False)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.sent == []
    write(drv.config, drv.layout["msix"]["at"])
    assert drv.sent == [(0xFEE00000, 0x31)]


def test_bar_0_regions_outside_the_structures(drv):
    drv.start(vector=0)
    drv.descriptor(0, BUFFERS, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.bus.read(BAR + 0x1001, 1) == b"\0" and drv.bus.read(BAR + 0x1FFF, 1) == b"\0"
    assert drv.bus.read(BAR + 0x1000, 8) == b"\x01" + bytes(7)        # the ISR, then zeros
    assert drv.bus.read(BAR + 0x1000, 4) == bytes(4)                   # read once: cleared
    assert drv.bus.read(BAR + 0x2000, 8) == bytes(8)                   # virtio-rng has no config fields
    assert drv.bus.read(BAR + 0x2FFC, 4) == bytes(4) and drv.bus.read(BAR + 0x3004, 2) == b"\0\0"
    drv.bus.write(BAR + 0x1000, b"\xff")                               # read-only regions
    drv.bus.write(BAR + 0x2000, b"\xff\xff\xff\xff")
    drv.bus.write(BAR + 0x5000, b"\xff" * 8)
    assert drv.bus.read(BAR + 0x1000, 1) == b"\0" and drv.bus.read(BAR + 0x2000, 4) == bytes(4)
    assert drv.bus.read(BAR + 0x5000, 8) == struct.pack("<Q", 1)      # vector 0 pending: MSI-X is off
    assert drv.bus.read(BAR + 0x5008, 8) == b"\xff" * 8                # past the PBA
    assert drv.bus.read(BAR + 0x7FF8, 8) == b"\xff" * 8


def test_the_msix_table_in_bar_0(drv):
    drv.msix_entry(1, 0x1_2345_6780, 0xABCD, masked=False)
    table = BAR + 0x4000
    assert drv.bus.read(table + 16, 8) == struct.pack("<Q", 0x1_2345_6780)
    assert drv.bus.read(table + 24, 4) == struct.pack("<I", 0xABCD)
    assert drv.bus.read(table + 12, 4) == struct.pack("<I", VECTOR_MASKED)   # entry 0: still masked
    assert drv.bus.read(table + 2, 4) == b"\xff" * 4                   # unaligned: all ones
    assert drv.bus.read(table + 32, 4) == b"\xff" * 4                  # past the two entries
    drv.msix_entry(0, 0xFEE0_1234, 0x77, masked=True)
    assert drv.bus.read(table, 4) == struct.pack("<I", 0xFEE0_1234)     # the first byte of the table
    assert drv.bus.read(table, 8) == struct.pack("<Q", 0xFEE0_1234)
    drv.bus.write(table + 17, b"\0\0\0\0")                             # unaligned: dropped
    assert drv.bus.read(table + 16, 4) == struct.pack("<I", 0x2345_6780)
    assert drv.bus.read(BAR + 0x4FFC, 8) == b"\xff" * 8


# --- virtio-rng (5.4) ------------------------------------------------------------------------------

def test_rng_fills_writable_buffers_up_to_64_kib_a_request(drv):
    drv.start()
    drv.descriptor(0, BUFFERS, 40 * 1024, flags=3, next_=1)
    drv.descriptor(1, BUFFERS + 0x10000, 40 * 1024, flags=3, next_=2)
    drv.descriptor(2, BUFFERS + 0x20000, 16, flags=2)
    drv.offer(0)
    drv.notify()
    assert drv.used() == (1, [(0, 64 * 1024)])
    first = drv.memory.read(BUFFERS, 40 * 1024)
    second = drv.memory.read(BUFFERS + 0x10000, 40 * 1024)
    assert first.count(0) < 1024 and second[:24 * 1024].count(0) < 1024
    assert second[24 * 1024:] == bytes(16 * 1024) and drv.memory.read(BUFFERS + 0x20000, 16) == bytes(16)


def test_rng_serves_every_chain_offered_and_skips_empty_buffers(drv):
    drv.start()
    drv.descriptor(0, BUFFERS, 0, flags=3, next_=1)                    # an empty buffer, then a real one
    drv.descriptor(1, BUFFERS + 0x100, 16, flags=2)
    drv.descriptor(2, BUFFERS + 0x200, 1, flags=2)
    drv.offer(0, 2)
    drv.notify()
    assert drv.used() == (2, [(0, 16), (2, 1)])
    assert drv.memory.read(BUFFERS + 0x100, 16) != bytes(16)


def test_rng_says_whether_it_served_anything():
    memory = GuestMemory.create(1 * MIB)
    queue = Virtqueue(8)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = 8, DESC, AVAIL, USED
    assert VirtioRng().process(queue, memory) is False
    memory.write(DESC, struct.pack("<QIHH", BUFFERS, 4, 2, 0))
    memory.write(AVAIL + 2, struct.pack("<H", 1))
    assert VirtioRng().process(queue, memory) is True
    memory.close()


def test_rng_describes_itself():
    rng = VirtioRng()
    assert (rng.device_type, rng.features, rng.queue_sizes, rng.config()) == (4, 1 << 32, (256,), b"")
    assert rng.label == "virtio-rng"


# --- a device with two queues and configuration fields ----------------------------------------------

class TwoQueues:
    """A made-up device type 31 with queues of 8 and 16 entries and 8 bytes of configuration."""

    label = "two-queues"
    device_type = 31
    features = VERSION_1 | 1 << 3
    queue_sizes = (8, 16)

    def __init__(self):
        self.served, self.resets, self.activations = [], 0, []

    def config(self):
        return bytes(range(0xA1, 0xA9))

    def process(self, queue, memory):
        self.served.append(queue)
        return False

    def reset(self):
        self.resets += 1

    def activate(self, features):
        self.activations.append(features)

    def attach(self, host):
        pass


@pytest.fixture
def two():
    memory = GuestMemory.create(4 * MIB)
    device = TwoQueues()
    function = VirtioPciDevice(device, memory, BAR, lambda a, d: None, class_code=0x010000)
    bus = Bus("mmio")
    bus.insert(function.bar, BAR, 0x8000)
    yield function, device, bus
    memory.close()


def test_every_queue_has_its_own_size_notify_offset_and_vector(two):
    function, device, bus = two
    layout = find_layout(function.config)
    assert function.config.read(0, 4) == struct.pack("<HH", 0x1AF4, 0x1040 + 31)
    assert function.config.read(0x09, 3) == b"\x00\x00\x01"          # the class code it was given
    assert layout["msix"]["control"] == 2                              # three vectors
    assert layout[2]["length"] == 2 * 4 and layout[4]["length"] == 8
    assert bus.read(BAR + 0x12, 2) == b"\x02\x00"
    assert bus.read(BAR + 0x04, 4) == struct.pack("<I", 1 << 3)
    offsets = []
    for queue in (0, 1):
        bus.write(BAR + 0x16, struct.pack("<H", queue))
        offsets.append(struct.unpack("<H", bus.read(BAR + 0x1E, 2))[0])
        assert struct.unpack("<H", bus.read(BAR + 0x18, 2))[0] == (8, 16)[queue]
        bus.write(BAR + 0x1A, struct.pack("<H", 2 - queue))
        assert struct.unpack("<H", bus.read(BAR + 0x1A, 2))[0] == 2 - queue
    assert offsets == [0, 1]
    bus.write(BAR + 0x16, b"\x02\x00")
    assert bus.read(BAR + 0x18, 2) == b"\0\0"                          # queue 2: none
    for queue in (0, 1):                                               # enable both, then DRIVER_OK
        bus.write(BAR + 0x16, struct.pack("<H", queue))
        for field, address in ((0x20, DESC + 0x1000 * queue), (0x28, AVAIL + 0x1000 * queue),
                               (0x30, USED + 0x1000 * queue)):
            bus.write(BAR + field, struct.pack("<Q", address))
        bus.write(BAR + 0x1C, b"\x01\x00")
    bus.write(BAR + 0x14, b"\x0f")
    bus.write(BAR + 0x3000 + offsets[1] * layout[2]["multiplier"], b"\x01\x00")
    bus.write(BAR + 0x3000 + offsets[0] * layout[2]["multiplier"], b"\x00\x00")
    assert device.served == [function.queues[1], function.queues[0]]


def test_device_configuration_fields_are_read_at_the_device_structure(two):
    function, device, bus = two
    assert bus.read(BAR + 0x2000, 8) == bytes(range(0xA1, 0xA9))
    assert bus.read(BAR + 0x2000, 1) == b"\xa1" and bus.read(BAR + 0x2003, 2) == b"\xa4\xa5"
    assert bus.read(BAR + 0x2004, 8) == bytes([0xA5, 0xA6, 0xA7, 0xA8, 0, 0, 0, 0])
    assert bus.read(BAR + 0x2008, 4) == bytes(4) and bus.read(BAR + 0x1FFF, 1) == b"\0"


def _status(bus, value):
    bus.write(BAR + 0x14, bytes([value]))


def _accept(bus, features):
    for half in (0, 1):
        bus.write(BAR + 0x08, struct.pack("<I", half))
        bus.write(BAR + 0x0C, struct.pack("<I", (features >> (32 * half)) & 0xFFFFFFFF))


def test_the_device_is_told_the_negotiated_features_once_at_driver_ok(two):
    function, device, bus = two
    _status(bus, ACKNOWLEDGE | DRIVER)
    _accept(bus, VERSION_1 | 1 << 3)
    _status(bus, ACKNOWLEDGE | DRIVER | FEATURES_OK)
    assert device.activations == []                                   # not final until DRIVER_OK
    _status(bus, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    _status(bus, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)      # written again: no news
    assert device.activations == [VERSION_1 | 1 << 3]
    _status(bus, 0)                                                   # reset, then fewer features
    _status(bus, ACKNOWLEDGE | DRIVER)
    _accept(bus, VERSION_1)
    _status(bus, ACKNOWLEDGE | DRIVER | FEATURES_OK)
    _status(bus, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    assert device.activations == [VERSION_1 | 1 << 3, VERSION_1]


def test_a_driver_that_skips_features_ok_activates_nothing(two):
    function, device, bus = two
    _status(bus, ACKNOWLEDGE | DRIVER)
    _accept(bus, VERSION_1 | 1 << 5)                                  # a feature never offered
    _status(bus, ACKNOWLEDGE | DRIVER | FEATURES_OK)                  # refused
    _status(bus, ACKNOWLEDGE | DRIVER | DRIVER_OK)
    assert device.activations == []


def test_a_reset_resets_the_device_type_too(two):
    function, device, bus = two
    resets = device.resets
    bus.write(BAR + 0x14, b"\x00")
    assert device.resets == resets + 1


# --- whatever the driver does ----------------------------------------------------------------------

INTERESTING = [0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x16, 0x18, 0x1A, 0x1C, 0x1E, 0x20, 0x24, 0x28,
               0x2C, 0x30, 0x34, 0x36, 0x1000, 0x2000, 0x3000, 0x3002, 0x4000, 0x4008, 0x400C, 0x4010,
               0x401C, 0x5000, 0x7FF8]

STEPS = st.one_of(
    st.tuples(st.just("read"), st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0x7FFF)),
              st.sampled_from([1, 2, 4, 8]), st.just(0)),
    st.tuples(st.just("write"), st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0x7FFF)),
              st.sampled_from([1, 2, 4, 8]), st.one_of(st.integers(0, 3), st.integers(0, (1 << 64) - 1))),
    st.tuples(st.just("start"), st.sampled_from([1, 2, 4, 8, 3, 0, 512]), st.just(0), st.integers(0, 3)),
    st.tuples(st.just("desc"), st.integers(0, 9), st.integers(0, 7),
              st.one_of(st.sampled_from([BUFFERS, 0x3FFFF0, 0x400000, 0]), st.integers(0, (1 << 64) - 1))),
    st.tuples(st.just("offer"), st.one_of(st.integers(1, 3), st.integers(0, 0xFFFF)), st.integers(0, 3),
              st.integers(0, 0xFFFF)),
    st.tuples(st.just("control"), st.just(0), st.just(0), st.sampled_from([0x8000, 0xC000, 0, 0xFFFF])),
    st.tuples(st.just("entry"), st.integers(0, 1), st.booleans(), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("serve"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=120, derandomize=True, database=None, deadline=None)
@given(st.lists(STEPS, max_size=25))
def test_any_driver_gets_width_bytes_and_the_device_keeps_its_promises(steps):
    """Reads return exactly `width` bytes and nothing raises; after every step: FEATURES_OK means a
    valid feature set, an enabled queue has a valid layout, vectors are ones the table has, and
    DEVICE_NEEDS_RESET stays until the driver resets the device."""
    drv = Driver(memory_size=4 * MIB)
    try:
        for kind, a, b, c in steps:
            needs_reset_before = drv.common(STATUS, 1) & NEEDS_RESET
            sent_before = len(drv.sent)
            if kind == "read":
                assert len(drv.bus.read(BAR + a, b)) == b
            elif kind == "write":
                drv.bus.write(BAR + a, (c & ((1 << 8 * b) - 1)).to_bytes(b, "little"))
            elif kind == "start":
                drv.negotiate(VERSION_1 if c != 3 else VERSION_1 | 1)
                drv.set_up_queue(size=a, vector=c)
                drv.common_write(STATUS, 0x0F, 1)
            elif kind == "desc":
                drv.descriptor(a, c, [0, 1, 16, 4096, 0x10000, 0xFFFFFFFF, 8, 2][b], flags=b & 3 | (b & 4),
                               next_=(a + 1) % 10)
            elif kind == "offer":
                drv.memory.write(AVAIL + 4 + 2 * (b % 8), struct.pack("<H", c % 12))
                drv.memory.write(AVAIL + 2, struct.pack("<H", a))
                drv.notify()
            elif kind == "serve":                         # a well-formed request
                drv.descriptor(0, BUFFERS, 16, flags=2)
                drv.offer(0)
                drv.notify()
            elif kind == "entry":
                drv.msix_entry(a, 0xFEE00000, c, masked=b)
            else:
                drv.msix_control(c)
            control = drv.dev.config.u16(drv.layout["msix"]["at"] + 2)
            for message in drv.sent[sent_before:]:           # only from an enabled, unmasked entry
                assert control & (MSIX_ENABLE | MSIX_FUNCTION_MASK) == MSIX_ENABLE
                entries = [struct.unpack("<QII", drv.bus.read(BAR + 0x4000 + 16 * v, 8)
                                         + drv.bus.read(BAR + 0x4008 + 16 * v, 8)) for v in (0, 1)]
                assert any((address, data) == message and not vector_control & VECTOR_MASKED
                           for address, data, vector_control in entries)
            dev = drv.dev
            if dev.status & FEATURES_OK:
                assert dev.driver_features & VERSION_1 and not dev.driver_features & ~VERSION_1
            for queue in dev.queues:
                if queue.ready:
                    assert 1 <= queue.size <= 256 and not queue.size & (queue.size - 1)
                    assert queue.desc_table % 16 == 0 and queue.avail_ring % 2 == 0 and queue.used_ring % 4 == 0
                    assert drv.memory.contains(queue.desc_table, 16 * queue.size)
                    assert drv.memory.contains(queue.avail_ring, 6 + 2 * queue.size)
                    assert drv.memory.contains(queue.used_ring, 6 + 8 * queue.size)
                assert queue.msix_vector in (0, 1, NO_VECTOR)
            assert dev.config_msix_vector in (0, 1, NO_VECTOR)
            if needs_reset_before:
                assert drv.common(STATUS, 1) & NEEDS_RESET or dev.status == 0
            assert drv.common(NUM_QUEUES, 2) == 1
    finally:
        drv.close()


# --- kicks are off while the device serves a queue (VIRTQ_USED_F_NO_NOTIFY) ------------------------

class Scripted:
    """A device type whose process() records the used ring's flags it finds and, from `during`, plays
    a driver that offers another buffer just after the device's last look at the queue."""

    label, device_type, features, queue_sizes = "scripted", 31, VERSION_1, (8,)

    def __init__(self, pops=True):
        self.flags_seen, self.during, self.pops = [], [], pops

    def process(self, queue, memory):
        self.flags_seen.append(struct.unpack("<H", memory.read(queue.used_ring, 2))[0])
        served = False
        while self.pops and (chain := queue.pop(memory)) is not None:
            queue.push_used(memory, chain.head, 0)
            served = True
        if self.during:
            self.during.pop(0)()
        return served

    def config(self):
        return b""

    def reset(self):
        pass

    def activate(self, features):
        pass

    def attach(self, host):
        pass

    def save(self):
        return None

    def restore(self, state):
        pass


def scripted_function(device):
    memory = GuestMemory.create(4 * MIB)
    function = VirtioPciDevice(device, memory, BAR, lambda a, d: None)
    queue = function.queues[0]
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = 8, DESC, AVAIL, USED
    queue.validate_layout(memory)
    queue.ready = True
    function.status = 0x0F                                    # ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK
    memory.write(DESC, struct.pack("<QIHH", BUFFERS, 1, 0, 0))  # one readable byte, reused by every offer

    def offer():
        index = struct.unpack("<H", memory.read(AVAIL + 2, 2))[0]
        memory.write(AVAIL + 4 + 2 * (index % 8), b"\0\0")
        memory.write(AVAIL + 2, struct.pack("<H", (index + 1) & 0xFFFF))

    return memory, function, queue, offer


def test_an_offer_made_while_kicks_were_off_is_served_without_a_kick():
    device = Scripted()
    memory, function, queue, offer = scripted_function(device)
    offer()
    device.during.append(offer)                               # the driver offers again, sees NO_NOTIFY, no kick
    function.notify(0)
    assert device.flags_seen == [1, 1]                        # NO_NOTIFY while the device served, both rounds
    assert queue.next_used == 2                               # and the second offer was served all the same
    assert memory.read(USED, 2) == b"\0\0"                    # kicks wanted again once it stopped
    memory.close()


def test_a_device_that_leaves_buffers_waiting_ends_its_rounds():
    device = Scripted(pops=False)                             # as a disk waiting out its rate limit
    memory, function, queue, offer = scripted_function(device)
    offer()
    device.during.append(offer)
    function.notify(0)                                        # returns: one more round for the new offer, no more
    assert device.flags_seen == [1, 1] and queue.last_avail == 0
    assert memory.read(USED, 2) == b"\0\0"
    memory.close()
