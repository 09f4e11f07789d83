"""GuestMemory: layout around the MMIO hole and bounds-checked access.

The expected values are the x86 layout vmkit documents (docs/architecture.md): RAM from 0 up to
3 GiB, the 32-bit MMIO hole [3 GiB, 4 GiB), and the rest of RAM from 4 GiB; an access is valid only
when every byte of it lies in one RAM region.
"""

import ctypes
import mmap
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.memory import GuestAddress, GuestMemory, GuestMemoryError, MemoryRegion, ram_layout

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
FUZZ = settings(max_examples=100, derandomize=True, database=None, deadline=None)


def test_layout_leaves_a_hole_below_4_gib():
    assert ram_layout(64 * MIB) == [(0, 64 * MIB)]
    assert ram_layout(3 * GIB) == [(0, 3 * GIB)]                          # exactly up to the hole
    assert ram_layout(3 * GIB + 1) == [(0, 3 * GIB), (4 * GIB, 1)]        # one byte beyond it
    assert ram_layout(5 * GIB) == [(0, 3 * GIB), (4 * GIB, 2 * GIB)]
    assert ram_layout(1) == [(0, 1)]


@pytest.mark.parametrize("size", [0, -1, -4096])
def test_layout_refuses_an_empty_or_negative_size(size):
    with pytest.raises(ValueError, match="^memory size must be positive$"):
        ram_layout(size)


@pytest.fixture
def memory():
    mem = GuestMemory.create(4 * MIB)
    yield mem
    mem.close()


def test_read_write_round_trip(memory):
    memory.write(0x1000, b"vmkit")
    assert memory.read(0x1000, 5) == b"vmkit"
    memory.write_u64(0x2000, 0x8877665544332211)                           # little-endian, unsigned
    assert memory.read(0x2000, 8) == bytes.fromhex("1122334455667788")
    assert memory.read_u32(0x2000) == 0x44332211
    assert memory.read_u32(0x2004) == 0x88776655                            # high bit set: unsigned
    assert memory.read(0x2008, 1) == b"\0"                                  # u64 writes 8 bytes only


def test_fixed_width_accesses_are_bounds_checked_at_the_end(memory):
    memory.write_u64(4 * MIB - 8, 1)
    assert memory.read_u32(4 * MIB - 4) == 0
    with pytest.raises(GuestMemoryError):
        memory.write_u64(4 * MIB - 7, 1)
    with pytest.raises(GuestMemoryError):
        memory.read_u32(4 * MIB - 3)


def test_view_is_zero_copy(memory):
    view = memory.view(0x3000, 4)
    view[:] = b"abcd"
    assert memory.read(0x3000, 4) == b"abcd"
    assert len(memory.view(0x3000, 0)) == 0


def test_the_first_and_the_last_byte_of_ram_are_guest_ram(memory):
    memory.write(0, b"\x01")
    memory.write(4 * MIB - 1, b"\x02")
    assert memory.read(0, 1) == b"\x01" and memory.read(4 * MIB - 1, 1) == b"\x02"
    assert memory.read(0, 4 * MIB)[::4 * MIB - 1] == b"\x01\x02"              # the whole of RAM
    assert memory.contains(0) and memory.contains(4 * MIB - 1) and memory.contains(0, 4 * MIB)
    assert memory.contains(4 * MIB - 1, 1)                                  # default length is one byte
    assert memory.contains(4 * MIB - 4, 4) and memory.contains(4 * MIB - 4)


