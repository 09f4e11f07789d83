"""The real vmkit-agent on the host, behind a Unix socket that answers `CONNECT <port>` as a VM's
vsock socket does: each connection is handed to a fresh `vmkit-agent --serve-stdin`, so
AgentClient talks to the agent exactly as it does through a VM, with no boot."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

from vmkit.agent.protocol import AGENT_PORT
from vmkit.images.initramfs import build_agent


def agent_binary(directory: Path) -> Path:
    path = directory / "vmkit-agent"
    path.write_bytes(build_agent())
    path.chmod(0o755)
    return path


class FakeVsockSocket:
    """A Unix socket that answers `CONNECT <port>` with OK, as a VM's vsock socket does, and hands
    each connection it accepted to serve()."""

    def __init__(self, path: str, port: int = AGENT_PORT) -> None:
        self.path = path
        self.port = port
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                line = b""
                while not line.endswith(b"\n") and len(line) < 32:
                    piece = conn.recv(1)
                    if not piece:
                        break
                    line += piece
                if line == b"CONNECT %d\n" % self.port:
                    conn.sendall(b"OK 1073741824\n")
                    self.serve(conn)

    def close(self) -> None:
        self._server.close()


class HostAgent(FakeVsockSocket):
    """Each connection goes to a fresh `vmkit-agent --serve-stdin`, run as `user` if given."""

    def __init__(self, directory: Path, binary: Path, port: int = AGENT_PORT, user: int | None = None) -> None:
        self.binary = binary
        self.user = user
        self.agents: list[subprocess.Popen[bytes]] = []
        super().__init__(str(directory / "vm.sock"), port)

    def serve(self, conn: socket.socket) -> None:
        self.agents.append(subprocess.Popen([str(self.binary), "--serve-stdin"], stdin=conn,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            user=self.user, group=self.user))

    def statuses(self, timeout: float = 10) -> list[int]:
        """Wait for every agent process so far; their exit statuses (negative: killed by a signal)."""
        return [agent.wait(timeout) for agent in list(self.agents)]

    def close(self) -> None:
        super().close()
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
