"""The host side of a VM's vsock: a Unix socket listening at PATH, and one host socket per stream.

- A host program connects to PATH and writes `CONNECT <port>\\n`; the muxer sends the guest a
  REQUEST from a fresh host port (counting up from 2**30), and when the guest answers RESPONSE it
  writes `OK <host port>\\n` back and joins the two. RST (nobody listens in the guest), no answer
  within CONNECT_TIMEOUT_NS, or a line that is not `CONNECT <u32>` closes the host connection.
- A guest's REQUEST to CID 2, port P is joined to the Unix socket `PATH_P` when a host program
  listens there, else answered with RST.

Everything runs on the VM's I/O thread. Host data is read straight into the guest's rx buffers,
only when the guest has a buffer and credit for it, so nothing waits in vmkit on the way in: a
socket with data and nowhere to put it is unwatched until the guest offers rx buffers or credit.
Guest data the host program does not take at once waits in its stream's `to_host` (at most the
credit vmkit advertised, BUF_ALLOC), and the socket is watched for room with an epoll set of its own,
whose fd the I/O thread watches.
"""

from __future__ import annotations

import os
import select
import socket
from collections import deque
from collections.abc import Callable
from functools import partial

from vmkit.devices.virtio.device import DeviceHost
from vmkit.devices.virtio.vsock.connection import Connection, Event, ProtocolViolation, State
from vmkit.devices.virtio.vsock.packet import HOST_CID, SHUTDOWN_SEND, TYPE_STREAM, Header, Op

MAX_STREAMS = 1024                      # streams and host connections still to say CONNECT, together
MAX_STRAY_RSTS = 256                    # RSTs for packets to no stream, waiting for rx buffers
MAX_PAYLOAD = 64 * 1024                 # host bytes in one packet to the guest
CONNECT_LINE_MAX = 32
CONNECT_TIMEOUT_NS = 2_000_000_000
FIRST_HOST_PORT = 1 << 30
ACCEPTS_PER_WAKE = 64


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def parse_connect(line: bytes) -> int | None:
    """The port of a `CONNECT <port>` line (without its newline), or None."""
    words = line.split()
    if len(words) != 2 or words[0].lower() != b"connect" or not words[1].isdigit() or len(words[1]) > 10:
        return None
    port = int(words[1])
    return port if port <= 0xFFFFFFFF else None


