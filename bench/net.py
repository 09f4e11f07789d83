"""Networking: vmkit's virtio-net against QEMU's virtio-net-pci, same guest program, same tap.

    python3 -m bench.net [--runs N] [--seconds S] [--size BYTES] [--window N] [--output PATH]

Needs root (it makes a tap) and QEMU. The guest is the guest kit's net_bench
(vmkit/guest/programs/net_bench.c): round-trip latency of 64-byte UDP datagrams one at a time, the
transmit rate (datagrams of --size payload bytes queued as fast as the queue takes them, notified
in batches of 32), and the echoed rate (--window datagrams in flight, each echo answered by a new
one), each phase for S seconds, completions polled. The peer is a UDP echo process (Python, one
socket) bound to the host side of the tap (10.254.250.1/24); both VMMs talk to the same peer on
the same tap, so it limits both alike. vmkit gets `--net tap=NAME`; QEMU gets `-netdev
tap,ifname=NAME,script=no,downscript=no -device virtio-net-pci` on microvm with pcie=on (its
userspace virtio-net: this host has no /dev/vhost-net). Both boot with 1 vCPU and 64 MiB.

Runs are interleaved (the VMM that goes first alternates) after one unrecorded warm-up round;
before each round the bench waits until other processes keep at most --max-load threads runnable,
and records that. Reported: medians of the guest's own figures, and each VMM's CPU time for the
whole run (user + system, all threads, from wait4): the guest polls, so a vCPU is busy throughout
in either VMM, and the difference between the two is the VMMs' own work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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

TAP = "vmkbench0"
HOST_IP, GUEST_IP = "10.254.250.1", "10.254.250.2"
ECHO_PORT = 7007
MAC = "02:00:00:be:0c:01"
ECHO_PROCESS = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("{HOST_IP}", {ECHO_PORT}))
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
"""
FIGURES = ("rtt_us_median", "rtt_us_p99", "tx_pps", "tx_mbps", "echo_pps", "echo_mbps")


def ip_number(address: str) -> str:
    a, b, c, d = (int(x) for x in address.split("."))
    return hex(a << 24 | b << 16 | c << 8 | d)


@dataclass
class Sample:
    figures: dict[str, int]
    cpu_s: float


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {"vmkit": [], "qemu": []})


def run_one(command: list[str]) -> Sample:
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, _, usage = os.wait4(proc.pid, 0)
    figures = {}
    for line in out.splitlines():
        if line.startswith("RESULT ") and "=" in line:
            key, _, value = line[7:].partition("=")
            if key in FIGURES:
                figures[key] = int(value)
    if set(figures) != set(FIGURES):
        sys.exit(f"net_bench did not finish: {' '.join(command)}\n{out[-2000:]}")
    return Sample(figures, usage.ru_utime + usage.ru_stime)


def commands(launcher: str, image: str, cmdline: str) -> dict[str, list[str]]:
    vmkit = [*vmkit_command(launcher, image), "--net", f"tap={TAP},mac={MAC}",
             "--cmdline", cmdline]
    qemu = [*qemu_pcie_command(image), "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC}",
            "-append", f"{cmdline} {QEMU_PCI_ECAM_CMDLINE}"]
    return {"vmkit": vmkit, "qemu": qemu}


def set_up_tap() -> None:
    subprocess.run(["ip", "link", "del", TAP], stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["ip", "tuntap", "add", TAP, "mode", "tap"], check=True)
    subprocess.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
    subprocess.run(["ip", "link", "set", TAP, "up"], check=True)


def report(results: Results, args: argparse.Namespace, loads: list[float]) -> str:
    def med(vmm: str, key: str) -> float:
        return median([s.figures[key] for s in results.samples[vmm]])

    rows: list[tuple[str, ...]] = []
    for key, label in (("rtt_us_median", "round trip, median (us)"), ("rtt_us_p99", "round trip, p99 (us)"),
                       ("tx_pps", "tx datagrams/s"), ("tx_mbps", "tx Mbit/s (payload)"),
                       ("echo_pps", f"echoed datagrams/s ({args.window} in flight)"),
                       ("echo_mbps", "echoed Mbit/s (payload)")):
        ours, theirs = med("vmkit", key), med("qemu", key)
        rows.append((label, f"{ours:.0f}", f"{theirs:.0f}", f"{ours / theirs:.2f}" if theirs else "-"))
    cpu = [median([s.cpu_s for s in results.samples[vmm]]) for vmm in ("vmkit", "qemu")]
    rows.append(("VMM CPU for the run (s, vCPU polling included)", f"{cpu[0]:.1f}", f"{cpu[1]:.1f}",
                 f"{cpu[0] / cpu[1]:.2f}"))
    return (f"# bench.net ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, source {source_revision()})\n\n"
            f"net_bench over tap {TAP}, {args.size}-byte payloads, {args.seconds} s per phase, "
            f"median of {args.runs} runs; others' runnable threads before rounds: "
            f"{', '.join(f'{x:.1f}' for x in loads)}\n\n" + table(rows) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.net", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--size", type=int, default=1472)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench.net makes a tap: run it as root")
    require_qemu()
    launcher = install_vmkit_venv()
    image = str(build_guest("net_bench"))
    cmdline = (f"ip={ip_number(GUEST_IP)} peer={ip_number(HOST_IP)} port={ECHO_PORT} size={args.size} "
               f"seconds={args.seconds} window={args.window}")
    set_up_tap()
    echo = subprocess.Popen([sys.executable, "-c", ECHO_PROCESS])
    results, loads = Results(), []
    try:
        time.sleep(0.3)
        runs = commands(launcher, image, cmdline)
        for vmm in runs:
            run_one(runs[vmm])                                   # warm-up, not recorded
        for round_ in range(args.runs):
            wait_for_quiet(args.max_load, poll_s=5, limit_s=120, load=others_running)
            loads.append(others_running(2))
            order = ("vmkit", "qemu") if round_ % 2 == 0 else ("qemu", "vmkit")
            for vmm in order:
                results.samples[vmm].append(run_one(runs[vmm]))
                print(f"  round {round_ + 1} {vmm}: {results.samples[vmm][-1].figures}", file=sys.stderr, flush=True)
    finally:
        echo.kill()
        echo.wait()
        subprocess.run(["ip", "link", "del", TAP], check=False)
    text = report(results, args, loads)
    print(text)
    if args.output is not None:
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(
            {vmm: [vars(s) for s in samples] for vmm, samples in results.samples.items()}, indent=1))


if __name__ == "__main__":
    main()
