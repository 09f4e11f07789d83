"""Ports that let a test guest report: QEMU-compatible isa-debug-exit and the 0xe9 debug console."""

from __future__ import annotations

from collections.abc import Callable

from vmkit.devices.bus import BYTE_WIDE
from vmkit.devices.state import Stateless


class DebugExit(Stateless):
    """A byte v written here ends the VM; the exit status is (v << 1) | 1, as QEMU's isa-debug-exit
    (vmm/outcome.py). Reads return all ones."""

    access = BYTE_WIDE

    def __init__(self, on_exit: Callable[[int], None], label: str = "debug-exit") -> None:
        self.label = label
        self._on_exit = on_exit

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff"

    def write(self, offset: int, data: bytes) -> None:
        self._on_exit(data[0])



class DebugConsole(Stateless):
    """Bytes written to port 0xe9 go to the console (Bochs/QEMU debugcon); reads return 0xe9."""

    access = BYTE_WIDE

    def __init__(self, output: Callable[[bytes], None], label: str = "debugcon") -> None:
        self.label = label
        self._output = output

    def read(self, offset: int, size: int) -> bytes:
        return b"\xe9"

    def write(self, offset: int, data: bytes) -> None:
        self._output(data)

