"""A guest's side of a virtio-vsock device over real GuestMemory, virtqueues and Unix sockets, and a
small epoll loop standing in for the machine's I/O thread (the DeviceHost the device is given)."""

from __future__ import annotations

import selectors
import struct

from vmkit.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Virtqueue
from vmkit.devices.virtio.vsock.device import EVENT_QUEUE_SIZE, RX_QUEUE_SIZE, TX_QUEUE_SIZE, VirtioVsock
from vmkit.devices.virtio.vsock.packet import HEADER_SIZE, HOST_CID, TYPE_STREAM, Header, Op
from vmkit.memory import GuestMemory

MEMORY_BYTES = 1 << 20
RX_DESC, RX_AVAIL, RX_USED = 0x10000, 0x11000, 0x12000
TX_DESC, TX_AVAIL, TX_USED = 0x20000, 0x21000, 0x22000
EV_DESC, EV_AVAIL, EV_USED, EV_BUFFERS = 0x30000, 0x31000, 0x32000, 0x33000
RX_BUFFERS = 0x40000                  # 16 buffers of RX_BUFFER bytes, RX_STRIDE apart
RX_STRIDE = 0x2000
RX_BUFFER = HEADER_SIZE + 4096
TX_BUFFERS = 0x80000                  # tx packets are written here (up to 64 KiB of payload)
QUEUE = 16
GUEST_CID = 3


