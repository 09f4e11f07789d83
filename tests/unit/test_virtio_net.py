"""virtio-net over real guest memory and virtqueues, with a datagram socketpair standing in for the
tap (frames with their virtio_net_hdr) and a stream socketpair for passt (length-prefixed frames)."""

import os
import random
import socket
import struct

import pytest

from vmkit.devices.rate_limiter import RateLimiter
from vmkit.devices.state import StateError
from vmkit.devices.virtio.net import header as h
from vmkit.devices.virtio.net.device import RX_QUEUE_SIZE, TX_QUEUE_SIZE, NetState, VirtioNet
from vmkit.devices.virtio.net.mac import derived_mac, parse_mac
from vmkit.devices.virtio.net.passt import PasstBackend, passt_argv
from vmkit.devices.virtio.net.spec import NetOptionError, parse_net
from vmkit.devices.virtio.net.tap import TapBackend, check_tap_name, tun_offloads
from vmkit.devices.virtio.pci_transport import VIRTIO_F_VERSION_1
from vmkit.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory
from vmkit.vmm.config import ConfigError
from vmkit.vmm.links import parse_links

RX_DESC, RX_AVAIL, RX_USED = 0x10000, 0x11000, 0x12000
TX_DESC, TX_AVAIL, TX_USED = 0x14000, 0x15000, 0x16000
BUFFERS = 0x100000
MAC = bytes.fromhex("020000000042")


def frame(size: int, seed: int = 0) -> bytes:
    """An Ethernet frame of `size` bytes: to the device's MAC, from a host one, then a pattern."""
    body = bytes((seed + i * 7) & 0xFF for i in range(size - 14))
    return MAC + bytes.fromhex("021111111111") + b"\x08\x00" + body


class Host:
    """A DeviceHost that records what the device asks for."""

    def __init__(self) -> None:
        self.watched: dict[int, object] = {}
        self.timers: list[tuple[int, object]] = []
        self.served: list[int] = []

    def watch(self, fd, handler):
        assert fd not in self.watched
        self.watched[fd] = handler

    def unwatch(self, fd):
        del self.watched[fd]

    def call_later(self, delay_ns, handler):
        self.timers.append((delay_ns, handler))

    def serve(self, queue_index):
        self.served.append(queue_index)


