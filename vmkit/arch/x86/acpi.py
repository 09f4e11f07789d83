"""ACPI tables for a hardware-reduced platform: RSDP, XSDT, FADT, DSDT, MADT and MCFG.

The DSDT holds the sleep type for power-off (_S5_) and the one legacy device with an interrupt,
the COM1 UART: on a hardware-reduced platform Linux sets up no legacy (ISA) interrupts, so the
UART's IRQ reaches it only through this description. A hardware-reduced platform has no fixed
power button either: the DSDT's Generic Event Device (ACPI0013) owns one interrupt, and its _EVT
method notifies the control-method power button (PNP0C0C) with 0x80, "button pressed"
(devices/legacy/power_button.py raises that interrupt).

Power-off and reset go through two I/O-port registers named in the FADT
(the ACPI 5+ sleep control register and the reset register), served by
devices/legacy/acpi_power.py. The tables live in [0xE0000, 0xF0000), where
a guest that is given no RSDP address also finds them by scanning.
"""

from __future__ import annotations

import struct

from vmkit.arch.x86.layout import (
    ACPI_ADDR,
    COM1_IRQ,
    COM1_PORT,
    IOAPIC_ADDR,
    LAPIC_ADDR,
    MPTABLE_ADDR,
    PCI_CONFIG_PORT,
    PCI_ECAM_ADDR,
    PCI_MMIO_BASE,
    POWER_BUTTON_GSI,
)
from vmkit.memory import GuestMemory

OEM_ID = b"VMKIT "
OEM_TABLE_ID = b"MICROVM "
CREATOR_ID = b"VMKT"

SLEEP_CONTROL_PORT = 0x600
SLEEP_STATUS_PORT = 0x601
RESET_PORT = 0x602
RESET_VALUE = 0x06
S5_SLEEP_TYPE = 5

FADT_HW_REDUCED_ACPI = 1 << 20
FADT_RESET_REG_SUP = 1 << 10
IAPC_BOOT_ARCH_8042 = 1 << 1
IAPC_BOOT_ARCH_NO_VGA = 1 << 2
SPACE_SYSTEM_IO = 1


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: 36-byte header with its checksum, then `body`."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, OEM_ID,
                         OEM_TABLE_ID, 1, CREATOR_ID, 1)
    table = bytearray(header + body)
    table[9] = _checksum(bytes(table))
    return bytes(table)


def _gas_io(port: int) -> bytes:
    """A Generic Address Structure for a byte-wide I/O port."""
    return struct.pack("<BBBBQ", SPACE_SYSTEM_IO, 8, 0, 1, port)


# AML opcodes and resource descriptors (ACPI 6.4, sections 20 and 6.4)
AML_NAME, AML_BUFFER, AML_PACKAGE, AML_BYTE, AML_DWORD, AML_ZERO = 0x08, 0x11, 0x12, 0x0A, 0x0C, 0x00
AML_STRING, AML_METHOD, AML_IF, AML_LEQUAL, AML_NOTIFY, AML_ARG0 = 0x0D, 0x14, 0xA0, 0x93, 0x86, 0x68
AML_DEVICE = b"\x5b\x82"
AML_ROOT, AML_DUAL_NAME = b"\\", b"\x2e"
RESOURCE_IO, RESOURCE_IRQ, RESOURCE_END = 0x47, 0x22, 0x79
RESOURCE_EXTENDED_IRQ = 0x89
EXTENDED_IRQ_CONSUMER, EXTENDED_IRQ_EDGE = 0x01, 0x02   # flags: active high, exclusive, not wake
NOTIFY_BUTTON_PRESSED = 0x80           # Notify value of a control-method button (ACPI 6.4, 4.8.2.2.1.3)


def _pkg_length(body: bytes) -> bytes:
    """PkgLength (20.2.4): the length of itself and `body`, in one to three bytes."""
    length = len(body) + 1
    if length < 0x40:
        return bytes([length])
    length += 1
    if length < 0x1000:
        return bytes([0x40 | (length & 0xF), length >> 4])
    length += 1
    return bytes([0x80 | (length & 0xF), (length >> 4) & 0xFF, length >> 12])


def _eisa_id(text: str) -> int:
    """EISAID("PNP0501"): three letters in 5 bits each, then the product number, as a DWORD."""
    letters = ((ord(text[0]) - 0x40) << 10) | ((ord(text[1]) - 0x40) << 5) | (ord(text[2]) - 0x40)
    return int.from_bytes(struct.pack(">HH", letters, int(text[3:], 16)), "little")


def _root_path(name: bytes) -> bytes:
    """The NameString \\_SB.name (name is four characters)."""
    return AML_ROOT + AML_DUAL_NAME + b"_SB_" + name


def _device(name: bytes, body: bytes) -> bytes:
    """Device (\\_SB.name) { body }."""
    inner = _root_path(name) + body
    return AML_DEVICE + _pkg_length(inner) + inner


