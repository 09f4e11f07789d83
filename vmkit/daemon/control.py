"""A VM process's control socket: one JSON line asked, one JSON line answered, per connection.

Requests: {"op": "status" | "pause" | "resume" | "stop"}, or {"op": "input", "data": BASE64} (bytes
for the guest's console). Answers: {"ok": true, "state": ...} or {"ok": false, "error": "..."}. The VM
process serves it on a thread of its own; the daemon asks.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmkit.daemon import unix

MAX_INPUT = 4096                  # console bytes in one request
MAX_LINE = 2 * MAX_INPUT
OPERATIONS = ("status", "pause", "resume", "stop", "input")


class ControlError(Exception):
    """The VM process did not answer, or refused the request."""


class ControlServer:
    """Serve `act(op, data) -> state` on `path` until close(); an exception's text is the error
    answered. `data` is the console input of an "input" request, else empty."""

    def __init__(self, path: Path, act: Callable[[str, bytes], str]) -> None:
        self._listener = unix.listen(path, backlog=16)
        self._act = act
        self._path = path
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5.0)
                try:
                    self._answer(connection)
                except OSError:
                    pass

    def _answer(self, connection: socket.socket) -> None:
        line = _read_line(connection)
        try:
            request = json.loads(line)
            op = request.get("op") if isinstance(request, dict) else None
            if op not in OPERATIONS:
                raise ValueError(f"unknown operation {op!r}")
            data = base64.b64decode(request.get("data", ""), validate=True)
            if len(data) > MAX_INPUT:
                raise ValueError(f"console input of {len(data)} bytes; at most {MAX_INPUT} at once")
            answer: dict[str, Any] = {"ok": True, "state": self._act(op, data)}
        except Exception as exc:          # the answer names it; the VM goes on
            answer = {"ok": False, "error": str(exc) or type(exc).__name__}
        connection.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        try:
            self._path.unlink()
        except OSError:
            pass


def _read_line(connection: socket.socket) -> bytes:
    data = bytearray()
    while b"\n" not in data and len(data) < MAX_LINE:
        chunk = connection.recv(MAX_LINE)
        if not chunk:
            break
        data += chunk
    return bytes(data.partition(b"\n")[0])


def ask(path: Path, op: str, timeout: float = 10.0, data: bytes = b"") -> str:
    """Send `op` (with console input `data`) to the VM process at `path`; its state after it, or
    ControlError."""
    request: dict[str, Any] = {"op": op}
    if data:
        request["data"] = base64.b64encode(data).decode()
    try:
        with unix.connect(path, timeout) as connection:
            connection.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(_read_line(connection) or b"null")
    except (OSError, ValueError) as exc:
        raise ControlError(f"the VM process does not answer: {exc}") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ControlError(str(error or "the VM process gave no answer"))
    return str(answer.get("state"))