class Rig:
    def __init__(self, backend, **kwargs) -> None:
        self.memory = GuestMemory.create(4 << 20)
        self.rx, self.tx = Virtqueue(RX_QUEUE_SIZE, 0), Virtqueue(TX_QUEUE_SIZE, 1)
        for queue, (desc, avail, used) in ((self.rx, (RX_DESC, RX_AVAIL, RX_USED)),
                                           (self.tx, (TX_DESC, TX_AVAIL, TX_USED))):
            queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = 16, desc, avail, used
            queue.validate_layout(self.memory)
        self.host = Host()
        self.net = VirtioNet(backend, MAC, **kwargs)
        self.net.attach(self.host)
        self.next_desc = {id(self.rx): 0, id(self.tx): 0}
        self.avail_idx = {id(self.rx): 0, id(self.tx): 0}
        self.seen_used = {id(self.rx): 0, id(self.tx): 0}

    def post(self, queue, buffers):
        """Add one chain of (address, length, device_writes) buffers to `queue`'s avail ring."""
        table = queue.desc_table
        head = self.next_desc[id(queue)]
        for i, (address, length, writes) in enumerate(buffers):
            index = (head + i) % queue.size
            flags = (VIRTQ_DESC_F_WRITE if writes else 0) | (VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0)
            self.memory.write(table + 16 * index, struct.pack("<QIHH", address, length, flags,
                                                               (index + 1) % queue.size))
        self.next_desc[id(queue)] = (head + len(buffers)) % queue.size
        slot = self.avail_idx[id(queue)]
        self.memory.write(queue.avail_ring + 4 + 2 * (slot % queue.size), struct.pack("<H", head))
        self.avail_idx[id(queue)] = (slot + 1) & 0xFFFF
        self.memory.write(queue.avail_ring + 2, struct.pack("<H", self.avail_idx[id(queue)]))
        return head

    def used(self, queue):
        """The (head, length) pairs the device returned since the last call."""
        out = []
        index = struct.unpack("<H", self.memory.read(queue.used_ring + 2, 2))[0]
        while self.seen_used[id(queue)] != index:
            slot = self.seen_used[id(queue)] % queue.size
            out.append(struct.unpack("<II", self.memory.read(queue.used_ring + 4 + 8 * slot, 8)))
            self.seen_used[id(queue)] = (self.seen_used[id(queue)] + 1) & 0xFFFF
        return out

    def send(self, data: bytes, at: int = BUFFERS, pieces: int = 1, hdr: bytes = h.ZERO_HEADER):
        """Post header + data on tx (cut into `pieces` buffers) and process it."""
        payload = hdr + data
        self.memory.write(at, payload)
        cut = [len(payload) * i // pieces for i in range(pieces + 1)]
        self.post(self.tx, [(at + cut[i], cut[i + 1] - cut[i], False) for i in range(pieces)])
        return self.net.process(self.tx, self.memory)

    def close(self):
        self.memory.close()


@pytest.fixture
def tap_rig():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    rig = Rig(TapBackend(ours.detach(), "test0", is_tap=False))
    theirs.settimeout(2)
    yield rig, theirs
    rig.net.close()
    theirs.close()
    rig.close()


@pytest.fixture
def passt_rig():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rig = Rig(PasstBackend(ours))
    theirs.settimeout(2)
    yield rig, theirs
    rig.net.close()
    theirs.close()
    rig.close()


def test_config_space_and_features():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    net = VirtioNet(TapBackend(ours.detach(), "t", is_tap=False), MAC, mtu=1400)
    assert net.device_type == 1 and net.queue_sizes == (RX_QUEUE_SIZE, TX_QUEUE_SIZE)
    assert struct.unpack("<6sHHH", net.config()) == (MAC, h.STATUS_LINK_UP, 1, 1400)
    for bit in (VIRTIO_F_VERSION_1, h.F_MAC, h.F_STATUS, h.F_MTU, h.F_CSUM, h.F_GUEST_CSUM, h.F_HOST_TSO4,
                h.F_HOST_TSO6, h.F_GUEST_TSO4, h.F_GUEST_TSO6, h.F_MRG_RXBUF):
        assert net.features & bit
    net.close()
    theirs.close()
    passt = VirtioNet(PasstBackend(socket.socketpair()[0]), MAC)
    assert passt.features == VIRTIO_F_VERSION_1 | h.F_MAC | h.F_STATUS | h.F_MTU      # no offloads
    passt.close()
    with pytest.raises(ValueError):
        VirtioNet(PasstBackend(socket.socketpair()[0]), bytes.fromhex("010000000001"))   # multicast


def test_header_codec():
    header = h.NetHeader(h.FLAG_NEEDS_CSUM, h.GSO_TCPV4, 54, 1448, 34, 16, 3)
    packed = header.pack()
    assert len(packed) == 12 and packed == bytes([1, 1]) + struct.pack("<HHHHH", 54, 1448, 34, 16, 3)
    assert h.NetHeader.unpack(packed) == header
    assert h.ZERO_HEADER == b"\0" * 10 + b"\x01\x00"                 # num_buffers 1
    assert h.frame_room(VIRTIO_F_VERSION_1, 1500) == 12 + 14 + 4 + 1500
    assert h.frame_room(h.F_GUEST_TSO4, 1500) == 12 + 65550
    assert tun_offloads(h.F_GUEST_TSO4) == 0                          # TSO needs the checksum offload
    assert tun_offloads(h.F_GUEST_CSUM | h.F_GUEST_TSO4 | h.F_GUEST_TSO6) == 0x07


def test_tx_sends_header_and_frame_as_one_datagram(tap_rig):
    rig, peer = tap_rig
    data = frame(200)
    assert rig.send(data, pieces=3)
    assert peer.recv(4096) == h.ZERO_HEADER + data          # the header travels with the frame
    assert rig.used(rig.tx) == [(0, 0)]
    assert rig.net.counters.tx_frames == 1 and rig.net.counters.tx_bytes == 200


@pytest.mark.parametrize("chain,why", [
    (lambda: [(BUFFERS, 12, False)], "header only"),
    (lambda: [(BUFFERS, 12 + 13, False)], "shorter than an Ethernet header"),
    (lambda: [(BUFFERS, 12 + 65551, False)], "longer than 65550 bytes"),
    (lambda: [(BUFFERS, 100, False), (BUFFERS + 0x1000, 100, True)], "device-writable buffer"),
])
def test_tx_refuses_bad_chains_without_sending(tap_rig, chain, why):
    rig, peer = tap_rig
    rig.post(rig.tx, chain())
    assert rig.net.process(rig.tx, rig.memory)
    assert rig.used(rig.tx) == [(0, 0)], why
    assert rig.net.counters.tx_malformed == 1 and rig.net.counters.tx_frames == 0
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_rx_fills_the_buffers_and_sets_num_buffers(tap_rig):
    rig, peer = tap_rig
    rig.memory.write(BUFFERS, b"\xee" * 4096)
    rig.post(rig.rx, [(BUFFERS, 10, True), (BUFFERS + 0x100, 2000, True)])        # header split
    data = frame(1000, seed=3)
    peer.send(bytes([h.FLAG_DATA_VALID]) + bytes(9) + b"\xee\xee" + data)          # tap leaves num_buffers
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(0, 1012)]
    got = rig.memory.read(BUFFERS, 10) + rig.memory.read(BUFFERS + 0x100, 1002)
    # without GUEST_CSUM accepted the flags are cleared; num_buffers is 1
    assert got == h.ZERO_HEADER + data
    assert rig.net.counters.rx_frames == 1


