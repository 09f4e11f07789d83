"""One VM's state directory: what a daemon (this one, or one started later) knows the VM by.

    config.json   the request it was created from (name, `vmkit run` arguments, working directory)
    machine.json  what it was built with (kernel, vCPUs, memory, command line, devices)
    pid           "PID STARTTIME" of the VM process (the start time tells a reused PID apart)
    console.log   the guest's console output
    vmm.log       what the VM process itself said (notices, errors)
    control.sock  the VM process's control socket (pause, resume, stop, status), while it runs
    vsock.sock    the vsock device's socket of a VM made from an image without --vsock (the agent's)
    exit.json     how the VM ended: status, kind, message, time; written once, when it ends
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_NAME = 64


def check_name(name: str) -> str | None:
    """Why `name` cannot name a VM, or None when it can."""
    if not NAME_PATTERN.fullmatch(name):
        return f"name {name!r} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
    if len(name) > MAX_NAME:
        return f"name {name!r} is longer than {MAX_NAME} characters"
    return None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


class VmDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    @property
    def vmm_log(self) -> Path:
        return self.path / "vmm.log"

    @property
    def control_socket(self) -> Path:
        return self.path / "control.sock"

    @property
    def vsock_socket(self) -> Path:
        """The vsock device's Unix socket of a VM made from an image (its exec agent's way in)."""
        return self.path / "vsock.sock"

    def create(self, config: dict[str, Any]) -> None:
        self.path.mkdir(mode=0o700)
        write_json(self.path / "config.json", config)
        self.console_log.touch()

    def config(self) -> dict[str, Any] | None:
        return read_json(self.path / "config.json")

    def machine(self) -> dict[str, Any] | None:
        return read_json(self.path / "machine.json")

    def record_machine(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "machine.json", summary)

    def write_pid(self, pid: int) -> None:
        (self.path / "pid").write_text(f"{pid} {process_start_time(pid)}\n")

    def pid(self) -> int | None:
        """The VM process's PID while that very process is alive, else None."""
        try:
            pid_text, start_text = (self.path / "pid").read_text().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return None
        return pid if process_start_time(pid) == start else None

    def recorded_pid(self) -> int | None:
        try:
            return int((self.path / "pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def exit(self) -> dict[str, Any] | None:
        return read_json(self.path / "exit.json")

    def record_exit(self, status: int | None, kind: str, message: str, finished: float) -> bool:
        """Write exit.json unless the VM process wrote it already; whether this call wrote it."""
        path = self.path / "exit.json"
        if path.exists():
            return False
        write_json(path, {"status": status, "kind": kind, "message": message, "finished": finished})
        return True

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
