"""The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 little-endian bytes before any payload."""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER = struct.Struct("<QQIIIHHIII")     # src_cid dst_cid src_port dst_port len type op flags buf_alloc fwd_cnt
HEADER_SIZE = HEADER.size                  # 44

HOST_CID = 2
MIN_GUEST_CID, MAX_GUEST_CID = 3, 0xFFFFFFFF - 1   # 0, 1, 2 and 2**32 - 1 are reserved (5.10.4)
TYPE_STREAM = 1

SHUTDOWN_RCV = 1                           # the sender will receive no more
SHUTDOWN_SEND = 2                          # the sender will send no more
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND


class Op(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


class PacketError(ValueError):
    """Bytes that are not a vsock header."""


class Header(NamedTuple):
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    def pack(self) -> bytes:
        return HEADER.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if len(data) != HEADER_SIZE:
            raise PacketError(f"a vsock header is {HEADER_SIZE} bytes, not {len(data)}")
        return cls(*HEADER.unpack(data))

    def reply(self, op: Op, *, flags: int = 0, buf_alloc: int = 0, fwd_cnt: int = 0, length: int = 0) -> Header:
        """A header going back the other way on the same pair of ports."""
        return Header(self.dst_cid, self.src_cid, self.dst_port, self.src_port, length, TYPE_STREAM, op, flags,
                      buf_alloc, fwd_cnt)
