"""Where vmkit keeps what it builds: $VMKIT_CACHE_DIR, else $XDG_CACHE_HOME/vmkit, else ~/.cache/vmkit."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("VMKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmkit")
    return Path(base)
