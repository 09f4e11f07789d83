"""Boot protocols: format detection, loading, boot structures and each error."""

import struct

import pytest

from vmkit.arch.x86 import layout
from vmkit.arch.x86.boot import HVM_START_MAGIC, detect_kind, load_guest
from vmkit.arch.x86.errors import (
    BootError,
    CommandLineTooLong,
    InitrdTooLarge,
    KernelFormatError,
    NotEnoughMemory,
)
from vmkit.arch.x86.mptable import build_mptable
from vmkit.guest import build_guest
from vmkit.guest.images import make_bzimage
from vmkit.memory import GuestMemory
from vmkit.memory.guest_memory import MIB


@pytest.fixture
def memory():
    mem = GuestMemory.create(16 * MIB)
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def pvh_image():
    return build_guest("hello").read_bytes()


@pytest.fixture(scope="module")
def vmlinux_image():
    return build_guest("hello", "vmlinux").read_bytes()


def test_detects_each_kind(pvh_image, vmlinux_image):
    assert detect_kind(pvh_image) == "pvh-elf"
    assert detect_kind(vmlinux_image) == "vmlinux"
    assert detect_kind(make_bzimage(vmlinux_image)) == "bzimage"


@pytest.mark.parametrize("data,message", [
    (b"", "the file is empty"),
    (b"#!/bin/sh\necho hi\n", "not a bzImage, an ELF vmlinux or a PVH ELF"),
    (b"\x7fELF\x02\x01\x01" + bytes(57), "ELF machine 0 is not x86-64"),
    (b"\x7fELF\x02\x01\x01" + bytes(11) + b"\x3e\x00" + bytes(44), "program headers are missing"),
])
def test_rejects_what_is_not_a_kernel(memory, data, message):
    with pytest.raises(KernelFormatError, match=message):
        load_guest(memory, data)


def test_pvh_start_info_carries_cmdline_memmap_and_initrd(memory, pvh_image):
    plan = load_guest(memory, pvh_image, cmdline="console=ttyS0", initrd=b"I" * 5000, num_cpus=2)
    assert plan.protocol == "pvh" and plan.boot_info == layout.PVH_START_INFO_ADDR
    magic, version, _, nr_modules, modlist, cmdline, _, memmap, entries = struct.unpack_from(
        "<IIIIQQQQI", memory.read(plan.boot_info, 56))
    assert (magic, version, nr_modules) == (HVM_START_MAGIC, 1, 1)
    assert memory.read(cmdline, 14) == b"console=ttyS0\0"
    paddr, size = struct.unpack_from("<QQ", memory.read(modlist, 16))
    assert memory.read(paddr, size) == b"I" * 5000 and paddr % 4096 == 0
    ram = [struct.unpack_from("<QQI", memory.read(memmap + 24 * i, 20)) for i in range(entries)]
    assert (0x100000, 15 * MIB, 1) in ram


def test_vmlinux_gets_boot_params_with_e820_and_an_rng_seed(memory, vmlinux_image):
    plan = load_guest(memory, vmlinux_image, cmdline="quiet")
    assert plan.protocol == "linux64" and plan.kind == "vmlinux"
    params = memory.read(layout.ZERO_PAGE_ADDR, 4096)
    assert params[0x202:0x206] == b"HdrS" and params[0x210] == 0xFF
    assert struct.unpack_from("<I", params, 0x228)[0] == layout.CMDLINE_ADDR
    e820 = [struct.unpack_from("<QQI", params, 0x2D0 + 20 * i) for i in range(params[0x1E8])]
    assert e820 == sorted(e820) and len(e820) == 5
    assert (layout.PCI_ECAM_ADDR, layout.PCI_ECAM_SIZE, 2) in e820      # ECAM reserved, so Linux uses it
    rsdp = struct.unpack_from("<Q", params, 0x070)[0]
    assert memory.read(rsdp, 8) == b"RSD PTR "
    setup_data = struct.unpack_from("<Q", params, 0x250)[0]
    next_, type_, length = struct.unpack_from("<QII", memory.read(setup_data, 16))
    assert (next_, type_, length) == (0, 9, 32)
    assert memory.read(setup_data + 16, 32) != bytes(32)


def test_bzimage_header_is_copied_and_entry_is_64_bit(memory, vmlinux_image):
    image = make_bzimage(vmlinux_image)
    plan = load_guest(memory, image, initrd=b"R" * 100)
    assert plan.kind == "bzimage" and plan.entry == 0x100200
    params = memory.read(layout.ZERO_PAGE_ADDR, 4096)
    assert struct.unpack_from("<H", params, 0x206)[0] == struct.unpack_from("<H", image, 0x206)[0]
    ramdisk, size = struct.unpack_from("<II", params, 0x218)
    assert size == 100 and memory.read(ramdisk, 100) == b"R" * 100


def test_old_or_32_bit_bzimages_are_refused(memory, vmlinux_image):
    image = bytearray(make_bzimage(vmlinux_image))
    struct.pack_into("<H", image, 0x236, 0)
    with pytest.raises(KernelFormatError, match="not a 64-bit kernel"):
        load_guest(memory, bytes(image))
    struct.pack_into("<H", image, 0x206, 0x0204)
    with pytest.raises(KernelFormatError, match="2.04 is too old"):
        load_guest(memory, bytes(image))


def test_initrd_that_does_not_fit_is_refused(memory, pvh_image):
    with pytest.raises(InitrdTooLarge, match=r"initrd is 16.0 MiB but only .* MiB"):
        load_guest(memory, pvh_image, initrd=bytes(16 * MIB))