def _name(name: bytes, value: bytes) -> bytes:
    return bytes([AML_NAME]) + name + value


def _string(text: str) -> bytes:
    return bytes([AML_STRING]) + text.encode("ascii") + b"\0"


def _byte(value: int) -> bytes:
    return bytes([AML_BYTE, value])


def _buffer(data: bytes) -> bytes:
    """Buffer () { data }, its size a ByteConst (data of at most 255 bytes)."""
    inner = _byte(len(data)) + data
    return bytes([AML_BUFFER]) + _pkg_length(inner) + inner


def _method(name: bytes, arg_count: int, body: bytes) -> bytes:
    """Method (name, arg_count, NotSerialized) { body }."""
    inner = name + bytes([arg_count & 0x7]) + body
    return bytes([AML_METHOD]) + _pkg_length(inner) + inner


def _if(predicate: bytes, body: bytes) -> bytes:
    inner = predicate + body
    return bytes([AML_IF]) + _pkg_length(inner) + inner


def _uart_device(name: bytes, port: int, irq: int) -> bytes:
    """Device (\\_SB.name) { _HID PNP0501 (16550A), _UID 0, _CRS { IO (port, 8 bytes), IRQ } }."""
    resources = (struct.pack("<BBHHBB", RESOURCE_IO, 1, port, port, 1, 8)   # 16-bit decode
                 + struct.pack("<BH", RESOURCE_IRQ, 1 << irq)              # edge, active high
                 + bytes([RESOURCE_END, 0]))
    return _device(name, _name(b"_HID", bytes([AML_DWORD]) + struct.pack("<I", _eisa_id("PNP0501")))
                   + _name(b"_UID", bytes([AML_ZERO]))
                   + _name(b"_CRS", _buffer(resources)))


def _power_button() -> bytes:
    """Device (\\_SB.PWRB): the control-method power button (PNP0C0C); Linux's button driver turns
    its Notify 0x80 into a KEY_POWER press on an input device."""
    return _device(b"PWRB", _name(b"_HID", bytes([AML_DWORD]) + struct.pack("<I", _eisa_id("PNP0C0C")))
                   + _name(b"_UID", bytes([AML_ZERO])))


def _generic_event_device(gsi: int) -> bytes:
    """Device (\\_SB.GED_): the Generic Event Device (ACPI0013, ACPI 6.4 section 5.6.9) with one
    edge-triggered, active-high interrupt on `gsi`; its _EVT (called with the GSI that fired)
    notifies the power button: Method (_EVT, 1) { If (Arg0 == gsi) { Notify (\\_SB.PWRB, 0x80) } }."""
    interrupt = struct.pack("<BHBBI", RESOURCE_EXTENDED_IRQ, 6, EXTENDED_IRQ_CONSUMER | EXTENDED_IRQ_EDGE, 1, gsi)
    notify = bytes([AML_NOTIFY]) + _root_path(b"PWRB") + _byte(NOTIFY_BUTTON_PRESSED)
    evt = _method(b"_EVT", 1, _if(bytes([AML_LEQUAL, AML_ARG0]) + _byte(gsi), notify))
    return _device(b"GED_", _name(b"_HID", _string("ACPI0013")) + _name(b"_UID", bytes([AML_ZERO]))
                   + _name(b"_CRS", _buffer(interrupt + bytes([RESOURCE_END, 0]))) + evt)


RESOURCE_WORD_ADDRESS, RESOURCE_DWORD_ADDRESS = 0x88, 0x87
SPACE_MEMORY, SPACE_IO, SPACE_BUS = 0, 1, 2
ADDRESS_FIXED_PRODUCER = 0x0C          # _MIF and _MAF set: a fixed window the bridge decodes
IO_ENTIRE_RANGE, MEMORY_READ_WRITE = 0x03, 0x01


def _word_window(space: int, specific: int, low: int, high: int) -> bytes:
    return struct.pack("<BHBBBHHHHH", RESOURCE_WORD_ADDRESS, 13, space, ADDRESS_FIXED_PRODUCER, specific,
                       0, low, high, 0, high - low + 1)


def _dword_window(space: int, specific: int, low: int, high: int) -> bytes:
    return struct.pack("<BHBBBIIIII", RESOURCE_DWORD_ADDRESS, 23, space, ADDRESS_FIXED_PRODUCER, specific,
                       0, low, high, 0, high - low + 1)


