"""Build guest images from the C/asm sources shipped with vmkit (gcc + ld), cached by content.

Each program is linked twice:
  NAME.elf          PVH ELF (XEN_ELFNOTE_PHYS32_ENTRY): boots under vmkit and QEMU -kernel
  NAME-vmlinux.elf  the same code without the note: an ELF vmlinux entered in 64-bit mode
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from vmkit.cache import cache_root

SOURCE_DIR = Path(__file__).parent
RUNTIME_DIR = SOURCE_DIR / "runtime"
PROGRAM_DIR = SOURCE_DIR / "programs"
CFLAGS = [
    "-std=gnu11", "-O2", "-Wall", "-Werror", "-ffreestanding", "-fno-builtin", "-nostdlib",
    "-fno-pic", "-fno-pie", "-no-pie", "-static", "-mno-red-zone", "-mgeneral-regs-only",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
    "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments",
]

Variant = Literal["pvh", "vmlinux"]


class GuestBuildError(RuntimeError):
    """A guest image could not be built (missing compiler, unknown program, compile error)."""


def program_names() -> list[str]:
    return sorted(p.stem for p in PROGRAM_DIR.glob("*.c"))


def guest_cache() -> Path:
    return cache_root() / "guest"


def _compiler() -> str:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise GuestBuildError(
            f"the guest images are built with {cc}, which is not installed "
            "(Debian/Ubuntu: apt-get install gcc)"
        )
    return cc


def _digest(cc: str) -> str:
    h = hashlib.sha256()
    for path in sorted([*RUNTIME_DIR.iterdir(), *PROGRAM_DIR.iterdir(), Path(__file__)]):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    h.update(version.encode() + " ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def build_guest(name: str, variant: Variant = "pvh") -> Path:
    """Path of the built image for program `name`, compiling it first if needed."""
    if name not in program_names():
        raise GuestBuildError(f"no guest program {name!r}; there are: {', '.join(program_names())}")
    cc = _compiler()
    out_dir = guest_cache() / _digest(cc)
    suffix = ".elf" if variant == "pvh" else "-vmlinux.elf"
    target = out_dir / f"{name}{suffix}"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [RUNTIME_DIR / "entry.S", RUNTIME_DIR / "runtime.c", RUNTIME_DIR / "pci.c",
               RUNTIME_DIR / "virtio.c", PROGRAM_DIR / f"{name}.c"]
    if variant == "pvh":
        sources.append(RUNTIME_DIR / "pvh_note.S")
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [cc, *CFLAGS, f"-I{RUNTIME_DIR}", f"-Wl,-T,{RUNTIME_DIR / 'guest.ld'}",
           "-o", str(tmp_path), *map(str, sources)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise GuestBuildError(f"building guest {name} failed:\n{' '.join(cmd)}\n{result.stderr}")
    os.replace(tmp_path, target)  # atomic: concurrent builders never see half a file
    return target
