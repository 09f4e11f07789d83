"""The ACPI sleep control, sleep status and reset registers named in vmkit's FADT."""

from __future__ import annotations

from collections.abc import Callable

from vmkit.devices.bus import BYTE_WIDE
from vmkit.devices.state import Stateless

SLEEP_CONTROL_OFFSET = 0
SLEEP_STATUS_OFFSET = 1
RESET_OFFSET = 2
SLEEP_TYPE_MASK, SLEEP_TYPE_SHIFT, SLEEP_ENABLE = 0x1C, 2, 0x20
S5_SOFT_OFF = 5


class AcpiPower(Stateless):
    """Writing SLP_TYP=5 with SLP_EN powers the VM off; writing the reset value resets it."""

    access = BYTE_WIDE

    def __init__(self, on_poweroff: Callable[[], None], on_reset: Callable[[], None],
                 reset_value: int, label: str = "acpi-power") -> None:
        self.label = label
        self._on_poweroff = on_poweroff
        self._on_reset = on_reset
        self._reset_value = reset_value

    def read(self, offset: int, size: int) -> bytes:
        return b"\0"  # sleep status: never waking; other registers read as 0

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if offset == SLEEP_CONTROL_OFFSET and value & SLEEP_ENABLE:
            if (value & SLEEP_TYPE_MASK) >> SLEEP_TYPE_SHIFT == S5_SOFT_OFF:
                self._on_poweroff()
        elif offset == RESET_OFFSET and value == self._reset_value:
            self._on_reset()

