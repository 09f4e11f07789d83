"""virtio-net (network device, type 1; virtio 1.x section 5.1) over a host backend.

Two queues: receive (0) and transmit (1), no control queue. The configuration space is the MAC,
the link status (always up), one queue pair and the MTU. Every frame in either queue starts with
the 12-byte virtio_net_hdr.

- Receive: when the backend's fd is readable the I/O thread serves the rx queue: each frame goes
  into the driver's next chain (views of guest memory, no copies for a tap), header first, and the
  chain is returned with the length written. With no rx buffers offered the fd is no longer
  watched until the driver kicks rx, so the loop never spins on a frame it has nowhere to put. With
  mergeable buffers (MRG_RXBUF) a frame longer than its first chain (a TSO segment) goes on into
  as many more chains as it needs, copied from where the backend spilled it; when the driver has
  not offered enough yet, the frame waits, half placed, for its next rx kick. `num_buffers` says
  how many chains a frame took. Without them a frame larger than its chain is dropped and counted.
- Transmit: each chain is a header and a frame, device-readable. A chain with device-writable
  buffers, or a frame shorter than an Ethernet header or longer than 65550 bytes, is returned
  unsent and counted; the backend's refusals are counted too. Nothing the guest writes ends the VM.
- Offloads: the device offers what the backend can honour. The guest offloads (receiving frames
  with partial checksums, TSO segments) reach the backend only through `activate`, with the
  features the driver accepted; until then the backend delivers whole, checksummed frames, and a
  received header carries no flags, which is right whatever the driver negotiated.
- Rate limits: a token bucket per direction (bytes and frames per second). A transmit over budget
  waits in its queue. A received frame is charged once it is read (its size is not known before):
  the one that finds the budget short is still delivered, and receiving stops (the fd unwatched,
  the backend's own queue holding the frames) until the budget has covered it.

`process` tells rx (queue 0) from tx (queue 1) by the queue's index.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

from vmkit.devices.rate_limiter import RateLimiter
from vmkit.devices.state import StateError
from vmkit.devices.virtio.device import DeviceHost
from vmkit.devices.virtio.net.backend import NetBackend
from vmkit.devices.virtio.net.header import (
    DEVICE_TYPE,
    ETH_HEADER,
    F_GUEST_CSUM,
    F_MAC,
    F_MRG_RXBUF,
    F_MTU,
    F_STATUS,
    HEADER_SIZE,
    MAX_FRAME,
    MAX_MTU,
    MIN_MTU,
    STATUS_LINK_UP,
    NetHeader,
    frame_room,
)
from vmkit.devices.virtio.pci_transport import VIRTIO_F_VERSION_1
from vmkit.devices.virtio.queue import Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory

RX_QUEUE, TX_QUEUE = 0, 1
RX_QUEUE_SIZE, TX_QUEUE_SIZE = 256, 128
RX, TX = 0, 1                             # queue indices
CONFIG = struct.Struct("<6sHHH")          # mac, status, max_virtqueue_pairs, mtu
NUM_BUFFERS_AT = 10
NUM_BUFFERS = struct.Struct("<H")
NO_OFFLOAD_FLAGS = NetHeader().pack()[:NUM_BUFFERS_AT]   # a header's fields before num_buffers, all zero


@dataclass
class NetCounters:
    """What crossed the device, and what it dropped (for tests and diagnostics)."""

    rx_frames: int = 0
    rx_bytes: int = 0
    rx_too_large: int = 0          # frames larger than the buffers the driver offered
    rx_errors: int = 0             # the backend failed to read
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_malformed: int = 0          # chains that are not a header and a frame the device may send
    tx_errors: int = 0             # the backend refused the frame


@dataclass
class _PartialFrame:
    """A received frame longer than its first chain, waiting for more chains (mergeable buffers)."""

    queue: Virtqueue
    header: list[memoryview]       # the first chain's buffers: the header is there
    used: list[tuple[int, int]]    # the chains filled so far: (head, bytes written)
    spill: memoryview              # what is still to be placed (a view: taking from it copies nothing)
    length: int                    # the whole frame, header included


@dataclass(frozen=True)
class NetState:
    """The device's guest-visible state, for snapshots: plain data, checked on restore."""

    mac: bytes
    mtu: int
    status: int
    offloads: int                  # the features the driver accepted, as `activate` was given them


