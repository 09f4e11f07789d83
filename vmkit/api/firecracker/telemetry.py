"""The log and the metrics file of a `vmkit-firecracker` process (PUT /logger, PUT /metrics).

Both write to a path the client created (a file or a named pipe), as Firecracker does: the path is
opened without creating it, read-write so a FIFO opens whether or not its reader is there yet, and
never blocks the server (a line that does not fit a full pipe is dropped and counted). Until PUT
/logger names a path, log lines go to standard error: standard output is the guest's console.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

LEVELS = {"off": 0, "error": 1, "warning": 2, "info": 3, "debug": 4, "trace": 5}


class TelemetryError(ValueError):
    """A logger or metrics setting that cannot be used; the message names the field."""


def level_number(name: str, field: str = "level") -> int:
    number = LEVELS.get(name.lower())
    if number is None:
        raise TelemetryError(f"{field}: {name!r} is not one of Error, Warning, Info, Debug, Trace, Off "
                             "(any case)")
    return number


def open_sink(path: str, field: str) -> int:
    """An fd for appending lines to `path`, which must exist (a regular file or a FIFO)."""
    if not path or "\0" in path:
        raise TelemetryError(f"{field}: {path!r} is not a path")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise TelemetryError(f"{field}: cannot open {path!r}: {exc.strerror}") from None
    import stat

    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        os.close(fd)
        raise TelemetryError(f"{field}: {path!r} is neither a regular file nor a named pipe")
    return fd


def _write_line(fd: int, line: str) -> bool:
    try:
        data = (line + "\n").encode(errors="replace")
        return os.write(fd, data) == len(data)
    except OSError:                  # a full pipe (EAGAIN), a reader gone: the line is lost
        return False


class Log:
    """Human-readable lines: `TIME [ID:THREAD(:LEVEL)] message`, filtered by level."""

    def __init__(self, instance_id: str, level: str = "Info", path: str | None = None,
                 show_level: bool = False, show_origin: bool = False) -> None:
        self.instance_id = instance_id
        self.level = level_number(level, "--level")
        self.show_level = show_level
        self.show_origin = show_origin
        self.path = path
        self._fd = open_sink(path, "--log-path") if path else None
        self._lock = threading.Lock()
        self.dropped = 0

    def configure(self, *, path: str | None, level: str | None, show_level: bool | None,
                  show_origin: bool | None) -> None:
        """PUT /logger: every field checked before any changes."""
        number = level_number(level) if level is not None else self.level
        fd = open_sink(path, "log_path") if path is not None else None
        with self._lock:
            if fd is not None:
                if self._fd is not None:
                    os.close(self._fd)
                self._fd, self.path = fd, path
            self.level = number
            if show_level is not None:
                self.show_level = show_level
            if show_origin is not None:
                self.show_origin = show_origin

    def describe(self) -> dict[str, Any]:
        names = {number: name.capitalize() for name, number in LEVELS.items()}
        return {"log_path": self.path, "level": names[self.level], "show_level": self.show_level,
                "show_log_origin": self.show_origin}

    def log(self, level: str, message: str) -> None:
        number = LEVELS[level]
        if number > self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}"
        thread = threading.current_thread()
        tag = f"{self.instance_id}:{'main' if thread is threading.main_thread() else thread.name}"
        if self.show_level:
            tag += f":{level.upper()}"
        line = f"{stamp} [{tag}] {message}"
        with self._lock:
            if self._fd is None:
                try:
                    print(line, file=sys.stderr, flush=True)
                except (OSError, ValueError, AttributeError):
                    self.dropped += 1
            elif not _write_line(self._fd, line):
                self.dropped += 1

    def error(self, message: str) -> None:
        self.log("error", message)

    def warning(self, message: str) -> None:
        self.log("warning", message)

    def info(self, message: str) -> None:
        self.log("info", message)

    def debug(self, message: str) -> None:
        self.log("debug", message)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Metrics:
    """Counters flushed as one JSON object a line (FlushMetrics, and every `period` seconds)."""

    PERIOD_SECONDS = 60.0

    def __init__(self, started_ns: int) -> None:
        self.path: str | None = None
        self._fd: int | None = None
        self.started_ns = started_ns
        self.requests: dict[str, dict[str, int]] = {}
        self.last_flush = time.monotonic()
        self.flushes = 0
        self.missed = 0

    def configure(self, path: str) -> None:
        fd = open_sink(path, "metrics_path")
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.path = fd, path

    @property
    def configured(self) -> bool:
        return self._fd is not None

    def count(self, method: str, endpoint: str, failed: bool) -> None:
        group = self.requests.setdefault(f"{method.lower()}_api_requests", {})
        key = f"{endpoint}_{'fails' if failed else 'count'}"
        group[key] = group.get(key, 0) + 1

    def flush(self, devices: dict[str, dict[str, int]]) -> bool:
        """Write one line of every counter since the last flush (counters start again from 0)."""
        if self._fd is None:
            return False
        record: dict[str, Any] = {"utc_timestamp_ms": int(time.time() * 1000),
                                  "api_server": {"process_startup_time_us": self.started_ns // 1000,
                                                 "missed_metrics_count": self.missed},
                                  **self.requests, **devices}
        self.requests = {}
        self.last_flush = time.monotonic()
        if _write_line(self._fd, json.dumps(record, sort_keys=True)):
            self.flushes += 1
            return True
        self.missed += 1
        return False

    def due(self) -> bool:
        return self._fd is not None and time.monotonic() - self.last_flush >= self.PERIOD_SECONDS

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
