"""Shared folders: vmkit's virtio-9p against QEMU's virtio-9p-pci, same guest program, same directory.

    python3 -m bench.p9 [--runs N] [--seconds S] [--bs BYTES] [--output PATH]

The guest is the guest kit's p9_bench (vmkit/guest/programs/p9_bench.c): one 9P2000.L request at a
time, completions polled, msize 128 KiB; sequential Treads of BS bytes through a 64 MiB file, then
Twrites of BS bytes into a new file, then Tgetattr round trips, then Twalk+Tclunk pairs, each phase
for S seconds. Each VMM boots it with 1 vCPU and 128 MiB over the same directory: vmkit with
--share DIR,rw, QEMU (microvm, pcie=on) with -fsdev local,security_model=none and virtio-9p-pci.

Runs are interleaved (the VMM that goes first alternates) after one unrecorded warm-up round.
Reported: medians of the guest's own rates, and the VMM's CPU time per request in each phase (the
process's user + system time, all threads, less its vCPU's guest time, sampled when the guest
prints the phase's last RESULT line; as bench.blk measures it). Before each round the bench waits
until other processes keep at most --max-load threads runnable, and records the load.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bench.blk import TICK, Sample, sample
from bench.common import (
    QEMU_PCI_ECAM_CMDLINE,
    install_vmkit_venv,
    median,
    others_running,
    qemu_pcie_command,
    require_qemu,
    source_revision,
    table,
    vmkit_command,
    wait_for_quiet,
)
from vmkit.guest import build_guest

MEMORY_MIB = 128
DATA_MIB = 64
START_KEY = "tsc_hz"


@dataclass(frozen=True)
class Phase:
    label: str
    rate_key: str
    unit: str
    ends_at: str                  # the phase's last RESULT key: its CPU sample is taken there
    ops_key: str
    requests_per_op: int = 1


PHASES = [
    Phase("sequential Tread", "read_mibps", "MiB/s", "read_ops", "read_ops"),
    Phase("sequential Twrite", "write_mibps", "MiB/s", "write_ops", "write_ops"),
    Phase("Tgetattr", "getattr_ops_per_s", "requests/s", "getattr_lat_us", "getattr_ops"),
    Phase("Twalk + Tclunk", "walk_ops_per_s", "pairs/s", "walk_ops", "walk_ops", 2),
]


@dataclass
class P9Run:
    results: dict[str, str] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)

    def vmm_cpu_us_per_request(self, index: int) -> float:
        phase = PHASES[index]
        previous = START_KEY if index == 0 else PHASES[index - 1].ends_at
        ticks = self.samples[phase.ends_at].vmm - self.samples[previous].vmm
        return ticks / TICK * 1e6 / (int(self.results[phase.ops_key]) * phase.requests_per_op)


def run_p9(command: list[str], timeout: float) -> P9Run:
    """Run one VMM on p9_bench, sampling its CPU at the start and at the end of each phase."""
    sample_at = {START_KEY, *(p.ends_at for p in PHASES)}
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        run = P9Run()
        try:
            assert proc.stdout is not None
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
        if proc.returncode != 1 or run.results.get("p9_bench") != "done" or sample_at - set(run.samples):
            errors.seek(0)
            raise SystemExit(f"p9_bench failed under {' '.join(command)}: status {proc.returncode}, "
                             f"results {run.results}, stderr {errors.read()[-800:]!r}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="recorded rounds (default 5)")
    parser.add_argument("--seconds", type=int, default=2, help="seconds per guest phase (default 2)")
    parser.add_argument("--bs", type=int, default=65536, help="bytes per Tread and Twrite (default 65536)")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="wait until other processes keep at most this many threads runnable (default 0.5)")
    parser.add_argument("--load-wait", type=float, default=300, help="longest wait for it, seconds (default 300)")
    parser.add_argument("--output", default="bench/results/p9-latest.md")
    args = parser.parse_args()
    require_qemu()
    vmkit_bin = install_vmkit_venv()
    revision = source_revision()
    guest = str(build_guest("p9_bench"))
    params = f"seconds={args.seconds} bs={args.bs} msize=131072 size_mib={DATA_MIB}"

    def commands(directory: str, cmdline: str) -> dict[str, list[str]]:
        return {
            "vmkit": [*vmkit_command(vmkit_bin, guest, memory_mib=MEMORY_MIB), "--share", f"{directory},rw",
                      "--cmdline", cmdline],
            "qemu": [*qemu_pcie_command(guest, memory_mib=MEMORY_MIB),
                     "-fsdev", f"local,id=fs0,path={directory},security_model=none",
                     "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=share0,disable-legacy=on",
                     "-append", f"{cmdline} {QEMU_PCI_ECAM_CMDLINE}"],
        }

    timeout = 4 * args.seconds + 60
    runs: dict[str, list[P9Run]] = {"vmkit": [], "qemu": []}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vmkit-p9-bench-", dir="/var/tmp") as workdir:
        pattern = bytes(i % 251 for i in range(251 * 4096))
        with open(Path(workdir) / "data", "wb") as f:
            for _ in range(DATA_MIB * (1 << 20) // len(pattern) + 1):
                f.write(pattern)
        for command in commands(workdir, f"seconds=1 bs={args.bs}").values():
            run_p9(command, timeout)                                   # warm-up: page cache, first runs
        for round_index in range(args.runs):
            loads.append(wait_for_quiet(args.max_load, limit_s=args.load_wait, load=others_running))
            order = ("vmkit", "qemu") if round_index % 2 == 0 else ("qemu", "vmkit")
            made = commands(workdir, params)
            for vmm in order:
                run = run_p9(made[vmm], timeout)
                runs[vmm].append(run)
                print(f"round {round_index + 1}/{args.runs} {vmm:5} (others {loads[-1]:.2f}): "
                      + " ".join(f"{p.rate_key}={run.results[p.rate_key]}" for p in PHASES), flush=True)
        shown = commands("DIR", params)

    rows: list[tuple[str, ...]] = []
    per_run: list[str] = []
    measures = [(f"{p.label} ({p.unit})", lambda r, p=p: float(r.results[p.rate_key]), "{:.0f}") for p in PHASES]
    measures += [(f"VMM CPU per request, {p.label} (µs)", lambda r, i=i: r.vmm_cpu_us_per_request(i), "{:.1f}")
                 for i, p in enumerate(PHASES)]
    for label, value, form in measures:
        v, q = median([value(r) for r in runs["vmkit"]]), median([value(r) for r in runs["qemu"]])
        rows.append((label, form.format(v), form.format(q), f"{v / q:.2f}" if q else "-"))
        for vmm in ("vmkit", "qemu"):
            per_run.append(f"{label}, {vmm}: " + ", ".join(form.format(value(r)) for r in runs[vmm]))
    text = "\n".join([
        f"p9_bench ({params}), 1 vCPU, {MEMORY_MIB} MiB, {args.runs} interleaved rounds after a warm-up, "
        f"medians; vmkit {revision} from bench/.venv (regular install), QEMU microvm virtio-9p-pci "
        "(security_model=none)",
        "",
        table(rows, ("measure", "vmkit", "QEMU", "vmkit / QEMU")),
        "",
        "Rates: higher is better; CPU per request: lower is better (the VMM process's user + system time, "
        "all threads, less its guest time).",
        "Runnable threads of other processes before each round: " + ", ".join(f"{x:.2f}" for x in loads) + ".",
        "",
        "commands (DIR: a directory holding the 64 MiB file `data`):",
        "    " + " ".join(shown["vmkit"]),
        "    " + " ".join(shown["qemu"]),
        "",
        "all runs, in order:",
        *("    " + line for line in per_run),
    ])
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