class Muxer:
    """The streams of one vsock device and the Unix sockets behind them."""

    def __init__(self, listener: socket.socket, path: str, guest_cid: int) -> None:
        self.listener, self.path, self.guest_cid = listener, path, guest_cid
        self.path_id = _file_id(path)          # the socket file bound at PATH, removed at close
        self.host: DeviceHost | None = None
        self.wake_rx: Callable[[], None] = lambda: None     # the device serves rx when there is output
        self.conns: dict[tuple[int, int], Connection] = {}
        self.socks: dict[tuple[int, int], socket.socket] = {}
        self.lines: dict[int, tuple[socket.socket, bytearray]] = {}   # fd -> connection still to say CONNECT
        self.stray: deque[Header] = deque()
        self.control_ready: dict[tuple[int, int], None] = {}         # ordered sets of stream keys
        self.data_ready: dict[tuple[int, int], None] = {}
        self.watched: set[int] = set()
        self.blocked_writes = select.epoll()
        self.blocked: dict[int, tuple[int, int]] = {}                  # fd -> stream waiting for room
        self.next_port = FIRST_HOST_PORT
        self.reset_requested = False
        self.dropped_packets = 0

    # --- set-up and ending -------------------------------------------------------------------
    def attach(self, host: DeviceHost, wake_rx: Callable[[], None]) -> None:
        self.host, self.wake_rx = host, wake_rx
        self._watch(self.listener.fileno(), self._accept)
        self._watch(self.blocked_writes.fileno(), self._writable)

    def close(self) -> None:
        """Close every socket and remove PATH (after the I/O thread stopped)."""
        self.host = None
        self._drop_all()
        for sock, _ in list(self.lines.values()):
            sock.close()
        self.lines.clear()
        if self.path_id is not None and _file_id(self.path) == self.path_id:
            os.unlink(self.path)
        self.listener.close()
        self.blocked_writes.close()

    def apply_reset(self) -> None:
        """The driver reset the device: every stream ends (its host connection is closed)."""
        if self.reset_requested:
            self.reset_requested = False
            self._drop_all()

    def _drop_all(self) -> None:
        for key in list(self.conns):
            self._close_socket(key)
        self.conns.clear()
        self.stray.clear()
        self.control_ready.clear()
        self.data_ready.clear()

    # --- watching ------------------------------------------------------------------------------
    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        if self.host is not None and fd not in self.watched:
            self.host.watch(fd, handler)
            self.watched.add(fd)

    def _unwatch(self, fd: int) -> None:
        if self.host is not None and fd in self.watched:
            self.host.unwatch(fd)
            self.watched.discard(fd)

    def _sync(self, conn: Connection) -> None:
        """Watch the stream's socket exactly when the guest can take its data and it is not known
        readable already; queue its control packets; finish it when both sides are done."""
        key = conn.key
        sock = self.socks.get(key)
        if conn.finished():
            conn.finish()
        if conn.state is State.CLOSED and sock is not None:
            self._close_socket(key)
            sock = None
        if sock is not None:
            if conn.wants_host_data() and key not in self.data_ready:
                self._watch(sock.fileno(), lambda: self._host_readable(conn))
            else:
                self._unwatch(sock.fileno())
        if conn.has_control():
            self.control_ready[key] = None
        elif conn.state is State.CLOSED:
            self._forget(key)

    def _close_socket(self, key: tuple[int, int]) -> None:
        sock = self.socks.pop(key, None)
        if sock is not None:
            fd = sock.fileno()
            self._unwatch(fd)
            if self.blocked.pop(fd, None) is not None:
                self.blocked_writes.unregister(fd)
            sock.close()
        self.data_ready.pop(key, None)

    def _forget(self, key: tuple[int, int]) -> None:
        self._close_socket(key)
        self.conns.pop(key, None)
        self.control_ready.pop(key, None)

    # --- host connections ---------------------------------------------------------------------
    def _accept(self) -> None:
        self.apply_reset()
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return                             # out of fds, say: the host program sees nothing
            if len(self.conns) + len(self.lines) >= MAX_STREAMS:
                sock.close()
                continue
            sock.setblocking(False)
            fd = sock.fileno()
            self.lines[fd] = (sock, bytearray())
            self._watch(fd, partial(self._read_line, fd))

    def _read_line(self, fd: int) -> None:
        """Read the CONNECT line without taking a byte past its newline."""
        sock, line = self.lines[fd]
        try:
            peek = sock.recv(CONNECT_LINE_MAX - len(line), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peek = b""
        end = peek.find(b"\n")
        if not peek or (end < 0 and len(line) + len(peek) >= CONNECT_LINE_MAX):
            self._end_line(fd, close=True)
            return
        try:
            line += sock.recv(end + 1 if end >= 0 else len(peek))
        except OSError:
            self._end_line(fd, close=True)
            return
        if end < 0:
            return
        port = parse_connect(bytes(line[:-1]))
        self._end_line(fd, close=port is None)
        if port is not None:
            self._connect_to_guest(sock, port)

    def _end_line(self, fd: int, close: bool) -> None:
        sock, _ = self.lines.pop(fd)
        self._unwatch(fd)
        if close:
            sock.close()

    def _connect_to_guest(self, sock: socket.socket, guest_port: int) -> None:
        host_port = self._fresh_port(guest_port)
        conn = Connection(self.guest_cid, host_port, guest_port, initiated_by_host=True)
        self.conns[conn.key] = conn
        self.socks[conn.key] = sock
        self._sync(conn)
        if self.host is not None:
            self.host.call_later(CONNECT_TIMEOUT_NS, lambda: self._connect_timeout(conn))
        self.wake_rx()

    def _fresh_port(self, guest_port: int) -> int:
        while True:
            port = self.next_port
            self.next_port = ((port + 1) & 0x7FFFFFFF) | FIRST_HOST_PORT
            if (port, guest_port) not in self.conns:
                return port

    def _connect_timeout(self, conn: Connection) -> None:
        self.apply_reset()
        if self.conns.get(conn.key) is conn and conn.state is State.CONNECTING:
            conn.reset()
            self._sync(conn)
            self.wake_rx()

    def _connect_to_host(self, header: Header) -> None:
        """The guest's REQUEST to host port `dst_port`: join it to PATH_<port>, or RST."""
        if len(self.conns) + len(self.lines) >= MAX_STREAMS:
            self._stray_rst(header)
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError:                            # out of fds: as if nobody listened
            self._stray_rst(header)
            return
        try:
            sock.connect(f"{self.path}_{header.dst_port}")
        except OSError:
            sock.close()
            self._stray_rst(header)
            return
        conn = Connection(self.guest_cid, header.dst_port, header.src_port, initiated_by_host=False)
        conn.peer_buf_alloc, conn.peer_fwd_cnt = header.buf_alloc, header.fwd_cnt
        self.conns[conn.key] = conn
        self.socks[conn.key] = sock
        self._sync(conn)

    def _stray_rst(self, header: Header) -> None:
        """Answer a packet that belongs to no stream with RST (never an RST with another)."""
        if header.op != Op.RST and len(self.stray) < MAX_STRAY_RSTS:
            self.stray.append(Header(HOST_CID, self.guest_cid, header.dst_port, header.src_port, 0, TYPE_STREAM,
                                     Op.RST, 0, 0, 0))

    # --- the guest's packets --------------------------------------------------------------------
    def from_guest(self, header: Header, payload: list[memoryview]) -> None:
        """One tx packet, its payload as views of guest memory (exactly header.len bytes)."""
        self.apply_reset()
        if header.src_cid != self.guest_cid or header.dst_cid != HOST_CID:
            self.dropped_packets += 1
            return
        key = (header.dst_port, header.src_port)
        conn = self.conns.get(key)
        if conn is None:
            if header.op == Op.REQUEST and header.type == TYPE_STREAM:
                self._connect_to_host(header)
            else:
                self._stray_rst(header)
            return
        try:
            event = conn.receive(header)
            if event is Event.DATA:
                conn.accept_data(header.len)
                self._to_host(conn, payload)
            elif event is Event.ESTABLISHED:
                self._send_ok(conn)
            elif event is Event.SHUTDOWN:
                self._shut_host_write(conn)
        except ProtocolViolation:
            conn.reset()
        self._sync(conn)

    def bad_packet(self, header: Header) -> None:
        """A packet the device could not take whole (its payload runs past the chain): its stream,
        if it has one, is reset, since bytes are lost."""
        conn = self.conns.get((header.dst_port, header.src_port))
        self.dropped_packets += 1
        if conn is not None and header.src_cid == self.guest_cid:
            conn.reset()
            self._sync(conn)

    def _send_ok(self, conn: Connection) -> None:
        sock = self.socks[conn.key]
        try:
            sent = sock.send(f"OK {conn.host_port}\n".encode(), socket.MSG_NOSIGNAL)
        except OSError:
            sent = 0
        if sent == 0:
            conn.reset()                           # a few bytes into an empty socket: only a closed peer fails

    def _to_host(self, conn: Connection, payload: list[memoryview]) -> None:
        sock = self.socks.get(conn.key)
        if sock is None:
            return
        total = sum(len(view) for view in payload)
        sent = 0
        if not conn.to_host and total:
            try:
                sent = sock.sendmsg(payload, [], socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                conn.reset()
                return
            conn.forwarded(sent)
        if sent < total:
            skip = sent
            for view in payload:
                if skip >= len(view):
                    skip -= len(view)
                    continue
                conn.to_host += view[skip:]
                skip = 0
            fd = sock.fileno()
            if fd not in self.blocked:
                self.blocked[fd] = conn.key
                self.blocked_writes.register(fd, select.EPOLLOUT)

    def _shut_host_write(self, conn: Connection) -> None:
        """The guest sends no more: once the host program has every byte, it sees EOF."""
        sock = self.socks.get(conn.key)
        if conn.guest_shutdown & SHUTDOWN_SEND and not conn.to_host and not conn.host_write_closed and sock:
            conn.host_write_closed = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _writable(self) -> None:
        """Host sockets that had no room have some: pass on what waits for them."""
        self.apply_reset()
        for fd, _ in self.blocked_writes.poll(0):
            key = self.blocked.get(fd)
            conn = self.conns.get(key) if key is not None else None
            sock = self.socks.get(key) if key is not None else None
            if conn is None or sock is None:
                continue
            try:
                sent = sock.send(conn.to_host, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                conn.reset()
                self._sync(conn)
                continue
            del conn.to_host[:sent]
            conn.forwarded(sent)
            if not conn.to_host:
                del self.blocked[fd]
                self.blocked_writes.unregister(fd)
                self._shut_host_write(conn)
            self._sync(conn)
        self.wake_rx()

    # --- packets for the guest ----------------------------------------------------------------
    def has_output(self) -> bool:
        return bool(self.stray or self.control_ready or self.data_ready)

    def _host_readable(self, conn: Connection) -> None:
        self.apply_reset()
        if self.conns.get(conn.key) is not conn:
            return
        self.data_ready[conn.key] = None
        self._sync(conn)                           # known readable: unwatched until it runs dry
        self.wake_rx()

    def next_packet(self, payload: list[memoryview]) -> Header | None:
        """The next packet for the guest: its header, with its payload (if any) already read into
        `payload` (views of an rx buffer after the header); None when nothing is due."""
        self.apply_reset()
        room = sum(len(view) for view in payload)
        while True:
            if self.stray:
                return self.stray.popleft()
            if self.control_ready:
                key = next(iter(self.control_ready))
                del self.control_ready[key]
                conn = self.conns.get(key)
                if conn is not None:
                    header = conn.next_control()
                    self._sync(conn)
                    if header is not None:
                        return header
                continue
            if self.data_ready and room:
                key = next(iter(self.data_ready))
                del self.data_ready[key]
                conn, sock = self.conns.get(key), self.socks.get(key)
                if conn is not None and sock is not None:
                    header = self._read_host(conn, sock, payload)
                    if header is not None:
                        return header
                continue
            return None

    def _read_host(self, conn: Connection, sock: socket.socket, payload: list[memoryview]) -> Header | None:
        key = conn.key
        if not conn.wants_host_data():
            self._sync(conn)
            return None
        limit = min(conn.peer_credit(), MAX_PAYLOAD)
        views: list[memoryview] = []
        room = 0
        for view in payload:
            if room >= limit:
                break
            take = min(len(view), limit - room)
            views.append(view[:take])
            room += take
        try:
            got = sock.recvmsg_into(views)[0]
        except (BlockingIOError, InterruptedError):
            self._sync(conn)                       # dry: watched again
            return None
        except OSError:
            conn.reset()
            self._sync(conn)                       # its RST is queued
            return None
        if got == 0:
            conn.host_closed_send()
            self._sync(conn)                       # its SHUTDOWN is queued
            return None
        header = conn.header(Op.RW, length=got)
        if conn.wants_host_data():
            self.data_ready[key] = None            # more may wait: back of the line
        else:
            conn.ask_credit_if_stuck()
            self._sync(conn)
        return header
