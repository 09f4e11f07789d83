"""Shared pieces of the benchmarks: the peer command lines, timed runs, medians and tables."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"


def qemu_command(image: str, *, cpus: int = 1, memory_mib: int = 64) -> list[str]:
    """QEMU microvm booting a PVH ELF directly, as in the project's environment notes."""
    return [
        QEMU, "-enable-kvm", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
        "-m", str(memory_mib), "-smp", str(cpus), "-nodefaults", "-no-user-config", "-nographic",
        "-serial", "stdio", "-kernel", image, "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]


BENCH_VENV = Path(__file__).resolve().parent / ".venv"
REPO = Path(__file__).resolve().parent.parent


def install_vmkit_venv() -> str:
    """Install the working tree into bench/.venv (a regular, non-editable install, as a user
    would have) and return its `vmkit` script."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(REPO)],
                   check=True, stdout=subprocess.DEVNULL)
    return str(BENCH_VENV / "bin" / "vmkit")


def dev_vmkit() -> str:
    """The `vmkit` script of the current environment (an editable development install)."""
    found = shutil.which("vmkit")
    if found is None:
        sys.exit("vmkit is not installed in this environment: pip install -e .")
    return found


def vmkit_command(launcher: str, image: str, *, cpus: int = 1, memory_mib: int = 64) -> list[str]:
    return [launcher, "run", "--quiet", "--kernel", image, "--cpus", str(cpus), "--memory", str(memory_mib)]


def require_qemu() -> None:
    if shutil.which(QEMU) is None:
        sys.exit(f"{QEMU} is not installed (Debian: apt-get install qemu-system-x86)")


@dataclass
class Run:
    seconds: float
    max_rss_kib: int
    status: int
    stdout: bytes


def timed_run(command: list[str]) -> Run:
    """Wall time from spawn to exit, and the child's peak RSS (getrusage via wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(elapsed, usage.ru_maxrss, proc.returncode, out)


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("measure", "vmkit", "QEMU microvm", "vmkit / QEMU")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