class LoopHost:
    """DeviceHost over a selector; `pump` runs handlers until nothing is ready."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers: list = []
        self.device: VirtioVsock | None = None
        self.guest: Guest | None = None

    def watch(self, fd, handler):
        self.selector.register(fd, selectors.EVENT_READ, handler)

    def unwatch(self, fd):
        self.selector.unregister(fd)

    def watched(self) -> set[int]:
        return set(self.selector.get_map())

    def call_later(self, delay_ns, handler):
        self.timers.append(handler)

    def serve(self, queue_index):
        assert self.guest is not None
        self.guest.serve(queue_index)

    def pump(self, timeout: float = 0.05, rounds: int = 10000) -> int:
        """Run ready handlers until a select finds none; returns how many ran."""
        ran = 0
        for _ in range(rounds):
            events = self.selector.select(timeout)
            if not events:
                return ran
            for key, _ in events:
                key.data()
                ran += 1
        raise AssertionError("the device kept the loop busy")


class Guest:
    """The driver's side: rx buffers, tx packets, both used rings."""

    def __init__(self, device: VirtioVsock, host: LoopHost | None) -> None:
        self.device, self.host = device, host
        self.memory = GuestMemory.create(MEMORY_BYTES)
        self.rx, self.tx, self.event = (
            Virtqueue(RX_QUEUE_SIZE, 0), Virtqueue(TX_QUEUE_SIZE, 1), Virtqueue(EVENT_QUEUE_SIZE, 2))
        for queue, (desc, avail, used) in ((self.rx, (RX_DESC, RX_AVAIL, RX_USED)),
                                           (self.tx, (TX_DESC, TX_AVAIL, TX_USED)),
                                           (self.event, (EV_DESC, EV_AVAIL, EV_USED))):
            queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = QUEUE, desc, avail, used
            queue.validate_layout(self.memory)
        self.rx_avail = self.tx_avail = self.ev_avail = 0
        self.rx_seen = self.tx_seen = 0
        self.rx_posted = 0
        self.buf_alloc, self.fwd_cnt = 1 << 20, 0
        if host is not None:
            host.guest = self
            device.attach(host)

    def close(self):
        self.memory.close()

    def serve(self, index: int) -> bool:
        queue = (self.rx, self.tx, self.event)[index]
        return self.device.process(queue, self.memory)

    # --- rx -------------------------------------------------------------------------------------
    def post_rx(self, count: int = QUEUE, size: int = RX_BUFFER, kick: bool = True) -> None:
        for _ in range(count):
            slot = self.rx_posted % QUEUE
            self.memory.write(RX_DESC + 16 * slot, struct.pack("<QIHH", RX_BUFFERS + slot * RX_STRIDE, size,
                                                               VIRTQ_DESC_F_WRITE, 0))
            self.memory.write(RX_AVAIL + 4 + 2 * (self.rx_avail % QUEUE), struct.pack("<H", slot))
            self.rx_avail = (self.rx_avail + 1) & 0xFFFF
            self.rx_posted += 1
        self.memory.write(RX_AVAIL + 2, struct.pack("<H", self.rx_avail))
        if kick:
            self.serve(0)

    def take_rx(self, repost: bool = True) -> list[tuple[Header, bytes]]:
        """The packets the device put in rx since the last call (their buffers offered again)."""
        packets = []
        used = struct.unpack("<H", self.memory.read(RX_USED + 2, 2))[0]
        while self.rx_seen != used:
            head, length = struct.unpack("<II", self.memory.read(RX_USED + 4 + 8 * (self.rx_seen % QUEUE), 8))
            address = RX_BUFFERS + head * RX_STRIDE
            header = Header.unpack(self.memory.read(address, HEADER_SIZE))
            assert length == HEADER_SIZE + header.len
            packets.append((header, self.memory.read(address + HEADER_SIZE, header.len)))
            self.rx_seen = (self.rx_seen + 1) & 0xFFFF
        if repost and packets:
            self.post_rx(len(packets))
        return packets

    # --- event ----------------------------------------------------------------------------------
    def post_events(self, sizes: list[int]) -> None:
        """Offer event buffers of these sizes (16 bytes apart, filled with 0xff), and kick."""
        for size in sizes:
            index = self.ev_avail % QUEUE
            self.memory.write(EV_BUFFERS + 16 * index, b"\xff" * 16)
            self.memory.write(EV_DESC + 16 * index, struct.pack("<QIHH", EV_BUFFERS + 16 * index, size,
                                                                VIRTQ_DESC_F_WRITE, 0))
            self.memory.write(EV_AVAIL + 4 + 2 * index, struct.pack("<H", index))
            self.ev_avail += 1
        self.memory.write(EV_AVAIL + 2, struct.pack("<H", self.ev_avail))
        self.serve(2)

    def events(self) -> list[tuple[int, bytes]]:
        """(used length, buffer bytes) of each event the device returned."""
        used = struct.unpack("<H", self.memory.read(EV_USED + 2, 2))[0]
        entries = [struct.unpack("<II", self.memory.read(EV_USED + 4 + 8 * i, 8)) for i in range(used)]
        return [(length, self.memory.read(EV_BUFFERS + 16 * head, 4)) for head, length in entries]

    # --- tx -------------------------------------------------------------------------------------
    def send_chain(self, buffers: list[tuple[int, int, bool]]) -> bool:
        """Post one chain of (address, length, device_writes) and serve tx."""
        self.post_chain(buffers)
        return self.serve(1)

    def post_chain(self, buffers: list[tuple[int, int, bool]]) -> None:
        """Put one tx chain of (address, length, device_writes) in the avail ring."""
        for i, (address, length, writes) in enumerate(buffers):      # served at once: descriptors from 0
            flags = (VIRTQ_DESC_F_WRITE if writes else 0) | (VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0)
            self.memory.write(TX_DESC + 16 * i, struct.pack("<QIHH", address, length, flags, i + 1))
        self.memory.write(TX_AVAIL + 4 + 2 * (self.tx_avail % QUEUE), struct.pack("<H", 0))
        self.tx_avail = (self.tx_avail + 1) & 0xFFFF
        self.memory.write(TX_AVAIL + 2, struct.pack("<H", self.tx_avail))

    def send(self, op: Op, src_port: int, dst_port: int, payload: bytes = b"", *, flags: int = 0,
             length: int | None = None, src_cid: int = GUEST_CID, dst_cid: int = HOST_CID, type_: int = TYPE_STREAM,
             buf_alloc: int | None = None) -> None:
        header = Header(src_cid, dst_cid, src_port, dst_port, len(payload) if length is None else length, type_,
                        op, flags, self.buf_alloc if buf_alloc is None else buf_alloc, self.fwd_cnt)
        self.memory.write(TX_BUFFERS, header.pack() + payload)
        chain = [(TX_BUFFERS, HEADER_SIZE, False)]
        if payload:
            chain.append((TX_BUFFERS + HEADER_SIZE, len(payload), False))
        self.send_chain(chain)
