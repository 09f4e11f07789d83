"""One connection to the agent: the VM's vsock Unix socket, `CONNECT <port>`, then frames both
ways without blocking either way (a command's output is read while its stdin is written)."""

from __future__ import annotations

import re
import selectors
import socket
import time

from vmkit.agent.errors import AgentProtocolError, AgentUnavailable
from vmkit.agent.protocol import Frame, FrameReader, FrameType, encode_frame

_OK_LINE = re.compile(rb"OK ([0-9]{1,10})\n")
_MAX_LINE = 32


class Deadline:
    """A point in time, or none; remaining() is None for no deadline."""

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


class ChannelTimeout(Exception):
    """The deadline passed before the channel could finish what was asked."""


class Channel:
    """A connected stream to the agent: frames queued out and read in, on a non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = FrameReader()
        self._outbox = bytearray()
        self._eof = False
        self._write_closed = False
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._watching = selectors.EVENT_READ

    @classmethod
    def open(cls, uds_path: str, port: int, deadline: Deadline) -> Channel:
        """Connect to the VM's vsock socket and to `port` in the guest."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(uds_path)
            sock.sendall(b"CONNECT %d\n" % port)
            line = b""
            while not line.endswith(b"\n") and len(line) <= _MAX_LINE:
                sock.settimeout(deadline.remaining())
                piece = sock.recv(_MAX_LINE + 1 - len(line), socket.MSG_PEEK)
                if not piece:
                    raise AgentUnavailable(f"{uds_path}: nothing listens on vsock port {port} in the guest (yet)")
                newline = piece.find(b"\n")
                line += sock.recv(len(piece) if newline < 0 else newline + 1)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise AgentUnavailable(f"{uds_path}: no VM's vsock socket here ({exc.strerror})") from None
        except TimeoutError:
            sock.close()
            raise AgentUnavailable(f"{uds_path}: no answer to CONNECT {port} in time") from None
        except OSError as exc:
            sock.close()
            raise AgentUnavailable(f"{uds_path}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        if not _OK_LINE.fullmatch(line):
            sock.close()
            raise AgentProtocolError(f"{uds_path}: answer to CONNECT {port} was {line[:_MAX_LINE]!r}, not OK <port>")
        return cls(sock)

    def close(self) -> None:
        self._selector.close()
        self._sock.close()

    def send(self, frame_type: FrameType, payload: bytes, deadline: Deadline) -> None:
        """Queue a frame and write until it is all out (reading what comes meanwhile). After the
        agent closed its side, what cannot be written is dropped: the answers still come."""
        if self._write_closed:
            return
        self._outbox += encode_frame(frame_type, payload)
        while self._outbox:
            self._pump(deadline)

    def receive(self, deadline: Deadline) -> Frame:
        """The next frame from the agent."""
        while True:
            frame = self._reader.next()
            if frame is not None:
                return frame
            if self._eof:
                if self._reader.partial:
                    raise AgentProtocolError("the agent's connection closed in the middle of a frame")
                raise AgentUnavailable("the agent's connection closed before its answer (did the VM stop?)")
            self._pump(deadline)

    def _pump(self, deadline: Deadline) -> None:
        """Wait once for the socket; read what is there, write what is queued."""
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbox else 0)
        if wanted != self._watching:
            self._selector.modify(self._sock, wanted)
            self._watching = wanted
        remaining = deadline.remaining()
        events = self._selector.select(remaining)
        if not events and remaining is not None:
            raise ChannelTimeout()
        mask = events[0][1] if events else 0
        if mask & selectors.EVENT_READ:
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._eof = True
                self._drop_outbox()
            elif data:
                self._reader.feed(data)
        if mask & selectors.EVENT_WRITE and self._outbox:
            try:
                sent = self._sock.send(self._outbox)
                del self._outbox[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop_outbox()

    def _drop_outbox(self) -> None:
        self._outbox.clear()
        self._write_closed = True
