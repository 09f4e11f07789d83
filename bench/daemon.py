"""Start-up through the daemon: `vmkit run -d` of a guest-kit guest to its exit, against a cold QEMU.

    python3 -m bench.daemon [--runs N] [--burst N] [--guest NAME]

A daemon of its own (a temporary runtime directory) holds the VMs. Measured, interleaved with a cold
`qemu-system-x86_64 -M microvm` of the same PVH image (median of N each):
  - request to answer: POST /vms until the daemon says the VM runs;
  - request to guest exit: until the VM process saw the guest end (exit.json's "finished", wall clock);
  - request to the daemon's "die" event for that VM (the VM process has torn the VM down and ended);
  - the CLI's `vmkit run -d` (a Python start-up, then the same request) until it printed the name;
  - and, for comparison, a foreground `vmkit run` (a process of its own) to the guest's exit;
and how many VMs the daemon starts per second (--burst of them, --clients requests in flight at once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import median, others_running, qemu_command, require_qemu, source_revision, table, timed_run
from vmkit.daemon.client import Client, DaemonError
from vmkit.guest import build_guest


class Deaths:
    """The daemon's "die" events, as they come, by VM name."""

    def __init__(self, client: Client, since: int) -> None:
        self._seen: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stream = client.stream(f"/events?follow=1&since={since}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        try:
            for chunk in self._stream:
                now = time.perf_counter()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    if event["type"] == "die":
                        with self._changed:
                            self._seen[event["name"]] = now
                            self._changed.notify_all()
        except DaemonError:
            return                                    # the daemon stopped at the end of the run

    def wait(self, name: str, timeout: float = 30) -> float:
        with self._changed:
            if not self._changed.wait_for(lambda: name in self._seen, timeout):
                raise TimeoutError(f"no die event for {name}")
            return self._seen[name]


def start_daemon(root: Path) -> tuple[subprocess.Popen, Client]:
    socket_path = root / "daemon.sock"
    process = subprocess.Popen([sys.executable, "-m", "vmkit", "daemon", "--socket", str(socket_path)],
                               stdin=subprocess.DEVNULL, start_new_session=True)
    client = Client(socket_path, autostart=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.request("GET", "/")
            return process, client
        except DaemonError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50, help="VMs asked for as fast as they start")
    parser.add_argument("--clients", type=int, default=4, help="requests in flight at once in the burst")
    parser.add_argument("--guest", default="hello")
    args = parser.parse_args()
    require_qemu()
    image = str(build_guest(args.guest))
    root = Path(tempfile.mkdtemp(prefix="vkbench", dir="/tmp"))
    process, client = start_daemon(root)
    env = {**os.environ, "VMKIT_DAEMON_SOCKET": str(root / "daemon.sock")}
    try:
        deaths = Deaths(client, since=0)
        request = {"args": ["--kernel", image], "cwd": "/"}
        client.request("DELETE", f"/vms/{client.request('POST', '/vms', request)['name']}?force=1")   # warm
        answered, exited, died, cli_printed, qemu, foreground = [], [], [], [], [], []
        for index in range(args.runs):
            name = f"run{index}"
            wall, start = time.time(), time.perf_counter()
            client.request("POST", "/vms", {**request, "name": name})
            answered.append(time.perf_counter() - start)
            died.append(deaths.wait(name) - start)
            exited.append(client.request("GET", f"/vms/{name}")["exit"]["finished"] - wall)
            client.request("DELETE", f"/vms/{name}")
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "vmkit", "run", "-d", "--name", f"cli{index}",
                                   "--kernel", image], env=env, capture_output=True, text=True)
            cli_printed.append(time.perf_counter() - start)
            assert done.returncode == 0, done.stderr
            deaths.wait(f"cli{index}")
            client.request("DELETE", f"/vms/cli{index}")
            run = timed_run(qemu_command(image))
            assert run.status == 1, run.status
            qemu.append(run.seconds)
            run = timed_run([sys.executable, "-m", "vmkit", "run", "--quiet", "--kernel", image])
            assert run.status == 1, run.status
            foreground.append(run.seconds)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda index: client.request("POST", "/vms", {**request, "name": f"burst{index}"}),
                          range(args.burst)))
        burst_seconds = time.perf_counter() - start
        for index in range(args.burst):
            deaths.wait(f"burst{index}")
            client.request("DELETE", f"/vms/burst{index}")
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    q = median(qemu)

    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    rows = [
        ("request to answer (VM running)", ms(median(answered)), "", ""),
        ("request to guest exit (the VM process saw it end)", ms(median(exited)), ms(q), f"{median(exited) / q:.2f}x"),
        ("request to the daemon's die event (VM process gone)", ms(median(died)), ms(q), f"{median(died) / q:.2f}x"),
        ("`vmkit run -d` until it printed the name", ms(median(cli_printed)), "", ""),
        ("for comparison: a foreground `vmkit run` to its exit", ms(median(foreground)), ms(q),
         f"{median(foreground) / q:.2f}x"),
    ]
    print(f"guest {args.guest}, median of {args.runs}; vmkit {source_revision()}; "
          f"others' runnable threads meanwhile: {others_running(2):.1f}")
    print(table(rows, header=("measure", "vmkit daemon", "QEMU microvm (cold)", "daemon / QEMU")))
    print(f"\nVMs started per second, {args.burst} requests from {args.clients} clients at once: "
          f"{args.burst / burst_seconds:.1f}")


if __name__ == "__main__":
    main()
