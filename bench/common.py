"""Shared pieces of the benchmarks: the peer command lines, timed runs, medians and tables."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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


def qemu_pcie_command(image: str, *, cpus: int = 1, memory_mib: int = 64) -> list[str]:
    """qemu_command with a PCIe root on the microvm (pcie=on), for PCI devices; the guest then
    needs QEMU_PCI_ECAM_CMDLINE on its command line (microvm describes its ECAM only in AML)."""
    command = qemu_command(image, cpus=cpus, memory_mib=memory_mib)
    machine = command.index("-M") + 1
    command[machine] += ",pcie=on"
    return command


QEMU_PCI_ECAM_CMDLINE = "pci_ecam=0xe0000000"


def qemu_disk_args(index: int, path: str, fmt: str = "raw") -> list[str]:
    """A disk image as a modern virtio-blk-pci device, as tests/conftest.py gives QEMU its disks
    (cache=writeback, discard=unmap), with its format named."""
    drive = f"file={path.replace(',', ',,')},if=none,id=d{index},format={fmt},cache=writeback,discard=unmap"
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive=d{index},disable-legacy=on"]


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


def load_average() -> float:
    """The host's 1-minute load average."""
    return os.getloadavg()[0]


def others_running(seconds: float = 5, interval: float = 0.1) -> float:
    """The mean number of runnable threads outside this process over `seconds`: the load that
    others put on the host now, without the load average's minute-long memory (which would still
    count the benchmark's own last runs)."""
    me, counts = str(os.getpid()), []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        running = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == me:
                continue
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        stat = f.read()
                    running += stat[stat.rindex(")") + 2] == "R"
            except (FileNotFoundError, ProcessLookupError):
                continue                                  # gone meanwhile
        counts.append(running)
        time.sleep(interval)
    return sum(counts) / len(counts) if counts else 0.0


def wait_for_quiet(max_load: float = 1.5, poll_s: float = 30, limit_s: float = 600,
                   load: Callable[[], float] = load_average) -> float:
    """Wait (polling every `poll_s`, at most `limit_s`) until `load()` (default: the 1-minute load
    average) is at most `max_load`; return the last reading, whether or not it got there."""
    deadline = time.monotonic() + limit_s
    now = load()
    while now > max_load and time.monotonic() < deadline:
        print(f"  load {now:.2f} > {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
        now = load()
    return now


def source_revision() -> str:
    """The commit the working tree is at, and whether vmkit/ differs from it (what was measured)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" with uncommitted changes in vmkit/" if git("status", "--porcelain", "vmkit") else "")
