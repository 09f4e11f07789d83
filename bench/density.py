"""Density through the daemon: how many idle guest-kit VMs one daemon holds, and what each costs.

    python3 -m bench.density [--steps 100,500,1000] [--max N] [--clients 4] [--qemu-steps 100]

A daemon of its own (a temporary runtime directory, as bench.daemon) starts N `idle` VMs (the guest
halts until console input: no CPU while held) for each step, from none. For each step:
  - the time until the daemon had answered every start, until every guest had printed READY, VMs/s,
    and the CPU time one start cost the daemon, the fork server (its intermediate children
    included) and the VM process (until it ran);
  - the total PSS (smaps_rollup) of the VM processes, the daemon and the fork server, and per VM,
    once all are READY and again after --settle seconds (the time KSM has to merge pages, where the
    host runs it: /sys/kernel/mm/ksm/run; the header says how it was set);
  - how much MemAvailable fell per VM (what PSS does not show: KVM's and the page tables' memory);
  - the CPU time all the held VM processes used over two seconds (an idle VM should use none);
  - the daemon API's latency while they run: GET /vms/NAME and GET /vms, p50 and p99;
  - the time to remove them all (DELETE ?force=1), and that nothing is left: no VM process, no state
    directory (nor its control socket), no fd more in the daemon than before the step.
A step stops at the first resource limit (MemAvailable under --reserve-mib, the pids or threads the
kernel allows, a start the daemon refuses) and names it; the later steps are not run.
Then the same idle guest under N cold `qemu-system-x86_64 -M microvm` processes (--qemu-steps) for
their start time and PSS per VM. At the default steps the whole run takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import others_running, qemu_command, require_qemu, source_revision
from bench.daemon import start_daemon
from vmkit.daemon.client import Client, DaemonError
from vmkit.guest import build_guest

READY = b"READY"
READY_TIMEOUT_SECONDS = 120.0
CHECK_EVERY = 25                          # VMs started between two looks at the host's limits


class ResourceLimit(Exception):
    """The host (or the daemon) cannot hold another VM; the message names what ran out."""


def pss_kib(pid: int) -> int:
    """The process's proportional set size (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def tasks_in_use() -> int:
    """Threads on the host now (each takes a pid)."""
    with open("/proc/loadavg") as loadavg:
        return int(loadavg.read().split()[3].split("/")[1])


def check_limits(reserve_kib: int, per_vm_tasks: int) -> None:
    """Raise ResourceLimit when the next VMs would run the host low on memory, pids or threads."""
    available = meminfo_kib("MemAvailable")
    if available < reserve_kib:
        raise ResourceLimit(f"memory: MemAvailable {available >> 10} MiB is under the reserve of "
                            f"{reserve_kib >> 10} MiB")
    tasks = tasks_in_use()
    headroom = CHECK_EVERY * per_vm_tasks + 512
    for name, path in (("pids (kernel.pid_max)", "/proc/sys/kernel/pid_max"),
                       ("threads (kernel.threads-max)", "/proc/sys/kernel/threads-max")):
        limit = int(Path(path).read_text())
        if tasks + headroom > limit:
            raise ResourceLimit(f"{name}: {tasks} tasks in use of {limit}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(call: Callable[[], object], times: int) -> list[float]:
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def wait_ready(logs: Iterable[Path], timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Wait until every console log holds READY."""
    waiting = list(logs)
    deadline = time.monotonic() + timeout
    while waiting:
        still = []
        for log in waiting:
            try:
                if READY not in log.read_bytes():
                    still.append(log)
            except FileNotFoundError:
                still.append(log)
        waiting = still
        if waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} guests did not print READY, e.g. {waiting[0]}")
            time.sleep(0.05)


def cpu_ticks(pids: list[int], reaped_children: bool = False) -> int:
    """User + system clock ticks the processes used so far (gone ones count 0), with those of
    their children they have waited for if `reaped_children`."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            if reaped_children:
                total += int(fields[13]) + int(fields[14])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def ms_per(ticks: int, count: int) -> float:
    return ticks * 1000 / os.sysconf("SC_CLK_TCK") / max(count, 1)


def ksm_setting() -> str:
    """How the host's KSM is set (run, pages_to_scan per sleep_millisecs), for the report."""
    ksm = Path("/sys/kernel/mm/ksm")
    try:
        run, pages, sleep = ((ksm / name).read_text().strip() for name in ("run", "pages_to_scan", "sleep_millisecs"))
    except OSError:
        return "KSM: not available"
    return f"KSM run={run} ({pages} pages per {sleep} ms)" if run == "1" else f"KSM run={run} (off)"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Step:
    wanted: int
    held: int = 0
    answered_s: float = 0.0
    ready_s: float = 0.0
    vm_pss_kib: list[int] = field(default_factory=list)
    settled_pss_kib: list[int] = field(default_factory=list)
    daemon_pss_kib: int = 0
    forkserver_pss_kib: int = 0
    available_drop_kib: int = 0
    settled_drop_kib: int = 0
    cpu_ms_per_s: float = 0.0
    start_cpu_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)   # per start: daemon, fork server, VM process
    get_vm_ms: list[float] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)
    removed_s: float = 0.0
    vm_pids: list[int] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    limit: str | None = None


