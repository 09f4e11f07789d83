"""The address-map bus: overlapping and empty ranges are refused; devices see offsets."""

import pytest

from vmkit.devices.bus import Bus, BusError


class Recorder:
    def __init__(self, label):
        self.label = label
        self.accesses = []

    def read(self, offset, size):
        self.accesses.append(("r", offset, size))
        return bytes([offset]) * size

    def write(self, offset, data):
        self.accesses.append(("w", offset, data))


def test_devices_see_offsets_not_addresses():
    bus = Bus("pio")
    dev = Recorder("uart")
    bus.insert(dev, 0x3F8, 8)
    assert bus.read(0x3FA, 1) == b"\x02"
    assert bus.write(0x3FF, b"x")
    assert dev.accesses == [("r", 2, 1), ("w", 7, b"x")]


def test_unclaimed_reads_are_all_ones_and_writes_are_dropped():
    bus = Bus("pio")
    assert bus.read(0x80, 2) == b"\xff\xff"
    assert bus.write(0x80, b"\0") is False


@pytest.mark.parametrize("base,length", [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3F0, 0x20)])
def test_overlaps_are_rejected_naming_both_devices(base, length):
    bus = Bus("pio")
    bus.insert(Recorder("uart"), 0x3F8, 8)
    with pytest.raises(BusError, match=r"rtc at .* overlaps uart at \[0x3f8, 0x400\)"):
        bus.insert(Recorder("rtc"), base, length)


def test_adjacent_ranges_are_fine_and_empty_ones_are_not():
    bus = Bus("mmio")
    bus.insert(Recorder("a"), 0x1000, 0x1000)
    bus.insert(Recorder("b"), 0x2000, 0x1000)
    bus.insert(Recorder("c"), 0x0, 0x1000)
    assert [r.device.label for r in bus.ranges()] == ["c", "a", "b"]
    with pytest.raises(BusError, match="empty range"):
        bus.insert(Recorder("d"), 0x5000, 0)
