"""Unix sockets at paths of any length (sun_path holds 108 bytes; a long one goes through /proc)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUN_PATH_ROOM = 100


@contextmanager
def _address(path: Path) -> Iterator[str]:
    text = str(path)
    if len(text.encode()) < SUN_PATH_ROOM:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def listen(path: Path, backlog: int = 128) -> socket.socket:
    """A listening socket at `path`; a stale socket file left there is replaced."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        with _address(path) as address:
            sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(path: Path, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        with _address(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock
