"""A small HTTP/1.1 server on a listening Unix socket, built on h11 (no HTTP parsing of its own).

One thread serves every connection through a selector: a request is read whole (its body bounded by
`max_body`), handed to the handler, and answered; connections stay open for the next request
(keep-alive) until the client closes them or sends `Connection: close`. A request h11 cannot parse,
or one whose body is too large, gets a 400 from `on_error` and the connection is closed, since the
rest of what the client sent cannot be trusted to line up with requests. Other file descriptors (a
VM's end, a timer) can be watched in the same loop with `watch`.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable
from typing import NamedTuple

import h11

MAX_HEADER_BYTES = 16 * 1024     # request line and headers, together
DISCARD_LIMIT = 1 << 20         # an oversized body up to this is read and dropped before the 400
MAX_CONNECTIONS = 64             # beyond this a new connection is closed at once
RECV_BYTES = 64 * 1024
SEND_TIMEOUT_SECONDS = 5.0       # a client that does not read its answer is dropped after this


class Request(NamedTuple):
    method: str
    target: str        # the path, without a query
    body: bytes


class Response(NamedTuple):
    status: int
    body: bytes = b""             # JSON, or nothing (204)


Handler = Callable[[Request], Response]
ErrorResponder = Callable[[str], Response]   # a message for a request that never reached the handler


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.refused: str | None = None    # why the request being read will get a 400
        self.received = 0


class UnixHttpServer:
    """Serve `handler` on `listener` (bound and listening already) until the owner stops calling poll."""

    def __init__(self, listener: socket.socket, handler: Handler, on_error: ErrorResponder,
                 max_body: int, server_name: str = "vmkit") -> None:
        self._listener = listener
        self._handler = handler
        self._on_error = on_error
        self._max_body = max_body
        self._server_header = server_name.encode()
        self._selector = selectors.DefaultSelector()
        self._connections: dict[int, _Connection] = {}
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, self._accept)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` from poll() whenever `fd` is readable."""
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def poll(self, timeout: float | None) -> int:
        """Serve whatever is ready, waiting up to `timeout` seconds for something to be; how many
        sockets and watched fds were served (0: the server was idle all that time)."""
        ready = self._selector.select(timeout)
        for key, _ in ready:
            callback: Callable[[], None] = key.data
            callback()
        return len(ready)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        for fd in list(self._connections):
            self._drop(fd)
        self._selector.close()
        self._listener.close()

    # ---- connections

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError:                  # out of fds: the client's connect stays queued no longer
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            sock.close()
            return
        sock.settimeout(SEND_TIMEOUT_SECONDS)
        connection = _Connection(sock)
        self._connections[sock.fileno()] = connection
        self._selector.register(sock, selectors.EVENT_READ, lambda: self._readable(connection))

    def _drop(self, fd: int) -> None:
        connection = self._connections.pop(fd, None)
        if connection is None:
            return
        self._selector.unregister(connection.sock)
        connection.sock.close()

    def _readable(self, connection: _Connection) -> None:
        fd = connection.sock.fileno()
        try:
            data = connection.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            self._drop(fd)
            return
        connection.http.receive_data(data)
        try:
            self._events(connection)
        except h11.RemoteProtocolError as exc:
            self._fail(connection, f"malformed HTTP request: {exc}")
        except OSError:                  # the client went away, or stopped reading its answer
            self._drop(fd)

    def _events(self, connection: _Connection) -> None:
        http = connection.http
        fd = connection.sock.fileno()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if http.their_state is h11.CLOSED or (event is h11.PAUSED and http.our_state is h11.MUST_CLOSE):
                    self._drop(fd)
                return
            if isinstance(event, h11.ConnectionClosed):
                self._drop(fd)
                return
            if isinstance(event, h11.Request):
                connection.request = event
                connection.body.clear()
                connection.refused, connection.received = None, 0
                head = len(event.target) + sum(len(name) + len(value) for name, value in event.headers)
                if head > MAX_HEADER_BYTES:     # h11 bounds only a head that arrives in pieces
                    self._fail(connection, f"the request's line and headers are over {MAX_HEADER_BYTES} bytes")
                    return
                length = _content_length(event)
                waiting = http.they_are_waiting_for_100_continue    # curl asks before a body over 1 KiB
                if length is not None and length > self._max_body:
                    if length > DISCARD_LIMIT or waiting:        # refused before the body is sent
                        self._fail(connection, _too_large(length, self._max_body))
                        return
                    connection.refused = _too_large(length, self._max_body)
                elif waiting:
                    connection.sock.sendall(http.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(event, h11.Data):
                # A body over the limit is read to its end and dropped, so that the client, still
                # sending, is not cut off before it can read the 400.
                connection.received += len(event.data)
                if connection.refused is None and connection.received > self._max_body:
                    connection.refused = _too_large(connection.received, self._max_body)
                    connection.body.clear()
                if connection.received > DISCARD_LIMIT:
                    self._fail(connection, _too_large(connection.received, self._max_body))
                    return
                if connection.refused is None:
                    connection.body += event.data
            elif isinstance(event, h11.EndOfMessage) and connection.refused is not None:
                self._fail(connection, connection.refused)
                return
            elif isinstance(event, h11.EndOfMessage):
                request = connection.request
                assert request is not None
                method = request.method.decode("ascii", "replace")
                target = request.target.decode("ascii", "replace").partition("?")[0]
                self._send(connection, self._handler(Request(method, target, bytes(connection.body))))
                connection.request = None
                connection.body.clear()
                if http.our_state is h11.MUST_CLOSE:
                    self._drop(fd)
                    return
                http.start_next_cycle()

    def _fail(self, connection: _Connection, message: str) -> None:
        """Answer a request that cannot be served with a 400, then close the connection."""
        fd = connection.sock.fileno()
        if connection.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._send(connection, self._on_error(message), close=True)
            except (OSError, h11.LocalProtocolError):
                pass
        self._drop(fd)

    def _send(self, connection: _Connection, response: Response, close: bool = False) -> None:
        headers = [(b"Server", self._server_header)]
        if response.status != 204:
            headers += [(b"Content-Type", b"application/json"),
                        (b"Content-Length", str(len(response.body)).encode())]
        if close:
            headers.append((b"Connection", b"close"))
        http = connection.http
        out = http.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if response.status != 204 and response.body:
            out += http.send(h11.Data(data=response.body)) or b""
        out += http.send(h11.EndOfMessage()) or b""
        connection.sock.sendall(out)


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)          # h11 has checked that it is a number
    return None


def _too_large(size: int, limit: int) -> str:
    return f"the request's body is {size} bytes, larger than the limit of {limit} bytes"
