"""An Intel MultiProcessor Specification 1.4 table, so guests find every vCPU and the IOAPIC."""

from __future__ import annotations

import struct

from vmkit.arch.x86.layout import HIGH_MEMORY_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR
from vmkit.memory import GuestMemory

APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
IOAPIC_PINS = 24
CPU_ENABLED, CPU_BSP = 1, 2
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_EXTINT = 0, 1, 3
MAX_CPUS = 254       # APIC IDs 0..253; the IOAPIC takes the next one, and 0xFF is broadcast


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def build_mptable(num_cpus: int, base: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer at `base`, followed by the configuration table."""
    if not 1 <= num_cpus <= MAX_CPUS:
        raise ValueError(f"an MP table describes 1..{MAX_CPUS} CPUs, not {num_cpus}")
    ioapic_id = num_cpus  # APIC IDs 0..n-1 are the CPUs
    entries = []
    for cpu in range(num_cpus):
        flags = CPU_ENABLED | (CPU_BSP if cpu == 0 else 0)
        entries.append(struct.pack("<BBBBIIII", 0, cpu, APIC_VERSION, flags, 0x600, 0x201, 0, 0))
    entries.append(struct.pack("<BB6s", 1, 0, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, ioapic_id, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    for irq in range(16):
        if irq == 2:
            continue  # the PIC cascade; ISA IRQ 0 is wired to pin 2 instead
        pin = 2 if irq == 0 else irq
        entries.append(struct.pack("<BBHBBBB", 3, INT_TYPE_INT, 0, 0, irq, ioapic_id, pin))
    entries.append(struct.pack("<BBHBBBB", 4, INT_TYPE_EXTINT, 0, 0, 0, 0xFF, 0))
    entries.append(struct.pack("<BBHBBBB", 4, INT_TYPE_NMI, 0, 0, 0, 0xFF, 1))
    body = b"".join(entries)

    table_addr = base + 16
    header = struct.pack(
        "<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0, b"VMKIT   ", b"MICROVM     ",
        0, 0, len(entries), LAPIC_ADDR, 0, 0, 0,
    )
    table = bytearray(header + body)
    table[7] = _checksum(bytes(table))
    floating = bytearray(struct.pack("<4sIBBB5s", b"_MP_", table_addr, 1, 4, 0, bytes(5)))
    floating[10] = _checksum(bytes(floating))
    return bytes(floating) + bytes(table)


def write_mptable(memory: GuestMemory, num_cpus: int) -> None:
    table = build_mptable(num_cpus)
    if len(table) > HIGH_MEMORY_START - MPTABLE_ADDR:
        raise ValueError(f"MP table for {num_cpus} CPUs does not fit below 1 MiB")
    memory.write(MPTABLE_ADDR, table)
