"""16550A UART, i8042, CMOS RTC and the debug ports, driven through their registers."""

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.devices.bus import BYTE_WIDE, Bus
from vmkit.devices.legacy import serial as uart
from vmkit.devices.legacy.acpi_power import AcpiPower
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


# --- 16550A: register offsets and bits from the National Semiconductor PC16550D data sheet ---------
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)      # THR = RBR, FCR = IIR, DLL = RBR, DLM = IER


def test_uart_registers_after_power_on(com):
    dev, _, irq = com
    assert [reg(dev, r) for r in (IER, IIR, LCR, MCR, LSR, MSR, SCR)] == [
        0x00,        # no interrupt enabled
        0x01,        # no interrupt pending, FIFOs off
        0x03,        # 8N1
        0x08,        # OUT2, which gates the IRQ on a PC
        0x60,        # THR and transmitter empty, no data
        0xB0,        # DCD, DSR, CTS
        0x00,
    ]
    assert reg(dev, RBR) == 0x00                      # nothing received
    dev.write(LCR, b"\x83")                           # DLAB: the divisor latch, 0x000C = 9600 baud
    assert (reg(dev, RBR), reg(dev, IER)) == (0x0C, 0x00)
    assert irq.levels == [] and dev.label == "serial0"


def test_divisor_latch_and_ier_share_offsets_by_dlab(com):
    dev, out, _ = com
    dev.write(IER, b"\x05")
    dev.write(LCR, b"\x83")
    dev.write(RBR, b"\x01")
    dev.write(IER, b"\x02")                           # DLM, not IER
    assert (reg(dev, RBR), reg(dev, IER)) == (0x01, 0x02)
    dev.write(LCR, b"\x03")
    assert reg(dev, IER) == 0x05 and out == b""
    dev.write(IER, b"\xff")                           # bits 4-7 of IER are always 0
    assert reg(dev, IER) == 0x0F
    dev.write(MCR, b"\xff")                           # so are bits 5-7 of MCR
    assert reg(dev, MCR) == 0x1F
    dev.write(LCR, b"\x1b")
    assert reg(dev, LCR) == 0x1B


def test_fcr_bit_0_turns_the_fifos_on_and_iir_says_so(com):
    dev, _, _ = com
    dev.receive(b"xy")
    dev.write(IIR, b"\x01")                           # FIFO enable, no clear
    assert reg(dev, IIR) == 0xC1
    assert reg(dev, LSR) & 0x01                        # the data is still there
    dev.write(IIR, b"\x00")
    assert reg(dev, IIR) == 0x01
    dev.write(IIR, b"\x03")                           # enable and clear the receive FIFO
    assert reg(dev, IIR) == 0xC1 and reg(dev, LSR) == 0x60 and reg(dev, RBR) == 0


@pytest.mark.parametrize("mcr,msr", [
    (0x10, 0x00),
    (0x11, 0x20),          # DTR -> DSR
    (0x12, 0x10),          # RTS -> CTS
    (0x14, 0x40),          # OUT1 -> RI
    (0x18, 0x80),          # OUT2 -> DCD
    (0x1F, 0xF0),
])
def test_loopback_wires_the_modem_outputs_to_the_inputs(com, mcr, msr):
    dev, _, _ = com
    dev.write(MCR, bytes([mcr]))
    assert reg(dev, MSR) == msr


def test_loopback_respects_the_receive_fifo_limit(com):
    dev, out, _ = com
    assert dev.receive(b"r" * 4095) == 4095
    dev.write(MCR, b"\x10")
    dev.write(RBR, b"A")                               # the 4096th byte: taken
    dev.write(RBR, b"B")                               # the FIFO is full: dropped
    received = bytes(reg(dev, RBR) for _ in range(4096))
    assert received == b"r" * 4095 + b"A" and not reg(dev, LSR) & 0x01 and out == b""


def test_thre_interrupt_is_re_armed_only_when_ier_thre_goes_from_0_to_1(com):
    dev, _, irq = com
    dev.write(IER, b"\x02")
    assert irq.levels == [True] and reg(dev, IIR) == 0x02
    assert irq.levels == [True, False]
    dev.write(IER, b"\x02")                           # still enabled: nothing new
    assert irq.levels == [True, False] and reg(dev, IIR) == 0x01
    dev.write(IER, b"\x00")
    dev.write(IER, b"\x02")                           # enabled again: THR is empty, say so
    assert irq.levels == [True, False, True] and reg(dev, IIR) == 0x02


def test_received_data_takes_priority_over_thre(com):
    dev, _, irq = com
    dev.write(IER, b"\x03")
    dev.receive(b"z")
    assert reg(dev, IIR) == 0x04                        # data available first
    assert reg(dev, RBR) == ord("z")
    assert reg(dev, IIR) == 0x02 and reg(dev, IIR) == 0x01
    assert irq.levels == [True, False]