def test_rx_keeps_checksum_flags_once_the_driver_accepted_them(tap_rig):
    rig, peer = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_GUEST_CSUM)
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    peer.send(bytes([h.FLAG_DATA_VALID]) + bytes(11) + frame(60))
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.memory.read(BUFFERS, 12) == bytes([h.FLAG_DATA_VALID]) + bytes(9) + b"\x01\x00"


def test_rx_without_buffers_stops_watching_until_the_driver_kicks(tap_rig):
    rig, peer = tap_rig
    fd = rig.net.backend.fd
    assert fd not in rig.host.watched                       # nothing is watched before the driver is ready
    peer.send(h.ZERO_HEADER + frame(100))
    assert not rig.net.process(rig.rx, rig.memory)          # a kick with no buffers: nowhere to put it
    assert fd not in rig.host.watched
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    assert rig.net.process(rig.rx, rig.memory)              # the rx kick: the waiting frame goes in
    assert rig.used(rig.rx) == [(0, 112)]
    assert fd not in rig.host.watched                       # and the buffers are used up again
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    assert not rig.net.process(rig.rx, rig.memory)          # buffers and nothing to read: watch the fd
    assert fd in rig.host.watched
    peer.send(h.ZERO_HEADER + frame(100))
    rig.host.watched[fd]()                                  # readable: the handler serves rx
    assert rig.host.served == [0]


def test_the_handler_unwatches_when_the_transport_does_not_serve(tap_rig):
    rig, peer = tap_rig
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    rig.net.process(rig.rx, rig.memory)
    fd = rig.net.backend.fd
    handler = rig.host.watched[fd]
    handler()                                               # our Host.serve does not call process
    assert fd not in rig.host.watched                       # so the loop will not spin on the fd
    rig.net.reset()
    assert fd not in rig.host.watched


