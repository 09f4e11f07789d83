"""Ports that let a test guest report: QEMU-compatible isa-debug-exit and the 0xe9 debug console."""

from __future__ import annotations

from collections.abc import Callable


class DebugExit:
    """A write of value v ends the VM with exit status (v << 1) | 1, as QEMU's isa-debug-exit."""

    def __init__(self, on_exit: Callable[[int], None], label: str = "debug-exit") -> None:
        self.label = label
        self._on_exit = on_exit

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        self._on_exit((value << 1) | 1)


class DebugConsole:
    """Bytes written to port 0xe9 go to the console (Bochs/QEMU debugcon); reads return 0xe9."""

    def __init__(self, output: Callable[[bytes], None], label: str = "debugcon") -> None:
        self.label = label
        self._output = output

    def read(self, offset: int, size: int) -> bytes:
        return b"\xe9" + b"\0" * (size - 1)

    def write(self, offset: int, data: bytes) -> None:
        self._output(data[:1])
