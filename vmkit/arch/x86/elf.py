"""ELF kernels: loadable segments and the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from vmkit.arch.x86.errors import KernelFormatError, NotEnoughMemory
from vmkit.arch.x86.layout import HIGH_MEMORY_START
from vmkit.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
EM_386, EM_X86_64 = 3, 62


class ElfKernel(NamedTuple):
    entry: int             # e_entry (the 64-bit entry for a vmlinux)
    pvh_entry: int | None  # 32-bit PVH entry from the Xen note, if any
    end: int               # first byte above the loaded image
    loaded: tuple[tuple[int, int], ...] = ()   # [start, end) of each loaded segment

    def loads(self, address: int) -> bool:
        """Whether `address` lies in a segment that was loaded (where an entry point must be)."""
        return any(start <= address < end for start, end in self.loaded)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _parse_notes(data: bytes, offset: int, size: int) -> int | None:
    pos, end = offset, offset + size
    while pos < end:
        if pos + 12 > end:
            if any(data[pos:end]):            # zero bytes after the last note are alignment padding
                raise KernelFormatError(f"ELF note at file offset {pos:#x} runs past its segment")
            break
        namesz, descsz, note_type = struct.unpack_from("<III", data, pos)
        name_start = pos + 12
        desc_start = name_start + ((namesz + 3) & ~3)
        next_pos = desc_start + ((descsz + 3) & ~3)
        if next_pos > end:
            raise KernelFormatError(f"ELF note at file offset {pos:#x} runs past its segment")
        name = data[name_start : name_start + namesz].rstrip(b"\0")
        if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
            if descsz not in (4, 8):
                raise KernelFormatError(f"ELF note at file offset {pos:#x}: the PVH entry "
                                        f"(XEN_ELFNOTE_PHYS32_ENTRY) is {descsz} bytes, not 4 or 8")
            fmt = "<I" if descsz == 4 else "<Q"
            return struct.unpack_from(fmt, data, desc_start)[0] & 0xFFFFFFFF
        pos = next_pos
    return None


class ProgramHeader(NamedTuple):
    type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int


def program_headers(data: bytes) -> tuple[int, list[ProgramHeader]]:
    """(e_entry, program headers) of a little-endian x86 ELF32 or ELF64 file, validated."""
    if not is_elf(data):
        raise KernelFormatError("not an ELF file")
    if len(data) < 52:
        raise KernelFormatError(f"truncated ELF header: the file is {len(data)} bytes")
    elf_class, endian = data[4], data[5]
    if endian == 2:
        raise KernelFormatError("big-endian ELF cannot be an x86 kernel")
    if endian != 1:
        raise KernelFormatError(f"unknown ELF data encoding {endian} (an x86 kernel is little-endian: 1)")
    if elf_class == 2:
        if len(data) < 64:
            raise KernelFormatError(f"truncated ELF64 header: the file is {len(data)} bytes")
        entry, phoff = struct.unpack_from("<QQ", data, 24)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        ph_fmt = "<IIQQQQQQ"  # type flags offset vaddr paddr filesz memsz align
    elif elf_class == 1:
        entry, phoff = struct.unpack_from("<II", data, 24)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
        ph_fmt = "<IIIIIIII"  # type offset vaddr paddr filesz memsz flags align
    else:
        raise KernelFormatError(f"unknown ELF class {elf_class}")
    machine, = struct.unpack_from("<H", data, 18)
    if machine not in (EM_X86_64, EM_386):
        raise KernelFormatError(f"ELF machine {machine} is not x86-64 (62) or i386 (3)")
    if phnum == 0 or phoff + phnum * phentsize > len(data) or phentsize < struct.calcsize(ph_fmt):
        raise KernelFormatError("ELF program headers are missing or truncated")
    headers = []
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, data, phoff + i * phentsize)
        if elf_class == 2:
            p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = fields
        else:
            p_type, p_offset, _, p_paddr, p_filesz, p_memsz, _, _ = fields
        if p_offset + p_filesz > len(data):
            raise KernelFormatError(f"ELF segment {i} extends past the end of the file")
        headers.append(ProgramHeader(p_type, p_offset, p_paddr, p_filesz, p_memsz))
    return entry, headers


def find_pvh_entry(data: bytes, headers: list[ProgramHeader]) -> int | None:
    for header in headers:
        if header.type == PT_NOTE:
            found = _parse_notes(data, header.offset, header.filesz)
            if found is not None:
                return found
    return None


def load_elf(memory: GuestMemory, data: bytes) -> ElfKernel:
    """Copy every PT_LOAD segment to its physical address; find the PVH note."""
    entry, headers = program_headers(data)
    end = 0
    loaded: list[tuple[int, int]] = []
    for i, ph in enumerate(headers):
        if ph.type != PT_LOAD:
            continue
        if ph.filesz > ph.memsz:
            raise KernelFormatError(f"ELF segment {i} has filesz > memsz ({ph.filesz:#x} > {ph.memsz:#x})")
        if ph.memsz == 0:
            continue
        if ph.paddr < HIGH_MEMORY_START:
            raise KernelFormatError(
                f"ELF segment {i} at [{ph.paddr:#x}, {ph.paddr + ph.memsz:#x}) lies below 1 MiB, where "
                "vmkit keeps the boot structures; a kernel loads at 1 MiB or above"
            )
        if not memory.contains(ph.paddr, ph.memsz):
            raise NotEnoughMemory(
                f"ELF segment {i} at [{ph.paddr:#x}, {ph.paddr + ph.memsz:#x}) is outside guest RAM "
                f"({memory.size >> 20} MiB); give the VM more memory"
            )
        memory.write(ph.paddr, data[ph.offset : ph.offset + ph.filesz])
        memory.zero(ph.paddr + ph.filesz, ph.memsz - ph.filesz)
        end = max(end, ph.paddr + ph.memsz)
        loaded.append((ph.paddr, ph.paddr + ph.memsz))
    if not loaded:
        raise KernelFormatError("ELF file has no loadable segments")
    return ElfKernel(entry=entry, pvh_entry=find_pvh_entry(data, headers), end=end, loaded=tuple(loaded))
