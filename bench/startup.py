"""Start-up and memory: vmkit vs QEMU microvm booting the same PVH guest to its debug-exit.

    python3 -m bench.startup [--runs N] [--cpus N]

Three commands run interleaved (vmkit installed in a venv, vmkit as an editable
development install, QEMU), N times each. Reports the median wall time from
command start to guest exit and the median peak RSS of the VMM process.
"""

from __future__ import annotations

import argparse

from bench.common import (
    dev_vmkit,
    install_vmkit_venv,
    median,
    qemu_command,
    require_qemu,
    table,
    timed_run,
    vmkit_command,
)
from vmkit.guest import build_guest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--guest", default="hello")
    args = parser.parse_args()
    require_qemu()
    image = str(build_guest(args.guest))
    commands = {
        "vmkit (venv install)": vmkit_command(install_vmkit_venv(), image, cpus=args.cpus),
        "vmkit (editable dev install)": vmkit_command(dev_vmkit(), image, cpus=args.cpus),
        "QEMU microvm": qemu_command(image, cpus=args.cpus),
    }
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            run = timed_run(command)
            if run.status != 1 or b"RESULT cpus_online=" not in run.stdout:
                raise SystemExit(f"{name} run failed with status {run.status}: {run.stdout[-500:]!r}")
            runs[name].append(run)
    wall = {name: median([r.seconds for r in rs]) * 1000 for name, rs in runs.items()}
    rss = {name: median([r.max_rss_kib for r in rs]) / 1024 for name, rs in runs.items()}
    qemu = "QEMU microvm"
    rows = [(name, f"{wall[name]:.1f}", f"{wall[name] / wall[qemu]:.2f}", f"{rss[name]:.1f}",
             f"{rss[name] / rss[qemu]:.2f}") for name in commands]
    print(f"guest {args.guest}, {args.cpus} vCPU, 64 MiB, {args.runs} interleaved runs each (medians)")
    print(table(rows, ("VMM", "start to guest exit (ms)", "ratio to QEMU", "peak RSS (MiB)", "ratio to QEMU")))
    for name, command in commands.items():
        print(f"{name}: {' '.join(command)}")


if __name__ == "__main__":
    main()
