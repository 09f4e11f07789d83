"""The virtio-net frame header and feature bits (virtio 1.x, section 5.1).

With VIRTIO_F_VERSION_1 every frame in the rx and tx queues starts with this 12-byte header;
`num_buffers` is always present (it is 1 unless mergeable rx buffers are in use).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

DEVICE_TYPE = 1

F_CSUM = 1 << 0                  # the device takes frames with a partial checksum (tx)
F_GUEST_CSUM = 1 << 1            # the driver takes frames with a partial checksum (rx)
F_MTU = 1 << 3
F_MAC = 1 << 5
F_GUEST_TSO4 = 1 << 7
F_GUEST_TSO6 = 1 << 8
F_HOST_TSO4 = 1 << 11
F_HOST_TSO6 = 1 << 12
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16

GUEST_OFFLOADS = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6
HOST_OFFLOADS = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6
TAP_OFFLOADS = GUEST_OFFLOADS | HOST_OFFLOADS | F_MRG_RXBUF

FLAG_NEEDS_CSUM, FLAG_DATA_VALID, FLAG_RSC_INFO = 1, 2, 4
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80

STATUS_LINK_UP = 1

HEADER = struct.Struct("<BBHHHHH")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 12

ETH_HEADER = 14
MAX_FRAME = 65550                # the largest frame (without this header) the device carries
MIN_MTU, MAX_MTU = 68, 65535


class NetHeader(NamedTuple):
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 1

    def pack(self) -> bytes:
        return HEADER.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> NetHeader:
        return cls(*HEADER.unpack(data[:HEADER_SIZE]))


ZERO_HEADER = NetHeader().pack()


def frame_room(features: int, mtu: int) -> int:
    """The most bytes (header included) one received frame can take with these negotiated
    features: a 64 KiB segment when the driver takes TSO, else the MTU's frame with a VLAN tag."""
    if features & (F_GUEST_TSO4 | F_GUEST_TSO6):
        return HEADER_SIZE + MAX_FRAME
    return HEADER_SIZE + ETH_HEADER + 4 + mtu