def _pci_root() -> bytes:
    """Device (\\_SB.PCI0): the PCI Express root of bus 0 (PNP0A08, compatible with PNP0A03), with the
    windows it decodes: bus 0, the 0xCF8 ports, the rest of the I/O space, and the BAR window below
    ECAM. Linux enumerates PCI on an ACPI platform only through such a root."""
    resources = (_word_window(SPACE_BUS, 0, 0, 0)
                 + struct.pack("<BBHHBB", RESOURCE_IO, 1, PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8)
                 + _word_window(SPACE_IO, IO_ENTIRE_RANGE, 0x0000, PCI_CONFIG_PORT - 1)
                 + _word_window(SPACE_IO, IO_ENTIRE_RANGE, PCI_CONFIG_PORT + 8, 0xFFFF)
                 + _dword_window(SPACE_MEMORY, MEMORY_READ_WRITE, PCI_MMIO_BASE, PCI_ECAM_ADDR - 1)
                 + bytes([RESOURCE_END, 0]))
    return _device(b"PCI0", _name(b"_HID", bytes([AML_DWORD]) + struct.pack("<I", _eisa_id("PNP0A08")))
                   + _name(b"_CID", bytes([AML_DWORD]) + struct.pack("<I", _eisa_id("PNP0A03")))
                   + _name(b"_SEG", bytes([AML_ZERO])) + _name(b"_BBN", bytes([AML_ZERO]))
                   + _name(b"_UID", bytes([AML_ZERO]))
                   + _name(b"_CRS", _buffer(resources)))


def dsdt() -> bytes:
    # Name (_S5_, Package (4) { 5, 0, 0, 0 }): the sleep type a guest writes to power off.
    s5 = bytes([AML_NAME]) + b"_S5_" + bytes([AML_PACKAGE, 0x07, 0x04, AML_BYTE, S5_SLEEP_TYPE, 0, 0, 0])
    return _table(b"DSDT", 2, s5 + _uart_device(b"COM1", COM1_PORT, COM1_IRQ) + _pci_root()
                  + _power_button() + _generic_event_device(POWER_BUTTON_GSI))


def fadt(dsdt_addr: int) -> bytes:
    body = bytearray(0x114 - 36)

    def put(offset: int, fmt: str, *values: object) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(0x28, "<I", dsdt_addr)
    put(0x6D, "<H", IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_NO_VGA)
    put(0x70, "<I", FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP)
    body[0x74 - 36 : 0x80 - 36] = _gas_io(RESET_PORT)
    put(0x80, "<B", RESET_VALUE)
    put(0x83, "<B", 0)                     # FADT minor version
    put(0x8C, "<Q", dsdt_addr)             # X_DSDT
    body[0xF4 - 36 : 0x100 - 36] = _gas_io(SLEEP_CONTROL_PORT)
    body[0x100 - 36 : 0x10C - 36] = _gas_io(SLEEP_STATUS_PORT)
    put(0x10C, "<8s", b"VMKIT\0\0\0")      # hypervisor vendor identity
    return _table(b"FACP", 6, bytes(body))


def madt(num_cpus: int) -> bytes:
    entries = [struct.pack("<BBBBI", 0, 8, cpu, cpu, 1) for cpu in range(num_cpus)]
    entries.append(struct.pack("<BBBBII", 1, 12, num_cpus, 0, IOAPIC_ADDR, 0))
    entries.append(struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0))  # ISA IRQ 0 -> GSI 2
    return _table(b"APIC", 5, struct.pack("<II", LAPIC_ADDR, 1) + b"".join(entries))


def mcfg(ecam_base: int) -> bytes:
    """PCI Express memory-mapped configuration: bus 0 of segment 0 at `ecam_base`."""
    return _table(b"MCFG", 1, bytes(8) + struct.pack("<QHBBI", ecam_base, 0, 0, 0, 0))


def write_acpi_tables(memory: GuestMemory, num_cpus: int, base: int = ACPI_ADDR) -> int:
    """Write the tables at `base`; return the RSDP's address (it is at `base`)."""
    tables: list[tuple[str, bytes]] = []
    cursor = base + 64                      # RSDP first, 36 bytes, padded

    def place(name: str, data: bytes) -> int:
        nonlocal cursor
        addr = cursor
        tables.append((name, data))
        memory.write(addr, data)
        cursor = (cursor + len(data) + 15) & ~15
        return addr

    dsdt_addr = place("DSDT", dsdt())
    fadt_addr = place("FACP", fadt(dsdt_addr))
    madt_addr = place("APIC", madt(num_cpus))
    mcfg_addr = place("MCFG", mcfg(PCI_ECAM_ADDR))
    xsdt_addr = place("XSDT", _table(b"XSDT", 1, struct.pack("<QQQ", fadt_addr, madt_addr, mcfg_addr)))
    if cursor > MPTABLE_ADDR:
        raise ValueError(f"ACPI tables for {num_cpus} CPUs do not fit below the MP table")
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr, 0, bytes(3)))
    rsdp[8] = _checksum(bytes(rsdp[:20]))
    rsdp[32] = _checksum(bytes(rsdp))
    memory.write(base, rsdp)
    return base
