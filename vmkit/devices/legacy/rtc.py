"""A CMOS real-time clock (ports 0x70/0x71) that reads the host's time of day (UTC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from vmkit.devices.bus import BYTE_WIDE
from vmkit.devices.state import check, check_int, check_type

INDEX_OFFSET = 0
DATA_OFFSET = 1

REG_SECONDS, REG_MINUTES, REG_HOURS = 0x00, 0x02, 0x04
REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR = 0x06, 0x07, 0x08, 0x09
REG_STATUS_A, REG_STATUS_B, REG_STATUS_C, REG_STATUS_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32

STATUS_B_BINARY = 0x04
STATUS_B_24H = 0x02
STATUS_D_VALID = 0x80


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


CMOS_BYTES = 128


def _initial_cmos() -> bytes:
    cmos = bytearray(CMOS_BYTES)
    cmos[REG_STATUS_A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
    cmos[REG_STATUS_B] = STATUS_B_24H
    cmos[REG_STATUS_D] = STATUS_D_VALID
    return bytes(cmos)


class RtcState(NamedTuple):
    """The index register and the CMOS bytes (the clock registers are read from the host's clock)."""

    selected: int = 0           # the register the index port selects
    cmos: bytes = _initial_cmos()


class CmosRtc:
    """128 bytes of CMOS; the clock registers are computed from the host clock on each read."""

    access = BYTE_WIDE

    def __init__(self, clock: Callable[[], float] = time.time, label: str = "rtc") -> None:
        self.label = label
        self._clock = clock
        self._lock = threading.Lock()
        self.index = 0
        self.cmos = bytearray(_initial_cmos())

    def save(self) -> RtcState:
        with self._lock:
            return RtcState(self.index, bytes(self.cmos))

    def restore(self, state: object) -> None:
        check_type(state, RtcState, self.label)
        assert isinstance(state, RtcState)
        check_int(state.selected, f"{self.label}.selected", 0x7F)
        check(isinstance(state.cmos, bytes) and len(state.cmos) == CMOS_BYTES, f"{self.label}.cmos",
              f"is not {CMOS_BYTES} bytes")
        check(state.cmos[REG_STATUS_C] == 0 and state.cmos[REG_STATUS_D] == STATUS_D_VALID, f"{self.label}.cmos",
              "status registers C and D are read-only (0 and 'valid')")
        with self._lock:
            self.index, self.cmos[:] = state.selected, state.cmos

    def reset(self) -> None:
        with self._lock:
            self.index, self.cmos[:] = 0, _initial_cmos()

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            value = self.index if offset == INDEX_OFFSET else self._read_cmos(self.index)
        return bytes([value])

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if offset == INDEX_OFFSET:
                self.index = data[0] & 0x7F  # bit 7 is the NMI mask
            elif self.index not in (REG_STATUS_C, REG_STATUS_D):
                self.cmos[self.index] = data[0]

    def _read_cmos(self, register: int) -> int:
        now = time.gmtime(self._clock())
        fields = {
            REG_SECONDS: now.tm_sec,
            REG_MINUTES: now.tm_min,
            REG_HOURS: now.tm_hour,
            REG_WEEKDAY: (now.tm_wday + 1) % 7 + 1,  # 1 = Sunday
            REG_DAY: now.tm_mday,
            REG_MONTH: now.tm_mon,
            REG_YEAR: now.tm_year % 100,
            REG_CENTURY: now.tm_year // 100,
        }
        if register in fields:
            value = fields[register]
            return value if self.cmos[REG_STATUS_B] & STATUS_B_BINARY else _bcd(value)
        if register == REG_STATUS_A:
            return self.cmos[REG_STATUS_A] & 0x7F  # never "update in progress"
        return self.cmos[register]
