"""The I/O engine: one thread per VM that serves what arrives on file descriptors.

vCPU threads only decode exits. A guest's queue kick is a write to an address registered with
KVM_IOEVENTFD: the kernel signals an eventfd and resumes the guest at once, with no exit to vmkit,
and this thread wakes on the eventfd (epoll) and runs the device's handler. Taps, sockets and timers
will be served here too.

Handlers run one at a time on this thread. A handler that raises is a bug in vmkit: the engine
stops and reports it through `on_error`, which ends the VM as an internal error.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
import traceback
from collections.abc import Callable

Handler = Callable[[], None]


class IoEngine:
    """An epoll loop on its own thread; `add` an eventfd or other fd with the handler it wakes."""

    def __init__(self, on_error: Callable[[str, str], None], name: str = "io") -> None:
        self._on_error = on_error
        self._selector = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()          # registrations from other threads (BAR moves)
        self._stopping = False
        self._timers: list[tuple[int, int, Handler]] = []     # (deadline ns, order, handler), a heap
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def add(self, fd: int, handler: Handler, *, eventfd: bool = True) -> None:
        """Run `handler` on the I/O thread whenever `fd` is readable; an eventfd's count is read
        (reset) before the handler runs, any other fd is left for the handler to read."""
        with self._lock:
            self._selector.register(fd, selectors.EVENT_READ, (handler, eventfd))

    def call_later(self, delay_ns: int, handler: Handler) -> None:
        """Run `handler` on the I/O thread once `delay_ns` have passed (a device waiting out a rate
        limit); callable from any thread."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic_ns() + max(delay_ns, 0), next(self._order), handler))
        os.eventfd_write(self._wake, 1)

    def _due_timers(self) -> tuple[list[Handler], float | None]:
        """The handlers whose time has come, and the seconds until the next one (None: no timer)."""
        now = time.monotonic_ns()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            wait = (self._timers[0][0] - now) / 1e9 if self._timers else None
        return due, wait

    def remove(self, fd: int) -> None:
        with self._lock:
            self._selector.unregister(fd)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the loop after the handler running now (if any) and wait for the thread."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def close(self) -> None:
        self.stop()
        self._selector.close()
        os.close(self._wake)

    def _loop(self) -> None:
        while not self._stopping:
            due, wait = self._due_timers()
            if due:
                if not self._run(due):
                    return
                continue
            try:
                events = self._selector.select(wait)
            except OSError:
                return                            # the selector was closed under us: shutting down
            handlers = []
            for key, _ in events:
                if key.data is None:              # the wake-up eventfd: a timer or stop() was set
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                if self._stopping:
                    continue
                handler, is_eventfd = key.data
                if is_eventfd:
                    try:
                        os.eventfd_read(key.fd)
                    except BlockingIOError:
                        continue                  # drained already: a spurious wake-up
                handlers.append(handler)
            if not self._run(handlers):
                return

    def _run(self, handlers: list[Handler]) -> bool:
        for handler in handlers:
            if self._stopping:
                return False
            try:
                handler()
            except Exception as exc:              # a bug: stop serving, and say so once
                self._stopping = True
                self._on_error(f"I/O thread: {exc!r}", traceback.format_exc())
                return False
        return True


def new_eventfd() -> int:
    """A non-blocking, close-on-exec eventfd for an ioeventfd or an irqfd."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
