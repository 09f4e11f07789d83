"""The host side of the guest's serial console: output to a terminal or file, input from stdin.

On a terminal, stdin is put in raw mode so keys (Ctrl-C included) go to the guest;
Ctrl-A x quits, Ctrl-A Ctrl-A sends a literal Ctrl-A (as in QEMU).
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable
from typing import TextIO

from vmkit.vmm.host_files import open_output_file

ESCAPE = 0x01  # Ctrl-A


class ConsoleOutput:
    """A sink for guest console bytes: a file descriptor written unbuffered.

    Output that cannot be written (a full disk, a closed terminal) never ends the VM: the first
    failure is reported once through `on_error`, and later output is dropped.
    """

    def __init__(self, fd: int | None, owned: bool = False,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._fd = fd
        self._owned_fd = fd if owned else None
        self._on_error = on_error
        self._lock = threading.Lock()

    @classmethod
    def for_target(cls, target: str, on_error: Callable[[str], None] | None = None) -> ConsoleOutput:
        """'stdio', 'none' or a file path (raises ConfigError naming --console)."""
        if target == "stdio":
            return cls(_usable_fd(sys.stdout), on_error=on_error)
        if target == "none":
            return cls(None)
        return cls(open_output_file(target, "--console"), owned=True, on_error=on_error)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._fd, view):]
                except BlockingIOError:
                    select.select([], [self._fd], [])
                except BrokenPipeError:
                    self._fd = None                      # the reader went away: nobody to tell
                    return
                except OSError as exc:
                    self._fd = None
                    if self._on_error is not None:
                        self._on_error(f"guest console output stopped: {exc.strerror}; "
                                       "the rest of it is dropped")
                    return

    def close(self) -> None:
        with self._lock:
            if self._owned_fd is not None:
                os.close(self._owned_fd)
            self._owned_fd = self._fd = None


def _usable_fd(stream: TextIO | None) -> int | None:
    """The descriptor behind a standard stream, or None when the stream is closed."""
    try:
        fd = stream.fileno() if stream is not None else -1
        os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return None
    return fd


class ConsoleInput:
    """Reads stdin on a thread and feeds the guest; handles the escape sequence on terminals.

    With stdin closed there is nothing to read: start() does nothing."""

    def __init__(self, deliver: Callable[[bytes], int], on_quit: Callable[[], None],
                 fd: int | None = None) -> None:
        self._deliver = deliver
        self._on_quit = on_quit
        self._fd = _usable_fd(sys.stdin) if fd is None else fd
        self._wake_r, self._wake_w = os.pipe()
        self._saved_tty: list | None = None
        self._escape_pending = False
        self._thread = threading.Thread(target=self._loop, name="console-input", daemon=True)

    @property
    def is_terminal(self) -> bool:
        return self._fd is not None and os.isatty(self._fd)

    def start(self) -> None:
        if self._fd is None:
            return
        if self.is_terminal:
            self._saved_tty = termios.tcgetattr(self._fd)
            tty.setraw(self._fd)
        self._thread.start()

    def stop(self) -> None:
        """End the reader, restore the terminal, release the wake-up pipe. Safe in any state:
        never started, started, or stopped already."""
        if self._wake_w < 0:
            return
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(1.0)
        if self._saved_tty is not None and self._fd is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    def _loop(self) -> None:
        fd = self._fd
        if fd is None:
            return
        while True:
            try:
                ready, _, _ = select.select([fd, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return  # EOF: the guest simply gets no more input
            if self.is_terminal:
                filtered = self._filter_escape(data)
                if filtered is None:
                    self._on_quit()
                    return
                data = filtered
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        while data:
            taken = self._deliver(data)
            data = data[taken:]
            if data:
                select.select([self._wake_r], [], [], 0.01)

    def _filter_escape(self, data: bytes) -> bytes | None:
        """Strip Ctrl-A sequences; None means the user asked to quit."""
        out = bytearray()
        for byte in data:
            if self._escape_pending:
                self._escape_pending = False
                if byte in (ord("x"), ord("X")):
                    return None
                if byte == ESCAPE:
                    out.append(ESCAPE)
                continue
            if byte == ESCAPE:
                self._escape_pending = True
            else:
                out.append(byte)
        return bytes(out)
