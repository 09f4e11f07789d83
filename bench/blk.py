"""Block I/O: vmkit's virtio-blk against QEMU's virtio-blk-pci, same guest program, same image.

    python3 -m bench.blk [--runs N] [--seconds S] [--size-mib M] [--output PATH]

The guest is the guest kit's blk_bench (vmkit/guest/programs/blk_bench.c): 1 MiB sequential writes
and reads (4 in flight), then 4 KiB random reads at queue depth 1 and 32, each phase for S seconds,
completions polled. Each VMM boots it with 1 vCPU and 128 MiB on the same image file, for a raw
image and a fully allocated qcow2 image (qemu-img convert of the raw one, which holds random data,
so every read hits an allocated cluster). QEMU gets the disk as tests/conftest.py gives it
(virtio-blk-pci on microvm with pcie=on, cache=writeback, format named); vmkit gets
--disk PATH,format=F,cache=writeback.

Runs are interleaved (each round runs every VMM on every format; the VMM that goes first
alternates) after one unrecorded warm-up round. Reported: medians of the guest's own rates, and
the VMM's CPU time per request in each phase: the process's user + system time (all its threads)
less the time its vCPU spent running the guest (utime, stime and guest_time from /proc/PID/stat,
sampled when the guest prints the phase's last RESULT line), divided by the phase's requests. The
guest polls for completions, so its vCPU is busy for the whole phase in either VMM; only the
VMM's own work is counted. Before each round the bench waits (up to --load-wait seconds) until
other processes keep at most --max-load threads runnable (a 5-s sample: the 1-minute load average
would still count the bench's own previous round), and it records that, the load average, and the
CPU that other processes used during each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    QEMU_PCI_ECAM_CMDLINE,
    install_vmkit_venv,
    load_average,
    median,
    others_running,
    qemu_disk_args,
    qemu_pcie_command,
    require_qemu,
    source_revision,
    table,
    vmkit_command,
    wait_for_quiet,
)
from vmkit.guest import build_guest

MEMORY_MIB = 128
FORMATS = ("raw", "qcow2")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Phase:
    name: str            # blk_bench's RESULT prefix
    label: str           # what the table calls it
    rate_key: str        # RESULT key of the rate
    unit: str
    ends_at: str         # RESULT key printed last for this phase: the CPU sample is taken there


def phases(qd: int) -> list[Phase]:
    return [
        Phase("seqwrite", "1 MiB sequential write", "seqwrite_mibps", "MiB/s", "seqwrite_notifies_per_100"),
        Phase("seqread", "1 MiB sequential read", "seqread_mibps", "MiB/s", "seqread_notifies_per_100"),
        Phase("randread_qd1", "4 KiB random read QD1", "randread_qd1_iops", "IOPS", "randread_qd1_lat_us"),
        Phase(f"randread_qd{qd}", f"4 KiB random read QD{qd}", f"randread_qd{qd}_iops", "IOPS",
              f"randread_qd{qd}_notifies_per_100"),
    ]


START_KEY = "tsc_hz"     # printed just before the first phase starts


@dataclass
class Sample:
    user: int
    system: int
    guest: int
    host_busy: int       # all CPUs, from /proc/stat (ticks)
    at: float

    @property
    def vmm(self) -> int:
        """The VMM's own CPU ticks: user + system less guest (guest time is counted in user)."""
        return self.user + self.system - self.guest


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()       # fields from 3 (state) on
    user, system, guest = int(fields[11]), int(fields[12]), int(fields[40])
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    busy = sum(cpu[:3]) + sum(cpu[5:8])                 # user nice system irq softirq steal
    return Sample(user, system, guest, busy, time.monotonic())


