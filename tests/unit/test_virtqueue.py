"""Split virtqueues under hostile drivers: every bad ring or descriptor is caught, nothing leaks."""

import struct

import pytest

from vmkit.devices.virtio.queue import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Virtqueue,
    VirtqueueError,
)
from vmkit.memory import GuestMemory

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
