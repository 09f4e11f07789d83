"""The address-map bus: overlapping and empty ranges are refused; devices see offsets."""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.devices.bus import BYTE_WIDE, Access, Bus, BusError

UP_TO_4 = Access(frozenset({1, 2, 4}))


class Recorder:
    def __init__(self, label, access=UP_TO_4):
        self.label = label
        self.access = access
        self.accesses = []

    def read(self, offset, size):
        self.accesses.append(("r", offset, size))
        return bytes([offset & 0xFF]) * size

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


def test_an_access_running_past_the_range_never_reaches_the_device():
    bus = Bus("pio")
    dev = Recorder("pci-config")
    bus.insert(dev, 0xCF8, 8)
    assert bus.read(0xCFE, 4) == b"\xff" * 4          # 0xcfe..0xd01: two bytes past the range
    assert bus.write(0xCFF, b"\1\2") is False
    assert bus.read(0xCFC, 4) == b"\x04" * 4           # the last four ports: inside
    assert dev.accesses == [("r", 4, 4)]


def test_widths_and_alignment_the_device_does_not_decode_read_all_ones():
    bus = Bus("mmio")
    dev = Recorder("ecam", Access(frozenset({1, 2, 4}), aligned=True))
    bus.insert(dev, 0x1000, 0x100)
    assert bus.read(0x1000, 8) == b"\xff" * 8          # no 8-byte accesses
    assert bus.read(0x1001, 2) == b"\xff" * 2          # unaligned
    assert bus.read(0x1003, 1) == b"\x03"              # bytes are always aligned
    assert bus.write(0x1002, b"\0\0\0\0") is False
    assert bus.write(0x1004, b"\0\0\0\0") is True
    assert dev.accesses == [("r", 3, 1), ("w", 4, b"\0\0\0\0")]


def test_a_wide_access_to_a_byte_wide_device_is_split_into_bytes_as_on_the_isa_bus():
    bus = Bus("pio")
    uart = Recorder("uart", BYTE_WIDE)
    bus.insert(uart, 0x3F8, 8)
    assert bus.read(0x3FA, 4) == b"\x02\x03\x04\x05"
    assert bus.read(0x3FE, 4) == b"\x06\x07\xff\xff"  # the last two bytes belong to nobody
    assert bus.write(0x3F8, b"ab") is True
    assert uart.accesses[-2:] == [("w", 0, b"a"), ("w", 1, b"b")]
    assert all(size == 1 for kind, _, size in uart.accesses if kind == "r")


def test_a_split_access_reaches_each_port_owner():
    bus = Bus("pio")
    left, right = Recorder("left", BYTE_WIDE), Recorder("right", BYTE_WIDE)
    bus.insert(left, 0x60, 1)
    bus.insert(right, 0x61, 1)
    assert bus.write(0x60, b"xy") is True
    assert left.accesses == [("w", 0, b"x")] and right.accesses == [("w", 0, b"y")]


def test_move_places_the_range_or_leaves_it_unmapped_on_a_collision():
    bus = Bus("mmio")
    bar, other = Recorder("bar"), Recorder("other")
    bus.insert(bar, 0x1000, 0x100)
    bus.insert(other, 0x3000, 0x100)
    assert bus.move(bar, 0x1000, 0x2000, 0x100) is True
    assert bus.find(0x2000).device is bar and bus.find(0x1000) is None
    assert bus.move(bar, 0x2000, 0x3080, 0x100) is False      # onto `other`
    assert bus.find(0x2000) is None and bus.find(0x3080).device is other
    assert bus.move(bar, 0x3080, 0x5000, 0x100) is True       # was unmapped: just placed
    assert bus.find(0x5000).device is bar


def test_look_ups_racing_moves_see_a_whole_map():
    bus = Bus("mmio")
    bars = [Recorder(f"bar{i}") for i in range(4)]
    for i, bar in enumerate(bars):
        bus.insert(bar, 0x10000 * (i + 1), 0x8000)
    stop = threading.Event()
    errors = []

    def mover():
        position = [0x10000 * (i + 1) for i in range(4)]
        step = 0
        while not stop.is_set():
            i = step % 4
            new = 0x100000 + 0x10000 * ((step * 7) % 64)
            if bus.move(bars[i], position[i], new, 0x8000):
                position[i] = new
            step += 1

    def reader():
        try:
            for n in range(200_000):
                address = 0x100000 + (n * 4099) % 0x400000
                found = bus.find(address)
                if found is not None:
                    assert found.base <= address < found.end
                    assert len(bus.read(address, 4)) == 4
        except Exception as exc:   # recorded: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=mover)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    stop.set()
    threads[0].join()
    assert errors == []