# --- i8042: status and command bytes as in the IBM PC/AT technical reference (and Linux's i8042.h) -

@pytest.fixture
def kbc():
    resets = []
    return I8042(lambda: resets.append(1)), resets


def test_i8042_at_power_on(kbc):
    kbd, _ = kbc
    assert kbd.read(4, 1) == b"\x14"                  # system flag, keyboard not inhibited, OBF clear
    assert kbd.read(0, 1) == b"\x00"                  # nothing to read
    assert [kbd.read(offset, 1) for offset in (1, 2, 3)] == [b"\xff"] * 3
    kbd.write(4, b"\x20")
    assert kbd.read(4, 1)[0] & 0x01                     # the command byte is there to read
    assert kbd.read(0, 1) == b"\x00"                  # and starts clear
    kbd.write(4, b"\xa7")                             # disable AUX straight after power on
    kbd.write(4, b"\x20")
    assert kbd.read(0, 1) == b"\x20"
    assert kbd.label == "i8042"


def test_i8042_output_buffer_full_follows_the_output(kbc):
    kbd, _ = kbc
    kbd.write(4, b"\xaa")
    assert kbd.read(4, 1) == b"\x1d"                  # OBF and "last write was a command"
    assert kbd.read(0, 1) == b"\x55"
    assert kbd.read(4, 1) == b"\x1c"                  # OBF clear once read
    assert kbd.read(0, 1) == b"\x00"
    kbd.write(0, b"\xf4")                             # a data write clears the command flag
    assert kbd.read(4, 1) == b"\x14"


@pytest.mark.parametrize("command,answer", [(0xA9, 0x00), (0xAB, 0x00), (0xD0, 0x01), (0xAA, 0x55)])
def test_i8042_tests_and_output_port_answer(kbc, command, answer):
    kbd, resets = kbc
    kbd.write(4, bytes([command]))
    assert kbd.read(4, 1)[0] & 0x01
    assert kbd.read(0, 1) == bytes([answer]) and resets == []


@pytest.mark.parametrize("disable,enable,bit", [(0xAD, 0xAE, 0x10), (0xA7, 0xA8, 0x20)])
def test_i8042_disable_commands_set_the_command_byte_bits(kbc, disable, enable, bit):
    kbd, _ = kbc
    kbd.write(4, b"\x60")
    kbd.write(0, b"\x45")
    kbd.write(4, bytes([disable]))
    kbd.write(4, b"\x20")
    assert kbd.read(0, 1)[0] == 0x45 | bit
    kbd.write(4, bytes([enable]))
    kbd.write(4, b"\x20")
    assert kbd.read(0, 1)[0] == 0x45 & ~bit


@pytest.mark.parametrize("port,resets", [
    (0xFE, 1), (0x00, 1), (0x02, 1),     # bit 0 of the output port low: the CPU is reset
    (0xFF, 0), (0x01, 0), (0x03, 0),
])
def test_i8042_output_port_bit_0_is_the_reset_line(kbc, port, resets):
    kbd, done = kbc
    kbd.write(4, b"\xd1")
    kbd.write(0, bytes([port]))
    assert len(done) == resets
    kbd.write(0, b"\x00")                             # a plain data write is not an output-port write
    assert len(done) == resets


def test_i8042_data_without_a_command_changes_nothing(kbc):
    kbd, resets = kbc
    kbd.write(0, b"\x00")
    kbd.write(4, b"\x20")
    assert kbd.read(0, 1) == b"\x00" and resets == []


# --- MC146818 RTC: register numbers and bits from the Motorola data sheet --------------------------

def rtc_at(when):
    rtc = CmosRtc(clock=lambda: when)

    def cmos(index):
        rtc.write(0, bytes([index]))
        return rtc.read(1, 1)[0]

    return rtc, cmos


def test_rtc_status_registers_at_power_on():
    rtc, cmos = rtc_at(0)
    assert cmos(0x0A) == 0x26                         # 32.768 kHz divider, 1024 Hz rate, UIP clear
    assert cmos(0x0B) == 0x02                         # 24-hour, BCD
    assert cmos(0x0C) == 0x00
    assert cmos(0x0D) == 0x80                         # valid RAM and time
    assert rtc.label == "rtc"


@pytest.mark.parametrize("date,weekday", [
    ((2026, 11, 22), 1),      # a Sunday
    ((2026, 11, 23), 2),      # Monday
    ((2026, 11, 24), 3),      # Tuesday
    ((2026, 11, 28), 7),      # Saturday
])
def test_rtc_day_of_week_counts_from_sunday_as_1(date, weekday):
    _, cmos = rtc_at(calendar.timegm((*date, 12, 0, 0, 0, 0, 0)))
    assert cmos(0x06) == weekday