def test_a_frame_larger_than_the_buffers_is_dropped_and_counted(tap_rig):
    rig, peer = tap_rig
    rig.post(rig.rx, [(BUFFERS, 500, True)])
    peer.send(h.ZERO_HEADER + frame(1400))
    peer.send(h.ZERO_HEADER + frame(300, seed=9))
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.net.counters.rx_too_large == 1
    assert rig.used(rig.rx) == [(0, 312)]                   # the same buffer took the next frame
    assert rig.memory.read(BUFFERS + 12, 300) == frame(300, seed=9)


def test_mergeable_buffers_spread_a_frame_over_chains(tap_rig):
    rig, peer = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF)
    for i in range(4):
        rig.post(rig.rx, [(BUFFERS + i * 0x1000, 600, True)])
    data = frame(1000, seed=5)
    peer.send(h.ZERO_HEADER + data)
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(0, 600), (1, 412)]
    assert struct.unpack_from("<H", rig.memory.read(BUFFERS + 10, 2))[0] == 2
    assert rig.memory.read(BUFFERS + 12, 588) + rig.memory.read(BUFFERS + 0x1000, 412) == data


def test_with_tso_a_small_frame_takes_one_chain_and_a_segment_as_many_as_it_needs(tap_rig):
    rig, peer = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF | h.F_GUEST_CSUM | h.F_GUEST_TSO4)
    for i in range(16):
        rig.post(rig.rx, [(BUFFERS + i * 0x1000, 1526, True)])
    small, segment = frame(100, seed=1), frame(9000, seed=2)
    peer.send(h.ZERO_HEADER + small)
    peer.send(h.NetHeader(h.FLAG_NEEDS_CSUM).pack() + segment)
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(0, 112), (1, 1526), (2, 1526), (3, 1526), (4, 1526), (5, 1526), (6, 1382)]
    assert struct.unpack_from("<H", rig.memory.read(BUFFERS + 10, 2))[0] == 1
    assert struct.unpack_from("<H", rig.memory.read(BUFFERS + 0x1000 + 10, 2))[0] == 6
    assert rig.memory.read(BUFFERS + 0x1000, 1)[0] & h.FLAG_NEEDS_CSUM          # the tap's header kept
    placed = rig.memory.read(BUFFERS + 0x1000 + 12, 1514) + b"".join(
        rig.memory.read(BUFFERS + i * 0x1000, 1526) for i in range(2, 6)) + rig.memory.read(BUFFERS + 0x6000, 1382)
    assert placed == segment
    peer.send(h.ZERO_HEADER + small)
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(7, 112)]                              # the next chain, not one further


def test_a_segment_waits_half_placed_until_the_driver_offers_enough(tap_rig):
    rig, peer = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF | h.F_GUEST_CSUM | h.F_GUEST_TSO4)
    for i in range(2):
        rig.post(rig.rx, [(BUFFERS + i * 0x1000, 2048, True)])
    segment = frame(6000, seed=3)
    peer.send(h.ZERO_HEADER + segment)
    assert not rig.net.process(rig.rx, rig.memory)                     # 4096 of 6012 bytes placed
    assert rig.used(rig.rx) == [] and rig.net.backend.fd not in rig.host.watched  # until a kick
    peer.send(h.ZERO_HEADER + frame(80, seed=4))                       # waits in the backend meanwhile
    for i in range(2, 4):
        rig.post(rig.rx, [(BUFFERS + i * 0x1000, 2048, True)])
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(0, 2048), (1, 2048), (2, 1916), (3, 92)]
    assert struct.unpack_from("<H", rig.memory.read(BUFFERS + 10, 2))[0] == 3
    assert (rig.memory.read(BUFFERS + 12, 2036) + rig.memory.read(BUFFERS + 0x1000, 2048)
            + rig.memory.read(BUFFERS + 0x2000, 1916)) == segment


