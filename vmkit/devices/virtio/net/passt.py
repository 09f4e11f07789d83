"""User-mode networking through passt: a helper process per NIC that carries the guest's frames to
the host's sockets (TCP, UDP, ICMP), answers ARP, DHCP and NDP itself, and forwards host ports.

vmkit starts `passt --quiet --foreground --fd N` on one end of a socketpair and keeps the other.
On that stream each frame is a 4-byte big-endian length and the raw Ethernet frame, with no
virtio_net_hdr: the header is dropped on the way out and a zero one (no offloads) put in front on
the way in. passt runs as its own process (it drops to `nobody` when started as root), so the
parsing of guest traffic happens outside vmkit; close() stops it.
"""

from __future__ import annotations

import errno
import shutil
import socket
import struct
import subprocess

from vmkit.devices.virtio.net.header import HEADER_SIZE, MAX_FRAME, ZERO_HEADER

LENGTH = struct.Struct(">I")
RECV_CHUNK = 1 << 18
SEND_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 2.0


class PasstError(OSError):
    """passt could not be started; strerror says why and what to do."""


def passt_argv(binary: str, fd: int, forwards: tuple[tuple[int, int], ...], mtu: int) -> list[str]:
    """passt's command line: the socket on `fd`, the MTU it offers by DHCP, the forwarded TCP ports."""
    argv = [binary, "--quiet", "--foreground", "--fd", str(fd), "--mtu", str(mtu)]
    for host_port, guest_port in forwards:
        argv += ["-t", f"{host_port}:{guest_port}"]
    return argv


class PasstBackend:
    """One passt process and the stream socket to it."""

    offloads = 0

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes] | None = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.process = process
        self._buffer = bytearray()
        self._spill = memoryview(b"")
        self._eof = False
        self._closed = False

    @classmethod
    def start(cls, forwards: tuple[tuple[int, int], ...] = (), mtu: int = 1500,
              binary: str = "passt") -> PasstBackend:
        """Start passt on one end of a new socketpair; PasstError when it cannot be."""
        path = shutil.which(binary)
        if path is None:
            raise PasstError(errno.ENOENT, f"{binary} is not installed (apt-get install passt)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(
                passt_argv(path, theirs.fileno(), forwards, mtu), pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            ours.close()
            raise PasstError(exc.errno, f"cannot start {path}: {exc.strerror}") from None
        finally:
            theirs.close()
        return cls(ours, process)

    @property
    def fd(self) -> int:
        return self._sock.fileno()

    @property
    def alive(self) -> bool:
        return not (self._eof or self._closed)

    def _fill(self) -> None:
        try:
            data = self._sock.recv(RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True                  # passt ended: no more frames
        self._buffer += data

    def _next_frame(self) -> memoryview | None:
        for _ in range(2):                    # what is buffered, then one read more
            if len(self._buffer) >= LENGTH.size:
                length = LENGTH.unpack_from(self._buffer)[0]
                if length > MAX_FRAME:
                    self._eof = True          # not passt's framing: stop listening to it
                    self._buffer.clear()
                    return None
                if len(self._buffer) >= LENGTH.size + length:
                    frame = bytes(self._buffer[LENGTH.size : LENGTH.size + length])
                    del self._buffer[: LENGTH.size + length]
                    return memoryview(frame)
            if self._eof:
                return None
            self._fill()
        return None

    def receive(self, views: list[memoryview]) -> int | None:
        frame = self._next_frame()
        if frame is None:
            return None
        total = HEADER_SIZE + len(frame)
        room = sum(len(v) for v in views)
        _scatter(views, [memoryview(ZERO_HEADER), frame])
        self._spill = memoryview(ZERO_HEADER + bytes(frame))[room:] if total > room else memoryview(b"")
        return total

    @property
    def spill(self) -> memoryview:
        return self._spill

    def send(self, views: list[memoryview]) -> None:
        frame = _skip(views, HEADER_SIZE)
        length = sum(len(v) for v in frame)
        parts: list[bytes | memoryview] = [LENGTH.pack(length), *frame]
        try:
            sent = self._sock.sendmsg(parts)
        except BlockingIOError:
            raise OSError(errno.ENOBUFS, "passt is not keeping up: frame dropped") from None
        if sent < LENGTH.size + length:        # finish the frame, or the stream loses its framing
            rest = b"".join(bytes(p) for p in parts)[sent:]
            self._sock.settimeout(SEND_TIMEOUT_S)
            try:
                self._sock.sendall(rest)
            except OSError:
                self._eof = True
                raise
            finally:
                self._sock.setblocking(False)

    def set_offloads(self, features: int) -> None:
        pass                                  # passt takes and gives whole, checksummed frames

    def close(self) -> None:
        """Stop passt: SIGTERM, then SIGKILL if it has not ended in STOP_TIMEOUT_S."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _skip(views: list[memoryview], length: int) -> list[memoryview]:
    """`views` without their first `length` bytes."""
    rest = []
    for view in views:
        if length >= len(view):
            length -= len(view)
            continue
        rest.append(view[length:])
        length = 0
    return rest


def _scatter(views: list[memoryview], parts: list[memoryview]) -> None:
    """Copy `parts`, one after another, across `views` (which have room for all of them)."""
    index, at = 0, 0
    for part in parts:
        done = 0
        while done < len(part):
            view = views[index]
            take = min(len(view) - at, len(part) - done)
            view[at : at + take] = part[done : done + take]
            done += take
            at += take
            if at == len(view):
                index, at = index + 1, 0
