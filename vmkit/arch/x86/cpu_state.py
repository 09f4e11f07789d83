"""Initial register state for the boot vCPU: 32-bit protected mode (PVH) or 64-bit long mode (Linux).

Application processors stay in KVM's wait-for-SIPI state; the guest starts them.
"""

from __future__ import annotations

import struct

from vmkit.arch.x86.layout import GDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR
from vmkit.kvm.structs import Regs, Segment, Sregs
from vmkit.memory import GuestMemory

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

PTE_PRESENT, PTE_RW, PTE_PS = 1, 2, 0x80

# Boot GDT: null, null, code64 (0x10), data (0x18), TSS placeholder (0x20)
BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20


def _gdt_entry(flags: int, base: int, limit: int) -> int:
    return (
        ((base & 0xFF000000) << 32) | ((flags & 0xF0FF) << 40) | ((limit & 0xF0000) << 32)
        | ((base & 0x00FFFFFF) << 16) | (limit & 0xFFFF)
    )


def _segment(selector: int, flags: int, base: int = 0, limit: int = 0xFFFFF) -> Segment:
    """A kvm_segment from GDT-style access flags (type, S, DPL, P, L, D/B, G)."""
    granular = (flags >> 15) & 1
    return Segment(
        base=base,
        limit=(limit << 12) | 0xFFF if granular else limit,
        selector=selector,
        type=flags & 0xF,
        present=(flags >> 7) & 1,
        dpl=(flags >> 5) & 3,
        db=(flags >> 14) & 1,
        s=(flags >> 4) & 1,
        l=(flags >> 13) & 1,
        g=granular,
        avl=(flags >> 12) & 1,
    )


CODE64_FLAGS = 0xA09B   # G, L, present, code, execute/read, accessed
CODE32_FLAGS = 0xC09B   # G, D, present, code
DATA_FLAGS = 0xC093     # G, B, present, data, read/write, accessed
TSS_FLAGS = 0x008B      # present, busy 32/64-bit TSS


def write_boot_gdt(memory: GuestMemory) -> None:
    entries = [0, 0, _gdt_entry(CODE64_FLAGS, 0, 0xFFFFF), _gdt_entry(DATA_FLAGS, 0, 0xFFFFF),
               _gdt_entry(TSS_FLAGS, 0, 0x67)]
    memory.write(GDT_ADDR, struct.pack(f"<{len(entries)}Q", *entries))


def write_identity_map(memory: GuestMemory) -> None:
    """Identity-map the first 4 GiB with 2 MiB pages (PML4 -> PDPT -> 4 PDs)."""
    memory.write_u64(PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_RW)
    for gib in range(4):
        pd = PD_ADDR + gib * 0x1000
        memory.write_u64(PDPT_ADDR + gib * 8, pd | PTE_PRESENT | PTE_RW)
        entries = [((gib << 30) + (i << 21)) | PTE_PRESENT | PTE_RW | PTE_PS for i in range(512)]
        memory.write(pd, struct.pack("<512Q", *entries))


def long_mode_sregs(sregs: Sregs, memory: GuestMemory) -> None:
    """Paging on, long mode active, flat 64-bit code segment: the Linux 64-bit entry state."""
    write_boot_gdt(memory)
    write_identity_map(memory)
    code = _segment(BOOT_CS, CODE64_FLAGS)
    data = _segment(BOOT_DS, DATA_FLAGS)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = _segment(BOOT_TSS, TSS_FLAGS, 0, 0x67)
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 5 * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr3 = PML4_ADDR
    sregs.cr4 |= CR4_PAE
    sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET
    sregs.efer |= EFER_LME | EFER_LMA


def protected_mode_sregs(sregs: Sregs) -> None:
    """Flat 32-bit protected mode with paging off: the PVH entry state."""
    sregs.cs = _segment(0x8, CODE32_FLAGS)
    data = _segment(0x10, DATA_FLAGS)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = _segment(0x18, TSS_FLAGS, 0, 0x67)
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & ~CR0_PG
    sregs.cr4 = 0
    sregs.efer = 0


def boot_regs(entry: int, *, rsi: int = 0, rbx: int = 0) -> Regs:
    regs = Regs()
    regs.rip = entry
    regs.rsi = rsi
    regs.rbx = rbx
    regs.rflags = 0x2
    return regs
