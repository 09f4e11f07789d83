"""A 16550A UART (as at COM1, 0x3f8, IRQ 4) with a receive FIFO and interrupts.

Transmit is instant: every byte written to THR goes straight to the output sink,
so THR is always empty. The IRQ line is driven as a level that follows
"an enabled interrupt is pending".
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from vmkit.devices.bus import BYTE_WIDE
from vmkit.devices.state import check, check_int, check_type

# Register offsets
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDA, IER_THRE, IER_RLS, IER_MS = 0x1, 0x2, 0x4, 0x8
IIR_NONE, IIR_THRE, IIR_RDA, IIR_FIFO = 0x1, 0x2, 0x4, 0xC0
LCR_DLAB = 0x80
MCR_LOOP = 0x10
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
FCR_ENABLE, FCR_CLEAR_RX = 0x01, 0x02
RX_FIFO_LIMIT = 4096

OutputSink = Callable[[bytes], None]
IrqLine = Callable[[bool], None]


class SerialState(NamedTuple):
    """The UART's registers and the bytes the guest has not read yet."""

    ier: int = 0
    lcr: int = 0x03
    mcr: int = 0x08
    scr: int = 0
    dll: int = 0x0C               # 9600 baud
    dlm: int = 0
    fifo_enabled: bool = False
    thre_pending: bool = True
    rx: bytes = b""


class Serial16550:
    """COM port emulation; `output` receives guest bytes, `irq` the interrupt level."""

    access = BYTE_WIDE

    def __init__(self, output: OutputSink, irq: IrqLine, label: str = "serial0") -> None:
        self.label = label
        self._output = output
        self._irq = irq
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self._irq_level = False
        self._set(SerialState())

    # --- state ---------------------------------------------------------------
    def _set(self, state: SerialState) -> None:
        self.ier, self.lcr, self.mcr, self.scr = state.ier, state.lcr, state.mcr, state.scr
        self.dll, self.dlm = state.dll, state.dlm
        self.fifo_enabled = state.fifo_enabled
        self._thre_pending = state.thre_pending
        self._rx = deque(state.rx)

    def save(self) -> SerialState:
        with self._lock:
            return SerialState(self.ier, self.lcr, self.mcr, self.scr, self.dll, self.dlm, self.fifo_enabled,
                               self._thre_pending, bytes(self._rx))

    def restore(self, state: object) -> None:
        check_type(state, SerialState, self.label)
        assert isinstance(state, SerialState)
        for name in ("lcr", "scr", "dll", "dlm"):
            check_int(getattr(state, name), f"{self.label}.{name}", 0xFF)
        check_int(state.ier, f"{self.label}.ier", 0x0F)
        check_int(state.mcr, f"{self.label}.mcr", 0x1F)
        for name in ("fifo_enabled", "thre_pending"):
            check(isinstance(getattr(state, name), bool), f"{self.label}.{name}", "is not true or false")
        check(isinstance(state.rx, bytes) and len(state.rx) <= RX_FIFO_LIMIT, f"{self.label}.rx",
              f"is not at most {RX_FIFO_LIMIT} bytes")
        with self._lock:
            self._set(state)
            self._update_irq()

    def reset(self) -> None:
        with self._lock:
            self._set(SerialState())
            self._update_irq()

    # --- host side -----------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Queue bytes from the host for the guest to read; returns how many were taken."""
        with self._lock:
            room = max(RX_FIFO_LIMIT - len(self._rx), 0)
            self._rx.extend(data[:room])
            self._update_irq()
            return min(room, len(data))

    # --- guest side ----------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            value = self._read_register(offset)
            self._update_irq()
        return bytes([value])

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            out = self._write_register(offset, data[0])
            self._update_irq()
        if out is not None:
            self._output(out)

    def _read_register(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                return self.dll
            return self._rx.popleft() if self._rx else 0
        if offset == IER_DLM:
            return self.dlm if dlab else self.ier
        if offset == IIR_FCR:
            iir = self._interrupt_id()
            if iir == IIR_THRE:
                self._thre_pending = False  # reading IIR clears a THRE interrupt
            return iir | (IIR_FIFO if self.fifo_enabled else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
        if offset == MSR:
            if self.mcr & MCR_LOOP:
                # loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                m = self.mcr
                return ((m & 0x2) << 3) | ((m & 0x1) << 5) | ((m & 0x4) << 4) | ((m & 0x8) << 4)
            return 0xB0  # DCD, DSR, CTS
        return self.scr

    def _write_register(self, offset: int, value: int) -> bytes | None:
        dlab = self.lcr & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                self.dll = value
                return None
            self._thre_pending = True
            if self.mcr & MCR_LOOP:
                if len(self._rx) < RX_FIFO_LIMIT:
                    self._rx.append(value)
                return None
            return bytes([value])
        if offset == IER_DLM:
            if dlab:
                self.dlm = value
            else:
                if value & IER_THRE and not self.ier & IER_THRE:
                    self._thre_pending = True
                self.ier = value & 0x0F
        elif offset == IIR_FCR:
            self.fifo_enabled = bool(value & FCR_ENABLE)
            if value & FCR_CLEAR_RX:
                self._rx.clear()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value
        return None

    def _interrupt_id(self) -> int:
        if self.ier & IER_RDA and self._rx:
            return IIR_RDA
        if self.ier & IER_THRE and self._thre_pending:
            return IIR_THRE
        return IIR_NONE

    def _update_irq(self) -> None:
        level = self._interrupt_id() != IIR_NONE
        if level != self._irq_level:
            self._irq_level = level
            self._irq(level)
