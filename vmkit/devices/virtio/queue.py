"""A split virtqueue (virtio 1.x, section 2.7), read with suspicion.

Everything in the rings is written by the guest and treated as hostile: indices,
descriptor addresses and lengths, chain links and flags are all checked against
the queue size and guest memory. A violation raises VirtqueueError; the device then
marks itself DEVICE_NEEDS_RESET and stops using the queue. Nothing outside guest
memory is ever read or written.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vmkit.memory import GuestMemory, GuestMemoryError

MAX_QUEUE_SIZE = 256
DESC_SIZE = 16
DESCRIPTOR = struct.Struct("<QIHH")      # address, length, flags, next
USED_ELEMENT = struct.Struct("<II")      # id, len
U16 = struct.Struct("<H")
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1


class VirtqueueError(Exception):
    """The guest put something invalid in a virtqueue."""


class Buffer(NamedTuple):
    address: int
    length: int


class DescriptorChain(NamedTuple):
    """One request: buffers the device reads, then buffers it writes."""

    head: int
    readable: list[Buffer]
    writable: list[Buffer]


class _Rings(NamedTuple):
    """Views of one queue's three rings in guest memory, for the layout in `key`.

    The rings' flags and index words are also seen as 16-bit items (`avail_words`, `used_words`),
    so each index is read and written with one 16-bit access: the driver reads and writes them while
    the device does, and a byte-wise access (struct's "<H") could let it see half an update.
    """

    key: tuple[object, ...]
    desc: memoryview
    avail: memoryview
    used: memoryview
    avail_words: memoryview        # [flags, idx]
    used_words: memoryview         # [flags, idx]


class Virtqueue:
    """Driver-side addresses and device-side indices of one queue."""

    def __init__(self, max_size: int = MAX_QUEUE_SIZE, index: int = 0) -> None:
        self.max_size = max_size
        self.index = index              # which of its device's queues this is (rx, tx, ...)
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.msix_vector = 0xFFFF
        self.last_avail = 0
        self.next_used = 0
        self._rings: _Rings | None = None

    def _ring_views(self, memory: GuestMemory) -> _Rings:
        """The rings as views of guest memory, made again whenever the layout (or memory) changed."""
        key = (memory, self.size, self.desc_table, self.avail_ring, self.used_ring)
        rings = self._rings
        if rings is None or rings.key != key:
            size = self.size
            avail, used = memory.view(self.avail_ring, 6 + 2 * size), memory.view(self.used_ring, 6 + 8 * size)
            rings = _Rings(key, memory.view(self.desc_table, DESC_SIZE * size), avail, used,
                           avail[:4].cast("H"), used[:4].cast("H"))
            self._rings = rings
        return rings

    def validate_layout(self, memory: GuestMemory) -> None:
        """Check size and ring placement when the driver enables the queue."""
        size = self.size
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        for name, address, length, align in (
            ("descriptor table", self.desc_table, DESC_SIZE * size, 16),
            ("available ring", self.avail_ring, 6 + 2 * size, 2),
            ("used ring", self.used_ring, 6 + 8 * size, 4),
        ):
            if address % align:
                raise VirtqueueError(f"{name} at {address:#x} is not {align}-byte aligned")
            if not memory.contains(address, length):
                raise VirtqueueError(f"{name} [{address:#x}, +{length:#x}) is outside guest memory")

    def pop(self, memory: GuestMemory) -> DescriptorChain | None:
        """The next available chain, or None when the driver has offered nothing new."""
        try:
            rings = self._ring_views(memory)
            avail_idx = rings.avail_words[1]
            pending = (avail_idx - self.last_avail) & 0xFFFF
            if pending == 0:
                return None
            if pending > self.size:
                raise VirtqueueError(f"available index moved by {pending}, more than the queue size {self.size}")
            head = U16.unpack_from(rings.avail, 4 + 2 * (self.last_avail % self.size))[0]
            chain = self._walk(memory, rings.desc, head)
        except GuestMemoryError as exc:
            raise VirtqueueError(str(exc)) from None
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def _walk(self, memory: GuestMemory, table: memoryview, head: int) -> DescriptorChain:
        readable: list[Buffer] = []
        writable: list[Buffer] = []
        index = head
        size = self.size
        for _ in range(size):                       # a chain longer than the queue is a loop
            if index >= size:
                raise VirtqueueError(f"descriptor index {index} is outside the queue (size {size})")
            address, length, flags, next_index = DESCRIPTOR.unpack_from(table, DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                raise VirtqueueError(f"descriptor {index} is indirect, which was not negotiated")
            if not memory.contains(address, length):
                raise VirtqueueError(
                    f"descriptor {index} points at [{address:#x}, +{length:#x}), outside guest memory")
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append(Buffer(address, length))
            elif writable:
                raise VirtqueueError(f"descriptor {index} is device-readable after a device-writable one")
            else:
                readable.append(Buffer(address, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                return DescriptorChain(head, readable, writable)
            index = next_index
        raise VirtqueueError(f"descriptor chain from {head} is longer than the queue: a loop")

    def put_back(self) -> None:
        """Offer the chain pop() returned last again on the next pop(): for a device that must wait
        before serving it (a rate limit), having not touched it."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    def push_used(self, memory: GuestMemory, head: int, written: int) -> None:
        """Return a chain to the driver, saying how many bytes the device wrote."""
        rings = self._ring_views(memory)
        USED_ELEMENT.pack_into(rings.used, 4 + 8 * (self.next_used % self.size), head, written)
        self.next_used = (self.next_used + 1) & 0xFFFF
        rings.used_words[1] = self.next_used                # the index, after the element, in one store

    def set_kicks_wanted(self, memory: GuestMemory, wanted: bool) -> None:
        """Tell the driver whether to notify (kick) the device when it offers buffers: not while the
        device is serving the queue anyway (VIRTQ_USED_F_NO_NOTIFY; spec 2.7.10)."""
        self._ring_views(memory).used_words[0] = 0 if wanted else VIRTQ_USED_F_NO_NOTIFY

    def available_index(self, memory: GuestMemory) -> int:
        """The driver's available index as it is now (how many buffers it has offered, mod 2**16)."""
        return self._ring_views(memory).avail_words[1]

    def interrupt_suppressed(self, memory: GuestMemory) -> bool:
        flags = self._ring_views(memory).avail_words[0]
        return bool(flags & VIRTQ_AVAIL_F_NO_INTERRUPT)
