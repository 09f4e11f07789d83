"""The benchmark suite: vmkit and QEMU microvm on the same guest images, interleaved.

    python3 -m bench [--runs N] [--quick] [--output PATH]

Measures, for each VMM, medians of:
  * start to guest exit (hello) and the VMM's peak RSS;
  * PSS of a running VMM (serial_echo, sampled while the guest waits for input);
  * port-I/O and MMIO exit round trips: (time(N iterations) - time(0)) / N, so start-up cancels;
  * 1, 10 and 100 VMs at once: time until all guests are up, and their total PSS.
Prints a table of medians and vmkit/QEMU ratios and writes it to --output.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    install_vmkit_venv,
    median,
    qemu_command,
    require_qemu,
    table,
    timed_run,
    vmkit_command,
)
from vmkit.guest import build_guest

VmmCommand = Callable[..., list[str]]


def pss_kib(pid: int) -> int:
    """Proportional set size of a process, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss line for {pid}")


def _with_cmdline(command: list[str], cmdline: str) -> list[str]:
    flag = "-append" if command[0].startswith("qemu") else "--cmdline"
    return [*command, flag, cmdline]


def start_and_exit(make: VmmCommand, image: str, runs: int) -> tuple[list[float], list[int]]:
    seconds, rss = [], []
    for _ in range(runs):
        run = timed_run(make(image))
        if run.status != 1:
            raise SystemExit(f"{make(image)[0]} hello failed: status {run.status}")
        seconds.append(run.seconds)
        rss.append(run.max_rss_kib)
    return seconds, rss


def round_trip(make: VmmCommand, image: str, iterations: int) -> float:
    """Seconds per exit round trip: two runs, with and without the loop."""
    loop = timed_run(_with_cmdline(make(image), f"iterations={iterations}"))
    empty = timed_run(_with_cmdline(make(image), "iterations=0"))
    if loop.status != 1 or empty.status != 1:
        raise SystemExit(f"round-trip guest failed: {loop.status} {empty.status}")
    return (loop.seconds - empty.seconds) / iterations


class Waiting:
    """A VMM process whose guest (serial_echo) is up and waiting for a line of input."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.buffer = b""

    def ready(self) -> bool:
        if b"READY" in self.buffer:
            return True
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise SystemExit(f"VMM exited early: {self.buffer[-300:]!r}")
            self.buffer += chunk
        return b"READY" in self.buffer

    def finish(self) -> None:
        self.proc.stdin.write(b"bye\n")
        self.proc.stdin.close()
        self.proc.stdout.read()
        self.proc.wait(60)


def many_at_once(make: VmmCommand, image: str, count: int) -> tuple[float, int]:
    """Seconds until `count` VMs all have their guest up, and their total PSS (KiB)."""
    start = time.perf_counter()
    vms = [Waiting(make(image, memory_mib=64)) for _ in range(count)]
    try:
        while not all(vm.ready() for vm in vms):
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        total = sum(pss_kib(vm.proc.pid) for vm in vms)
    finally:
        for vm in vms:
            vm.finish()
    return elapsed, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="runs per measure and VMM (default 10)")
    parser.add_argument("--iterations", type=int, default=50000, help="exits per round-trip run")
    parser.add_argument("--quick", action="store_true", help="3 runs, 10000 iterations, 1 and 10 VMs only")
    parser.add_argument("--output", default="bench/results/latest.md")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.iterations = 3, 10000
    require_qemu()
    vmkit_bin = install_vmkit_venv()
    vmms: dict[str, VmmCommand] = {
        "vmkit": lambda image, **kw: vmkit_command(vmkit_bin, image, **kw),
        "qemu": lambda image, **kw: qemu_command(image, **kw),
    }
    images = {name: str(build_guest(name)) for name in ("hello", "serial_echo", "pio_loop", "mmio_loop")}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in vmms}

    def record(vmm: str, measure: str, value: float) -> None:
        results[vmm].setdefault(measure, []).append(value)

    for _ in range(args.runs):                     # interleaved: each round runs every VMM once
        for vmm, make in vmms.items():
            seconds, rss = start_and_exit(make, images["hello"], 1)
            record(vmm, "start to guest exit (ms)", seconds[0] * 1e3)
            record(vmm, "peak RSS, hello (MiB)", rss[0] / 1024)
            vm = Waiting(make(images["serial_echo"]))
            while not vm.ready():
                time.sleep(0.002)
            record(vmm, "PSS of a running VMM (MiB)", pss_kib(vm.proc.pid) / 1024)
            vm.finish()
            record(vmm, "PIO exit round trip (us)", round_trip(make, images["pio_loop"], args.iterations) * 1e6)
            record(vmm, "MMIO exit round trip (us)", round_trip(make, images["mmio_loop"], args.iterations) * 1e6)
    for count in (1, 10) if args.quick else (1, 10, 100):
        rounds = 1 if count == 100 else max(args.runs // 3, 1)
        for _ in range(rounds):
            for vmm, make in vmms.items():
                elapsed, total = many_at_once(make, images["serial_echo"], count)
                record(vmm, f"{count} VMs: time until all are up (ms)", elapsed * 1e3)
                record(vmm, f"{count} VMs: total PSS (MiB)", total / 1024)

    rows = []
    for measure in results["vmkit"]:
        v, q = median(results["vmkit"][measure]), median(results["qemu"][measure])
        rows.append((measure, f"{v:.1f}", f"{q:.1f}", f"{v / q:.2f}"))
    text = "\n".join([
        f"vmkit (venv install) and QEMU microvm, {args.runs} interleaved runs per measure "
        f"({args.iterations} exits per round-trip run), medians",
        "",
        table(rows),
        "",
        "commands:",
        "    " + " ".join(vmms["vmkit"](images["hello"])),
        "    " + " ".join(vmms["qemu"](images["hello"])),
    ])
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
