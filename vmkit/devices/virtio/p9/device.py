"""virtio-9p (type 9; virtio 1.x section 5.11): one shared directory, served over 9P2000.L.

A request is one descriptor chain: the T-message in its device-readable part, room for the
R-message in its device-writable part. Twrite's data is written to the file straight from the
guest's buffers and Rread's data read straight into them. A chain the device cannot answer at all
(device-readable bytes too few for a message header, device-writable ones too few for Rlerror)
raises VirtqueueError, and the transport puts the device in DEVICE_NEEDS_RESET; everything else,
however malformed, gets a reply.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from vmkit.devices.virtio.device import DeviceHost
from vmkit.devices.virtio.p9.server import MAX_MSIZE, MIN_MSIZE, Server
from vmkit.devices.virtio.p9.wire import (
    ERROR_SIZE,
    HEADER,
    HEADER_SIZE,
    TWRITE,
    WRITE_HEADER_SIZE,
    ReplyRoom,
    error_reply,
    gather,
    slices,
)
from vmkit.devices.virtio.pci_transport import VIRTIO_F_VERSION_1
from vmkit.devices.virtio.queue import DescriptorChain, Virtqueue, VirtqueueError
from vmkit.devices.virtio.state import StateError
from vmkit.memory import GuestMemory

DEVICE_TYPE = 9
F_MOUNT_TAG = 1 << 0
QUEUE_SIZE = 256
MAX_TAG_BYTES = 32


@dataclass(frozen=True)
class P9State:
    """The device's guest-visible state, for snapshots: its tag, whether it is writable, and the
    msize the driver negotiated (0: none yet). Fids are not saved: each holds host file descriptors
    that no snapshot can carry, so after a restore the driver's old fids answer EBADF."""

    tag: str
    writable: bool
    msize: int


@dataclass
class P9Counters:
    """Requests answered, errors included (metrics)."""

    messages: int = 0


class VirtioP9:
    """The device side of one share; it owns `root_fd` (an O_PATH fd of the shared directory)."""

    device_type = DEVICE_TYPE
    features = VIRTIO_F_VERSION_1 | F_MOUNT_TAG
    queue_sizes: tuple[int, ...] = (QUEUE_SIZE,)

    def __init__(self, root_fd: int, tag: str, writable: bool, label: str = "virtio-9p") -> None:
        encoded = tag.encode()
        if not 0 < len(encoded) <= MAX_TAG_BYTES:
            raise ValueError(f"a mount tag of {len(encoded)} bytes (1..{MAX_TAG_BYTES})")
        self.root_fd = root_fd
        self.tag = tag
        self.writable = writable
        self.label = label
        self.server = Server(root_fd, writable)
        self.counters = P9Counters()
        self._config = struct.pack("<H", len(encoded)) + encoded

    def config(self) -> bytes:
        return self._config

    def activate(self, features: int) -> None:
        pass                                            # it serves the same whatever was negotiated

    def attach(self, host: DeviceHost) -> None:
        pass                                            # it only answers kicks

    def reset(self) -> None:
        self.server.reset()

    def close(self) -> None:
        """Close every fid and the shared directory (after the I/O thread stopped)."""
        self.server.close()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def process(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        served = False
        while (chain := queue.pop(memory)) is not None:
            queue.push_used(memory, chain.head, self._serve(chain, memory))
            self.counters.messages += 1
            served = True
        return served

    def _serve(self, chain: DescriptorChain, memory: GuestMemory) -> int:
        """Answer one request; return how many bytes of reply the device wrote."""
        readable = [memory.view(b.address, b.length) for b in chain.readable]
        room = ReplyRoom([memory.view(b.address, b.length) for b in chain.writable])
        sent = sum(len(view) for view in readable)
        if sent < HEADER_SIZE:
            raise VirtqueueError(f"request {chain.head}: {sent} device-readable bytes, too few for a 9P header")
        if room.capacity < ERROR_SIZE:
            raise VirtqueueError(f"request {chain.head}: {room.capacity} device-writable bytes, "
                                 f"too few for a 9P reply ({ERROR_SIZE})")
        size, kind, tag = HEADER.unpack(gather(readable, HEADER_SIZE))
        if not HEADER_SIZE <= size <= min(sent, self.server.message_limit):
            reply = error_reply(tag, errno.EPROTO)   # the size field lies, or passes msize
            room.write(0, reply)
            return len(reply)
        if kind == TWRITE and size >= WRITE_HEADER_SIZE:
            return self.server.handle(gather(readable, WRITE_HEADER_SIZE),
                                      slices(readable, WRITE_HEADER_SIZE, size - WRITE_HEADER_SIZE), room)
        return self.server.handle(gather(readable, size), [], room)

    # --- snapshots ----------------------------------------------------------------------------
    def save(self) -> P9State:
        return P9State(self.tag, self.writable, self.server.msize)

    def restore(self, state: object) -> None:
        """Take a saved state (untrusted: every field is checked first); the session restarts
        with no fids at the saved msize."""
        if not isinstance(state, P9State):
            raise StateError("state: not a virtio-9p state")
        if state.tag != self.tag:
            raise StateError(f"tag: {state.tag!r} is not this share's ({self.tag!r})")
        if state.writable is not self.writable:
            raise StateError(f"writable: {state.writable!r} is not this share's ({self.writable})")
        msize = state.msize
        if not isinstance(msize, int) or isinstance(msize, bool) or not (
                msize == 0 or MIN_MSIZE <= msize <= MAX_MSIZE):
            raise StateError(f"msize: {msize!r} is not 0 or a size in {MIN_MSIZE}..{MAX_MSIZE}")
        self.server.reset()
        self.server.msize = msize
