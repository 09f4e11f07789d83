"""The vsock header codec and one stream's state machine and credit (virtio 1.2, 5.10.6)."""

import pytest

from vmkit.devices.virtio.vsock.connection import BUF_ALLOC, Connection, Event, ProtocolViolation, State
from vmkit.devices.virtio.vsock.packet import (
    HEADER_SIZE,
    HOST_CID,
    SHUTDOWN_BOTH,
    SHUTDOWN_RCV,
    SHUTDOWN_SEND,
    TYPE_STREAM,
    Header,
    Op,
    PacketError,
)

GUEST = 3


def packet(op, *, flags=0, buf_alloc=65536, fwd_cnt=0, length=0, type_=TYPE_STREAM):
    return Header(GUEST, HOST_CID, 5000, 1 << 30, length, type_, op, flags, buf_alloc, fwd_cnt)


def stream(state):
    """A stream in `state`: CONNECTING (vmkit asked), ESTABLISHED or CLOSED."""
    conn = Connection(GUEST, 1 << 30, 5000, initiated_by_host=state is State.CONNECTING)
    if state is State.CLOSED:
        conn.reset()
        conn.next_control()
    return conn


def test_the_header_is_44_little_endian_bytes_in_spec_order():
    header = Header(0x1122334455667788, 2, 0xAABBCCDD, 7, 9, 1, 5, 2, 65536, 123)
    raw = header.pack()
    assert HEADER_SIZE == len(raw) == 44
    assert raw[:8] == bytes.fromhex("8877665544332211") and raw[16:20] == bytes.fromhex("ddccbbaa")
    assert raw[28:30] == b"\x01\x00" and raw[30:32] == b"\x05\x00" and raw[40:44] == (123).to_bytes(4, "little")
    assert Header.unpack(raw) == header
    with pytest.raises(PacketError, match="44 bytes, not 43"):
        Header.unpack(raw[:43])
    back = header.reply(Op.RST)
    assert (back.src_cid, back.dst_cid, back.src_port, back.dst_port, back.op) == (2, 0x1122334455667788, 7,
                                                                                 0xAABBCCDD, Op.RST)


@pytest.mark.parametrize("state,op,flags,event", [
    (State.CONNECTING, Op.RESPONSE, 0, Event.ESTABLISHED),
    (State.CONNECTING, Op.RST, 0, Event.REFUSED),
    (State.ESTABLISHED, Op.RW, 0, Event.DATA),
    (State.ESTABLISHED, Op.SHUTDOWN, SHUTDOWN_SEND, Event.SHUTDOWN),
    (State.ESTABLISHED, Op.SHUTDOWN, SHUTDOWN_BOTH, Event.SHUTDOWN),
    (State.ESTABLISHED, Op.SHUTDOWN, 0, Event.NONE),
    (State.ESTABLISHED, Op.CREDIT_UPDATE, 0, Event.NONE),
    (State.ESTABLISHED, Op.CREDIT_REQUEST, 0, Event.NONE),
    (State.ESTABLISHED, Op.RST, 0, Event.RESET),
    *[(State.CLOSED, op, 0, Event.NONE) for op in (*Op, 99)],
])
def test_legal_transitions(state, op, flags, event):
    conn = stream(state)
    assert conn.receive(packet(op, flags=flags)) is event
    after = {Event.ESTABLISHED: State.ESTABLISHED, Event.REFUSED: State.CLOSED, Event.RESET: State.CLOSED}
    assert conn.state is after.get(event, state)
    if op == Op.CREDIT_REQUEST:
        assert (Op.CREDIT_UPDATE in conn.pending) is (state is State.ESTABLISHED)


@pytest.mark.parametrize("state,op,flags", [
    *[(State.CONNECTING, op, 0) for op in (Op.REQUEST, Op.RW, Op.SHUTDOWN, Op.CREDIT_UPDATE, Op.CREDIT_REQUEST, 0, 99)],
    (State.ESTABLISHED, Op.REQUEST, 0), (State.ESTABLISHED, Op.RESPONSE, 0), (State.ESTABLISHED, 0, 0),
    (State.ESTABLISHED, 8, 0), (State.ESTABLISHED, 0xFFFF, 0), (State.ESTABLISHED, Op.SHUTDOWN, 4),
])
def test_illegal_transitions_break_the_protocol(state, op, flags):
    conn = stream(state)
    with pytest.raises(ProtocolViolation):
        conn.receive(packet(op, flags=flags))
    conn.reset()
    assert conn.state is State.CLOSED and conn.next_control().op == Op.RST and conn.next_control() is None


def test_a_type_other_than_stream_and_data_after_shutdown_are_violations():
    with pytest.raises(ProtocolViolation, match="type 2"):
        stream(State.ESTABLISHED).receive(packet(Op.RW, type_=2))
    conn = stream(State.ESTABLISHED)
    conn.receive(packet(Op.SHUTDOWN, flags=SHUTDOWN_SEND))
    with pytest.raises(ProtocolViolation, match="RW after"):
        conn.receive(packet(Op.RW, length=1))


