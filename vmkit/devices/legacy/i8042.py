"""Just enough of the i8042 keyboard controller (ports 0x60 and 0x64) for a guest to reset the machine."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from vmkit.devices.bus import BYTE_WIDE
from vmkit.devices.state import check, check_int, check_type

DATA_PORT_OFFSET = 0     # 0x60
COMMAND_PORT_OFFSET = 4  # 0x64

STATUS_OUTPUT_FULL = 0x01
STATUS_SYSTEM_FLAG = 0x04
STATUS_COMMAND = 0x08
STATUS_NOT_INHIBITED = 0x10   # the keyboard is not locked

CTR_KBD_DISABLED = 0x10
CTR_AUX_DISABLED = 0x20

CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_RESET = 0xFE


class I8042State(NamedTuple):
    ctr: int = 0x00
    status: int = STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED
    output: int | None = None          # a byte waiting on the data port
    pending_write: int | None = None   # the command whose data byte comes next


class I8042:
    """Answers the controller commands guests probe with; 0xFE on 0x64 resets the VM."""

    access = BYTE_WIDE

    def __init__(self, on_reset: Callable[[], None], label: str = "i8042") -> None:
        self.label = label
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._set(I8042State())

    def _set(self, state: I8042State) -> None:
        self.ctr, self.status = state.ctr, state.status
        self._output: int | None = state.output
        self._pending_write: int | None = state.pending_write

    def save(self) -> I8042State:
        with self._lock:
            return I8042State(self.ctr, self.status, self._output, self._pending_write)

    def restore(self, state: object) -> None:
        check_type(state, I8042State, self.label)
        assert isinstance(state, I8042State)
        check_int(state.ctr, f"{self.label}.ctr", 0xFF)
        check_int(state.status, f"{self.label}.status", 0xFF)
        if state.output is not None:
            check_int(state.output, f"{self.label}.output", 0xFF)
        check(state.pending_write in (None, CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT), f"{self.label}.pending_write",
              f"{state.pending_write!r} is not a command that takes a data byte")
        with self._lock:
            self._set(state)

    def reset(self) -> None:
        with self._lock:
            self._set(I8042State())

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if offset == DATA_PORT_OFFSET:
                value = self._output if self._output is not None else 0
                self._output = None
            elif offset == COMMAND_PORT_OFFSET:
                value = self.status | (STATUS_OUTPUT_FULL if self._output is not None else 0)
            else:
                value = 0xFF
        return bytes([value])

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        reset = False
        with self._lock:
            if offset == COMMAND_PORT_OFFSET:
                self.status |= STATUS_COMMAND
                reset = self._command(value)
            elif offset == DATA_PORT_OFFSET:
                self.status &= ~STATUS_COMMAND
                if self._pending_write == CMD_WRITE_CTR:
                    self.ctr = value
                elif self._pending_write == CMD_WRITE_OUTPUT_PORT:
                    reset = not value & 1  # bit 0 low asserts the CPU reset line
                self._pending_write = None
        if reset:
            self._on_reset()

    def _command(self, command: int) -> bool:
        if command == CMD_READ_CTR:
            self._output = self.ctr
        elif command in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT):
            self._pending_write = command
        elif command in (CMD_DISABLE_AUX, CMD_ENABLE_AUX):
            self.ctr = self.ctr | CTR_AUX_DISABLED if command == CMD_DISABLE_AUX else self.ctr & ~CTR_AUX_DISABLED
        elif command in (CMD_DISABLE_KBD, CMD_ENABLE_KBD):
            self.ctr = self.ctr | CTR_KBD_DISABLED if command == CMD_DISABLE_KBD else self.ctr & ~CTR_KBD_DISABLED
        elif command == CMD_SELF_TEST:
            self._output = 0x55
        elif command in (CMD_TEST_KBD, CMD_TEST_AUX):
            self._output = 0x00
        elif command == CMD_READ_OUTPUT_PORT:
            self._output = 0x01
        elif command == CMD_PULSE_RESET:
            return True
        return False