def test_a_hostile_chain_after_a_half_placed_frame_needs_a_reset(tap_rig):
    rig, peer = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF | h.F_GUEST_CSUM | h.F_GUEST_TSO4)
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    peer.send(h.ZERO_HEADER + frame(6000))
    assert not rig.net.process(rig.rx, rig.memory)
    rig.post(rig.rx, [(BUFFERS + 0x1000, 2048, False)])                # device-readable
    with pytest.raises(VirtqueueError, match="device-readable"):
        rig.net.process(rig.rx, rig.memory)
    rig.net.reset()
    assert rig.net.save().offloads == VIRTIO_F_VERSION_1                # nothing half placed is left


def test_a_save_drops_a_half_placed_frame_and_offers_its_chains_again(tap_rig):
    rig, peer = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF | h.F_GUEST_CSUM | h.F_GUEST_TSO4)
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    peer.send(h.ZERO_HEADER + frame(6000))
    assert not rig.net.process(rig.rx, rig.memory)
    assert rig.rx.last_avail == 1
    rig.net.save()
    assert rig.rx.last_avail == 0                                      # the chain is the driver's again
    peer.send(h.ZERO_HEADER + frame(80, seed=6))
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(0, 92)]


@pytest.mark.parametrize("chain", [
    [(BUFFERS, 2048, False)],                               # device-readable rx buffer
    [(BUFFERS, 8, True)],                                   # no room for the header
])
def test_hostile_rx_chains_need_a_reset(tap_rig, chain):
    rig, peer = tap_rig
    rig.post(rig.rx, chain)
    peer.send(h.ZERO_HEADER + frame(100))
    with pytest.raises(VirtqueueError):
        rig.net.process(rig.rx, rig.memory)


def test_passt_framing_both_ways(passt_rig):
    rig, peer = passt_rig
    data = frame(300, seed=1)
    assert rig.send(data, pieces=2, hdr=h.NetHeader(h.FLAG_NEEDS_CSUM).pack())
    assert peer.recv(4096) == struct.pack(">I", 300) + data          # header dropped, length in front
    incoming = [frame(60, seed=2), frame(1500, seed=4)]
    stream = b"".join(struct.pack(">I", len(f)) + f for f in incoming)
    peer.sendall(stream[:30])                                         # a frame cut across reads
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    rig.post(rig.rx, [(BUFFERS + 0x1000, 2048, True)])
    assert not rig.net.process(rig.rx, rig.memory)
    peer.sendall(stream[30:])
    assert rig.net.process(rig.rx, rig.memory)
    assert rig.used(rig.rx) == [(0, 72), (1, 1512)]
    assert rig.memory.read(BUFFERS, 72) == h.ZERO_HEADER + incoming[0]
    assert rig.memory.read(BUFFERS + 0x1000, 1512) == h.ZERO_HEADER + incoming[1]


def test_passt_going_away_stops_the_watch(passt_rig):
    rig, peer = passt_rig
    rig.post(rig.rx, [(BUFFERS, 2048, True)])
    rig.net.process(rig.rx, rig.memory)
    assert rig.net.backend.fd in rig.host.watched
    peer.close()
    assert not rig.net.process(rig.rx, rig.memory)
    assert not rig.net.backend.alive and not rig.host.watched


def test_tx_rate_limit_waits_and_resumes(tap_rig):
    rig, peer = tap_rig
    now = [0]
    rig.net.tx_limiter = RateLimiter.per_second(bps=1000, clock=lambda: now[0])
    for i in range(3):
        rig.send(frame(400, seed=i), at=BUFFERS + i * 0x1000)
    assert rig.net.counters.tx_frames == 2                  # 800 of 1000 bytes; the third waits
    (delay, retry), = rig.host.timers
    assert delay == 200_000_000
    now[0] = delay
    retry()
    assert rig.host.served == [1]
    rig.net.process(rig.tx, rig.memory)
    assert rig.net.counters.tx_frames == 3


