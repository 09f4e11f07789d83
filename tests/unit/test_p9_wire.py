"""9P2000.L wire format: the bounds-checked reader, the writer, qids, and the reply room's views."""

import struct

import pytest

from vmkit.devices.virtio.p9 import wire
from vmkit.devices.virtio.p9.wire import ProtocolError, Qid, Reader, ReplyRoom, Writer


def test_reader_reads_each_width_little_endian_and_strings():
    body = struct.pack("<BHIQ", 1, 0x0203, 0x04050607, 0x08090A0B0C0D0E0F) + struct.pack("<H", 3) + b"abc"
    reader = Reader(wire.message(wire.TWALK, 7, body))
    assert (reader.u8(), reader.u16(), reader.u32(), reader.u64()) == (1, 0x0203, 0x04050607, 0x08090A0B0C0D0E0F)
    assert reader.string() == b"abc"


@pytest.mark.parametrize("body,read", [
    (b"", lambda r: r.u8()),
    (b"\x01", lambda r: r.u16()),
    (b"\x01\x02\x03", lambda r: r.u32()),
    (b"\x01" * 7, lambda r: r.u64()),
    (b"\x05\x00abcd", lambda r: r.string()),                   # length says 5, 4 bytes follow
    (b"\xff\xff", lambda r: r.string()),                        # the largest length, nothing follows
    (b"\x01", lambda r: r.string()),                            # half a length
])
def test_a_field_past_the_end_is_a_protocol_error(body, read):
    reader = Reader(wire.message(wire.TATTACH, 1, body))
    with pytest.raises(ProtocolError) as caught:
        read(reader)
    assert caught.value.errno == 71                             # EPROTO


def test_writer_and_message_encode_what_the_reader_reads():
    qid = Qid(wire.QT_DIR, 0xDEADBEEF, 0x1122334455667788)
    body = Writer().u8(9).u16(0xBEEF).u32(0xCAFEBABE).u64(2**64 - 1).string(b"name").qid(qid).bytes()
    data = wire.message(wire.TGETATTR + 1, 0x4242, body)
    size, kind, tag = wire.HEADER.unpack_from(data)
    assert (size, kind, tag) == (len(data), wire.TGETATTR + 1, 0x4242)
    reader = Reader(data)
    assert (reader.u8(), reader.u16(), reader.u32(), reader.u64(), reader.string()) == (
        9, 0xBEEF, 0xCAFEBABE, 2**64 - 1, b"name")
    assert data[-13:] == qid.pack() and len(qid.pack()) == wire.QID_SIZE
    assert Qid(*struct.unpack("<BIQ", data[-13:])) == qid


def test_error_reply_is_rlerror_with_the_errno():
    assert wire.error_reply(5, 13) == struct.pack("<IBHI", 11, wire.RLERROR, 5, 13)
    assert len(wire.error_reply(0, 1)) == wire.ERROR_SIZE


def test_a_string_too_long_for_its_length_field_is_refused():
    with pytest.raises(ProtocolError):
        Writer().string(b"x" * 65536)


def test_reply_room_spans_uneven_views():
    first, second, third = bytearray(3), bytearray(0), bytearray(10)
    room = ReplyRoom([memoryview(first), memoryview(second), memoryview(third)])
    assert room.capacity == 13
    room.write(0, b"ABCDEFGHIJKLM")
    assert bytes(first) == b"ABC" and bytes(third) == b"DEFGHIJKLM"
    assert [bytes(v) for v in room.slices(2, 4)] == [b"C", b"DEF"]
    assert room.slices(13, 0) == []
    with pytest.raises(ValueError):
        room.slices(10, 4)                                      # past the end
    with pytest.raises(ValueError):
        room.write(12, b"xy")


def test_gather_joins_views_and_stops_at_their_end():
    views = [memoryview(b"ab"), memoryview(b""), memoryview(b"cdef")]
    assert wire.gather(views, 5) == b"abcde"
    assert wire.gather(views, 100) == b"abcdef"
    assert [bytes(v) for v in wire.slices(views, 1, 3)] == [b"b", b"cd"]
