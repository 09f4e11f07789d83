"""virtio-rng (entropy device, type 4): fills every device-writable buffer with host randomness."""

from __future__ import annotations

import os

from vmkit.devices.state import Stateless
from vmkit.devices.virtio.device import DeviceHost
from vmkit.devices.virtio.pci_transport import VIRTIO_F_VERSION_1
from vmkit.devices.virtio.queue import Virtqueue
from vmkit.memory import GuestMemory

MAX_BYTES_PER_REQUEST = 64 * 1024


class VirtioRng(Stateless):
    label = "virtio-rng"
    device_type = 4
    features = VIRTIO_F_VERSION_1
    queue_sizes: tuple[int, ...] = (256,)

    def config(self) -> bytes:
        return b""

    def process(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        served = False
        while (chain := queue.pop(memory)) is not None:
            written = 0
            for buffer in chain.writable:               # in order, up to MAX_BYTES_PER_REQUEST in all
                length = min(buffer.length, MAX_BYTES_PER_REQUEST - written)
                memory.write(buffer.address, os.urandom(length))
                written += length
            queue.push_used(memory, chain.head, written)
            served = True
        return served

    def activate(self, features: int) -> None:
        pass                                            # it serves the same whatever was negotiated

    def attach(self, host: DeviceHost) -> None:
        pass                                            # it only answers kicks
