"""GuestMemory: layout around the MMIO hole and bounds-checked access."""

import pytest

from vmkit.memory import GuestAddress, GuestMemory, GuestMemoryError, ram_layout
from vmkit.memory.guest_memory import GIB, MIB


def test_layout_leaves_a_hole_below_4_gib():
    assert ram_layout(64 * MIB) == [(0, 64 * MIB)]
    assert ram_layout(5 * GIB) == [(0, 3 * GIB), (4 * GIB, 2 * GIB)]


@pytest.fixture
def memory():
    mem = GuestMemory.create(4 * MIB)
    yield mem
    mem.close()


def test_read_write_round_trip(memory):
    memory.write(0x1000, b"vmkit")
    assert memory.read(0x1000, 5) == b"vmkit"
    memory.write_u64(0x2000, 0x1122334455667788)
    assert memory.read_u32(0x2000) == 0x55667788


def test_view_is_zero_copy(memory):
    view = memory.view(0x3000, 4)
    view[:] = b"abcd"
    assert memory.read(0x3000, 4) == b"abcd"


@pytest.mark.parametrize("address,length", [
    (4 * MIB, 1),            # just past the end
    (4 * MIB - 2, 4),        # crossing the end
    (-1, 1),                 # negative
    (0x1000, -1),            # negative length
    (1 << 40, 8),            # far outside
])
def test_out_of_bounds_access_is_refused_and_writes_nothing(memory, address, length):
    before = memory.read(4 * MIB - 16, 16)
    with pytest.raises(GuestMemoryError):
        memory.view(address, length)
    with pytest.raises(GuestMemoryError):
        memory.read(address, length)
    if length > 0:
        with pytest.raises(GuestMemoryError):
            memory.write(address, b"\xff" * length)
    assert memory.read(4 * MIB - 16, 16) == before
    assert not memory.contains(address, length)


def test_guest_address_arithmetic_keeps_the_type():
    addr = GuestAddress(0x1234)
    assert isinstance(addr + 0x10, GuestAddress)
    assert addr.align_up(0x1000) == 0x2000
    assert repr(addr) == "GuestAddress(0x1234)"
