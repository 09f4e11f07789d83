"""A plain HTTP client for the Firecracker-compatible API (http.client over a Unix socket), and a
handle on a `vmkit-firecracker` process, for the tests."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

PROGRAM = [sys.executable, "-m", "vmkit.api.firecracker"]


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client's connection (keep-alive included) over a Unix socket."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Api:
    """One keep-alive connection; call() returns (status, parsed JSON body or None)."""

    def __init__(self, path: str) -> None:
        self.connection = UnixHTTPConnection(path)
        self.sockets: set[int] = set()

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.connection.request(method, path, body=body, headers=headers or {})
        assert self.connection.sock is not None
        self.sockets.add(id(self.connection.sock))    # how many TCP-like connections were used
        response = self.connection.getresponse()
        return response.status, response.read()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        status, answer = self.raw(method, path, data, headers)
        return status, (json.loads(answer) if answer else None)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        expected = 200 if method == "GET" else 204
        assert status == expected, (method, path, status, answer)
        return answer

    def fault(self, method: str, path: str, body: Any = None) -> str:
        status, answer = self.call(method, path, body)
        assert status == 400, (method, path, status, answer)
        assert set(answer) == {"fault_message"}, answer
        message: str = answer["fault_message"]
        return message

    def close(self) -> None:
        self.connection.close()


class Firecracker:
    """A `vmkit-firecracker` process: its stdout (the guest console) collected as it comes."""

    def __init__(self, *args: str, cwd: str | None = None) -> None:
        self.process = subprocess.Popen([*PROGRAM, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=cwd)
        self.output = bytearray()
        self.errors = bytearray()
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self.output), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: bytearray) -> None:
        while chunk := stream.read1(65536):
            into.extend(chunk)

    def wait_for_socket(self, path: str, timeout: float = 30) -> Api:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                return Api(path)
            assert self.process.poll() is None, f"exited {self.process.returncode}: {bytes(self.errors)!r}"
            time.sleep(0.005)
        raise AssertionError(f"{path} did not appear in {timeout} s")

    def wait_for_output(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.output:
            assert time.monotonic() < deadline, f"no {marker!r} in {bytes(self.output)!r}"
            assert self.process.poll() is None or marker.encode() in self.output, bytes(self.errors)
            time.sleep(0.01)

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def wait(self, timeout: float = 60) -> int:
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return status

    @property
    def stdout(self) -> str:
        return self.output.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.errors.decode(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
