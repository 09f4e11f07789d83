"""`vmkit daemon`: hold VMs and serve the REST API on a Unix socket until SIGTERM or SIGINT.

The VMs outlive the daemon: a daemon started later on the same socket finds them again in the state
directories next to it. One daemon per socket, kept so by a lock file.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from vmkit.daemon import paths
from vmkit.daemon.forkserver import ForkServer


class DaemonError(Exception):
    """The daemon cannot start (a one-line reason)."""


def serve(socket_path: Path | None = None, ready: threading.Event | None = None) -> int:
    from vmkit.daemon.api import Api
    from vmkit.daemon.http import HttpServer, serve_in_thread
    from vmkit.daemon.registry import Registry, become_subreaper

    socket_path = socket_path or paths.default_socket()
    directory = socket_path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(f"{socket_path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonError(f"cannot use {directory}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise DaemonError(f"another vmkit daemon serves {socket_path}") from None
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, request_stop)
    become_subreaper()
    forks = ForkServer()
    registry = Registry(paths.state_root(socket_path), forks)
    server = None
    try:
        registry.start()
        try:
            server = HttpServer(socket_path, Api(registry, forks).handle)
        except OSError as exc:
            raise DaemonError(f"cannot listen on {socket_path}: {exc.strerror}") from None
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())
        serve_in_thread(server)
        if ready is not None:
            ready.set()
        while not stop.wait(1.0):
            pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            try:
                socket_path.unlink()
            except OSError:
                pass
        registry.close()
        os.close(lock)
    return 0
