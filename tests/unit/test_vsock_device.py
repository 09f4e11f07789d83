"""The virtio-vsock device over real GuestMemory, virtqueues and Unix sockets: host programs that
CONNECT, guests that connect out, credit both ways, shutdown, resets and hostile packets."""

import os
import socket
import struct

import pytest

from tests.unit.vsock_rig import GUEST_CID, RX_BUFFER, TX_BUFFERS, Guest, LoopHost
from vmkit.devices.virtio.queue import VirtqueueError
from vmkit.devices.virtio.vsock.connection import BUF_ALLOC
from vmkit.devices.virtio.vsock.muxer import FIRST_HOST_PORT
from vmkit.devices.virtio.vsock.packet import HEADER_SIZE, SHUTDOWN_BOTH, SHUTDOWN_SEND, Op
from vmkit.devices.virtio.vsock.spec import VsockSpec

GUEST_PORT = 5000


@pytest.fixture
def rig(tmp_path):
    path = str(tmp_path / "vsock")
    device = VsockSpec(path).open()
    host = LoopHost()
    guest = Guest(device, host)
    guest.post_rx()
    yield path, device, host, guest
    device.close()
    guest.close()
    assert not os.path.exists(path)


def host_connect(path, host, port=GUEST_PORT):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(f"CONNECT {port}\n".encode())
    sock.settimeout(2)
    host.pump()
    return sock


def accept_request(guest, expect_port=GUEST_PORT, repost=True):
    """Answer the REQUEST the device sent with RESPONSE; return the host port."""
    (request, _), = guest.take_rx(repost)
    assert request.op == Op.REQUEST and request.dst_port == expect_port and request.dst_cid == GUEST_CID
    assert request.src_cid == 2 and request.buf_alloc == BUF_ALLOC
    guest.send(Op.RESPONSE, expect_port, request.src_port)
    return request.src_port


def established(path, host, guest):
    sock = host_connect(path, host)
    host_port = accept_request(guest)
    assert sock.recv(64) == f"OK {host_port}\n".encode()
    return sock, host_port


def closed(sock) -> bool:
    """The host end sees the connection closed (EOF, or a reset when it had unread bytes)."""
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def drain(sock, host, length):
    """Read `length` bytes as a host program would, the device serving its side meanwhile."""
    sock.settimeout(0.05)
    data = bytearray()
    for _ in range(2000):
        if len(data) >= length:
            break
        try:
            chunk = sock.recv(1 << 16)
            assert chunk, f"EOF after {len(data)} of {length} bytes"
            data += chunk
        except TimeoutError:
            pass
        host.pump(0.001)
    sock.settimeout(2)
    return bytes(data)


def read_exactly(sock, length):
    data = bytearray()
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        assert chunk, f"EOF after {len(data)} of {length} bytes"
        data += chunk
    return bytes(data)


def test_identity_and_config(rig):
    _, device, _, _ = rig
    assert device.device_type == 19 and device.features == 1 << 32
    assert device.config() == struct.pack("<Q", 3) and len(device.queue_sizes) == 3


def test_a_host_connect_joins_a_guest_stream_both_ways(rig):
    path, _, host, guest = rig
    sock, host_port = established(path, host, guest)
    assert host_port == FIRST_HOST_PORT
    sock.sendall(b"hello guest")
    host.pump()
    (rw, data), = guest.take_rx()
    assert rw.op == Op.RW and data == b"hello guest" and (rw.src_port, rw.dst_port) == (host_port, GUEST_PORT)
    guest.send(Op.RW, GUEST_PORT, host_port, b"hello host")
    assert sock.recv(64) == b"hello host"
    guest.send(Op.SHUTDOWN, GUEST_PORT, host_port, flags=SHUTDOWN_SEND)
    assert sock.recv(64) == b""                                    # the host program sees EOF
    sock.sendall(b"last words")
    sock.shutdown(socket.SHUT_WR)
    host.pump()
    packets = guest.take_rx()
    assert [(h.op, d) for h, d in packets] == [(Op.RW, b"last words"), (Op.SHUTDOWN, b""), (Op.RST, b"")]
    assert packets[1][0].flags == SHUTDOWN_SEND
    sock.close()