class DaemonDensity:
    """N idle VMs through one daemon, measured and removed."""

    def __init__(self, client: Client, daemon_pid: int, root: Path, image: str, memory_mib: int,
                 clients: int, reserve_kib: int, settle_s: float) -> None:
        self.client = client
        self.daemon_pid = daemon_pid
        self.root = root
        self.request = {"args": ["--kernel", image, "--memory", str(memory_mib)], "cwd": "/"}
        self.clients = clients
        self.reserve_kib = reserve_kib
        self.settle_s = settle_s

    def _start_all(self, step: Step, names: list[str]) -> list[str]:
        """Start the VMs `names`, CHECK_EVERY at a time between looks at the limits; the names started."""
        started: list[str] = []

        def start(name: str) -> str | None:
            try:
                self.client.request("POST", "/vms", {**self.request, "name": name})
                return name
            except DaemonError as exc:
                step.limit = step.limit or f"the daemon refused a start: {exc}"
                return None

        with ThreadPoolExecutor(self.clients) as pool:
            for first in range(0, len(names), CHECK_EVERY):
                try:
                    check_limits(self.reserve_kib, per_vm_tasks=4)
                except ResourceLimit as exc:
                    step.limit = str(exc)
                    break
                done = [name for name in pool.map(start, names[first:first + CHECK_EVERY]) if name]
                started += done
                if step.limit:
                    break
        return started

    def run(self, n: int) -> Step:
        step = Step(n)
        names = [f"idle{index}" for index in range(n)]
        fds_before = fd_count(self.daemon_pid)
        available_before = meminfo_kib("MemAvailable")
        forkserver = self.client.request("GET", "/").get("forkserver_pid")
        daemon_ticks = cpu_ticks([self.daemon_pid])
        forkserver_ticks = cpu_ticks([forkserver], reaped_children=True) if forkserver else 0
        start = time.perf_counter()
        started: list[str] = []
        try:
            started = self._start_all(step, names)
            step.answered_s = time.perf_counter() - start
            step.held = len(started)
            if forkserver:
                step.start_cpu_ms = (ms_per(cpu_ticks([self.daemon_pid]) - daemon_ticks, step.held),
                                     ms_per(cpu_ticks([forkserver], True) - forkserver_ticks, step.held),
                                     ms_per(cpu_ticks(self._pids(started)), step.held))
            wait_ready(self.root / "vms" / name / "console.log" for name in started)
            step.ready_s = time.perf_counter() - start
            time.sleep(1.0)                       # let the starts' transient memory settle
            step.available_drop_kib = available_before - meminfo_kib("MemAvailable")
            pids = self._pids(started)
            step.vm_pss_kib = [pss_kib(pid) for pid in pids]
            step.daemon_pss_kib = pss_kib(self.daemon_pid)
            forkserver = forkserver or self.client.request("GET", "/").get("forkserver_pid")
            step.forkserver_pss_kib = pss_kib(forkserver) if forkserver else 0
            ticks = cpu_ticks(pids)
            time.sleep(2.0)
            step.cpu_ms_per_s = ms_per(cpu_ticks(pids) - ticks, 2)
            if self.settle_s:
                time.sleep(self.settle_s)
                step.settled_pss_kib = [pss_kib(pid) for pid in pids]
                step.settled_drop_kib = available_before - meminfo_kib("MemAvailable")
            if started:
                step.get_vm_ms = [s * 1000 for s in timed(
                    lambda: self.client.request("GET", f"/vms/{random.choice(started)}"), 200)]
                step.list_ms = [s * 1000 for s in timed(lambda: self.client.request("GET", "/vms"), 10)]
        finally:
            pids = step.vm_pids = self._pids(started)
            start = time.perf_counter()
            self._remove(self._names_held())
            step.removed_s = time.perf_counter() - start
            step.leftovers = self._leftovers(pids, fds_before)
        return step

    def _names_held(self) -> list[str]:
        return [vm["name"] for vm in self.client.request("GET", "/vms?all=1")]

    def _pids(self, names: list[str]) -> list[int]:
        pids = []
        for name in names:
            try:
                pids.append(int((self.root / "vms" / name / "pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def _remove(self, names: list[str]) -> None:
        with ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(lambda name: self.client.request("DELETE", f"/vms/{name}?force=1"), names))

    def _leftovers(self, pids: list[int], fds_before: int) -> list[str]:
        left = []
        deadline = time.monotonic() + 10 + 0.02 * len(pids)   # the kernel tears the VMs down one by one
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}")]
            time.sleep(0.1)
        if alive:
            left.append(f"{len(alive)} VM processes, e.g. {alive[0]}")
        dirs = list((self.root / "vms").iterdir()) if (self.root / "vms").exists() else []
        if dirs:
            left.append(f"{len(dirs)} state directories, e.g. {dirs[0]}")
        sockets = list((self.root / "vms").glob("*/control.sock"))
        if sockets:
            left.append(f"{len(sockets)} control sockets")
        fds_after = fd_count(self.daemon_pid)
        deadline = time.monotonic() + 5                # the last connections' threads close theirs
        while fds_after > fds_before and time.monotonic() < deadline:
            time.sleep(0.1)
            fds_after = fd_count(self.daemon_pid)
        if fds_after > fds_before:
            left.append(f"the daemon holds {fds_after - fds_before} fds more")
        return left


@dataclass
class QemuStep:
    n: int
    ready_s: float
    pss_kib: list[int]


def qemu_density(image: str, n: int, memory_mib: int, work: Path) -> QemuStep:
    """N cold QEMU microvm processes of the idle guest: time until all printed READY, their PSS."""
    processes: list[subprocess.Popen[bytes]] = []
    logs = [work / f"qemu{index}.out" for index in range(n)]
    start = time.perf_counter()
    try:
        for log in logs:
            with open(log, "wb") as out:
                processes.append(subprocess.Popen(qemu_command(image, memory_mib=memory_mib),
                                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL))
        wait_ready(logs)
        ready_s = time.perf_counter() - start
        time.sleep(1.0)
        return QemuStep(n, ready_s, [pss_kib(process.pid) for process in processes])
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
        for process in processes:
            process.wait()
        for log in logs:
            log.unlink(missing_ok=True)


def kill_left(root: Path) -> None:
    """SIGKILL every VM process still recorded under `root` (a run that broke off midway)."""
    for pid_file in root.glob("vms/*/pid"):
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def report(steps: list[Step], qemu: list[QemuStep], clients: int, settle_s: float) -> str:
    lines = ["| VMs | all answered s | all READY s | VMs/s | CPU per start ms: daemon + fork server + VM process | "
             "GET /vms/NAME p50 / p99 ms | GET /vms p50 / p99 ms | remove all s | left behind |", "|" + "---|" * 9]
    for s in steps:
        held = f"{s.held}" if s.held == s.wanted else f"{s.held} of {s.wanted}"
        cpu = " + ".join(f"{ms:.1f}" for ms in s.start_cpu_ms) + f" = {sum(s.start_cpu_ms):.1f}"
        lines.append(f"| {held} | {s.answered_s:.1f} | {s.ready_s:.1f} | {s.held / s.ready_s if s.ready_s else 0:.1f} | "
                     f"{cpu} | {_p(s.get_vm_ms)} | {_p(s.list_ms)} | {s.removed_s:.1f} | {'; '.join(s.leftovers) or 'nothing'} |")
    lines += ["", f"| VMs | PSS/VM MiB, READY | PSS/VM MiB, {settle_s:.0f} s later | total PSS MiB (VMs + daemon + "
              "fork server) | daemon + fork server MiB | MemAvailable drop / VM MiB, READY / later | "
              "CPU of all VMs while held, ms/s |", "|" + "---|" * 7]
    for s in steps:
        settled = mib(statistics.mean(s.settled_pss_kib)) if s.settled_pss_kib else "-"
        total = sum(s.settled_pss_kib or s.vm_pss_kib) + s.daemon_pss_kib + s.forkserver_pss_kib
        lines.append(f"| {s.held} | {mib(statistics.mean(s.vm_pss_kib)) if s.vm_pss_kib else '-'} | {settled} | "
                     f"{mib(total)} | {mib(s.daemon_pss_kib)} + {mib(s.forkserver_pss_kib)} | "
                     f"{mib(s.available_drop_kib / max(s.held, 1))} / "
                     f"{mib(s.settled_drop_kib / max(s.held, 1)) if s.settled_pss_kib else '-'} | {s.cpu_ms_per_s:.0f} |")
    for s in steps:
        if s.limit:
            lines.append(f"\nStopped at {s.held} of {s.wanted}: {s.limit}")
    lines.append(f"\n({clients} start and remove requests in flight at once.)")
    if qemu:
        lines += ["", "| QEMU microvm processes | all READY s | VMs/s | total PSS MiB | PSS/VM MiB |",
                  "|---|---|---|---|---|"]
        for q in qemu:
            lines.append(f"| {q.n} | {q.ready_s:.1f} | {q.n / q.ready_s:.1f} | {mib(sum(q.pss_kib))} | "
                         f"{mib(statistics.mean(q.pss_kib))} |")
    return "\n".join(lines)


def _p(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100,500,1000", help="VM counts, comma-separated")
    parser.add_argument("--max", type=int, help="add a last step of this many VMs")
    parser.add_argument("--clients", type=int, default=4, help="start and remove requests in flight at once")
    parser.add_argument("--memory", type=int, default=64, help="guest memory per VM, MiB")
    parser.add_argument("--reserve-mib", type=int, default=4096,
                        help="stop a step when MemAvailable falls under this (the host is shared)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to hold the VMs before PSS is read again (KSM's time to merge)")
    parser.add_argument("--qemu-steps", default="100", help="QEMU process counts ('' for none)")
    args = parser.parse_args()
    steps = [int(word) for word in args.steps.split(",") if word] + ([args.max] if args.max else [])
    qemu_steps = [int(word) for word in args.qemu_steps.split(",") if word]
    if qemu_steps:
        require_qemu()
    image = str(build_guest("idle"))
    root = Path(tempfile.mkdtemp(prefix="vkdensity", dir="/tmp"))
    process, client = start_daemon(root)
    results: list[Step] = []
    qemu_results: list[QemuStep] = []
    load = others_running(2)
    try:
        client.request("DELETE", f"/vms/{client.request('POST', '/vms', {'args': ['--kernel', image], 'cwd': '/'})['name']}?force=1")
        density = DaemonDensity(client, process.pid, root, image, args.memory, args.clients,
                                args.reserve_mib << 10, args.settle)
        for n in steps:
            step = density.run(n)
            results.append(step)
            print(f"  {n}: {step.held} held, READY after {step.ready_s:.1f} s, "
                  f"{mib(statistics.mean(step.vm_pss_kib)) if step.vm_pss_kib else '-'} MiB PSS/VM", flush=True)
            if step.limit:
                break
        for n in qemu_steps:
            qemu_results.append(qemu_density(image, n, args.memory, root))
    finally:
        process.terminate()
        process.wait(30)
        kill_left(root)
        shutil.rmtree(root, ignore_errors=True)
    print(f"guest idle, {args.memory} MiB each; vmkit {source_revision()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"others' runnable threads before: {load:.1f}; {ksm_setting()}")
    print(report(results, qemu_results, args.clients, args.settle))


if __name__ == "__main__":
    main()