class VirtioNet:
    """The device side of one NIC."""

    device_type = DEVICE_TYPE
    queue_sizes: tuple[int, ...] = (RX_QUEUE_SIZE, TX_QUEUE_SIZE)

    def __init__(self, backend: NetBackend, mac: bytes, mtu: int = 1500, label: str = "virtio-net",
                 rx_limiter: RateLimiter | None = None, tx_limiter: RateLimiter | None = None) -> None:
        if len(mac) != 6 or mac[0] & 1:
            raise ValueError(f"{mac.hex(':')} is not a unicast MAC address")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ValueError(f"MTU {mtu} is outside {MIN_MTU}..{MAX_MTU}")
        self.backend = backend
        self.label = label
        self.mac, self.mtu, self.status = bytes(mac), mtu, STATUS_LINK_UP
        self.features = VIRTIO_F_VERSION_1 | F_MAC | F_STATUS | F_MTU | backend.offloads
        self.negotiated = VIRTIO_F_VERSION_1
        self.rx_limiter = rx_limiter if rx_limiter is not None and rx_limiter.enabled else None
        self.tx_limiter = tx_limiter if tx_limiter is not None and tx_limiter.enabled else None
        self.counters = NetCounters()
        self._host: DeviceHost | None = None
        self._watch_lock = threading.Lock()
        self._watching = False
        self._rx_served = False
        self._rx_waiting = False          # a rate limit's timer will serve rx again
        self._rx_owed: int | None = None  # the size of a frame delivered before the budget covered it
        self._partial: _PartialFrame | None = None
        self._tx_waiting = False

    # --- the VirtioDevice protocol ---------------------------------------------------------------
    def config(self) -> bytes:
        return CONFIG.pack(self.mac, self.status, 1, self.mtu)

    def attach(self, host: DeviceHost) -> None:
        self._host = host                 # the fd is watched once the driver has offered rx buffers

    def activate(self, features: int) -> None:
        """The driver accepted `features` and set DRIVER_OK: deliver frames as they allow."""
        self.negotiated = features & self.features
        self.backend.set_offloads(self.negotiated)

    def reset(self) -> None:
        self._set_watch(False)
        self._partial = None              # its chains went with the queues
        if self.negotiated != VIRTIO_F_VERSION_1:
            self.negotiated = VIRTIO_F_VERSION_1
            self.backend.set_offloads(0)

    def process(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        if queue.index == RX:
            return self._receive(queue, memory)
        return self._transmit(queue, memory)

    def close(self) -> None:
        """Release the backend (after the I/O thread stopped; its selector may be closed already)."""
        try:
            self._set_watch(False)
        except (KeyError, ValueError, OSError):
            pass
        self.backend.close()

    # --- snapshots -------------------------------------------------------------------------------
    def save(self) -> NetState:
        """The state; a frame still waiting for buffers is dropped and its chains offered again, so
        the saved queues hold no chain the device took and did not return."""
        partial, self._partial = self._partial, None
        if partial is not None:
            _put_back(partial.queue, len(partial.used))
        return NetState(self.mac, self.mtu, self.status, self.negotiated)

    def restore(self, state: object) -> None:
        """Take a saved state after checking every field as untrusted (StateError names the first
        that is wrong); nothing changes when one is."""
        if not isinstance(state, NetState):
            raise StateError(f"state: expected a NetState, got {type(state).__name__}")
        if not isinstance(state.mac, bytes) or len(state.mac) != 6 or state.mac[0] & 1 or state.mac == bytes(6):
            raise StateError(f"mac: {state.mac!r} is not a unicast MAC address")
        if not _is_int(state.mtu) or not MIN_MTU <= state.mtu <= MAX_MTU:
            raise StateError(f"mtu: {state.mtu!r} is not in {MIN_MTU}..{MAX_MTU}")
        if not _is_int(state.status) or state.status & ~STATUS_LINK_UP or state.status < 0:
            raise StateError(f"status: {state.status!r} has bits other than LINK_UP")
        if not _is_int(state.offloads) or state.offloads < 0 or state.offloads & ~self.features:
            raise StateError(f"offloads: {state.offloads!r} has features this device does not offer "
                                f"({self.features:#x})")
        if not state.offloads & VIRTIO_F_VERSION_1:
            raise StateError("offloads: VERSION_1 is missing")
        self.mac, self.mtu, self.status = state.mac, state.mtu, state.status
        self.activate(state.offloads)

    # --- receive ---------------------------------------------------------------------------------
    def _set_watch(self, on: bool) -> None:
        with self._watch_lock:
            if self._host is None or on == self._watching or (on and not self.backend.alive):
                return
            if on:
                self._host.watch(self.backend.fd, self._readable)
            else:
                self._host.unwatch(self.backend.fd)
            self._watching = on

    def _readable(self) -> None:
        """The backend has a frame (I/O thread): serve rx. If the transport did not let the device
        run (no DRIVER_OK yet, or it needs a reset), stop watching until the driver kicks rx."""
        self._rx_served = False
        if self._host is not None:
            self._host.serve(RX_QUEUE)
        if not self._rx_served or not self.backend.alive:
            self._set_watch(False)

    def _rx_retry(self) -> None:
        self._rx_waiting = False
        if self._host is not None:
            self._host.serve(RX_QUEUE)

    def _receive(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        self._rx_served = True
        if self._rx_waiting:
            return False
        if self.rx_limiter is not None and self._rx_owed is not None:
            wait_ns = self.rx_limiter.consume(self._rx_owed)
            if wait_ns:
                self._wait_rx(wait_ns)
                return False
            self._rx_owed = None
        delivered = False
        if self._partial is not None:
            if not self._place_rest(queue, memory):
                self._set_watch(False)          # the driver's next rx kick brings buffers
                return delivered
            delivered = True
        while self.backend.alive:
            taken = self._rx_chain(queue, memory)
            if taken is None:
                self._set_watch(False)          # the driver's next rx kick brings buffers
                return delivered
            head, views, room = taken
            try:
                length = self.backend.receive(views)
            except OSError:
                self.counters.rx_errors += 1
                queue.put_back()
                self._set_watch(False)          # tried again at the driver's next rx kick
                return delivered
            if length is None:
                queue.put_back()
                break
            placed = True
            if length <= room:
                self._complete(queue, memory, views, [(head, length)], length)
            elif self.negotiated & F_MRG_RXBUF and length <= frame_room(self.negotiated, self.mtu):
                self._partial = _PartialFrame(queue, views, [(head, room)],
                                              memoryview(bytes(self.backend.spill)), length)
                placed = self._place_rest(queue, memory)
            else:
                self.counters.rx_too_large += 1     # read and dropped: the chain is offered again
                queue.put_back()
                continue
            delivered = delivered or placed
            if self.rx_limiter is not None:
                wait_ns = self.rx_limiter.consume(length - HEADER_SIZE)
                if wait_ns:
                    self._rx_owed = length - HEADER_SIZE
                    self._wait_rx(wait_ns)
                    return delivered
            if not placed:
                self._set_watch(False)          # the rest waits for the driver's next rx kick
                return delivered
        self._set_watch(self.backend.alive)
        return delivered

    def _wait_rx(self, wait_ns: int) -> None:
        self._set_watch(False)
        if self._host is not None and not self._rx_waiting:
            self._rx_waiting = True
            self._host.call_later(wait_ns, self._rx_retry)

    def _rx_chain(self, queue: Virtqueue, memory: GuestMemory,
                  first: bool = True) -> tuple[int, list[memoryview], int] | None:
        """The driver's next receive chain as its head, views of its buffers and their size
        (VirtqueueError when it is not a receive chain), or None when none is offered."""
        chain = queue.pop(memory)
        if chain is None:
            return None
        if chain.readable:
            raise VirtqueueError(f"receive chain {chain.head} has device-readable buffers")
        size = sum(b.length for b in chain.writable)
        if size < (HEADER_SIZE if first else 1):
            raise VirtqueueError(f"receive chain {chain.head} has {size} bytes, less than "
                                 f"{'the 12-byte header' if first else 'one'}")
        return chain.head, [memory.view(b.address, b.length) for b in chain.writable], size

    def _place_rest(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        """Copy the waiting frame's spill into further chains; True once it is all placed and the
        frame returned, False when the driver has offered too little so far."""
        partial = self._partial
        assert partial is not None
        while len(partial.spill):
            taken = self._rx_chain(queue, memory, first=False)
            if taken is None:
                return False
            head, views, size = taken
            take = min(len(partial.spill), size)
            _scatter(views, partial.spill[:take])
            partial.spill = partial.spill[take:]
            partial.used.append((head, take))
        self._partial = None
        self._complete(queue, memory, partial.header, partial.used, partial.length)
        return True

    def _complete(self, queue: Virtqueue, memory: GuestMemory, header_views: list[memoryview],
                  used: list[tuple[int, int]], length: int) -> None:
        """Return the chains a frame filled, with the header's num_buffers set (and its flags
        cleared when the driver did not accept checksum offload)."""
        first = header_views[0]                   # usually the whole header: set in place
        header = first if len(first) >= HEADER_SIZE else bytearray(_gather(header_views, HEADER_SIZE))
        if not self.negotiated & F_GUEST_CSUM:
            header[:NUM_BUFFERS_AT] = NO_OFFLOAD_FLAGS
        NUM_BUFFERS.pack_into(header, NUM_BUFFERS_AT, len(used))
        if header is not first:
            _scatter(header_views, header)
        for head, written in used:
            queue.push_used(memory, head, written)
        self.counters.rx_frames += 1
        self.counters.rx_bytes += length - HEADER_SIZE

    # --- transmit --------------------------------------------------------------------------------
    def _tx_retry(self) -> None:
        self._tx_waiting = False
        if self._host is not None:
            self._host.serve(TX_QUEUE)

    def _transmit(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        if self._tx_waiting:
            return False
        served = False
        while (chain := queue.pop(memory)) is not None:
            length = sum(b.length for b in chain.readable)
            if chain.writable or not HEADER_SIZE + ETH_HEADER <= length <= HEADER_SIZE + MAX_FRAME:
                self.counters.tx_malformed += 1
                queue.push_used(memory, chain.head, 0)
                served = True
                continue
            if self.tx_limiter is not None:
                wait_ns = self.tx_limiter.consume(length - HEADER_SIZE)
                if wait_ns:
                    queue.put_back()
                    if self._host is not None:
                        self._tx_waiting = True
                        self._host.call_later(wait_ns, self._tx_retry)
                    break
            try:
                self.backend.send([memory.view(b.address, b.length) for b in chain.readable if b.length])
            except OSError:
                self.counters.tx_errors += 1
            else:
                self.counters.tx_frames += 1
                self.counters.tx_bytes += length - HEADER_SIZE
            queue.push_used(memory, chain.head, 0)
            served = True
        return served


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _put_back(queue: Virtqueue, count: int) -> None:
    for _ in range(count):
        queue.put_back()


def _gather(views: list[memoryview], length: int) -> bytes:
    parts, left = [], length
    for view in views:
        if left <= 0:
            break
        parts.append(bytes(view[:left]))
        left -= len(view)
    return b"".join(parts)


def _scatter(views: list[memoryview], data: bytes | bytearray | memoryview) -> None:
    at = 0
    for view in views:
        if at >= len(data):
            return
        take = min(len(view), len(data) - at)
        view[:take] = data[at : at + take]
        at += take
