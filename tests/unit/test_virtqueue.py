"""Split virtqueues under hostile drivers: every bad ring or descriptor is caught, nothing leaks."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.devices.virtio.queue import Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory

# virtq_desc flags, virtio 1.x section 2.7.5
VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT = 1, 2, 4

DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
SIZE = 8


@pytest.fixture
def ring():
    memory = GuestMemory.create(4 << 20)
    queue = Virtqueue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = SIZE, DESC, AVAIL, USED
    queue.validate_layout(memory)
    yield memory, queue
    memory.close()


def put_desc(memory, index, address, length, flags=0, next_=0):
    memory.write(DESC + 16 * index, struct.pack("<QIHH", address, length, flags, next_))


def offer(memory, heads):
    for i, head in enumerate(heads):
        memory.write(AVAIL + 4 + 2 * i, struct.pack("<H", head))
    memory.write(AVAIL + 2, struct.pack("<H", len(heads)))


def test_a_good_chain_round_trip(ring):
    memory, queue = ring
    put_desc(memory, 0, 0x20000, 16, VIRTQ_DESC_F_NEXT, 1)
    put_desc(memory, 1, 0x21000, 64, VIRTQ_DESC_F_WRITE)
    offer(memory, [0])
    chain = queue.pop(memory)
    assert chain.head == 0 and chain.readable == [(0x20000, 16)] and chain.writable == [(0x21000, 64)]
    assert queue.pop(memory) is None
    queue.push_used(memory, chain.head, 64)
    assert struct.unpack("<HHII", memory.read(USED, 12)) == (0, 1, 0, 64)


@pytest.mark.parametrize("setup,message", [
    (lambda m: (put_desc(m, 0, 0x20000, 16, VIRTQ_DESC_F_NEXT, 1),
                put_desc(m, 1, 0x20000, 16, VIRTQ_DESC_F_NEXT, 0)), "a loop"),
    (lambda m: put_desc(m, 0, 0x20000, 16, VIRTQ_DESC_F_NEXT, 200), "index 200 is outside the queue"),
    (lambda m: put_desc(m, 0, 0x7FFFFFFF0000, 4096, VIRTQ_DESC_F_WRITE), "outside guest memory"),
    (lambda m: put_desc(m, 0, (4 << 20) - 8, 16, 0), "outside guest memory"),
    (lambda m: put_desc(m, 0, 0x20000, 16, VIRTQ_DESC_F_INDIRECT), "indirect"),
    (lambda m: (put_desc(m, 0, 0x20000, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
                put_desc(m, 1, 0x21000, 16, 0)), "readable after a device-writable"),
])
def test_hostile_descriptors_are_refused(ring, setup, message):
    memory, queue = ring
    setup(memory)
    offer(memory, [0])
    before = memory.read(USED, 4 + 8 * SIZE)
    with pytest.raises(VirtqueueError, match=message):
        queue.pop(memory)
    assert memory.read(USED, 4 + 8 * SIZE) == before       # nothing was returned


def test_bad_head_and_runaway_available_index(ring):
    memory, queue = ring
    offer(memory, [SIZE + 3])
    with pytest.raises(VirtqueueError, match="outside the queue"):
        queue.pop(memory)
    queue.last_avail = 0
    memory.write(AVAIL + 2, struct.pack("<H", 500))
    with pytest.raises(VirtqueueError, match="moved by 500"):
        queue.pop(memory)


@pytest.mark.parametrize("field,value,message", [
    ("size", 6, "not a power of two"),
    ("size", 512, "not a power of two in 1..256"),
    ("desc_table", DESC + 8, "not 16-byte aligned"),
    ("used_ring", (4 << 20) - 16, "outside guest memory"),
])
def test_layout_is_validated_when_the_queue_is_enabled(field, value, message):
    memory = GuestMemory.create(4 << 20)
    queue = Virtqueue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = SIZE, DESC, AVAIL, USED
    setattr(queue, field, value)
    with pytest.raises(VirtqueueError, match=message):
        queue.validate_layout(memory)
    memory.close()


# --- the edges of each check, from virtio 1.x section 2.7 ------------------------------------------

def test_a_next_index_equal_to_the_queue_size_is_outside_the_queue(ring):
    memory, queue = ring
    put_desc(memory, 0, 0x20000, 16, VIRTQ_DESC_F_NEXT, 8)             # indices of a queue of 8: 0..7
    offer(memory, [0])
    with pytest.raises(VirtqueueError, match="^descriptor index 8 is outside the queue \\(size 8\\)$"):
        queue.pop(memory)


def test_a_head_equal_to_the_queue_size_is_outside_the_queue(ring):
    memory, queue = ring
    offer(memory, [8])
    with pytest.raises(VirtqueueError, match="^descriptor index 8 is outside the queue \\(size 8\\)$"):
        queue.pop(memory)


@pytest.mark.parametrize("index", [0x8000, 0xFFFF])
def test_indices_are_unsigned(ring, index):
    memory, queue = ring
    offer(memory, [index])
    with pytest.raises(VirtqueueError, match=f"^descriptor index {index} is outside the queue"):
        queue.pop(memory)
    queue.last_avail = 0
    put_desc(memory, 0, 0x20000, 16, VIRTQ_DESC_F_NEXT, index)
    offer(memory, [0])
    with pytest.raises(VirtqueueError, match=f"^descriptor index {index} is outside the queue"):
        queue.pop(memory)


def test_the_last_index_and_a_chain_as_long_as_the_queue_are_fine(ring):
    memory, queue = ring
    for i in range(8):                                    # 7 -> 6 -> ... -> 0: eight descriptors
        put_desc(memory, i, 0x20000 + 0x100 * i, 0x10 + i, VIRTQ_DESC_F_NEXT if i else 0, max(i - 1, 0))
    offer(memory, [7])
    chain = queue.pop(memory)
    assert chain.head == 7 and chain.writable == []
    assert chain.readable == [(0x20000 + 0x100 * i, 0x10 + i) for i in range(7, -1, -1)]


def test_readable_buffers_then_writable_ones(ring):
    memory, queue = ring
    put_desc(memory, 2, 0x20000, 1, VIRTQ_DESC_F_NEXT, 5)
    put_desc(memory, 5, 0x20010, 2, VIRTQ_DESC_F_NEXT, 1)
    put_desc(memory, 1, 0x20020, 3, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 6)
    put_desc(memory, 6, 0x20030, 4, VIRTQ_DESC_F_WRITE | 0xFFF8, 0)    # unknown flag bits are ignored
    offer(memory, [2])
    chain = queue.pop(memory)
    assert chain == (2, [(0x20000, 1), (0x20010, 2)], [(0x20020, 3), (0x20030, 4)])


@pytest.mark.parametrize("address,length,ok", [
    ((4 << 20) - 16, 16, True),           # ends at the last byte of RAM
    ((4 << 20) - 16, 17, False),          # one byte past it
    ((4 << 20) - 1, 1, True),
    ((4 << 20) - 1, 2, False),
    ((4 << 20), 0, False),                # an empty buffer must still start in RAM
    (0, 0, True),
    (0xFFFFFFFFFFFFFFF0, 0x20, False),    # wraps past 2**64
    (0x20000, 0xFFFFFFFF, False),
])
def test_a_buffer_must_lie_wholly_in_guest_ram(ring, address, length, ok):
    memory, queue = ring
    put_desc(memory, 0, address, length, VIRTQ_DESC_F_WRITE)
    offer(memory, [0])
    if ok:
        assert queue.pop(memory).writable == [(address, length)]
    else:
        with pytest.raises(VirtqueueError, match=f"^descriptor 0 points at \\[{address:#x}, \\+{length:#x}\\), "
                                                 "outside guest memory$"):
            queue.pop(memory)


def test_the_available_index_may_run_ahead_by_the_queue_size_but_no_more(ring):
    memory, queue = ring
    put_desc(memory, 0, 0x20000, 16, VIRTQ_DESC_F_WRITE)
    for i in range(8):
        memory.write(AVAIL + 4 + 2 * i, struct.pack("<H", 0))
    memory.write(AVAIL + 2, struct.pack("<H", 8))                       # eight chains: a full ring
    assert [queue.pop(memory).head for _ in range(8)] == [0] * 8
    assert queue.pop(memory) is None and queue.last_avail == 8
    memory.write(AVAIL + 2, struct.pack("<H", 8 + 9))                   # nine more: impossible
    with pytest.raises(VirtqueueError, match="^available index moved by 9, more than the queue size 8$"):
        queue.pop(memory)
    assert queue.last_avail == 8                                        # nothing consumed


def test_indices_wrap_at_2_to_the_16(ring):
    memory, queue = ring
    put_desc(memory, 3, 0x20000, 16, VIRTQ_DESC_F_WRITE)
    put_desc(memory, 4, 0x20100, 16, VIRTQ_DESC_F_WRITE)
    queue.last_avail = 0xFFFF
    memory.write(AVAIL + 4 + 2 * 7, struct.pack("<H", 3))               # slot 0xffff % 8 = 7
    memory.write(AVAIL + 4, struct.pack("<H", 4))                       # slot 0x10000 % 8 = 0
    memory.write(AVAIL + 2, struct.pack("<H", 1))                       # 0xffff -> 0x0001: two chains
    assert queue.pop(memory).head == 3 and queue.last_avail == 0
    assert queue.pop(memory).head == 4 and queue.last_avail == 1
    assert queue.pop(memory) is None


def test_chains_are_taken_from_consecutive_ring_slots(ring):
    memory, queue = ring
    for i in range(8):
        put_desc(memory, i, 0x20000 + 0x10 * i, 16, VIRTQ_DESC_F_WRITE)
    offer(memory, [5, 2, 7])
    assert [queue.pop(memory).head for _ in range(3)] == [5, 2, 7]


def test_used_elements_go_to_consecutive_slots_and_the_index_wraps(ring):
    memory, queue = ring
    for i in range(9):
        queue.push_used(memory, i % 8, 0x1000 * i)
    elements = [struct.unpack("<II", memory.read(USED + 4 + 8 * i, 8)) for i in range(8)]
    assert elements[0] == (0, 0x8000) and elements[1:] == [(i, 0x1000 * i) for i in range(1, 8)]
    assert struct.unpack("<H", memory.read(USED + 2, 2))[0] == 9
    queue.next_used = 0xFFFF
    queue.push_used(memory, 7, 0xFFFFFFFF)                             # a u32 length, unsigned
    assert struct.unpack("<II", memory.read(USED + 4 + 8 * 7, 8)) == (7, 0xFFFFFFFF)
    assert struct.unpack("<H", memory.read(USED + 2, 2))[0] == 0 and queue.next_used == 0
    queue.next_used = 0x7FFF
    queue.push_used(memory, 0, 1)
    assert struct.unpack("<H", memory.read(USED + 2, 2))[0] == 0x8000
    assert memory.read(USED, 2) == b"\0\0"                             # the device never sets used flags


@pytest.mark.parametrize("flags,suppressed", [(0, False), (1, True), (2, False), (0xFFFE, False), (0x8001, True)])
def test_virtq_avail_f_no_interrupt_is_bit_0_of_the_available_flags(ring, flags, suppressed):
    memory, queue = ring
    memory.write(AVAIL, struct.pack("<H", flags))
    assert queue.interrupt_suppressed(memory) is suppressed


def test_a_ring_outside_memory_is_reported_not_raised():
    memory = GuestMemory.create(1 << 20)
    queue = Virtqueue(8)
    queue.size, queue.avail_ring = 8, 0x7FFFFFFF0000                   # never validated
    with pytest.raises(VirtqueueError, match=r"^guest access \[0x7fffffff0000, \+0x16\) is not inside guest RAM$"):
        queue.pop(memory)
    memory.close()


def test_reset_forgets_the_driver_s_settings():
    queue = Virtqueue(64)
    queue.size, queue.ready, queue.desc_table, queue.avail_ring, queue.used_ring = 8, True, 16, 2, 4
    queue.msix_vector, queue.last_avail, queue.next_used = 1, 5, 6
    queue.reset()
    assert (queue.size, queue.ready, queue.desc_table, queue.avail_ring, queue.used_ring) == (64, False, 0, 0, 0)
    assert (queue.msix_vector, queue.last_avail, queue.next_used) == (0xFFFF, 0, 0)
    assert Virtqueue().max_size == 256


@pytest.mark.parametrize("size", [1, 2, 128, 256])
def test_every_power_of_two_up_to_the_maximum_is_a_queue_size(size):
    memory = GuestMemory.create(4 << 20)
    queue = Virtqueue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = size, DESC, AVAIL, USED
    queue.validate_layout(memory)
    memory.close()


@pytest.mark.parametrize("size", [0, 3, 12, 257, 0xFFFF])
def test_other_sizes_are_refused(size):
    memory = GuestMemory.create(4 << 20)
    queue = Virtqueue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = size, DESC, AVAIL, USED
    with pytest.raises(VirtqueueError, match=f"^queue size {size} is not a power of two in 1..256$"):
        queue.validate_layout(memory)
    memory.close()


END = 0x10000 + 0x1002          # a RAM region ending at an address that is 2 mod 4


@pytest.mark.parametrize("ring_name,field,length,align", [
    ("descriptor table", "desc_table", 16 * 8, 16),
    ("available ring", "avail_ring", 6 + 2 * 8, 2),     # flags, idx, ring[8], used_event
    ("used ring", "used_ring", 6 + 8 * 8, 4),           # flags, idx, ring[8] of (id, len), avail_event
])
def test_each_ring_must_fit_in_ram_to_the_byte_and_be_aligned(ring_name, field, length, align):
    import ctypes
    import mmap

    from vmkit.memory import GuestAddress, MemoryRegion

    mapping = mmap.mmap(-1, END - 0x10000)
    memory = GuestMemory([MemoryRegion(GuestAddress(0x10000), END - 0x10000, mapping,
                                       ctypes.addressof(ctypes.c_char.from_buffer(mapping)))], memfd=-1)

    def layout(address):
        queue = Virtqueue(8)
        queue.desc_table, queue.avail_ring, queue.used_ring = 0x10000, 0x10400, 0x10800
        setattr(queue, field, address)
        return queue

    last = (END - length) // align * align                             # the last aligned place it fits
    layout(last).validate_layout(memory)
    with pytest.raises(VirtqueueError, match=f"^{ring_name} \\[{last + align:#x}, \\+{length:#x}\\) is outside"):
        layout(last + align).validate_layout(memory)
    with pytest.raises(VirtqueueError, match=f"^{ring_name} at {last + align // 2:#x} is not {align}-byte aligned$"):
        layout(last + align // 2).validate_layout(memory)
    memory.close()


# --- whatever the guest puts in the rings -----------------------------------------------------------

RAM = 1 << 16


def reference_walk(descriptors, size, head):
    """The chain the spec's rules give, or None where a rule is broken."""
    readable, writable = [], []
    index = head
    for _ in range(size):
        if index >= size:
            return None
        address, length, flags, next_ = descriptors[index]
        inside = address + max(length, 1) <= RAM
        if flags & 4 or not inside or (not flags & 2 and writable):
            return None
        (writable if flags & 2 else readable).append((address, length))
        if not flags & 1:
            return head, readable, writable
        index = next_
    return None