def test_a_second_connect_gets_a_fresh_host_port_and_streams_run_side_by_side(rig):
    path, _, host, guest = rig
    socks = []
    for _ in range(6):
        socks.append(established(path, host, guest))
    assert [port for _, port in socks] == [FIRST_HOST_PORT + i for i in range(6)]
    for index, (sock, _) in enumerate(socks):
        sock.sendall(bytes([index]) * 3000)
    host.pump()
    got: dict[int, bytes] = {}
    for header, data in guest.take_rx():
        got[header.src_port] = got.get(header.src_port, b"") + data
    for index, (_, port) in enumerate(socks):
        assert got[port] == bytes([index]) * 3000
        guest.send(Op.RW, GUEST_PORT, port, bytes([index + 100]) * 2000)
    for index, (sock, _) in enumerate(socks):
        assert read_exactly(sock, 2000) == bytes([index + 100]) * 2000


def test_rst_from_the_guest_closes_the_host_connection(rig):
    path, _, host, guest = rig
    sock = host_connect(path, host, 7777)
    (request, _), = guest.take_rx()
    guest.send(Op.RST, 7777, request.src_port)
    assert sock.recv(64) == b""


@pytest.mark.parametrize("line", [b"HELLO 5000\n", b"CONNECT\n", b"CONNECT abc\n", b"CONNECT 4294967296\n",
                                  b"CONNECT 1 2\n", b"CONNECT -1\n", b"C" * 40])
def test_malformed_connect_lines_close_the_connection(rig, line):
    path, _, host, guest = rig
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(line)
    sock.settimeout(2)
    host.pump()
    assert closed(sock) and guest.take_rx() == []


def test_the_connect_line_may_come_in_pieces_and_data_after_it_is_kept(rig):
    path, _, host, guest = rig
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b"conn")
    host.pump()
    sock.sendall(b"ect 5000\nearly bytes")
    sock.settimeout(2)
    host.pump()
    port = accept_request(guest)
    assert sock.recv(64) == f"OK {port}\n".encode()
    host.pump()
    assert [d for _, d in guest.take_rx()] == [b"early bytes"]


def test_a_guest_that_never_answers_is_given_up_on(rig):
    path, _, host, guest = rig
    sock = host_connect(path, host, 9)
    guest.take_rx()
    for timer in host.timers:
        timer()                                                    # the connect timeout passes
    assert sock.recv(64) == b""
    (rst, _), = guest.take_rx()
    assert rst.op == Op.RST and rst.dst_port == 9


def test_a_guest_connect_reaches_a_host_listener_at_path_port(rig):
    path, _, host, guest = rig
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{path}_1234")
    listener.listen()
    guest.send(Op.REQUEST, 40000, 1234)
    (response, _), = guest.take_rx()
    assert response.op == Op.RESPONSE and (response.src_port, response.dst_port) == (1234, 40000)
    peer, _ = listener.accept()
    peer.settimeout(2)
    guest.send(Op.RW, 40000, 1234, b"from the guest")
    assert peer.recv(64) == b"from the guest"
    peer.sendall(b"from the host")
    host.pump()
    assert [(h.op, d) for h, d in guest.take_rx()] == [(Op.RW, b"from the host")]
    guest.send(Op.SHUTDOWN, 40000, 1234, flags=SHUTDOWN_BOTH)
    assert peer.recv(64) == b""
    assert [h.op for h, _ in guest.take_rx()] == [Op.RST]           # a full shutdown is answered with RST
    listener.close()


def test_a_guest_connect_nobody_listens_for_gets_rst(rig):
    _, _, _, guest = rig
    guest.send(Op.REQUEST, 40000, 4321)
    (rst, _), = guest.take_rx()
    assert rst.op == Op.RST and (rst.src_port, rst.dst_port, rst.dst_cid) == (4321, 40000, GUEST_CID)


