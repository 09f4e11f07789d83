"""The virtio-vsock device (type 19; virtio 1.2, 5.10): three queues and a guest CID.

Three queues, told apart by their index: rx (0), tx (1) and event (2).

- tx: each chain is one packet, a 44-byte header then `len` payload bytes, all device-readable. A
  chain with fewer than 44 device-readable bytes cannot be a packet: VirtqueueError (the transport
  sets DEVICE_NEEDS_RESET). A header whose `len` runs past the chain is dropped and its stream
  reset; wrong CIDs are dropped; other ops and types are the muxer's to judge (RST or dropped).
- rx: the device fills a chain's device-writable buffers with a header and payload (one packet per
  chain) whenever the muxer has something for the guest; a chain with fewer than 44 such bytes
  raises VirtqueueError.
- event: buffers are kept until a restored device tells the driver its streams are gone
  (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, a le32 0; the driver then drops its connections and reads
  the CID again). A buffer with fewer than 4 device-writable bytes raises VirtqueueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmkit.devices.virtio.device import DeviceHost
from vmkit.devices.virtio.pci_transport import VIRTIO_F_VERSION_1
from vmkit.devices.virtio.queue import Buffer, Virtqueue, VirtqueueError
from vmkit.devices.virtio.vsock.muxer import Muxer
from vmkit.devices.virtio.vsock.packet import HEADER_SIZE, Header, Op
from vmkit.devices.virtio.vsock.state import VsockState, check_state
from vmkit.memory import GuestMemory
from vmkit.storage.disk import gather, scatter, slice_views

DEVICE_TYPE = 19
RX_QUEUE_SIZE, TX_QUEUE_SIZE, EVENT_QUEUE_SIZE = 256, 128, 16
RX, TX, EVENT = 0, 1, 2                   # queue indices
RX, TX, EVENT = 0, 1, 2
EVENT_TRANSPORT_RESET = 0
EVENT_BYTES = 4


@dataclass
class VsockCounters:
    """Packets through the queues, and their payload bytes (metrics): rx to the guest, tx from it."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0


class VirtioVsock:
    """The device side of a VM's vsock; the streams live in its Muxer."""

    device_type = DEVICE_TYPE
    features = VIRTIO_F_VERSION_1
    queue_sizes: tuple[int, ...] = (RX_QUEUE_SIZE, TX_QUEUE_SIZE, EVENT_QUEUE_SIZE)

    def __init__(self, muxer: Muxer, label: str = "virtio-vsock") -> None:
        self.muxer = muxer
        self.guest_cid = muxer.guest_cid
        self.label = label
        self._host: DeviceHost | None = None
        self.reset_event_due = False
        self.counters = VsockCounters()

    def config(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    def activate(self, features: int) -> None:
        pass                                            # it serves the same whatever was negotiated

    def attach(self, host: DeviceHost) -> None:
        self._host = host
        self.muxer.attach(host, self._wake_rx)

    def reset(self) -> None:
        """Called on the thread that reset the function: the streams end on the I/O thread."""
        self.muxer.reset_requested = True
        self.reset_event_due = False

    def save(self) -> VsockState:
        return VsockState(self.guest_cid)

    def restore(self, state: object) -> None:
        """Check `state` as untrusted, then end every stream (their sockets were not saved) and
        tell the driver so."""
        check_state(state, self.guest_cid, self.label)
        self.transport_reset()

    def transport_reset(self) -> None:
        """End every stream and tell the driver (after a restore: the streams' sockets are gone).
        The event goes out on the I/O thread, once it runs."""
        self.muxer.reset_requested = True
        self.reset_event_due = True
        if self._host is not None:
            host = self._host
            host.call_later(0, lambda: host.serve(EVENT))

    def close(self) -> None:
        self.muxer.close()

    def _wake_rx(self) -> None:
        if self._host is not None and self.muxer.has_output():
            self._host.serve(RX)

    def process(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        if queue.index == TX:
            served = self._transmit(queue, memory)
            self._wake_rx()
            return served
        if queue.index == RX:
            return self._receive(queue, memory)
        return self._send_event(queue, memory)

    def _send_event(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        """The transport reset event, if one is due; other buffers wait."""
        if not self.reset_event_due or (chain := queue.pop(memory)) is None:
            return False
        room = sum(b.length for b in chain.writable)
        if room < EVENT_BYTES:
            raise VirtqueueError(f"event buffer {chain.head} has {room} device-writable bytes, not {EVENT_BYTES}")
        scatter(struct.pack("<I", EVENT_TRANSPORT_RESET), slice_views(_views(memory, chain.writable), 0, EVENT_BYTES))
        queue.push_used(memory, chain.head, EVENT_BYTES)
        self.reset_event_due = False
        return True

    def _transmit(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        served = False
        while (chain := queue.pop(memory)) is not None:
            readable = sum(b.length for b in chain.readable)
            if readable < HEADER_SIZE:
                raise VirtqueueError(f"tx packet {chain.head} has {readable} device-readable bytes, "
                                     f"less than a {HEADER_SIZE}-byte header")
            views = _views(memory, chain.readable)
            header = Header.unpack(gather(slice_views(views, 0, HEADER_SIZE)))
            if header.len > readable - HEADER_SIZE:
                self.muxer.bad_packet(header)
            else:
                payload = slice_views(views, HEADER_SIZE, header.len) if header.op == Op.RW else []
                self.muxer.from_guest(header if header.op == Op.RW else header._replace(len=0), payload)
                self.counters.tx_bytes += header.len if header.op == Op.RW else 0
            queue.push_used(memory, chain.head, 0)
            self.counters.tx_packets += 1
            served = True
        return served

    def _receive(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        served = False
        while self.muxer.has_output():
            chain = queue.pop(memory)
            if chain is None:
                break
            room = sum(b.length for b in chain.writable)
            if room < HEADER_SIZE:
                raise VirtqueueError(f"rx buffer {chain.head} has {room} device-writable bytes, "
                                     f"less than a {HEADER_SIZE}-byte header")
            views = _views(memory, chain.writable)
            header = self.muxer.next_packet(slice_views(views, HEADER_SIZE, room - HEADER_SIZE))
            if header is None:
                queue.put_back()
                break
            scatter(header.pack(), slice_views(views, 0, HEADER_SIZE))
            queue.push_used(memory, chain.head, HEADER_SIZE + header.len)
            self.counters.rx_packets += 1
            self.counters.rx_bytes += header.len
            served = True
        return served


def _views(memory: GuestMemory, buffers: list[Buffer]) -> list[memoryview]:
    return [memory.view(b.address, b.length) for b in buffers if b.length]