@settings(max_examples=120, derandomize=True, database=None, deadline=None)
@given(size=st.sampled_from([1, 2, 4, 8]), last_avail=st.integers(0, 0xFFFF), data=st.data())
def test_pop_returns_buffers_inside_ram_or_raises_virtqueue_error(size, last_avail, data):
    """Mostly well-formed values, so that chains get walked to their end, with hostile ones mixed in."""
    def mostly(good, bad):
        return data.draw(good if data.draw(st.integers(0, 4)) else bad)

    index = st.integers(0, size - 1)
    descriptors = [(mostly(st.integers(0, RAM - 32), st.integers(RAM - 32, 2 ** 64 - 1)),
                    mostly(st.integers(0, 32), st.integers(0, 2 ** 32 - 1)),
                    mostly(st.integers(0, 3), st.integers(0, 0xFFFF)),        # NEXT 1, WRITE 2, INDIRECT 4
                    mostly(index, st.integers(0, 0xFFFF))) for _ in range(size)]
    heads = [mostly(index, st.integers(0, 0xFFFF)) for _ in range(size)]
    ahead = mostly(st.integers(0, size), st.integers(0, 0xFFFF))
    avail_idx = (last_avail + ahead) & 0xFFFF
    memory = GuestMemory.create(RAM)
    try:
        queue = Virtqueue(16)
        queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = size, 0x1000, 0x2000, 0x3000
        queue.validate_layout(memory)
        queue.last_avail = last_avail
        for i, (address, length, flags, next_) in enumerate(descriptors):
            memory.write(0x1000 + 16 * i, struct.pack("<QIHH", address, length, flags, next_))
        memory.write(0x2004, struct.pack(f"<{size}H", *heads))
        memory.write(0x2002, struct.pack("<H", avail_idx))
        for n in range(min(ahead, size) + 1):
            slot = (last_avail + n) % size
            try:
                chain = queue.pop(memory)
            except VirtqueueError:
                assert ahead > size or reference_walk(descriptors, size, heads[slot]) is None
                break
            if n == ahead:
                assert chain is None
                break
            assert chain == reference_walk(descriptors, size, heads[slot])
            for buffer in chain.readable + chain.writable:
                assert memory.contains(buffer.address, buffer.length)
    finally:
        memory.close()
