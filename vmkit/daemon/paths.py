"""Where the daemon lives: $XDG_RUNTIME_DIR/vmkit, or `daemon/` under the cache when there is none."""

from __future__ import annotations

import os
from pathlib import Path

from vmkit.cache import cache_root


def runtime_dir() -> Path:
    """The daemon's directory: its socket, lock, log and the VMs' state directories."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "vmkit"
    return cache_root() / "daemon"


def default_socket() -> Path:
    return runtime_dir() / "daemon.sock"


def state_root(socket_path: Path) -> Path:
    """The VMs' state directories, next to the daemon's socket (so each socket has its own VMs)."""
    return socket_path.parent / "vms"