def test_rx_rate_limit_unwatches_until_the_budget_refills(tap_rig):
    rig, peer = tap_rig
    now = [0]
    rig.net.rx_limiter = RateLimiter.per_second(iops=1, clock=lambda: now[0])
    for i in range(4):
        rig.post(rig.rx, [(BUFFERS + i * 0x1000, 2048, True)])
    for i in range(3):
        peer.send(h.ZERO_HEADER + frame(100, seed=i))
    assert rig.net.process(rig.rx, rig.memory)
    # the first frame is in the budget; the second, read before its size was known, is delivered and owed
    assert rig.net.counters.rx_frames == 2 and not rig.host.watched
    (delay, retry), = rig.host.timers
    assert delay == 1_000_000_000
    assert not rig.net.process(rig.rx, rig.memory)          # a kick while waiting changes nothing
    now[0] = delay
    retry()
    assert rig.host.served == [0]
    assert rig.net.process(rig.rx, rig.memory)              # the refill pays the second frame's debt,
    assert rig.net.counters.rx_frames == 3                  # and the third runs ahead of the budget again
    assert [d for d, _ in rig.host.timers] == [delay, delay] and not rig.host.watched
    now[0] = 2 * delay
    rig.host.timers[1][1]()
    assert not rig.net.process(rig.rx, rig.memory)          # paid up, nothing waiting: watch the fd again
    assert rig.net.backend.fd in rig.host.watched


def test_state_round_trip_and_hostile_states(tap_rig):
    rig, _ = tap_rig
    rig.net.activate(VIRTIO_F_VERSION_1 | h.F_GUEST_CSUM | h.F_MRG_RXBUF)
    state = rig.net.save()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    other = VirtioNet(TapBackend(ours.detach(), "t", is_tap=False), bytes.fromhex("020000000099"))
    other.restore(state)
    assert other.save() == state and other.config() == rig.net.config()
    good = NetState(MAC, 1500, 1, VIRTIO_F_VERSION_1)
    for bad in (good.__class__(b"\x01" * 6, 1500, 1, VIRTIO_F_VERSION_1),      # multicast
                NetState(MAC[:5], 1500, 1, VIRTIO_F_VERSION_1), NetState(bytes(6), 1500, 1, VIRTIO_F_VERSION_1),
                NetState(MAC, 67, 1, VIRTIO_F_VERSION_1), NetState(MAC, True, 1, VIRTIO_F_VERSION_1),
                NetState(MAC, 1500, 2, VIRTIO_F_VERSION_1), NetState(MAC, 1500, 1, 0),
                NetState(MAC, 1500, 1, VIRTIO_F_VERSION_1 | 1 << 40), "not a state"):
        with pytest.raises(StateError):
            other.restore(bad)
    assert other.save() == state                            # a refused state changed nothing
    other.close()
    theirs.close()


def test_mac_parsing_and_derivation():
    assert parse_mac("02:AB:cd:00:00:01") == bytes.fromhex("02abcd000001")
    for bad in ("02:00:00:00:00", "02-00-00-00-00-01", "0g:00:00:00:00:01", "01:00:5e:00:00:01",
                "00:00:00:00:00:00", "02:00:00:00:00:01:02"):
        with pytest.raises(ValueError):
            parse_mac(bad)
    mac = derived_mac(0, "tap0")
    assert mac == derived_mac(0, "tap0") and mac[0] == 0x02
    assert len({derived_mac(0, "tap0"), derived_mac(1, "tap0"), derived_mac(0, "user")}) == 3


