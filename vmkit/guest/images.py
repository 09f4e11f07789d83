"""Repackage a guest image: wrap an ELF vmlinux's loaded bytes as a bzImage.

The guest runtime puts its 64-bit entry at offset 0x200 of its load address
(1 MiB), exactly where the Linux boot protocol's 64-bit entry sits in a
bzImage payload, so the same code boots through all three protocols.
"""

from __future__ import annotations

import struct

from vmkit.arch.x86.elf import PT_LOAD, program_headers

LOAD_ADDRESS = 0x100000
SETUP_SECTS = 1
BOOT_PROTOCOL_VERSION = 0x020F


def flat_image(elf: bytes) -> tuple[bytes, int]:
    """(bytes from LOAD_ADDRESS up to the end of the last file-backed segment, memory span)."""
    _, headers = program_headers(elf)
    loads = [h for h in headers if h.type == PT_LOAD and h.memsz]
    end = max(h.paddr + h.filesz for h in loads)
    span = max(h.paddr + h.memsz for h in loads) - LOAD_ADDRESS
    image = bytearray(end - LOAD_ADDRESS)
    for h in loads:
        image[h.paddr - LOAD_ADDRESS : h.paddr - LOAD_ADDRESS + h.filesz] = elf[h.offset : h.offset + h.filesz]
    return bytes(image), span


def make_bzimage(vmlinux_elf: bytes) -> bytes:
    payload, span = flat_image(vmlinux_elf)
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x268 - 0x202])    # jump over the header; sets its length
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, BOOT_PROTOCOL_VERSION)
    setup[0x211] = 0x01                                  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, LOAD_ADDRESS)   # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)     # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x200000)       # kernel_alignment
    struct.pack_into("<H", setup, 0x236, 0x0001)         # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", setup, 0x238, 2048)           # cmdline_size
    struct.pack_into("<I", setup, 0x260, (span + 0xFFF) & ~0xFFF)  # init_size
    return bytes(setup) + payload
