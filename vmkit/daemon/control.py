"""A VM process's control socket: one JSON line asked, one JSON line answered, per connection.

Requests: {"op": "status" | "pause" | "resume" | "stop" | "metrics"}, or {"op": "input", "data": BASE64}
(bytes for the guest's console). Answers: {"ok": true, "state": ...}, {"ok": true, "data": {...}} for
"metrics" (vmm/metrics.py's snapshot as JSON), or {"ok": false, "error": "..."}. "stop" presses the
VM's ACPI power button (the daemon stops the VM hard with SIGTERM when the guest does not power off).
The VM process serves it on a thread of its own; the daemon asks.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmkit.daemon import unix

MAX_INPUT = 4096                  # console bytes in one request
MAX_LINE = 2 * MAX_INPUT
MAX_DATA_LINE = 1 << 20           # an answer with data (metrics)
OPERATIONS = ("status", "pause", "resume", "stop", "input", "metrics")


class ControlError(Exception):
    """The VM process did not answer, or refused the request."""


class ControlServer:
    """Serve `act(op, data) -> state` on `path` until close(); an exception's text is the error
    answered. `data` is the console input of an "input" request, else empty. An act that returns a
    dict (metrics) is answered as "data"."""

    def __init__(self, path: Path, act: Callable[[str, bytes], str | dict[str, Any]]) -> None:
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
            result = self._act(op, data)
            answer: dict[str, Any] = {"ok": True, "state": result} if isinstance(result, str) else \
                {"ok": True, "data": result}
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


def _read_line(connection: socket.socket, limit: int = MAX_LINE) -> bytes:
    data = bytearray()
    while b"\n" not in data and len(data) < limit:
        chunk = connection.recv(max(MAX_LINE, limit - len(data)))
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
    return str(_exchange(path, request, timeout, MAX_LINE).get("state"))


def ask_data(path: Path, op: str, timeout: float) -> object:
    """Send `op` to the VM process at `path` and return the data it answers (ControlError when it
    does not answer within `timeout` seconds, all told, or refuses)."""
    return _exchange(path, {"op": op}, timeout, MAX_DATA_LINE).get("data")


def _exchange(path: Path, request: dict[str, Any], timeout: float, limit: int) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    try:
        with unix.connect(path, timeout) as connection:
            connection.sendall(json.dumps(request).encode() + b"\n")
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            answer = json.loads(_read_line(connection, limit) or b"null")
    except (OSError, ValueError) as exc:
        raise ControlError(f"the VM process does not answer: {exc}") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ControlError(str(error or "the VM process gave no answer"))
    return answer