def test_rtc_starts_at_register_0_and_counts_centuries():
    rtc, cmos = rtc_at(calendar.timegm((2000, 1, 1, 0, 0, 7, 0, 0, 0)))
    assert rtc.read(0, 1) == b"\x00" and rtc.read(1, 1) == b"\x07"  # seconds, before any index write
    assert (cmos(0x09), cmos(0x32)) == (0x00, 0x20)


def test_rtc_index_port_masks_the_nmi_bit_and_reads_back():
    rtc, cmos = rtc_at(calendar.timegm((1999, 12, 31, 23, 59, 58, 0, 0, 0)))
    rtc.write(0, b"\x80")                             # NMI off, register 0
    assert rtc.read(0, 1) == b"\x00" and rtc.read(1, 1) == b"\x58"
    assert [cmos(i) for i in (0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == [0x59, 0x23, 0x31, 0x12, 0x99, 0x19]


def test_rtc_ram_is_writable_but_status_c_and_d_are_not():
    rtc, cmos = rtc_at(0)
    for index, value in ((0x0E, 0x5A), (0x7F, 0xA5), (0x0C, 0xFF), (0x0D, 0x00)):
        rtc.write(0, bytes([index]))
        rtc.write(1, bytes([value]))
    assert (cmos(0x0E), cmos(0x7F), cmos(0x0C), cmos(0x0D)) == (0x5A, 0xA5, 0x00, 0x80)
    rtc.write(0, b"\x0a")
    rtc.write(1, b"\xa6")
    assert cmos(0x0A) == 0x26                         # never "update in progress"


# --- debug ports and ACPI power -----------------------------------------------------------------

def test_debug_ports_are_byte_wide_and_read_as_qemu_and_bochs_do():
    values = []
    port = DebugExit(values.append)
    assert port.read(0, 1) == b"\xff" and port.access == BYTE_WIDE and port.label == "debug-exit"
    port.write(0, b"\x2a")
    assert values == [0x2A]
    con = DebugConsole(lambda data: None)
    assert con.access == BYTE_WIDE and con.label == "debugcon"


@pytest.fixture
def power():
    events = []
    return AcpiPower(lambda: events.append("off"), lambda: events.append("reset"), reset_value=0x0E), events


@pytest.mark.parametrize("value,event", [
    (0x34, ["off"]),           # SLP_EN (bit 5) with SLP_TYP (bits 4:2) = 5, S5 soft-off
    (0x37, ["off"]),           # other bits do not matter
    (0xB4, ["off"]),
    (0x14, []),                # S5 without SLP_EN
    (0x2C, []),                # SLP_EN with S3
    (0x3C, []),                # SLP_EN with SLP_TYP 7
    (0x20, []),
])
def test_acpi_sleep_control_powers_off_only_on_s5_with_slp_en(power, value, event):
    dev, events = power
    dev.write(0, bytes([value]))
    assert events == event


@pytest.mark.parametrize("offset,value,event", [
    (2, 0x0E, ["reset"]), (2, 0x0F, []), (2, 0x06, []),
    (1, 0x0E, []),             # the reset value at the sleep status register
    (0, 0x0E, []),
])
def test_acpi_reset_register_resets_on_the_fadt_value_only(power, offset, value, event):
    dev, events = power
    dev.write(offset, bytes([value]))
    assert events == event


def test_acpi_registers_read_as_zero(power):
    dev, _ = power
    assert [dev.read(offset, 1) for offset in range(3)] == [b"\0"] * 3
    assert dev.access == BYTE_WIDE and dev.label == "acpi-power"


# --- whatever the guest does --------------------------------------------------------------------

@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 0x1F), st.sampled_from([1, 2, 4]),
                          st.integers(0, 0xFFFFFFFF)), max_size=60))
def test_legacy_ports_answer_any_access_with_its_width_and_never_raise(accesses):
    """UART at 0, i8042 at 0x8..0xC, RTC at 0x10, debug exit at 0x12, ACPI at 0x18..0x1A, through the
    ISA bus rules: wide accesses are split into bytes."""
    ended = []
    bus = Bus("pio")
    bus.insert(uart.Serial16550(lambda data: None, lambda level: None), 0x00, 8)
    bus.insert(I8042(lambda: ended.append("reset")), 0x08, 5)
    bus.insert(CmosRtc(clock=lambda: 0), 0x10, 2)
    bus.insert(DebugExit(ended.append), 0x12, 1)
    bus.insert(AcpiPower(lambda: ended.append("off"), lambda: ended.append("reset"), 0x0E), 0x18, 3)
    for is_write, address, size, value in accesses:
        if is_write:
            bus.write(address, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
        else:
            assert len(bus.read(address, size)) == size
