"""Builds 9P2000.L requests and reads replies, for the share's tests (a test-side client)."""

from __future__ import annotations

import struct

from vmkit.devices.virtio.p9 import wire

NOFID = wire.NOFID


def s(text: bytes | str) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<H", len(data)) + data


def msg(kind: int, body: bytes = b"", tag: int = 1) -> bytes:
    return wire.message(kind, tag, body)


def version(msize: int = 65536, name: bytes = b"9P2000.L") -> bytes:
    return msg(wire.TVERSION, struct.pack("<I", msize) + s(name), tag=0xFFFF)


def attach(fid: int = 0) -> bytes:
    return msg(wire.TATTACH, struct.pack("<II", fid, NOFID) + s("root") + s("") + struct.pack("<I", 0))


def walk(fid: int, newfid: int, *names: bytes | str) -> bytes:
    return msg(wire.TWALK, struct.pack("<IIH", fid, newfid, len(names)) + b"".join(s(n) for n in names))


def lopen(fid: int, flags: int = 0) -> bytes:
    return msg(wire.TLOPEN, struct.pack("<II", fid, flags))


def lcreate(fid: int, name: str, flags: int = 2, mode: int = 0o644) -> bytes:
    return msg(wire.TLCREATE, struct.pack("<I", fid) + s(name) + struct.pack("<III", flags, mode, 0))


def read(fid: int, offset: int = 0, count: int = 4096) -> bytes:
    return msg(wire.TREAD, struct.pack("<IQI", fid, offset, count))


def write(fid: int, data: bytes, offset: int = 0) -> bytes:
    return msg(wire.TWRITE, struct.pack("<IQI", fid, offset, len(data)) + data)


def clunk(fid: int) -> bytes:
    return msg(wire.TCLUNK, struct.pack("<I", fid))


def getattr_(fid: int) -> bytes:
    return msg(wire.TGETATTR, struct.pack("<IQ", fid, 0x3FFF))


def setattr_(fid: int, valid: int, mode: int = 0, uid: int = 0, gid: int = 0, size: int = 0,
             atime: tuple[int, int] = (0, 0), mtime: tuple[int, int] = (0, 0)) -> bytes:
    return msg(wire.TSETATTR, struct.pack("<IIIIIQQQQQ", fid, valid, mode, uid, gid, size, *atime, *mtime))


def readdir(fid: int, offset: int = 0, count: int = 8192) -> bytes:
    return msg(wire.TREADDIR, struct.pack("<IQI", fid, offset, count))


def mkdir(fid: int, name: str, mode: int = 0o755) -> bytes:
    return msg(wire.TMKDIR, struct.pack("<I", fid) + s(name) + struct.pack("<II", mode, 0))


def unlinkat(fid: int, name: str, flags: int = 0) -> bytes:
    return msg(wire.TUNLINKAT, struct.pack("<I", fid) + s(name) + struct.pack("<I", flags))


def renameat(old: int, old_name: str, new: int, new_name: str) -> bytes:
    return msg(wire.TRENAMEAT, struct.pack("<I", old) + s(old_name) + struct.pack("<I", new) + s(new_name))


def rename(fid: int, dfid: int, name: str) -> bytes:
    return msg(wire.TRENAME, struct.pack("<II", fid, dfid) + s(name))


def remove(fid: int) -> bytes:
    return msg(wire.TREMOVE, struct.pack("<I", fid))


def statfs(fid: int) -> bytes:
    return msg(wire.TSTATFS, struct.pack("<I", fid))


def fsync(fid: int) -> bytes:
    return msg(wire.TFSYNC, struct.pack("<II", fid, 0))


def readlink(fid: int) -> bytes:
    return msg(wire.TREADLINK, struct.pack("<I", fid))


def symlink(fid: int, name: str, target: str) -> bytes:
    return msg(wire.TSYMLINK, struct.pack("<I", fid) + s(name) + s(target) + struct.pack("<I", 0))


def mknod(fid: int, name: str, mode: int, major: int = 1, minor: int = 3) -> bytes:
    return msg(wire.TMKNOD, struct.pack("<I", fid) + s(name) + struct.pack("<IIII", mode, major, minor, 0))


def link(dfid: int, fid: int, name: str) -> bytes:
    return msg(wire.TLINK, struct.pack("<II", dfid, fid) + s(name))


def xattrwalk(fid: int, newfid: int, name: str = "") -> bytes:
    return msg(wire.TXATTRWALK, struct.pack("<II", fid, newfid) + s(name))


def flush(oldtag: int) -> bytes:
    return msg(wire.TFLUSH, struct.pack("<H", oldtag))


def lock(fid: int) -> bytes:
    return msg(wire.TLOCK, struct.pack("<IBIQQI", fid, 1, 0, 0, 0, 42) + s("guest"))


def getlock(fid: int) -> bytes:
    return msg(wire.TGETLOCK, struct.pack("<IBQQI", fid, 1, 0, 10, 42) + s("guest"))


class Reply:
    """One reply: its type, tag and body, with readers for the fields."""

    def __init__(self, data: bytes) -> None:
        size, self.kind, self.tag = wire.HEADER.unpack_from(data)
        assert size == len(data), (size, len(data))
        self.body = data[wire.HEADER_SIZE:]

    @property
    def errno(self) -> int | None:
        return struct.unpack("<I", self.body)[0] if self.kind == wire.RLERROR else None

    def qid(self, at: int = 0) -> wire.Qid:
        return wire.Qid(*struct.unpack_from("<BIQ", self.body, at))

    def u32(self, at: int = 0) -> int:
        return struct.unpack_from("<I", self.body, at)[0]

    def data(self) -> bytes:
        """Rread / Rreaddir: the counted data."""
        count = self.u32()
        return self.body[4:4 + count]

    def walked(self) -> list[wire.Qid]:
        count = struct.unpack_from("<H", self.body)[0]
        return [self.qid(2 + 13 * i) for i in range(count)]

    def entries(self) -> list[tuple[bytes, int, int]]:
        """Rreaddir: (name, offset, type) of each entry."""
        data, at, out = self.data(), 0, []
        while at < len(data):
            offset, kind, length = struct.unpack_from("<QBH", data, at + 13)
            at += 13 + 11
            out.append((data[at:at + length], offset, kind))
            at += length
        return out