def test_too_little_memory_for_the_kernel_is_refused(vmlinux_image):
    tiny = GuestMemory.create(1 * MIB + 512 * 1024)
    try:
        with pytest.raises(NotEnoughMemory):
            load_guest(tiny, vmlinux_image)
    finally:
        tiny.close()


def test_command_line_limits(memory, vmlinux_image):
    with pytest.raises(CommandLineTooLong, match="accepts 2048"):
        load_guest(memory, make_bzimage(vmlinux_image), cmdline="x" * 3000)
    with pytest.raises(CommandLineTooLong):
        load_guest(memory, vmlinux_image, cmdline="x" * 70000)


def test_pvh_cannot_be_forced_on_an_elf_without_the_note(memory, vmlinux_image):
    with pytest.raises(BootError, match="no PVH entry note"):
        load_guest(memory, vmlinux_image, protocol="pvh")


def test_mptable_checksums_and_cpu_entries():
    table = build_mptable(4)
    assert table[:4] == b"_MP_" and sum(table[:16]) % 256 == 0
    config = table[16:]
    length = struct.unpack_from("<H", config, 4)[0]
    assert config[:4] == b"PCMP" and sum(config[:length]) % 256 == 0
    cpus = [config[44 + 20 * i + 1] for i in range(4) if config[44 + 20 * i] == 0]
    assert cpus == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        build_mptable(0)


def _reserved(e820, start, length):
    return any(kind == 2 and base <= start and start + length <= base + size for base, size, kind in e820)


def test_the_e820_map_is_the_pc_layout(memory, vmlinux_image):
    """Written from the PC memory map, not from layout.py: base memory up to the EBDA's last KiB,
    the BIOS area from 0xE0000 reserved, RAM from 1 MiB, and the PCI ECAM window reserved."""
    load_guest(memory, vmlinux_image)
    params = memory.read(layout.ZERO_PAGE_ADDR, 4096)
    e820 = [struct.unpack_from("<QQI", params, 0x2D0 + 20 * i) for i in range(params[0x1E8])]
    assert e820 == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x20000, 2),
                    (0x100000, 15 * MIB, 1), (0xE0000000, 0x100000, 2)]


@pytest.mark.parametrize("cpus", [1, 40, 41, 254])
def test_mp_and_acpi_tables_fit_in_reserved_memory_for_every_cpu_count(cpus, vmlinux_image):
    """A guest finds the MP floating pointer by scanning 0xF0000-0xFFFFF (MP spec 1.4, 4.0); the
    table it points to and the ACPI tables must lie in reserved memory and not overlap."""
    memory = GuestMemory.create(16 * MIB)
    try:
        load_guest(memory, vmlinux_image, num_cpus=cpus)
        params = memory.read(layout.ZERO_PAGE_ADDR, 4096)
        e820 = [struct.unpack_from("<QQI", params, 0x2D0 + 20 * i) for i in range(params[0x1E8])]
        bios = memory.read(0xF0000, 0x10000)
        pointer = next(p for p in range(0, 0x10000, 16) if bios[p : p + 4] == b"_MP_")
        assert sum(bios[pointer : pointer + 16]) % 256 == 0
        table_at = struct.unpack_from("<I", bios, pointer + 4)[0]
        header = memory.read(table_at, 44)
        length, count = struct.unpack_from("<H", header, 4)[0], struct.unpack_from("<H", header, 34)[0]
        table = memory.read(table_at, length)
        assert table[:4] == b"PCMP" and sum(table) % 256 == 0
        assert _reserved(e820, 0xF0000 + pointer, 16) and _reserved(e820, table_at, length)
        entries, at = [], 44
        for _ in range(count):
            entries.append(table[at])
            at += 20 if table[at] == 0 else 8
        assert entries.count(0) == cpus
        rsdp = struct.unpack_from("<Q", params, 0x070)[0]
        xsdt = struct.unpack_from("<Q", memory.read(rsdp + 24, 8))[0]
        pointers = memory.read(xsdt, struct.unpack_from("<I", memory.read(xsdt + 4, 4))[0])[36:]
        for (address,) in struct.iter_unpack("<Q", pointers):
            size = struct.unpack_from("<I", memory.read(address + 4, 4))[0]
            assert _reserved(e820, address, size)
            assert address + size <= 0xF0000 + pointer or address >= table_at + length   # no overlap
    finally:
        memory.close()


def test_pvh_start_info_names_the_rsdp(memory, pvh_image):
    """hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h): rsdp_paddr at offset 0x20."""
    plan = load_guest(memory, pvh_image)
    rsdp = struct.unpack_from("<Q", memory.read(plan.boot_info + 0x20, 8))[0]
    found = memory.read(rsdp, 36)
    assert found[:8] == b"RSD PTR " and sum(found[:20]) % 256 == 0 and sum(found) % 256 == 0
    assert rsdp == 0xE0000                    # also where a guest scanning the BIOS area finds it


def test_an_elf_segment_s_bss_reads_as_zeros_over_ram_written_before(memory):
    from vmkit.arch.x86.elf import PT_LOAD, load_elf, program_headers

    image = build_guest("idle").read_bytes()         # its data segment has a 370 KiB BSS
    _, headers = program_headers(image)
    segment = next(h for h in headers if h.type == PT_LOAD and h.memsz > h.filesz + 8192)
    memory.write(segment.paddr, b"\xa5" * (segment.memsz + 4096))
    load_elf(memory, image)
    assert memory.read(segment.paddr, segment.filesz) == image[segment.offset:segment.offset + segment.filesz]
    assert memory.read(segment.paddr + segment.filesz, segment.memsz - segment.filesz) == \
        bytes(segment.memsz - segment.filesz)
    assert memory.read(segment.paddr + segment.memsz, 16) == b"\xa5" * 16