def test_a_range_ends_at_its_last_byte():
    bus = Bus("pio")
    dev = Recorder("rtc", BYTE_WIDE)
    bus.insert(dev, 0x70, 2)
    assert bus.find(0x6F) is None
    assert bus.find(0x70).device is dev and bus.find(0x71).device is dev
    assert bus.find(0x72) is None                      # base + length is the first byte after it
    assert bus.read(0x72, 1) == b"\xff" and bus.write(0x72, b"\0") is False
    assert dev.accesses == []


def test_a_two_byte_access_to_a_byte_wide_device_is_split_too():
    bus = Bus("pio")
    uart = Recorder("uart", BYTE_WIDE)
    bus.insert(uart, 0x3F8, 8)
    assert bus.read(0x3F9, 2) == b"\x01\x02"
    assert bus.write(0x3FF, b"ab") is True             # the first byte is taken, the second nobody's
    assert uart.accesses == [("r", 1, 1), ("r", 2, 1), ("w", 7, b"a")]
    assert bus.write(0x400, b"ab") is False


def test_a_device_that_does_not_decode_bytes_is_never_split_into_them():
    bus = Bus("pio")
    odd = Recorder("odd", Access(frozenset({2}), byte_wide=True))
    bus.insert(odd, 0x80, 4)
    assert bus.read(0x80, 2) == b"\0\0"
    assert bus.read(0x81, 1) == b"\xff"                # a byte it does not decode: all ones
    assert bus.write(0x81, b"x") is False
    assert odd.accesses == [("r", 0, 2)]


def test_only_the_device_holding_a_range_can_release_it():
    bus = Bus("mmio")
    bar, other = Recorder("bar"), Recorder("other")
    bus.insert(bar, 0x1000, 0x100)
    with pytest.raises(BusError, match=r"^mmio bus: other holds no range at 0x1000$"):
        bus.remove(other, 0x1000)
    with pytest.raises(BusError, match=r"^mmio bus: bar holds no range at 0x1080$"):
        bus.remove(bar, 0x1080)
    with pytest.raises(BusError, match=r"^mmio bus: bar holds no range at 0x2000$"):
        bus.remove(bar, 0x2000)                        # past every range
    assert bus.find(0x1000).device is bar
    bus.remove(bar, 0x1000)
    assert bus.ranges() == []


def test_errors_name_the_bus():
    bus = Bus("mmio")
    bus.insert(Recorder("a"), 0x1000, 0x10)
    with pytest.raises(BusError, match=r"^mmio bus: b at \[0x1008, 0x1018\) overlaps a at \[0x1000, 0x1010\)$"):
        bus.insert(Recorder("b"), 0x1008, 0x10)
    with pytest.raises(BusError, match=r"^mmio bus: c asks for an empty range at 0x5000$"):
        bus.insert(Recorder("c"), 0x5000, 0)
    assert bus.name == "mmio"


# --- whatever the guest does -------------------------------------------------------------------

ACCESSES = st.sampled_from([
    BYTE_WIDE,
    Access(frozenset({1, 2, 4})),
    Access(frozenset({1, 2, 4}), aligned=True),
    Access(frozenset({4, 8}), aligned=True),
    Access(frozenset({1, 2, 4, 8})),
])


@st.composite
def layouts(draw):
    """Up to five non-overlapping ranges in [0, 0x100), each with its own Access."""
    cuts = sorted(draw(st.sets(st.integers(0, 0x100), min_size=2, max_size=10)))
    pairs = list(zip(cuts[::2], cuts[1::2], strict=False))
    return [(base, end - base, draw(ACCESSES)) for base, end in pairs]


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(layout=layouts(),
       accesses=st.lists(st.tuples(st.booleans(), st.integers(0, 0x108), st.sampled_from([1, 2, 4, 8])),
                         max_size=30))
def test_every_access_gets_width_bytes_and_devices_see_only_what_they_decode(layout, accesses):
    bus = Bus("mmio")
    devices = []
    for base, length, access in layout:
        dev = Recorder(f"d{base:x}", access)
        bus.insert(dev, base, length)
        devices.append((base, length, dev))

    def owner(address):
        return next(((base, length, dev) for base, length, dev in devices if base <= address < base + length),
                    None)

    def expected(address, size):
        """What a read returns, from the rules in bus.py's docstring."""
        found = owner(address)
        if found is None:
            return b"\xff" * size
        base, length, dev = found
        offset = address - base
        access = dev.access
        if size in access.widths and offset + size <= length and not (access.aligned and offset % size):
            return bytes([offset & 0xFF]) * size
        if access.byte_wide and size > 1:
            return b"".join(expected(address + i, 1) for i in range(size))
        return b"\xff" * size

    for is_write, address, size in accesses:
        if is_write:
            bus.write(address, bytes(size))
        else:
            data = bus.read(address, size)
            assert len(data) == size
            assert data == expected(address, size)
    for _base, length, dev in devices:
        for kind, offset, payload in dev.accesses:
            size = payload if kind == "r" else len(payload)
            assert size in dev.access.widths and 0 <= offset and offset + size <= length
            assert not (dev.access.aligned and offset % size)
