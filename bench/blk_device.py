"""virtio-blk's own cost per request, without a guest: reads posted straight into a queue in guest
memory and served by VirtioPciDevice.notify, as the I/O thread serves a kick.

    python3 -m bench.blk_device [--qd N] [--bytes N] [--rounds N] [--format raw|qcow2]

Each round offers QD reads of BYTES at spread-out offsets of a 64 MiB image of random data (the
qcow2 image is `qemu-img convert`ed from it) and kicks once. Printed: wall and process CPU time per
request. Where the time goes: python3 -m cProfile -s tottime -m bench.blk_device --rounds 300
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import tempfile
import time

from vmkit.devices.virtio.blk import VirtioBlk
from vmkit.devices.virtio.pci_transport import STATUS_DRIVER_OK, STATUS_FEATURES_OK, VirtioPciDevice
from vmkit.memory import GuestMemory
from vmkit.storage import open_disk

DESC, AVAIL, USED, HEADERS, DATA = 0x10000, 0x11000, 0x12000, 0x20000, 0x100000
IMAGE_MIB = 64
QUEUE_SIZE = 256


def make_image(directory: str, fmt: str) -> str:
    raw = os.path.join(directory, "disk.raw")
    with open(raw, "wb") as f:
        for _ in range(IMAGE_MIB):
            f.write(os.urandom(1 << 20))
    if fmt == "raw":
        return raw
    qcow2 = os.path.join(directory, "disk.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    return qcow2


def post_requests(memory: GuestMemory, qd: int, size: int) -> None:
    """QD chains of three descriptors (header, data, status), request i at descriptors 3i..3i+2."""
    sectors = IMAGE_MIB * 2048 - size // 512
    for i in range(qd):
        d = 3 * i
        memory.write(DESC + 16 * d, struct.pack("<QIHH", HEADERS + 16 * i, 16, 1, d + 1))
        memory.write(DESC + 16 * (d + 1), struct.pack("<QIHH", DATA + size * i, size, 3, d + 2))
        memory.write(DESC + 16 * (d + 2), struct.pack("<QIHH", HEADERS + 0x4000 + i, 1, 2, 0))
        sector = (i * 997 * 8) % sectors // 8 * 8
        memory.write(HEADERS + 16 * i, struct.pack("<IIQ", 0, 0, sector))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qd", type=int, default=32, help="requests per kick (default 32)")
    parser.add_argument("--bytes", type=int, default=4096, help="bytes per read (default 4096)")
    parser.add_argument("--rounds", type=int, default=2000, help="kicks (default 2000)")
    parser.add_argument("--format", choices=("raw", "qcow2"), default="raw")
    args = parser.parse_args()
    if not 1 <= args.qd <= 64 or args.bytes % 512 or not 0 < args.bytes * args.qd <= 64 << 20:
        raise SystemExit("--qd 1..64, --bytes whole sectors, at most 64 MiB in all")
    with tempfile.TemporaryDirectory(prefix="vmkit-blk-device-") as directory:
        disk = open_disk(make_image(directory, args.format), args.format)
        memory = GuestMemory.create(128 << 20)
        function = VirtioPciDevice(VirtioBlk(disk, serial="bench"), memory, 0xE0000000, lambda a, d: None)
        queue = function.queues[0]
        queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = QUEUE_SIZE, DESC, AVAIL, USED
        queue.validate_layout(memory)
        queue.ready = True
        function.status = STATUS_DRIVER_OK | STATUS_FEATURES_OK | 3
        post_requests(memory, args.qd, args.bytes)
        offered = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.rounds):
            for i in range(args.qd):
                memory.write(AVAIL + 4 + 2 * ((offered + i) % QUEUE_SIZE), struct.pack("<H", 3 * i))
            offered = (offered + args.qd) & 0xFFFF
            memory.write(AVAIL + 2, struct.pack("<H", offered))
            function.notify(0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if queue.next_used != offered or function.error is not None:
            raise SystemExit(f"the device served {queue.next_used} of {offered}: {function.error}")
        requests = args.rounds * args.qd
        print(f"{args.format}, {args.qd} x {args.bytes} bytes a kick: {wall / requests * 1e6:.2f} µs wall, "
              f"{cpu / requests * 1e6:.2f} µs CPU a request")
        disk.close()
        memory.close()


if __name__ == "__main__":
    main()