@dataclass
class BlkRun:
    results: dict[str, str]
    samples: dict[str, Sample] = field(default_factory=dict)
    status: int = 0
    seconds: float = 0.0
    load: float = 0.0

    def vmm_cpu_us_per_request(self, phase: Phase, previous: str) -> float:
        ticks = self.samples[phase.ends_at].vmm - self.samples[previous].vmm
        return ticks / TICK * 1e6 / int(self.results[f"{phase.name}_ops"])

    def others_cores(self) -> float:
        """CPUs' worth of work by everything but this VMM from the first phase to the last."""
        first, last = self.samples[START_KEY], list(self.samples.values())[-1]
        span = (last.at - first.at) * TICK
        return ((last.host_busy - first.host_busy) - (last.user + last.system - first.user - first.system)) / span


def run_blk(command: list[str], sample_at: set[str], timeout: float) -> BlkRun:
    """Run one VMM on blk_bench; sample its CPU when each key in `sample_at` is printed."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        run = BlkRun({})
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("RESULT ") and "=" in line:
                    key, _, value = line[7:].partition("=")
                    if key in sample_at:
                        run.samples[key] = sample(proc.pid)
                    run.results[key] = value
            proc.wait()
        finally:
            watchdog.cancel()
        run.status = proc.returncode
        run.seconds = time.perf_counter() - start
        if run.status != 1 or run.results.get("blk_bench") != "done" or set(sample_at) - set(run.samples):
            errors.seek(0)
            raise SystemExit(f"blk_bench failed under {' '.join(command)}: status {run.status}, "
                             f"results {run.results}, stderr {errors.read()[-800:]!r}")
    return run


def make_images(directory: Path, size_mib: int) -> dict[str, Path]:
    """A raw image of random data and a fully allocated qcow2 copy of it."""
    raw = directory / "disk.raw"
    with open(raw, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    qcow2 = directory / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    mapping = json.loads(subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(qcow2)],
                                        check=True, capture_output=True, text=True).stdout)
    unallocated = [m for m in mapping if not m.get("data")]
    if unallocated:
        raise SystemExit(f"{qcow2} has unallocated ranges: {unallocated[:3]}")
    return {"raw": raw, "qcow2": qcow2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="recorded rounds (default 10)")
    parser.add_argument("--seconds", type=int, default=2, help="seconds per guest phase (default 2)")
    parser.add_argument("--size-mib", type=int, default=256, help="image size and region read (default 256)")
    parser.add_argument("--qd", type=int, default=32, help="queue depth of the second random-read phase")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="wait until other processes keep at most this many threads runnable (default 0.5)")
    parser.add_argument("--load-wait", type=float, default=600, help="longest wait for it, seconds (default 600)")
    parser.add_argument("--output", default="bench/results/blk-latest.md")
    args = parser.parse_args()
    require_qemu()
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is not installed (Debian: apt-get install qemu-utils)")
    vmkit_bin = install_vmkit_venv()
    revision = source_revision()           # what was installed: the tree may move during the run
    guest = str(build_guest("blk_bench"))
    params = f"size_mib={args.size_mib} seconds={args.seconds} qd={args.qd}"
    all_phases = phases(args.qd)
    sample_at = {START_KEY, *(p.ends_at for p in all_phases)}

    def commands(fmt: str, path: str, cmdline: str) -> dict[str, list[str]]:
        return {
            "vmkit": [*vmkit_command(vmkit_bin, guest, memory_mib=MEMORY_MIB),
                      "--disk", f"{path},format={fmt},cache=writeback", "--cmdline", cmdline],
            "qemu": [*qemu_pcie_command(guest, memory_mib=MEMORY_MIB), *qemu_disk_args(0, path, fmt),
                     "-append", f"{cmdline} {QEMU_PCI_ECAM_CMDLINE}"],
        }

    timeout = 4 * args.seconds + 60
    runs: dict[tuple[str, str], list[BlkRun]] = {(f, v): [] for f in FORMATS for v in ("vmkit", "qemu")}
    loads: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="vmkit-blk-bench-", dir="/var/tmp") as workdir:
        images = make_images(Path(workdir), args.size_mib)
        for fmt in FORMATS:                      # warm-up: page cache, bytecode, first-run effects
            for command in commands(fmt, str(images[fmt]), f"size_mib={args.size_mib} seconds=1 qd={args.qd}").values():
                run_blk(command, sample_at, timeout)
        for round_index in range(args.runs):
            others = wait_for_quiet(args.max_load, limit_s=args.load_wait, load=others_running)
            load = load_average()
            loads.append((others, load))
            order = ("vmkit", "qemu") if round_index % 2 == 0 else ("qemu", "vmkit")
            for fmt in FORMATS:
                made = commands(fmt, str(images[fmt]), params)
                for vmm in order:
                    run = run_blk(made[vmm], sample_at, timeout)
                    run.load = load
                    runs[fmt, vmm].append(run)
                    print(f"round {round_index + 1}/{args.runs} {fmt:5} {vmm:5} "
                          f"(others {others:.2f}, load {load:.2f}): "
                          + " ".join(f"{p.rate_key}={run.results[p.rate_key]}" for p in all_phases),
                          flush=True)
        last = commands("raw", "IMAGE", params)

    def med(fmt: str, vmm: str, value) -> float:
        return median([value(r) for r in runs[fmt, vmm]])

    rows: list[tuple[str, ...]] = []
    per_run: list[str] = []
    for fmt in FORMATS:
        measures = []
        for p in (all_phases[2], all_phases[3], all_phases[1], all_phases[0]):
            measures.append((f"{fmt}: {p.label} ({p.unit})", lambda r, p=p: float(r.results[p.rate_key]), "{:.0f}"))
        for p in (all_phases[2], all_phases[3], all_phases[1], all_phases[0]):
            previous = START_KEY if p is all_phases[0] else all_phases[all_phases.index(p) - 1].ends_at
            measures.append((f"{fmt}: VMM CPU per request, {p.label} (µs)",
                             lambda r, p=p, previous=previous: r.vmm_cpu_us_per_request(p, previous), "{:.1f}"))
        for p in (all_phases[3], all_phases[1]):
            measures.append((f"{fmt}: queue notifies per 100 requests, {p.label}",
                             lambda r, p=p: float(r.results[f"{p.name}_notifies_per_100"]), "{:.0f}"))
        for label, value, form in measures:
            v, q = med(fmt, "vmkit", value), med(fmt, "qemu", value)
            rows.append((label, form.format(v), form.format(q), f"{v / q:.2f}" if q else "-"))
            for vmm in ("vmkit", "qemu"):
                per_run.append(f"{label}, {vmm}: " + ", ".join(form.format(value(r)) for r in runs[fmt, vmm]))

    others = [r.others_cores() for rs in runs.values() for r in rs]
    text = "\n".join([
        f"blk_bench ({params}), 1 vCPU, {MEMORY_MIB} MiB, {args.runs} interleaved rounds after a warm-up, "
        f"medians; vmkit {revision} from bench/.venv (regular install), QEMU microvm virtio-blk-pci",
        "",
        table(rows, ("measure", "vmkit", "QEMU", "vmkit / QEMU")),
        "",
        "Rates: higher is better; CPU per request: lower is better (the VMM process's user + system time, "
        "all threads, less its guest time).",
        "Before each round: runnable threads of other processes (mean of a 5-s sample; the bench waits "
        f"up to {args.load_wait:.0f} s for <= {args.max_load}): "
        + ", ".join(f"{o:.2f}" for o, _ in loads) + "; 1-minute load average (includes the bench's own "
        "previous round): " + ", ".join(f"{x:.2f}" for _, x in loads) + ".",
        f"CPU used by other processes during the runs: median {median(others):.2f} cores, "
        f"max {max(others):.2f} (of {os.cpu_count()}); per run, in order: "
        + "; ".join(f"{fmt} {vmm} " + " ".join(f"{r.others_cores():.2f}" for r in rs)
                    for (fmt, vmm), rs in runs.items()) + ".",
        "",
        "commands (IMAGE: the raw image; the qcow2 runs name format=qcow2):",
        "    " + " ".join(last["vmkit"]),
        "    " + " ".join(last["qemu"]),
        "",
        "all runs, in order:",
        *("    " + line for line in per_run),
    ])
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
