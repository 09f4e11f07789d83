"""9P2000.L on the wire: message types, a bounds-checked reader, a writer, and the reply room.

A message is size[4] type[1] tag[2] and a body; integers are little-endian and a string is
length[2] bytes[length]. Everything here reads guest bytes: a field that runs past the end of the
message raises ProtocolError (the server answers it with Rlerror), never IndexError or struct.error.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from typing import NamedTuple

HEADER = struct.Struct("<IBH")            # size, type, tag
HEADER_SIZE = HEADER.size                 # 7
ERROR_SIZE = HEADER_SIZE + 4              # Rlerror: the smallest room a request must give
NOFID = 0xFFFFFFFF
QID_SIZE = 13

# Request types; each reply is the request's type plus one.
RLERROR = 7
TSTATFS, TLOPEN, TLCREATE, TSYMLINK, TMKNOD, TRENAME, TREADLINK = 8, 12, 14, 16, 18, 20, 22
TGETATTR, TSETATTR, TXATTRWALK, TXATTRCREATE, TREADDIR, TFSYNC = 24, 26, 30, 32, 40, 50
TLOCK, TGETLOCK, TLINK, TMKDIR, TRENAMEAT, TUNLINKAT = 52, 54, 70, 72, 74, 76
TVERSION, TAUTH, TATTACH, TFLUSH, TWALK = 100, 102, 104, 108, 110
TREAD, TWRITE, TCLUNK, TREMOVE = 116, 118, 120, 122

WRITE_HEADER_SIZE = HEADER_SIZE + 4 + 8 + 4       # Twrite: fid, offset, count, then the data
READ_REPLY_HEADER_SIZE = HEADER_SIZE + 4          # Rread and Rreaddir: count, then the data

QT_DIR, QT_SYMLINK, QT_FILE = 0x80, 0x02, 0x00


class ProtocolError(Exception):
    """A message that does not parse; answered with Rlerror(errno)."""

    def __init__(self, message: str, code: int = errno.EPROTO) -> None:
        super().__init__(message)
        self.errno = code


class Qid(NamedTuple):
    type: int
    version: int
    path: int

    def pack(self) -> bytes:
        return struct.pack("<BIQ", self.type, self.version, self.path)


class Reader:
    """Reads a message's body field by field; every read is checked against its end."""

    def __init__(self, data: bytes, start: int = HEADER_SIZE) -> None:
        self.data = data
        self.at = start

    def _take(self, length: int) -> bytes:
        end = self.at + length
        if end > len(self.data):
            raise ProtocolError(f"a field of {length} bytes at {self.at} runs past the message's "
                                f"{len(self.data)} bytes")
        chunk = self.data[self.at:end]
        self.at = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "little")

    def string(self) -> bytes:
        return self._take(self.u16())


class Writer:
    """Builds a reply body."""

    def __init__(self) -> None:
        self.data = bytearray()

    def u8(self, value: int) -> Writer:
        self.data += struct.pack("<B", value)
        return self

    def u16(self, value: int) -> Writer:
        self.data += struct.pack("<H", value)
        return self

    def u32(self, value: int) -> Writer:
        self.data += struct.pack("<I", value & 0xFFFFFFFF)
        return self

    def u64(self, value: int) -> Writer:
        self.data += struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
        return self

    def string(self, value: bytes) -> Writer:
        if len(value) > 0xFFFF:
            raise ProtocolError("a string longer than 65535 bytes", errno.ENAMETOOLONG)
        self.data += struct.pack("<H", len(value)) + value
        return self

    def qid(self, qid: Qid) -> Writer:
        self.data += qid.pack()
        return self

    def bytes(self) -> bytes:
        return bytes(self.data)


def message(kind: int, tag: int, body: bytes = b"") -> bytes:
    return HEADER.pack(HEADER_SIZE + len(body), kind, tag) + body


def error_reply(tag: int, code: int) -> bytes:
    return message(RLERROR, tag, struct.pack("<I", code))


class ReplyRoom:
    """The device-writable part of a request (one or more views of guest memory), addressed as one
    run of bytes: the reply's header goes at 0, Rread's data straight after it."""

    def __init__(self, views: Sequence[memoryview]) -> None:
        self.views = [v for v in views if len(v)]
        self.capacity = sum(len(v) for v in self.views)

    def slices(self, offset: int, length: int) -> list[memoryview]:
        """Views covering [offset, offset + length) of the room (which must hold it)."""
        return slices(self.views, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        first = self.views[0] if self.views else None
        if first is not None and 0 <= offset and offset + len(data) <= len(first):
            first[offset:offset + len(data)] = data          # the usual case: one buffer holds it
            return
        at = 0
        for view in self.slices(offset, len(data)):
            view[:] = data[at:at + len(view)]
            at += len(view)


def slices(views: Sequence[memoryview], offset: int, length: int) -> list[memoryview]:
    """Views covering [offset, offset + length) of a run of views (which must hold it)."""
    if offset < 0 or length < 0 or offset + length > sum(len(v) for v in views):
        raise ValueError(f"[{offset}, +{length}) is outside a run of {sum(len(v) for v in views)} bytes")
    out: list[memoryview] = []
    for view in views:
        if length == 0:
            break
        if offset >= len(view):
            offset -= len(view)
            continue
        take = min(len(view) - offset, length)
        out.append(view[offset:offset + take])
        offset, length = 0, length - take
    return out


def gather(views: Sequence[memoryview], length: int) -> bytes:
    """The first `length` bytes of a run of views (fewer if they hold fewer)."""
    out = bytearray()
    for view in views:
        if len(out) >= length:
            break
        out += view[:length - len(out)]
    return bytes(out)
