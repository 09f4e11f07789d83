"""Choose the boot protocol for a kernel file, load it and write what the guest reads at entry.

Protocols:
  * pvh     - ELF with XEN_ELFNOTE_PHYS32_ENTRY: 32-bit entry, EBX -> hvm_start_info.
  * linux64 - bzImage or ELF vmlinux: 64-bit entry, RSI -> boot_params (the zero page).
"""

from __future__ import annotations

import os
import struct
from typing import Literal, NamedTuple

from vmkit.arch.x86 import layout
from vmkit.arch.x86.acpi import write_acpi_tables
from vmkit.arch.x86.bzimage import is_bzimage, load_bzimage
from vmkit.arch.x86.e820 import E820Entry, memory_map
from vmkit.arch.x86.elf import find_pvh_entry, is_elf, load_elf, program_headers
from vmkit.arch.x86.errors import (
    BootError,
    CommandLineTooLong,
    InitrdTooLarge,
    KernelFormatError,
    NotEnoughMemory,
)
from vmkit.arch.x86.mptable import write_mptable
from vmkit.memory import GuestMemory

Protocol = Literal["pvh", "linux64"]
KernelKind = Literal["bzimage", "vmlinux", "pvh-elf"]

HVM_START_MAGIC = 0x336EC578
SETUP_RNG_SEED = 9
RNG_SEED_BYTES = 32
E820_MAX = 128
MIN_MEMORY = 2 << 20


class BootPlan(NamedTuple):
    """Where the boot vCPU starts and how."""

    protocol: Protocol
    kind: KernelKind
    entry: int
    boot_info: int   # hvm_start_info (pvh, in EBX) or boot_params (linux64, in RSI)
    kernel_end: int
    initrd: tuple[int, int] | None


def detect_kind(data: bytes) -> KernelKind:
    if is_bzimage(data):
        return "bzimage"
    if is_elf(data):
        return "pvh-elf" if _has_pvh_note(data) else "vmlinux"
    raise KernelFormatError(
        "not a bzImage, an ELF vmlinux or a PVH ELF kernel "
        f"(starts with {data[:8].hex(' ') or 'nothing: the file is empty'})"
    )


def _has_pvh_note(data: bytes) -> bool:
    """Whether an ELF file carries XEN_ELFNOTE_PHYS32_ENTRY in a PT_NOTE segment."""
    _, headers = program_headers(data)
    return find_pvh_entry(data, headers) is not None


def load_guest(
    memory: GuestMemory,
    kernel: bytes,
    *,
    cmdline: str = "",
    initrd: bytes | None = None,
    num_cpus: int = 1,
    protocol: Protocol | None = None,
) -> BootPlan:
    """Load `kernel` (and `initrd`) into `memory` and write the boot structures."""
    if memory.size < MIN_MEMORY:
        raise NotEnoughMemory(f"guest RAM is {memory.size >> 10} KiB; vmkit needs at least 2 MiB")
    kind = detect_kind(kernel)
    cmdline_bytes = cmdline.encode() + b"\0"
    if len(cmdline_bytes) > layout.CMDLINE_MAX:
        raise CommandLineTooLong(f"kernel command line is {len(cmdline_bytes) - 1} bytes; the limit is {layout.CMDLINE_MAX - 1}")
    write_mptable(memory, num_cpus)
    rsdp = write_acpi_tables(memory, num_cpus)
    e820 = memory_map(memory)

    if kind == "bzimage":
        image = load_bzimage(memory, kernel)
        if len(cmdline_bytes) - 1 > image.cmdline_size:
            raise CommandLineTooLong(
                f"kernel command line is {len(cmdline_bytes) - 1} bytes; this kernel accepts {image.cmdline_size}"
            )
        memory.write(layout.CMDLINE_ADDR, cmdline_bytes)
        initrd_at = _place_initrd(memory, initrd, image.end, image.initrd_addr_max)
        _write_boot_params(memory, image.setup_header, e820, len(cmdline_bytes) - 1, initrd_at,
                           rng_seed=image.version >= 0x0209, rsdp=rsdp if image.version >= 0x020E else 0)
        chosen: Protocol = protocol or "linux64"
        if chosen != "linux64":
            raise BootError("a bzImage boots only through the 64-bit Linux protocol, not pvh")
        return BootPlan("linux64", kind, image.entry, layout.ZERO_PAGE_ADDR, image.end, initrd_at)

    elf = load_elf(memory, kernel)
    chosen = protocol or ("pvh" if elf.pvh_entry is not None else "linux64")
    memory.write(layout.CMDLINE_ADDR, cmdline_bytes)
    initrd_at = _place_initrd(memory, initrd, elf.end, 0xFFFFFFFF)
    if chosen == "pvh":
        if elf.pvh_entry is None:
            raise BootError("this ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot it as linux64")
        if not elf.loads(elf.pvh_entry):
            raise KernelFormatError(f"the PVH entry point {elf.pvh_entry:#x} is not in a loaded segment")
        _write_start_info(memory, e820, initrd_at, rsdp)
        return BootPlan("pvh", kind, elf.pvh_entry, layout.PVH_START_INFO_ADDR, elf.end, initrd_at)
    if not elf.loads(elf.entry):
        raise KernelFormatError(f"the ELF entry point {elf.entry:#x} (e_entry) is not in a loaded segment")
    _write_boot_params(memory, _vmlinux_setup_header(), e820, len(cmdline_bytes) - 1, initrd_at,
                       rng_seed=True, rsdp=rsdp)
    return BootPlan("linux64", kind, elf.entry, layout.ZERO_PAGE_ADDR, elf.end, initrd_at)