@pytest.mark.parametrize("address,length", [
    (4 * MIB, 1),            # just past the end
    (4 * MIB, 0),            # an empty buffer that starts past the end
    (4 * MIB - 1, 2),        # the last byte and one byte past it
    (4 * MIB - 2, 4),        # crossing the end
    (0, 4 * MIB + 1),        # all of RAM and one byte more
    (-1, 1),                 # negative
    (-1, 0),
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


def test_the_error_names_the_access_and_why(memory):
    with pytest.raises(GuestMemoryError) as past:
        memory.read(4 * MIB - 2, 4)
    assert (past.value.address, past.value.length) == (4 * MIB - 2, 4)
    assert str(past.value) == "guest access [0x3ffffe, +0x4) is crossing the end of guest RAM"
    with pytest.raises(GuestMemoryError) as outside:
        memory.read(1 << 40, 8)
    assert str(outside.value) == "guest access [0x10000000000, +0x8) is not inside guest RAM"
    with pytest.raises(GuestMemoryError) as malformed:
        memory.read(0x1000, -1)
    assert (malformed.value.address, malformed.value.length) == (0x1000, -1)
    assert str(malformed.value) == "guest access [0x1000, +-0x1) is malformed"


# --- several regions -----------------------------------------------------------------------------

def anonymous_region(start: int, size: int) -> MemoryRegion:
    mapping = mmap.mmap(-1, size)
    return MemoryRegion(GuestAddress(start), size, mapping, ctypes.addressof(ctypes.c_char.from_buffer(mapping)))


@pytest.fixture
def gappy():
    """RAM at [0x10000, 0x12000) and [0x20000, 0x21000), given out of order; nothing else."""
    mem = GuestMemory([anonymous_region(0x20000, 0x1000), anonymous_region(0x10000, 0x2000)], memfd=-1)
    yield mem
    mem.close()


def test_regions_are_kept_in_address_order(gappy):
    assert [(int(r.start), r.size, r.end) for r in gappy.regions] == [(0x10000, 0x2000, 0x12000),
                                                                     (0x20000, 0x1000, 0x21000)]
    assert gappy.size == 0x3000


def test_an_access_in_a_region_that_does_not_start_at_zero_lands_at_its_offset(gappy):
    gappy.write(0x10000, b"A")
    gappy.write(0x11FFF, b"B")
    gappy.write(0x20000, b"C")
    gappy.write(0x20FFC, b"DDDD")
    low, high = gappy.regions
    assert low.mapping[0:1] == b"A" and low.mapping[0x1FFF:0x2000] == b"B"
    assert high.mapping[0:1] == b"C" and high.mapping[0xFFC:0x1000] == b"DDDD"
    assert gappy.read(0x11FFF, 1) == b"B" and gappy.read(0x20FFC, 4) == b"DDDD"


@pytest.mark.parametrize("address,length", [
    (0xFFFF, 1),             # the byte below the first region
    (0x11FFF, 2),            # the last byte of a region and the hole after it
    (0x12000, 1),            # the first byte of the hole
    (0x12000, 0),
    (0x1FFFF, 2),            # from the hole into the next region
    (0x10000, 0x11001),      # across the hole, starting and ending in RAM
    (0x21000, 1),            # past the last region
])
def test_holes_between_regions_are_not_ram(gappy, address, length):
    assert not gappy.contains(address, length)
    with pytest.raises(GuestMemoryError):
        gappy.read(address, length)


def test_a_machine_above_3_gib_has_ram_again_at_4_gib_backed_by_the_same_memfd():
    memory = GuestMemory.create(3 * GIB + 8 * KIB)
    try:
        assert [(int(r.start), r.size) for r in memory.regions] == [(0, 3 * GIB), (4 * GIB, 8 * KIB)]
        assert memory.size == 3 * GIB + 8 * KIB
        memory.write(3 * GIB - 4, b"low!")
        memory.write(4 * GIB, b"high")
        memory.write(4 * GIB + 8 * KIB - 1, b"$")
        # one file: low RAM at file offset 0, RAM from 4 GiB right after it (what KVM is given)
        assert os.pread(memory.memfd, 4, 3 * GIB - 4) == b"low!"
        assert os.pread(memory.memfd, 4, 3 * GIB) == b"high"
        assert os.pread(memory.memfd, 1, 3 * GIB + 8 * KIB - 1) == b"$"
        assert os.fstat(memory.memfd).st_size == 3 * GIB + 8 * KIB
        for region in memory.regions:                      # the host addresses KVM maps
            first = ctypes.string_at(region.host_address, 4)
            assert first == memory.read(region.start, 4)
        assert ctypes.string_at(memory.regions[1].host_address, 4) == b"high"
        for address, length in [(3 * GIB - 4, 5), (3 * GIB, 1), (4 * GIB - 1, 1), (4 * GIB + 8 * KIB, 1)]:
            assert not memory.contains(address, length)
    finally:
        memory.close()


def test_ram_is_a_named_memfd_and_close_releases_it_once():
    memory = GuestMemory.create(64 * KIB, name="vmkit-test-ram")
    fd = memory.memfd
    assert os.readlink(f"/proc/self/fd/{fd}") == "/memfd:vmkit-test-ram (deleted)"
    assert os.get_inheritable(fd) is False                 # not leaked into child processes
    default = GuestMemory.create(4 * KIB)
    assert os.readlink(f"/proc/self/fd/{default.memfd}") == "/memfd:vmkit-guest-ram (deleted)"
    default.close()
    memory.close()
    assert memory.memfd == -1
    memory.close()                                         # a second close is harmless
    assert memory.memfd == -1


def test_ram_made_while_stdin_is_closed_lives_at_fd_0_and_is_closed_too():
    """`vmkit run <&-`: the memfd gets the lowest free descriptor, 0, and close() must release it."""
    saved = os.dup(0)
    try:
        os.close(0)
        memory = GuestMemory.create(64 * KIB)
        assert memory.memfd == 0
        memory.close()
        assert memory.memfd == -1
        with pytest.raises(OSError):
            os.fstat(0)
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_close_with_a_view_still_held_does_not_raise():
    memory = GuestMemory.create(64 * KIB)
    held = memory.view(0x100, 4)
    memory.close()
    assert memory.memfd == -1
    held.release()


def test_a_failed_mapping_closes_the_memfd(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "no room")

    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(mmap, "mmap", refuse)
    with pytest.raises(OSError, match="no room"):
        GuestMemory.create(64 * KIB)
    monkeypatch.undo()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_guest_address_arithmetic_keeps_the_type():
    addr = GuestAddress(0x1234)
    assert isinstance(addr + 0x10, GuestAddress) and addr + 0x10 == 0x1244
    assert isinstance(addr - 0x34, GuestAddress) and addr - 0x34 == 0x1200
    assert addr.align_up(0x1000) == 0x2000
    assert GuestAddress(0x2000).align_up(0x1000) == 0x2000                 # already aligned
    assert GuestAddress(0x2001).align_up(2) == 0x2002
    assert isinstance(addr.align_up(16), GuestAddress)
    assert repr(addr) == "GuestAddress(0x1234)"


# --- whatever the guest asks for ---------------------------------------------------------------

@FUZZ
@given(address=st.integers(-8, 0x30000), length=st.integers(-2, 0x12000))
def test_an_access_is_allowed_exactly_when_every_byte_is_in_one_region(address, length):
    regions = [(0x10000, 0x2000), (0x20000, 0x1000)]
    mem = GuestMemory([anonymous_region(start, size) for start, size in regions], memfd=-1)
    try:
        inside = length >= 0 and any(start <= address and address + max(length, 1) <= start + size
                                     for start, size in regions)
        assert mem.contains(address, length) is inside
        if inside:
            payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
            mem.write(address, payload)
            assert mem.read(address, length) == payload
        else:
            with pytest.raises(GuestMemoryError):
                mem.read(address, length)
    finally:
        mem.close()



@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 5 * 4096), length=st.integers(0, 6 * 4096))
def test_zero_clears_exactly_the_range_and_nothing_around_it(start, length):
    memory = GuestMemory.create(64 * 1024)
    try:
        pattern = bytes((i * 7 + 1) % 251 + 1 for i in range(memory.size))
        memory.write(0, pattern)
        memory.zero(start, length)
        data = memory.read(0, memory.size)
        assert data[start:start + length] == bytes(length)
        assert data[:start] == pattern[:start]
        assert data[start + length:] == pattern[start + length:]
    finally:
        memory.close()


def test_zeroing_fresh_ram_allocates_none_of_it():
    memory = GuestMemory.create(4 << 20)
    try:
        memory.zero(4096 + 100, (3 << 20) - 200)
        assert os.fstat(memory.memfd).st_blocks * 512 <= 2 * 4096      # the two partial pages at most
        memory.write(0, bytes(3 << 20))                                  # writing zeros allocates
        assert os.fstat(memory.memfd).st_blocks * 512 >= 3 << 20
    finally:
        memory.close()


def test_zero_outside_ram_is_refused_and_clears_nothing(memory):
    memory.write(memory.size - 8, b"\xff" * 8)
    with pytest.raises(GuestMemoryError):
        memory.zero(memory.size - 8, 16)
    assert memory.read(memory.size - 8, 8) == b"\xff" * 8
