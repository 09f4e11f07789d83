"""HTTP/1.1 on the daemon's Unix socket, over h11 (no HTTP parsing of its own), a thread a connection.

A handler gets a Request and returns a Reply: a JSON body, or a stream of chunks (logs, events) sent
as they come. A stream's iterator may yield b"" to say "nothing yet": the server then checks that the
client is still there, so a follower that went away ends its stream. A request h11 cannot parse, or
with a body over the limit, gets a 400 and the connection closes.
"""

from __future__ import annotations

import json
import os
import select
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import h11

from vmkit.daemon import unix

MAX_BODY = 1 << 20
MAX_HEADERS = 16 * 1024
RECV_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 300.0
LINGER_SECONDS = 1.0
MAX_CONNECTIONS = 256            # followers of logs and events included
LINGER_BYTES = 16 << 20


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    body: bytes


class Reply(NamedTuple):
    status: int
    body: Any = None                                  # JSON-able, bytes sent as they are, or None
    stream: Iterator[bytes] | None = None             # sent chunk by chunk instead of `body`
    content_type: str = "application/json"


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


Handler = Callable[[Request], Reply]


class _Gone(Exception):
    """The client closed its end."""


class _Connection:
    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)

    def serve(self) -> None:
        try:
            while self._one_request():
                self.http.start_next_cycle()
            self._linger()
        except (_Gone, OSError, h11.LocalProtocolError):
            pass

    def _linger(self) -> None:
        """Before closing, read and drop what the client still sends (a body refused half-way), for
        a moment: closing with unread data would reset the connection and lose the answer."""
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.settimeout(LINGER_SECONDS)
        dropped = 0
        while dropped < LINGER_BYTES and self.sock.recv(RECV_BYTES):
            dropped += RECV_BYTES

    def _next_event(self) -> Any:
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.http.receive_data(self.sock.recv(RECV_BYTES))

    def _one_request(self) -> bool:
        try:
            event = self._next_event()
            if isinstance(event, h11.ConnectionClosed):
                return False
            if not isinstance(event, h11.Request):
                raise h11.RemoteProtocolError("expected a request")
            declared = dict(event.headers).get(b"content-length")
            if declared is not None and int(declared) > MAX_BODY:
                self._send(error(400, f"the request's body is larger than {MAX_BODY} bytes"), close=True)
                return False
            body = bytearray()
            while True:
                part = self._next_event()
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY:
                        self._send(error(400, f"the request's body is larger than {MAX_BODY} bytes"), close=True)
                        return False
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return False
        except h11.RemoteProtocolError as exc:
            if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self._send(error(400, f"malformed HTTP request: {exc}"), close=True)
            return False
        split = urlsplit(event.target.decode("ascii", "replace"))
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        try:
            reply = self.handler(Request(event.method.decode("ascii", "replace"), split.path, query, bytes(body)))
        except Exception as exc:                      # a bug in a handler: answered, the daemon goes on
            reply = error(500, f"internal error: {type(exc).__name__}: {exc}")
        self._send(reply)
        return self.http.our_state is h11.DONE and self.http.their_state is h11.DONE

    def _send(self, reply: Reply, close: bool = False) -> None:
        headers = [(b"Server", b"vmkit-daemon")]
        if close:
            headers.append((b"Connection", b"close"))
        if reply.stream is None:
            body = b"" if reply.body is None else reply.body if isinstance(reply.body, bytes) else \
                json.dumps(reply.body).encode() + b"\n"
            if reply.status != 204:
                headers += [(b"Content-Type", reply.content_type.encode()),
                            (b"Content-Length", str(len(body)).encode())]
            self.sock.sendall(self.http.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
            if body:
                self.sock.sendall(self.http.send(h11.Data(data=body)) or b"")
        else:
            headers.append((b"Content-Type", reply.content_type.encode()))
            self.sock.sendall(self.http.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
            stream = reply.stream
            try:
                for chunk in stream:
                    if chunk:
                        self.sock.sendall(self.http.send(h11.Data(data=chunk)) or b"")
                    elif self._client_gone():
                        raise _Gone
            finally:
                close_stream = getattr(stream, "close", None)
                if close_stream is not None:
                    close_stream()
        self.sock.sendall(self.http.send(h11.EndOfMessage()) or b"")

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class HttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, handler: Handler) -> None:
        self.api_handler = handler
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(str(path), _RequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = unix.listen(path)
        os.chmod(path, 0o600)                          # the user's own VMs: nobody else's to steer

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection, unless MAX_CONNECTIONS are open: then it is closed at once."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _RequestHandler(socketserver.BaseRequestHandler):
    server: HttpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(IDLE_TIMEOUT_SECONDS)
        _Connection(sock, self.server.api_handler).serve()


def serve_in_thread(server: HttpServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return thread