def test_option_parsing():
    spec = parse_net("tap=vm0,mac=02:00:00:00:00:07,rx_bps=1000,tx_pps=50", 2)
    assert (spec.tap, spec.mac, spec.index) == ("vm0", bytes.fromhex("020000000007"), 2)
    assert dict(spec.rates) == {"rx_bps": 1000, "tx_pps": 50} and str(spec).startswith("--net tap=vm0")
    user = parse_net("user,hostfwd=tcp:8080:80,hostfwd=tcp:2222:22", 0)
    assert user.tap is None and user.forwards == ((8080, 80), (2222, 22)) and user.mac == derived_mac(0, "user")
    assert passt_argv("/usr/bin/passt", 5, user.forwards, 1500) == [
        "/usr/bin/passt", "--quiet", "--foreground", "--fd", "5", "--mtu", "1500",
        "-t", "8080:80", "-t", "2222:22"]
    for bad, part in [("", "expected tap=NAME or user"), ("bridge=br0", "expected tap=NAME or user"),
                      ("tap=", "tap name"), ("tap=a/b", "tap name"), ("tap=" + "x" * 16, "tap name"),
                      ("tap=vm0,mac=01:00:00:00:00:01", "multicast"), ("tap=vm0,mac=zz", "mac"),
                      ("tap=vm0,hostfwd=tcp:1:2", "only user networking"),
                      ("user,hostfwd=udp:1:2", "hostfwd"), ("user,hostfwd=tcp:0:22", "1..65535"),
                      ("user,hostfwd=tcp:99999:22", "1..65535"),
                      ("user,hostfwd=tcp:80:1,hostfwd=tcp:80:2", "twice"), ("user,mtu=67", "mtu"),
                      ("user,mtu=abc", "mtu"), ("user,rx_bps=-1", "rx_bps"), ("user,rx_bps=1,rx_bps=2", "repeated"),
                      ("user,speed=1", "unknown"), ("user,ro", "KEY=VALUE")]:
        with pytest.raises(NetOptionError, match=part) as info:
            parse_net(bad, 0)
        assert str(info.value).startswith(f"--net {bad}:")
    assert check_tap_name("tap0") is None and check_tap_name("a b") is not None


def test_nics_are_checked_together_for_macs_taps_and_forwarded_ports():
    two = parse_links({"--net": ["user", "user"]})
    assert len({spec.mac for spec in two}) == 2                       # derived MACs differ by index
    for values, part in [(["tap=a,mac=02:00:00:00:00:01", "user,mac=02:00:00:00:00:01"],
                          "--net user,mac=02:00:00:00:00:01: MAC 02:00:00:00:00:01 is already that of --net tap=a"),
                         (["tap=a", "tap=a"], "--net tap=a: tap 'a' is already used by --net tap=a"),
                         (["user,hostfwd=tcp:8080:80", "user,hostfwd=tcp:8080:81"],
                          "host port 8080 is already forwarded by --net user,hostfwd=tcp:8080:80")]:
        with pytest.raises(ConfigError) as info:
            parse_links({"--net": values})
        assert part in str(info.value)


def test_fuzz_tx_chains(tap_rig):
    """Seeded random tx chains (addresses in and out of RAM, lengths, directions, headers): each is
    sent whole or refused, and nothing but a VirtqueueError (a reset) ever comes out."""
    rig, peer = tap_rig
    peer.setblocking(False)
    generator = random.Random(1234)
    ram = rig.memory.size
    for round_ in range(400):
        rig.tx.reset()
        rig.tx.size, rig.tx.desc_table, rig.tx.avail_ring, rig.tx.used_ring = 16, TX_DESC, TX_AVAIL, TX_USED
        rig.next_desc[id(rig.tx)] = rig.avail_idx[id(rig.tx)] = rig.seen_used[id(rig.tx)] = 0
        rig.memory.write(TX_USED, bytes(4))
        chain = []
        for _ in range(generator.randint(1, 6)):
            length = generator.choice([0, 1, 11, 12, 13, 26, 60, 1514, 4096, 65562, 65563, 70000])
            address = generator.choice([BUFFERS, BUFFERS + 0x8000, ram - length, ram - 1, ram + 0x1000, 2**64 - 8])
            chain.append((address % 2**64, length, generator.random() < 0.15))
        for address, length, _ in chain:
            if 0 <= address and address + length <= ram and length:
                rig.memory.write(address, generator.randbytes(min(length, 64)))
        before = rig.net.counters.tx_frames
        try:
            rig.post(rig.tx, chain)
            rig.net.process(rig.tx, rig.memory)
        except VirtqueueError:
            continue
        sent = rig.net.counters.tx_frames - before
        total = sum(length for _, length, _ in chain)
        writable = any(writes for _, _, writes in chain)
        if sent:
            assert not writable and 26 <= total <= 12 + 65550
            received = peer.recv(1 << 17)
            assert len(received) == total, round_
        assert rig.used(rig.tx) == [(0, 0)]
    assert rig.net.counters.tx_frames >= 10 and rig.net.counters.tx_malformed >= 10     # both kinds were tried


