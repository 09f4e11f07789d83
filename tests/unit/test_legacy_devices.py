"""16550A UART, i8042, CMOS RTC and the debug ports, driven through their registers."""

import calendar

import pytest

from vmkit.devices.legacy import serial as uart
from vmkit.devices.legacy.debug_exit import DebugConsole, DebugExit
from vmkit.devices.legacy.i8042 import I8042
from vmkit.devices.legacy.rtc import CmosRtc


class Wire:
    def __init__(self):
        self.levels = []

    def __call__(self, level):
        self.levels.append(level)


@pytest.fixture
def com():
    out, irq = bytearray(), Wire()
    dev = uart.Serial16550(out.extend, irq)
    return dev, out, irq


def reg(dev, offset):
    return dev.read(offset, 1)[0]


def test_transmit_goes_to_the_sink(com):
    dev, out, _ = com
    for ch in b"ok\n":
        dev.write(uart.RBR_THR_DLL, bytes([ch]))
    assert out == b"ok\n"
    assert reg(dev, uart.LSR) & (uart.LSR_THRE | uart.LSR_TEMT) == 0x60


def test_receive_sets_data_ready_and_raises_the_irq_when_enabled(com):
    dev, _, irq = com
    dev.receive(b"hi")
    assert irq.levels == []                       # IER is 0: no interrupt
    assert reg(dev, uart.LSR) & uart.LSR_DR
    dev.write(uart.IER_DLM, bytes([uart.IER_RDA]))
    assert irq.levels == [True]
    assert reg(dev, uart.IIR_FCR) & 0x0F == uart.IIR_RDA
    assert reg(dev, uart.RBR_THR_DLL) == ord("h")
    assert reg(dev, uart.RBR_THR_DLL) == ord("i")
    assert irq.levels == [True, False]
    assert not reg(dev, uart.LSR) & uart.LSR_DR


def test_thre_interrupt_fires_on_enable_and_clears_on_iir_read(com):
    dev, _, irq = com
    dev.write(uart.IER_DLM, bytes([uart.IER_THRE]))
    assert irq.levels == [True]
    assert reg(dev, uart.IIR_FCR) & 0x0F == uart.IIR_THRE
    assert irq.levels == [True, False]
    assert reg(dev, uart.IIR_FCR) & 0x0F == uart.IIR_NONE
    dev.write(uart.RBR_THR_DLL, b"x")             # transmitting empties THR again
    assert irq.levels == [True, False, True]


def test_divisor_latch_and_scratch(com):
    dev, out, _ = com
    dev.write(uart.LCR, bytes([uart.LCR_DLAB | 3]))
    dev.write(uart.RBR_THR_DLL, b"\x01")
    dev.write(uart.IER_DLM, b"\x00")
    assert reg(dev, uart.RBR_THR_DLL) == 1 and out == b""
    dev.write(uart.LCR, b"\x03")
    dev.write(uart.SCR, b"\x5a")
    assert reg(dev, uart.SCR) == 0x5A


def test_loopback_echoes_and_mirrors_modem_lines(com):
    dev, out, _ = com
    dev.write(uart.MCR, bytes([uart.MCR_LOOP | 0x0A]))   # loop, RTS, OUT2
    assert reg(dev, uart.MSR) & 0xF0 == 0x90              # CTS and DCD, as Linux probes
    dev.write(uart.RBR_THR_DLL, b"Z")
    assert out == b"" and reg(dev, uart.RBR_THR_DLL) == ord("Z")


def test_receive_fifo_is_bounded(com):
    dev, _, _ = com
    assert dev.receive(b"x" * (uart.RX_FIFO_LIMIT + 10)) == uart.RX_FIFO_LIMIT
    assert dev.receive(b"y") == 0


def test_i8042_answers_probes_and_resets_on_0xfe():
    resets = []
    kbd = I8042(lambda: resets.append(1))
    kbd.write(4, b"\xaa")
    assert kbd.read(4, 1)[0] & 1 and kbd.read(0, 1) == b"\x55"
    kbd.write(4, b"\x60")
    kbd.write(0, b"\x47")
    kbd.write(4, b"\x20")
    assert kbd.read(0, 1) == b"\x47"
    assert resets == []
    assert kbd.read(4, 1)[0] & 0x10                  # not inhibited: no "keylock active"
    kbd.write(4, b"\xa7")                            # disable AUX: the CTR says so
    kbd.write(4, b"\x20")
    assert kbd.read(0, 1)[0] & 0x20
    kbd.write(4, b"\xa8")
    kbd.write(4, b"\x20")
    assert not kbd.read(0, 1)[0] & 0x20
    kbd.write(4, b"\xfe")
    assert resets == [1]


def test_rtc_reads_the_host_clock_in_bcd_and_binary():
    when = calendar.timegm((2026, 11, 24, 13, 45, 59, 0, 0, 0))
    rtc = CmosRtc(clock=lambda: when)

    def cmos(index):
        rtc.write(0, bytes([index]))
        return rtc.read(1, 1)[0]

    assert [cmos(i) for i in (0, 2, 4, 7, 8, 9, 0x32)] == [0x59, 0x45, 0x13, 0x24, 0x11, 0x26, 0x20]
    assert cmos(0x0A) & 0x80 == 0 and cmos(0x0D) == 0x80
    rtc.write(0, b"\x0b")
    rtc.write(1, b"\x06")                         # binary mode, 24 h
    assert cmos(0) == 59 and cmos(9) == 26


@pytest.mark.parametrize("written,status", [
    (b"\x00", 0x01), (b"\x10", 0x21), (b"\x7f", 0xFF),
    (b"\x80", 0x01),                      # QEMU exits with (v << 1) | 1 and the OS keeps 8 bits
    (b"\x10\x56\x34\x12", 0x21),          # outl: the status still depends on v's low 7 bits only
])
def test_debug_exit_status_is_qemu_compatible(written, status):
    from vmkit.devices.bus import Bus
    from vmkit.vmm.outcome import Outcome

    ended = []
    bus = Bus("pio")
    bus.insert(DebugExit(lambda value: ended.append(Outcome.debug_exit(value))), 0xF4, 1)
    bus.write(0xF4, written)
    assert [(o.kind, o.status) for o in ended] == [("debug-exit", status)]


def test_debug_console_passes_bytes_and_identifies_itself():
    out = bytearray()
    con = DebugConsole(out.extend)
    con.write(0, b"A")
    assert out == b"A" and con.read(0, 1) == b"\xe9"


def test_console_input_stops_cleanly_whether_or_not_it_started():
    import os
    import time

    from vmkit.vmm.console import ConsoleInput

    read_end, write_end = os.pipe()
    never_started = ConsoleInput(lambda data: len(data), lambda: None, fd=read_end)
    never_started.stop()
    never_started.stop()                                   # twice is harmless
    got = []
    running = ConsoleInput(lambda data: got.append(data) or len(data), lambda: None, fd=read_end)
    running.start()
    os.write(write_end, b"abc")
    for _ in range(100):
        if got:
            break
        time.sleep(0.01)
    running.stop()
    assert b"".join(got) == b"abc" and not running._thread.is_alive()
    os.close(read_end)
    os.close(write_end)
