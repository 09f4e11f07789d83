"""Ending: how a VM ended, decided once.

It exists before any device, so a device that ends the VM (debug exit, reset, power-off) or the I/O
thread reporting a bug holds it directly, with no reference to a Machine not built yet. The first
report wins; later ones are ignored. Whoever must act on the end (the Machine stops its vCPUs)
subscribes with `on_end`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vmkit.vmm.outcome import Outcome


class Ending:
    def __init__(self) -> None:
        self._outcome: Outcome | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    def is_set(self) -> bool:
        return self._event.is_set()

    def on_end(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from the reporting thread) once the VM has ended."""
        self._listeners.append(listener)

    def report(self, outcome: Outcome) -> None:
        """Record how the VM ended; nothing changes when it had ended already."""
        with self._lock:
            if self._event.is_set():
                return
            self._outcome = outcome
            self._event.set()
        for listener in self._listeners:
            listener()

    def wait(self, timeout: float | None = None) -> Outcome | None:
        self._event.wait(timeout)
        return self._outcome
