"""Seeded random tx packets and chains against a live vsock device: nothing but VirtqueueError
escapes, and the device writes guest memory only in used rings and posted rx buffers."""

import random
import socket

from tests.unit.vsock_rig import (
    MEMORY_BYTES,
    QUEUE,
    RX_BUFFER,
    RX_BUFFERS,
    RX_STRIDE,
    RX_USED,
    TX_BUFFERS,
    TX_USED,
    Guest,
    LoopHost,
)
from vmkit.devices.virtio.queue import Virtqueue, VirtqueueError
from vmkit.devices.virtio.vsock.packet import HEADER_SIZE, Header
from vmkit.devices.virtio.vsock.spec import VsockSpec

ITERATIONS = 1000
USED_RING_BYTES = 6 + 8 * QUEUE


def random_header(rng: random.Random, ports: list[int]) -> Header:
    pick = rng.choice
    return Header(
        pick([3, 3, 3, 2, 0, rng.getrandbits(64)]), pick([2, 2, 2, 3, rng.getrandbits(64)]),
        pick([5000, 40000, 40001, rng.getrandbits(32)]), pick([*ports, 1234, 1235, rng.getrandbits(32)]),
        pick([0, 0, rng.randrange(64), rng.randrange(5000), rng.getrandbits(32)]),
        pick([1, 1, 1, 0, 2, rng.getrandbits(16)]), pick([*range(9), rng.getrandbits(16)]),
        pick([0, 1, 2, 3, rng.getrandbits(32)]), pick([0, 4096, 1 << 20, rng.getrandbits(32)]),
        pick([0, rng.getrandbits(32)]))


def random_chain(rng: random.Random, guest: Guest, ports: list[int]) -> list[tuple[int, int, bool]]:
    header = random_header(rng, ports)
    payload = rng.randbytes(rng.choice([0, 10, 300, 3000]))
    at = TX_BUFFERS + rng.randrange(0x1000)
    data = header.pack() + payload
    if rng.random() < 0.1:
        data = data[: rng.randrange(HEADER_SIZE)]                  # a header cut short
    guest.memory.write(at, data)
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.randrange(3), len(data) - 1))) if len(data) > 1 else []
    edges = [0, *cuts, len(data)]
    chain = [(at + a, b - a, False) for a, b in zip(edges, edges[1:], strict=False) if b > a] or [(at, 0, False)]
    if rng.random() < 0.1:                                         # readable bytes from anywhere in RAM
        chain.append((rng.randrange(MEMORY_BYTES - 4096), rng.randrange(4096), False))
    if rng.random() < 0.1:                                         # a buffer the device might write
        chain.append((TX_BUFFERS + 0x4000, rng.randrange(200), True))
    return chain


# Where the device may write: the used rings and the rx buffers (each at most RX_BUFFER bytes long).
ALLOWED = sorted([(RX_USED, RX_USED + USED_RING_BYTES), (TX_USED, TX_USED + USED_RING_BYTES),
                  *[(RX_BUFFERS + slot * RX_STRIDE, RX_BUFFERS + slot * RX_STRIDE + RX_BUFFER) for slot in range(QUEUE)]])


def unchanged_outside(before: bytes, after: bytes, ranges: list[tuple[int, int]]) -> bool:
    start = 0
    for low, high in ranges:
        if before[start:low] != after[start:low]:
            return False
        start = high
    return before[start:] == after[start:]


def restart(guest: Guest) -> None:
    """What a driver does after DEVICE_NEEDS_RESET: reset the device, set the queues up again."""
    guest.device.reset()
    for name in ("rx", "tx"):
        old = getattr(guest, name)
        fresh = Virtqueue(old.max_size, old.index)
        fresh.size, fresh.desc_table, fresh.avail_ring, fresh.used_ring = old.size, old.desc_table, old.avail_ring, \
            old.used_ring
        setattr(guest, name, fresh)
    guest.rx_avail = guest.tx_avail = guest.rx_seen = guest.tx_seen = guest.rx_posted = 0
    for ring in (0x11000, 0x12000, 0x21000, 0x22000):
        guest.memory.write(ring, bytes(4))
    guest.post_rx(kick=False)


def test_random_tx_packets_never_crash_the_device_or_touch_memory_they_should_not(tmp_path):
    rng = random.Random(0x5EED)
    path = str(tmp_path / "v")
    device = VsockSpec(path).open()
    host = LoopHost()
    guest = Guest(device, host)
    guest.post_rx()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{path}_1234")
    listener.listen(64)
    listener.setblocking(False)
    clients = []
    for port in (5000, 5000, 40000):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.sendall(f"CONNECT {port}\n".encode())
        client.setblocking(False)
        clients.append(client)
    host.pump(0.01)
    ports = [1 << 30, (1 << 30) + 1, (1 << 30) + 2]
    errors = 0

    def device_step(step) -> None:
        """Run `step` (the device at work) and check what it wrote."""
        before = bytes(guest.memory.view(0, MEMORY_BYTES))
        step()
        after = bytes(guest.memory.view(0, MEMORY_BYTES))
        assert unchanged_outside(before, after, ALLOWED)

    for _ in range(ITERATIONS):
        if rng.random() < 0.1:
            try:
                rng.choice(clients).send(rng.randbytes(rng.randrange(1, 5000)))
            except OSError:
                pass
            device_step(lambda: host.pump(0))
        guest.post_chain(random_chain(rng, guest, ports))
        try:
            device_step(lambda: guest.serve(1))
            if rng.random() < 0.2:
                guest.take_rx(repost=False)
                guest.post_rx(rng.randrange(1, 4), size=rng.choice([44, 100, 4140]), kick=False)
                device_step(lambda: guest.serve(0))
        except VirtqueueError:
            errors += 1
            restart(guest)
    assert errors > 10                                             # the cut-short headers were seen
    device.close()
    guest.close()
    listener.close()