def _place_initrd(memory: GuestMemory, initrd: bytes | None, kernel_end: int,
                  addr_max: int) -> tuple[int, int] | None:
    """Put the initrd at the top of low RAM, page-aligned, above the kernel."""
    if initrd is None:
        return None
    low = memory.regions[0]
    top = min(low.end, addr_max + 1)
    start = (top - len(initrd)) & ~0xFFF
    if start < kernel_end or len(initrd) > top:
        room = max(top - ((kernel_end + 0xFFF) & ~0xFFF), 0)
        raise InitrdTooLarge(
            f"initrd is {len(initrd) / 2**20:.1f} MiB but only {room / 2**20:.1f} MiB of guest RAM "
            f"lies between the kernel and {top:#x}; give the VM more memory"
        )
    memory.write(start, initrd)
    return start, len(initrd)


def _vmlinux_setup_header() -> bytes:
    """A setup header for an ELF vmlinux, which carries none of its own."""
    hdr = bytearray(0x268 - 0x1F1)
    struct.pack_into("<H", hdr, 0x1FE - 0x1F1, 0xAA55)
    hdr[0x202 - 0x1F1 : 0x206 - 0x1F1] = b"HdrS"
    struct.pack_into("<H", hdr, 0x206 - 0x1F1, 0x020F)
    struct.pack_into("<I", hdr, 0x230 - 0x1F1, 0x01000000)   # kernel_alignment
    return bytes(hdr)


def _write_boot_params(memory: GuestMemory, setup_header: bytes, e820: list[E820Entry],
                       cmdline_len: int, initrd: tuple[int, int] | None, rng_seed: bool,
                       rsdp: int) -> None:
    params = bytearray(4096)
    struct.pack_into("<Q", params, 0x070, rsdp)         # acpi_rsdp_addr (protocol 2.14+)
    params[0x1F1 : 0x1F1 + len(setup_header)] = setup_header
    params[0x210] = 0xFF                                # type_of_loader: undefined
    params[0x211] |= 0x80                               # loadflags: CAN_USE_HEAP
    struct.pack_into("<H", params, 0x224, 0xFE00)       # heap_end_ptr
    struct.pack_into("<H", params, 0x1FA, 0xFFFF)       # vid_mode: normal
    struct.pack_into("<I", params, 0x228, layout.CMDLINE_ADDR)
    struct.pack_into("<I", params, 0x238, cmdline_len)
    if initrd:
        struct.pack_into("<II", params, 0x218, initrd[0] & 0xFFFFFFFF, initrd[1] & 0xFFFFFFFF)
        struct.pack_into("<II", params, 0x0C0, initrd[0] >> 32, initrd[1] >> 32)
    if len(e820) > E820_MAX:
        raise BootError(f"{len(e820)} e820 entries; boot_params holds {E820_MAX}")
    params[0x1E8] = len(e820)
    for i, entry in enumerate(e820):
        struct.pack_into("<QQI", params, 0x2D0 + 20 * i, entry.address, entry.size, entry.type)
    if rng_seed:
        seed = os.urandom(RNG_SEED_BYTES)
        memory.write(layout.SETUP_DATA_ADDR, struct.pack("<QII", 0, SETUP_RNG_SEED, len(seed)) + seed)
        struct.pack_into("<Q", params, 0x250, layout.SETUP_DATA_ADDR)
    memory.write(layout.ZERO_PAGE_ADDR, params)


def _write_start_info(memory: GuestMemory, e820: list[E820Entry],
                      initrd: tuple[int, int] | None, rsdp: int) -> None:
    memmap = b"".join(struct.pack("<QQII", e.address, e.size, e.type, 0) for e in e820)
    memory.write(layout.PVH_MEMMAP_ADDR, memmap)
    nr_modules = 0
    if initrd:
        memory.write(layout.PVH_MODLIST_ADDR, struct.pack("<QQQQ", initrd[0], initrd[1], 0, 0))
        nr_modules = 1
    info = struct.pack(
        "<IIIIQQQQII", HVM_START_MAGIC, 1, 0, nr_modules,
        layout.PVH_MODLIST_ADDR if nr_modules else 0, layout.CMDLINE_ADDR, rsdp,
        layout.PVH_MEMMAP_ADDR, len(e820), 0,
    )
    memory.write(layout.PVH_START_INFO_ADDR, info)
