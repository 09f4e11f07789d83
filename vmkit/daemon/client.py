"""The CLI's side of the daemon: HTTP over its Unix socket (h11), and starting it when it is not up."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11

from vmkit.daemon import paths, unix

START_WAIT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 180.0
RECV_BYTES = 64 * 1024


class DaemonError(Exception):
    """The daemon could not be reached, or refused the request; the message is one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def socket_path() -> Path:
    given = os.environ.get("VMKIT_DAEMON_SOCKET")
    return Path(given) if given else paths.default_socket()


def start_daemon(path: Path) -> None:
    """Start `vmkit daemon --socket PATH` detached (its own session, output to daemon.log), and
    wait until its socket accepts."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.parent / "daemon.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "vmkit", "daemon", "--socket", str(path)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + START_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            unix.connect(path, 1.0).close()
            process.returncode = 0              # it runs on alone; not ours to wait for
            return
        except OSError:
            pass
        if process.poll() is not None and not _locked(path):   # not another daemon starting meanwhile
            if _accepts(path):
                return
            raise DaemonError(f"the vmkit daemon did not start (exit status {process.returncode}); "
                              f"see {path.parent / 'daemon.log'}")
        time.sleep(0.02)
    raise DaemonError(f"the vmkit daemon did not open {path} within {START_WAIT_SECONDS:.0f} s")


def _locked(path: Path) -> bool:
    """Whether a daemon holds the socket's lock (it is starting, or serving)."""
    try:
        fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _accepts(path: Path) -> bool:
    try:
        unix.connect(path, 1.0).close()
        return True
    except OSError:
        return False


class Client:
    def __init__(self, path: Path | None = None, autostart: bool = True) -> None:
        self.path = path or socket_path()
        self.autostart = autostart

    def _connect(self) -> socket.socket:
        try:
            return unix.connect(self.path, REQUEST_TIMEOUT_SECONDS)
        except (FileNotFoundError, ConnectionRefusedError):
            if not self.autostart:
                raise DaemonError(f"no vmkit daemon listens on {self.path}") from None
        except OSError as exc:
            raise DaemonError(f"cannot reach the vmkit daemon at {self.path}: {exc.strerror}") from None
        start_daemon(self.path)
        try:
            return unix.connect(self.path, REQUEST_TIMEOUT_SECONDS)
        except OSError as exc:
            raise DaemonError(f"cannot reach the vmkit daemon at {self.path}: {exc.strerror}") from None

    def _exchange(self, method: str, target: str, body: Any = None) -> tuple[int, Iterator[bytes]]:
        sock = self._connect()
        http = h11.Connection(h11.CLIENT)
        data = b"" if body is None else json.dumps(body).encode()
        headers = [("Host", "vmkit"), ("Content-Length", str(len(data))), ("Connection", "close")]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        try:
            sock.sendall((http.send(h11.Request(method=method, target=target, headers=headers)) or b"")
                         + (http.send(h11.Data(data=data)) or b"" if data else b"")
                         + (http.send(h11.EndOfMessage()) or b""))
            event = _next(sock, http)
        except (OSError, h11.ProtocolError) as exc:
            sock.close()
            raise DaemonError(f"the vmkit daemon at {self.path} failed to answer: {exc}") from None
        if not isinstance(event, h11.Response):
            sock.close()
            raise DaemonError("the vmkit daemon's answer is not HTTP")

        def chunks() -> Iterator[bytes]:
            with sock:
                while True:
                    try:
                        part = _next(sock, http)
                    except (OSError, h11.ProtocolError) as exc:
                        raise DaemonError(f"the vmkit daemon's answer broke off: {exc}") from None
                    if isinstance(part, h11.Data):
                        yield bytes(part.data)
                    else:
                        return
        return event.status_code, chunks()

    def request(self, method: str, target: str, body: Any = None) -> Any:
        """The decoded JSON answer of a request; DaemonError with the daemon's message when it fails."""
        status, chunks = self._exchange(method, target, body)
        data = b"".join(chunks)
        try:
            answer = json.loads(data) if data.strip() else None
        except ValueError:
            raise DaemonError(f"the vmkit daemon's answer is not JSON (HTTP {status})", status) from None
        if status >= 300:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise DaemonError(str(message or f"HTTP {status}"), status)
        return answer

    def stream(self, target: str) -> Iterator[bytes]:
        """The body of a GET as it comes (logs, events)."""
        status, chunks = self._exchange("GET", target)
        if status >= 300:
            self_error = b"".join(chunks)
            try:
                message = json.loads(self_error).get("error")
            except (ValueError, AttributeError):
                message = None
            raise DaemonError(str(message or f"HTTP {status}"), status)
        return chunks


def _next(sock: socket.socket, http: h11.Connection) -> Any:
    while True:
        event = http.next_event()
        if event is not h11.NEED_DATA:
            return event
        http.receive_data(sock.recv(RECV_BYTES))
