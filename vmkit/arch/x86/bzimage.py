"""Linux bzImage: the setup header (Documentation/arch/x86/boot.rst) and the protected-mode payload."""

from __future__ import annotations

import struct
from typing import NamedTuple

from vmkit.arch.x86.errors import KernelFormatError, NotEnoughMemory
from vmkit.arch.x86.layout import KERNEL_LOAD_ADDR
from vmkit.memory import GuestMemory

SETUP_HEADER_OFFSET = 0x1F1
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_VERSION = 0x020C      # 2.12: xloadflags and the 64-bit entry
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 1 << 0
ENTRY_64_OFFSET = 0x200
SETUP_HEADER_END = 0x268  # the 2.12 header ends after init_size (0x260) and handover_offset (0x264)


class BzImage(NamedTuple):
    setup_header: bytes    # bytes 0x1f1 .. end of header, to copy into boot_params
    version: int
    entry: int             # 64-bit entry point (load address + 0x200)
    end: int
    cmdline_size: int
    initrd_addr_max: int


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x210 and data[0x202:0x206] == HDRS_MAGIC and \
        struct.unpack_from("<H", data, 0x1FE)[0] == BOOT_FLAG


def load_bzimage(memory: GuestMemory, data: bytes) -> BzImage:
    if not is_bzimage(data):
        raise KernelFormatError("not a bzImage (no 'HdrS' setup header)")
    version, = struct.unpack_from("<H", data, 0x206)
    if version < MIN_VERSION:
        raise KernelFormatError(
            f"bzImage boot protocol {version >> 8}.{version & 0xFF:02d} is too old; "
            "vmkit needs 2.12 or later (the 64-bit entry point)"
        )
    if len(data) < SETUP_HEADER_END:
        raise KernelFormatError(f"bzImage is truncated: {len(data)} bytes, less than its setup header "
                                f"({SETUP_HEADER_END:#x} bytes)")
    loadflags = data[0x211]
    xloadflags, = struct.unpack_from("<H", data, 0x236)
    if not xloadflags & XLF_KERNEL_64:
        raise KernelFormatError("bzImage is not a 64-bit kernel (XLF_KERNEL_64 not set)")
    if not loadflags & LOADED_HIGH:
        raise KernelFormatError("bzImage does not load at 1 MiB (LOADED_HIGH not set)")
    setup_sects = data[0x1F1] or 4
    payload_offset = (setup_sects + 1) * 512
    if payload_offset >= len(data):
        raise KernelFormatError("bzImage is truncated: no protected-mode kernel after the setup code")
    payload = data[payload_offset:]
    header_end = 0x202 + data[0x201]
    init_size, = struct.unpack_from("<I", data, 0x260)
    end = KERNEL_LOAD_ADDR + max(len(payload), init_size)
    if not memory.contains(KERNEL_LOAD_ADDR, end - KERNEL_LOAD_ADDR):
        raise NotEnoughMemory(
            f"the kernel needs {(end - KERNEL_LOAD_ADDR) >> 20} MiB above 1 MiB (init_size), "
            f"guest RAM is {memory.size >> 20} MiB"
        )
    memory.write(KERNEL_LOAD_ADDR, payload)
    initrd_addr_max, = struct.unpack_from("<I", data, 0x22C)
    cmdline_size, = struct.unpack_from("<I", data, 0x238)
    return BzImage(
        setup_header=data[SETUP_HEADER_OFFSET:header_end],
        version=version,
        entry=KERNEL_LOAD_ADDR + ENTRY_64_OFFSET,
        end=end,
        cmdline_size=cmdline_size or 255,
        initrd_addr_max=initrd_addr_max or 0x37FFFFFF,
    )