def test_fuzz_rx_chains(tap_rig):
    """Seeded random rx chains (addresses in and out of RAM, lengths, directions, too few or too
    small) and frames (small to TSO-sized), with and without mergeable buffers and TSO: nothing but a
    VirtqueueError (a reset) ever comes out, a chain is never said to hold more than it has, and a
    frame the device delivers is there whole, its num_buffers matching the chains it took."""
    rig, peer = tap_rig
    generator = random.Random(4321)
    ram = rig.memory.size
    features = [VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF,
                VIRTIO_F_VERSION_1 | h.F_MRG_RXBUF | h.F_GUEST_CSUM | h.F_GUEST_TSO4]
    delivered = resets = 0
    for round_ in range(300):
        rig.net.reset()
        rig.rx.reset()
        rig.rx.size, rig.rx.desc_table, rig.rx.avail_ring, rig.rx.used_ring = 16, RX_DESC, RX_AVAIL, RX_USED
        rig.next_desc[id(rig.rx)] = rig.avail_idx[id(rig.rx)] = rig.seen_used[id(rig.rx)] = 0
        rig.memory.write(RX_USED, bytes(4))
        while True:                                        # what an earlier round left in the backend
            try:
                os.read(rig.net.backend.fd, 1 << 17)
            except BlockingIOError:
                break
        rig.net.activate(generator.choice(features))
        chains, capacity, first_buffer = [], {}, {}
        for _ in range(generator.randint(1, 5)):
            chain = []
            for part in range(generator.randint(1, 3)):
                length = generator.choice([0, 1, 8, 12, 13, 60, 600, 1526, 1526, 4096, 4096, 9000, 65562])
                place = BUFFERS + 0x20000 * len(chains) + 0x10000 * part
                address = generator.choice([place] * 8 + [ram - length, ram + 0x1000, 2**64 - 8])
                chain.append((address % 2**64, length, generator.random() < 0.95))
            chains.append(chain)
        size = generator.choice([14, 60, 1000, 1514, 3000, 9000, 65550])
        payload = frame(size, seed=round_)
        try:
            for chain in chains:
                head = rig.post(rig.rx, chain)
                capacity[head] = sum(length for _, length, _ in chain)
                first_buffer[head] = chain[0]
            peer.send(h.ZERO_HEADER + payload)
            rig.net.process(rig.rx, rig.memory)
            used = rig.used(rig.rx)
            if not used:                                   # a frame may wait for more: offer some
                for extra in range(generator.randint(0, 3)):
                    chain = [(BUFFERS + 0x200000 + 0x10000 * extra, generator.choice([600, 4096, 65562]), True)]
                    head = rig.post(rig.rx, chain)
                    capacity[head], first_buffer[head] = chain[0][1], chain[0]
                rig.net.process(rig.rx, rig.memory)
                used = rig.used(rig.rx)
        except VirtqueueError:
            resets += 1
            continue
        for head, written in used:
            assert 0 < written <= capacity[head], (round_, head, written)
        if used:
            delivered += 1
            assert sum(written for _, written in used) == 12 + size, round_
            address, length, _ = first_buffer[used[0][0]]
            if length >= 12:                                   # the header in one buffer: read it back
                assert struct.unpack_from("<H", rig.memory.read(address, 12), 10)[0] == len(used)
    assert delivered >= 20 and resets >= 20                          # both kinds were tried
