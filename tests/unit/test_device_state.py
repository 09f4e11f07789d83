"""Every legacy device's state: a round trip through save and restore, reset back to the state at
build time (twice is harmless), and hostile states refused with the field named."""


import pytest

from vmkit.devices.legacy.acpi_power import AcpiPower
from vmkit.devices.legacy.debug_exit import DebugConsole, DebugExit
from vmkit.devices.legacy.i8042 import I8042, I8042State
from vmkit.devices.legacy.rtc import CmosRtc, RtcState
from vmkit.devices.legacy.serial import Serial16550, SerialState
from vmkit.devices.state import NoState, StateError


def serial():
    return Serial16550(lambda data: None, lambda level: None)


def drive_serial(uart):
    uart.write(3, b"\x83")             # DLAB on, 8N1
    uart.write(0, b"\x01")             # divisor 1: 115200 baud
    uart.write(3, b"\x1b")             # DLAB off, 8E1
    uart.write(1, b"\x01")             # receive interrupts
    uart.write(2, b"\x01")             # FIFO on
    uart.write(4, b"\x0b")
    uart.write(7, b"\x5a")
    uart.receive(b"typed")


def drive_i8042(controller):
    controller.write(4, b"\x60")       # write the command byte next
    controller.write(0, b"\x47")
    controller.write(4, b"\xaa")       # self test: 0x55 waits on the data port


def drive_rtc(rtc):
    rtc.write(0, b"\x0b")
    rtc.write(1, b"\x06")              # binary, 24 h
    rtc.write(0, b"\x40")
    rtc.write(1, b"\x99")              # a CMOS byte
    rtc.write(0, b"\x21")


DEVICES = {
    "serial": (serial, drive_serial),
    "i8042": (lambda: I8042(lambda: None), drive_i8042),
    "rtc": (lambda: CmosRtc(clock=lambda: 0.0), drive_rtc),
    "acpi-power": (lambda: AcpiPower(lambda: None, lambda: None, 0x0F), lambda device: None),
    "debug-exit": (lambda: DebugExit(lambda value: None), lambda device: None),
    "debugcon": (lambda: DebugConsole(lambda data: None), lambda device: None),
}


@pytest.mark.parametrize("name", DEVICES)
def test_a_saved_state_restores_into_a_fresh_device(name):
    make, drive = DEVICES[name]
    device = make()
    drive(device)
    saved = device.save()
    assert isinstance(saved, tuple) and hash(saved) is not None   # immutable plain data
    copy = make()
    copy.restore(saved)
    assert copy.save() == saved
    for offset in range(8 if name == "serial" else 1):          # and the guest reads the same registers
        assert copy.read(offset, 1) == device.read(offset, 1)


@pytest.mark.parametrize("name", DEVICES)
def test_reset_goes_back_to_the_state_at_build_time(name):
    make, drive = DEVICES[name]
    device = make()
    drive(device)
    device.reset()
    assert device.save() == make().save()
    device.reset()
    assert device.save() == make().save()


def test_states_differ_once_driven():
    for name in ("serial", "i8042", "rtc"):
        make, drive = DEVICES[name]
        device = make()
        drive(device)
        assert device.save() != make().save(), name


def test_the_serial_state_carries_unread_input_and_the_interrupt_follows_it():
    levels = []
    uart = Serial16550(lambda data: None, levels.append)
    uart.restore(SerialState(ier=0x01, rx=b"hi"))
    assert levels == [True]                                    # input waiting, receive interrupt on
    assert uart.read(0, 1) + uart.read(0, 1) == b"hi"


@pytest.mark.parametrize(("make", "state", "message"), [
    (serial, SerialState(lcr=256), r"serial0\.lcr: 256 is not a whole number in 0\.\.0xff"),
    (serial, SerialState(ier=0x10), r"serial0\.ier: 16 is not"),
    (serial, SerialState(mcr=-1), r"serial0\.mcr: -1 is not"),
    (serial, SerialState(dll=True), r"serial0\.dll: True is not"),
    (serial, SerialState(fifo_enabled=1), r"serial0\.fifo_enabled: is not true or false"),
    (serial, SerialState(rx=b"x" * 4097), r"serial0\.rx: is not at most 4096 bytes"),
    (serial, SerialState(rx="text"), r"serial0\.rx: is not at most"),
    (serial, I8042State(), r"serial0: the state is a I8042State, not a SerialState"),
    (lambda: I8042(lambda: None), I8042State(ctr=300), r"i8042\.ctr: 300 is not"),
    (lambda: I8042(lambda: None), I8042State(output=-2), r"i8042\.output: -2 is not"),
    (lambda: I8042(lambda: None), I8042State(pending_write=0xFE), r"i8042\.pending_write: 254 is not a command"),
    (lambda: CmosRtc(), RtcState(selected=0x80), r"rtc\.selected: 128 is not"),
    (lambda: CmosRtc(), RtcState(cmos=bytes(127)), r"rtc\.cmos: is not 128 bytes"),
    (lambda: CmosRtc(), RtcState(cmos=bytes(128)), r"rtc\.cmos: status registers C and D are read-only"),
    (lambda: AcpiPower(lambda: None, lambda: None, 0x0F), RtcState(), r"acpi-power: the state is a RtcState"),
    (lambda: DebugExit(lambda value: None), None, r"debug-exit: the state is a NoneType, not a NoState"),
])
def test_a_hostile_state_is_refused_and_changes_nothing(make, state, message):
    device = make()
    before = device.save()
    with pytest.raises(StateError, match=message):
        device.restore(state)
    assert device.save() == before


def test_stateless_devices_say_so():
    for name in ("acpi-power", "debug-exit", "debugcon"):
        assert DEVICES[name][0]().save() == NoState()