def test_packets_for_no_stream_get_rst_and_rst_gets_nothing(rig):
    _, _, _, guest = rig
    for op in (Op.RW, Op.RESPONSE, Op.SHUTDOWN, Op.CREDIT_UPDATE, Op.CREDIT_REQUEST, 42):
        guest.send(op, 1, 2)
    guest.send(Op.RST, 1, 2)
    assert [h.op for h, _ in guest.take_rx()] == [Op.RST] * 6


def test_a_guest_sending_more_than_its_credit_is_reset(tmp_path):
    path = str(tmp_path / "v")
    device = VsockSpec(path).open()
    host = LoopHost()
    guest = Guest(device, host)
    guest.post_rx(1)                                               # room for the REQUEST only: the
    sock = host_connect(path, host)                                # guest hears of no credit after it
    port = accept_request(guest, repost=False)
    assert sock.recv(64) == f"OK {port}\n".encode()
    for _ in range(BUF_ALLOC // 65536):
        guest.send(Op.RW, GUEST_PORT, port, b"z" * 65536)          # within credit: all taken
    assert drain(sock, host, BUF_ALLOC) == b"z" * BUF_ALLOC
    guest.send(Op.RW, GUEST_PORT, port, b"z")                      # one byte too many
    assert closed(sock)
    guest.post_rx(4)
    assert [h.op for h, _ in guest.take_rx()] == [Op.RST]
    device.close()
    guest.close()


def fill_a_slow_reader(path, device, host, guest, byte):
    """A stream whose host program reads nothing, and a guest that sends it a whole buffer of `byte`
    (vmkit's side of the Unix socket kept small, so most of it waits in vmkit)."""
    sock, port = established(path, host, guest)
    device.muxer.socks[(port, GUEST_PORT)].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for _ in range(BUF_ALLOC // 32768):
        guest.send(Op.RW, GUEST_PORT, port, byte * 32768)
    return sock, port, device.muxer.conns[(port, GUEST_PORT)]


def test_a_host_program_that_does_not_read_holds_at_most_the_credit_and_gets_it_back(rig):
    path, device, host, guest = rig
    sock, port, conn = fill_a_slow_reader(path, device, host, guest, b"q")
    assert 0 < len(conn.to_host) == BUF_ALLOC - conn.fwd_cnt and conn.guest_may_send() < 32768
    assert [h.op for h, _ in guest.take_rx()] in ([], [Op.CREDIT_UPDATE])
    guest.send(Op.RW, GUEST_PORT, port, b"q" * (conn.guest_may_send() + 1))    # past it: reset
    assert [h.op for h, _ in guest.take_rx()] == [Op.RST]
    received = bytearray()                                         # a reset is abrupt: what waited
    while chunk := sock.recv(1 << 16):                           # in vmkit is dropped
        received += chunk
    assert len(received) < BUF_ALLOC and received == b"q" * len(received)


def test_a_host_program_that_reads_late_gets_every_byte_and_the_guest_its_credit(rig):
    path, device, host, guest = rig
    sock, port, conn = fill_a_slow_reader(path, device, host, guest, b"r")
    assert conn.to_host
    guest.take_rx()
    assert drain(sock, host, BUF_ALLOC) == b"r" * BUF_ALLOC and not conn.to_host
    updates = [h for h, _ in guest.take_rx()]
    assert updates and {h.op for h in updates} == {Op.CREDIT_UPDATE} and updates[-1].fwd_cnt > 0
    assert conn.guest_may_send() >= BUF_ALLOC // 2                 # the guest knows of room again


def test_vmkit_sends_no_more_than_the_guest_has_room_for(rig):
    path, device, host, guest = rig
    sock, port = established(path, host, guest)
    guest.send(Op.CREDIT_UPDATE, GUEST_PORT, port, buf_alloc=5000)
    sock.sendall(b"d" * 20000)
    host.pump()
    packets = guest.take_rx()
    assert sum(len(d) for h, d in packets if h.op == Op.RW) == 5000
    assert packets[-1][0].op == Op.CREDIT_REQUEST
    conn = device.muxer.conns[(port, GUEST_PORT)]
    assert device.muxer.socks[conn.key].fileno() not in host.watched()
    assert conn.peer_credit() == 0 and host.pump() == 0             # nothing spins while it waits
    guest.fwd_cnt = 5000
    guest.send(Op.CREDIT_UPDATE, GUEST_PORT, port, buf_alloc=5000)
    host.pump()
    assert sum(len(d) for h, d in guest.take_rx() if h.op == Op.RW) == 5000


def test_without_rx_buffers_sockets_with_data_are_unwatched_until_the_guest_offers_some(rig):
    path, device, host, guest = rig
    sock, port = established(path, host, guest)
    guest.take_rx(repost=False)
    for _ in range(16):                                            # use up every rx buffer
        sock.sendall(b"x" * 100)
        host.pump()
    sock.sendall(b"y" * (RX_BUFFER - HEADER_SIZE) * 3)
    assert host.pump() <= 1 and host.pump() == 0                   # no buffers: no busy loop
    assert device.muxer.socks[(port, GUEST_PORT)].fileno() not in host.watched()
    packets = guest.take_rx()                                      # reposted: the device serves again
    packets += guest.take_rx()
    data = b"".join(d for h, d in packets if h.op == Op.RW)
    assert data.count(b"y") == (RX_BUFFER - HEADER_SIZE) * 3 and data.count(b"x") == 1600


def test_hostile_tx_chains(rig):
    path, device, host, guest = rig
    sock, port = established(path, host, guest)
    guest.memory.write(TX_BUFFERS, b"\0" * 64)
    with pytest.raises(VirtqueueError, match="less than a 44-byte header"):
        guest.send_chain([(TX_BUFFERS, 43, False)])
    with pytest.raises(VirtqueueError, match="less than a 44-byte header"):
        guest.send_chain([(TX_BUFFERS, 44, True)])                 # a header the device would write
    guest.send(Op.RW, GUEST_PORT, port, b"abc", length=4)          # len past the chain: dropped, reset
    (rst, _), = guest.take_rx()
    assert rst.op == Op.RST and sock.recv(16) == b""
    guest.send(Op.RW, 1, 2, b"abc", src_cid=7)                     # not from the guest's CID: dropped
    guest.send(Op.RW, 1, 2, b"abc", dst_cid=9)
    guest.send(Op.REQUEST, 1, 2, type_=2)                          # SEQPACKET: refused
    assert [h.op for h, _ in guest.take_rx()] == [Op.RST]
    assert device.muxer.dropped_packets == 3


def test_an_rx_buffer_too_small_for_a_header_is_a_queue_error(tmp_path):
    device = VsockSpec(str(tmp_path / "v")).open()
    host = LoopHost()
    guest = Guest(device, host)
    guest.send(Op.REQUEST, 1, 2)                                   # an RST waits for a buffer
    with pytest.raises(VirtqueueError, match="43 device-writable bytes"):
        guest.post_rx(1, size=43)
    device.close()
    guest.close()


def test_a_device_reset_ends_every_stream(rig):
    path, device, host, guest = rig
    sock, _ = established(path, host, guest)
    device.reset()
    host.pump()
    guest.send(Op.CREDIT_UPDATE, 1, 2)                             # the next thing served applies it
    assert sock.recv(16) == b"" and not device.muxer.conns


def test_streams_past_the_limit_are_refused_both_ways(rig, monkeypatch):
    from vmkit.devices.virtio.vsock import muxer

    path, device, host, guest = rig
    monkeypatch.setattr(muxer, "MAX_STREAMS", 2)
    first, _ = established(path, host, guest)
    second, _ = established(path, host, guest)
    third = host_connect(path, host)
    assert closed(third) and guest.take_rx() == []                 # closed at once, no REQUEST
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{path}_1234")
    listener.listen()
    guest.send(Op.REQUEST, 40000, 1234)
    assert [h.op for h, _ in guest.take_rx()] == [Op.RST]          # a listener, but no room
    first.close()
    host.pump()
    guest.take_rx()                                                # the first stream ends: room again
    guest.send(Op.RST, GUEST_PORT, FIRST_HOST_PORT)
    guest.send(Op.REQUEST, 40001, 1234)
    assert [h.op for h, _ in guest.take_rx()] == [Op.RESPONSE]
    listener.close()
    second.close()