def test_the_first_packets_each_side_sends():
    assert stream(State.CONNECTING).next_control().op == Op.REQUEST
    response = stream(State.ESTABLISHED).next_control()
    assert response.op == Op.RESPONSE and response.buf_alloc == BUF_ALLOC
    assert (response.src_cid, response.dst_cid, response.src_port, response.dst_port) == (2, GUEST, 1 << 30, 5000)


def test_credit_to_the_guest_counts_what_it_has_room_for():
    conn = stream(State.ESTABLISHED)
    conn.receive(packet(Op.CREDIT_UPDATE, buf_alloc=1000, fwd_cnt=0))
    assert conn.peer_credit() == 1000 and conn.wants_host_data()
    assert conn.header(Op.RW, length=600).len == 600 and conn.tx_cnt == 600
    assert conn.peer_credit() == 400
    conn.header(Op.RW, length=400)
    assert conn.peer_credit() == 0 and not conn.wants_host_data()
    conn.ask_credit_if_stuck()
    conn.ask_credit_if_stuck()
    ops = [conn.next_control() for _ in range(3)]
    assert [h.op for h in ops if h] == [Op.RESPONSE, Op.CREDIT_REQUEST]        # asked once
    conn.receive(packet(Op.CREDIT_UPDATE, buf_alloc=1000, fwd_cnt=700))
    assert conn.peer_credit() == 700 and not conn.asked_credit
    conn.receive(packet(Op.CREDIT_UPDATE, buf_alloc=1000, fwd_cnt=5000))      # more than was sent: no credit
    assert conn.peer_credit() == 0


def test_credit_counters_wrap_at_2_to_the_32():
    conn = stream(State.ESTABLISHED)
    conn.tx_cnt = 0xFFFFFF00
    conn.receive(packet(Op.CREDIT_UPDATE, buf_alloc=4096, fwd_cnt=0xFFFFFF00))
    conn.header(Op.RW, length=0x200)
    assert conn.tx_cnt == 0x100 and conn.peer_credit() == 4096 - 0x200
    conn.rx_cnt = conn.fwd_cnt = conn.advertised_fwd_cnt = 0xFFFFFFF0
    conn.accept_data(0x20)
    assert conn.rx_cnt == 0x10 and conn.guest_may_send() == BUF_ALLOC - 0x20


def test_a_guest_sending_past_the_advertised_credit_breaks_the_protocol():
    conn = stream(State.ESTABLISHED)
    conn.accept_data(BUF_ALLOC - 10)
    conn.forwarded(BUF_ALLOC - 10)                 # taken by the host, but the guest was not told yet
    with pytest.raises(ProtocolViolation, match="11 bytes sent with 10 of credit"):
        conn.accept_data(11)
    update = [conn.next_control() for _ in range(2)][1]
    assert update.op == Op.CREDIT_UPDATE and update.fwd_cnt == BUF_ALLOC - 10
    conn.accept_data(BUF_ALLOC)                    # now it may send a whole buffer again


def test_a_credit_update_goes_out_when_the_guests_view_gets_low():
    conn = stream(State.ESTABLISHED)
    conn.next_control()
    conn.accept_data(BUF_ALLOC // 2 + 1)           # the guest thinks less than half is free
    conn.forwarded(BUF_ALLOC // 4 - 1)
    assert not conn.has_control()                  # not enough freed yet to be worth a packet
    conn.forwarded(1)
    assert conn.next_control().op == Op.CREDIT_UPDATE and conn.guest_may_send() == BUF_ALLOC * 3 // 4 - 1
    small = stream(State.ESTABLISHED)
    small.next_control()
    small.accept_data(100)
    small.forwarded(100)
    assert not small.has_control()                 # plenty of room in the guest's view


def test_shutdown_flags_are_sticky_and_finish_the_stream_when_both_sides_are_done():
    conn = stream(State.ESTABLISHED)
    conn.next_control()
    assert conn.receive(packet(Op.SHUTDOWN, flags=SHUTDOWN_SEND)) is Event.SHUTDOWN
    assert conn.receive(packet(Op.SHUTDOWN, flags=SHUTDOWN_SEND)) is Event.NONE
    assert conn.guest_shutdown == SHUTDOWN_SEND and not conn.finished()
    conn.host_closed_send()
    shutdown = conn.next_control()
    assert shutdown.op == Op.SHUTDOWN and shutdown.flags == SHUTDOWN_SEND
    conn.to_host += b"x"
    assert not conn.finished()                     # the host program has not taken every byte
    conn.to_host.clear()
    assert conn.finished()
    other = stream(State.ESTABLISHED)
    other.receive(packet(Op.SHUTDOWN, flags=SHUTDOWN_RCV))
    assert not other.wants_host_data() and not other.finished()
    other.receive(packet(Op.SHUTDOWN, flags=SHUTDOWN_SEND))
    assert other.guest_shutdown == SHUTDOWN_BOTH and other.finished()
