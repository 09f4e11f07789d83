"""Build guest images from the C/asm sources shipped with vmkit (gcc + ld), cached by content.

Each program is linked twice:
  NAME.elf          PVH ELF (XEN_ELFNOTE_PHYS32_ENTRY): boots under vmkit and QEMU -kernel
  NAME-vmlinux.elf  the same code without the note: an ELF vmlinux entered in 64-bit mode
"""

from __future__ import annotations

import hashlib
import os
import shutil
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
    found = shutil.which(cc)
    if found is None:
        raise GuestBuildError(
            f"the guest images are built with {cc}, which is not installed "
            "(Debian/Ubuntu: apt-get install gcc)"
        )
    return found


def _stat_key(path: str, info: os.stat_result | None = None) -> str:
    info = info or os.stat(path)
    return repr((path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))


def _ask(cc: str, option: str) -> str:
    from vmkit import buildproc
    return buildproc.run([cc, option]).stdout.decode(errors="replace")


def compiler_identity(cc: str) -> str:
    """What the images depend on in the compiler `cc` (a path): its `--version`, and the resolved
    path, size and mtime of the driver and of its cc1.

    Running the compiler costs milliseconds at every start, so the answer is kept in the cache
    (guest/compilers/) with the stat of both files, and asked again only when one of them changed:
    a start with its guests built runs no process. Not seen: a compiler behind a wrapper script
    whose cc1 stays the same (the assembler and linker, binutils, were never part of it).

    The record: the driver's stat, the path of cc1 (empty if none), its stat, then the identity."""
    driver = os.path.realpath(cc)
    record_path = guest_cache() / "compilers" / hashlib.sha256(os.fsencode(driver)).hexdigest()[:16]
    try:
        driver_stat, cc1, cc1_stat, identity = record_path.read_text("utf-8", "surrogateescape").split("\n", 3)
        if driver_stat == _stat_key(driver) and cc1_stat == (_stat_key(cc1) if cc1 else ""):
            return identity
    except (OSError, ValueError):
        pass
    from vmkit import buildproc  # only now: a start with its guests built does not load it

    driver_info = os.stat(driver)     # before running it: a change during the run shows next time
    cc1 = _ask(cc, "-print-prog-name=cc1").strip()
    if os.path.isabs(cc1) and os.path.isfile(cc1) and "\n" not in cc1:
        cc1 = os.path.realpath(cc1)
        cc1_info = os.stat(cc1)
    else:
        cc1, cc1_info = "", None      # not gcc: no cc1 of its own to watch
    version = _ask(cc, "--version")
    driver_stat, cc1_stat = _stat_key(driver, driver_info), _stat_key(cc1, cc1_info) if cc1 else ""
    files = [(driver, driver_info)] + ([(cc1, cc1_info)] if cc1_info else [])
    identity = version + "".join(f"\n{path} {info.st_size} {info.st_mtime_ns}" for path, info in files)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    buildproc.remove_stale(record_path.parent)
    with buildproc.replacing(record_path) as tmp:
        tmp.write_text("\n".join([driver_stat, cc1, cc1_stat, identity]), "utf-8", "surrogateescape")
    return identity


def _digest(cc: str) -> str:
    h = hashlib.sha256()
    for path in sorted([*RUNTIME_DIR.iterdir(), *PROGRAM_DIR.iterdir(), Path(__file__)]):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(compiler_identity(cc).encode() + " ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


def build_guest(name: str, variant: Variant = "pvh") -> Path:
    """Path of the built image for program `name`, compiling it first if needed.

    The compiler runs in a process group of its own, killed with everything it started if the
    build is interrupted (buildproc). Its work, its own temporary files included (TMPDIR), goes
    in out_dir/NAME.PID.RANDOM.tmp/, removed at the end whatever happens, or by the next build
    if this process is killed outright."""
    if name not in program_names():
        raise GuestBuildError(f"no guest program {name!r}; there are: {', '.join(program_names())}")
    cc = _compiler()
    out_dir = guest_cache() / _digest(cc)
    suffix = ".elf" if variant == "pvh" else "-vmlinux.elf"
    target = out_dir / f"{name}{suffix}"
    if target.exists():
        return target
    from vmkit import buildproc  # only now: a start with its guests built does not load it

    out_dir.mkdir(parents=True, exist_ok=True)
    buildproc.remove_stale(out_dir)
    sources = [RUNTIME_DIR / "entry.S", RUNTIME_DIR / "runtime.c", RUNTIME_DIR / "pci.c",
               RUNTIME_DIR / "virtio.c", RUNTIME_DIR / "virtio_blk.c", RUNTIME_DIR / "virtio_net.c",
               RUNTIME_DIR / "virtio_vsock.c", RUNTIME_DIR / "virtio_9p.c", PROGRAM_DIR / f"{name}.c"]
    if variant == "pvh":
        sources.append(RUNTIME_DIR / "pvh_note.S")
    with buildproc.owned_tempdir(out_dir, target.name) as work:
        output = work / target.name
        cmd = [cc, *CFLAGS, f"-I{RUNTIME_DIR}", f"-Wl,-T,{RUNTIME_DIR / 'guest.ld'}",
               "-o", str(output), *map(str, sources)]
        result = buildproc.run(cmd, env={**os.environ, "TMPDIR": str(work)})
        if result.returncode != 0:
            raise GuestBuildError(f"building guest {name} failed:\n{' '.join(cmd)}\n"
                                  + result.stderr.decode(errors="replace"))
        os.replace(output, target)  # atomic: concurrent builders never see half a file
    return target
