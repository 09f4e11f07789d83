"""The daemon's VMs: created through the fork server, steered through their control sockets, and
watched until they end, across daemon restarts (each VM's state directory says what it needs).

The daemon is a child subreaper: the VM processes, forked twice by the fork server, become its
children, and the reaper thread learns how each one ended, SIGKILL included. A VM found again after a
daemon restart is another process's child; the watcher sees it end, and its exit.json (which the VM
process writes itself unless it was killed) says how.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import secrets
import select
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmkit.daemon import control
from vmkit.daemon.forkserver import ForkServer
from vmkit.daemon.vmdir import VmDir, check_name

PR_SET_CHILD_SUBREAPER = 36
START_TIMEOUT_SECONDS = 120.0       # a guest program may be compiled on its first start
KILL_WAIT_SECONDS = 10.0
FOLLOW_POLL_SECONDS = 0.1
MAX_EVENTS = 10_000
MAX_UNCLAIMED = 4096


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Vm:
    def __init__(self, vmdir: VmDir, config: dict[str, Any], state: str) -> None:
        self.name = vmdir.name
        self.dir = vmdir
        self.config = config
        self.state = state            # starting | running | paused | exited
        self.pid: int | None = None
        self.adopted = False          # found again after a restart: not this daemon's child
        self._machine: dict[str, Any] | None = None

    def machine(self) -> dict[str, Any] | None:
        """What was built (machine.json), read once: the VM process writes it once, before it runs."""
        if self._machine is None:
            self._machine = self.dir.machine()
        return self._machine


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


class Registry:
    def __init__(self, root: Path, forks: ForkServer) -> None:
        self.root = root
        self.forks = forks
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._vms: dict[str, Vm] = {}
        self._by_pid: dict[int, Vm] = {}
        self._unclaimed: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._ignored: set[int] = set()
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self._sequence = 0
        self._children = threading.Event()
        self._running = True
        self.started = 0                  # VMs this daemon started (metrics)

    # ---- life of the daemon

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.recover()
        threading.Thread(target=self._start_forkserver, name="forkserver-start", daemon=True).start()
        self._children.set()
        threading.Thread(target=self._reap, name="reaper", daemon=True).start()
        threading.Thread(target=self._watch_adopted, name="watcher", daemon=True).start()

    def _start_forkserver(self) -> None:
        """Start the fork server while the API starts listening (a request waits for it)."""
        try:
            self.forks.ensure_started()
        except OSError:
            pass                                  # the first request tries again, and says why

    def close(self) -> None:
        self._running = False
        self.forks.close()

    def recover(self) -> None:
        """Find the VMs of earlier daemons again, from their state directories."""
        for path in sorted(self.root.iterdir()):
            if not path.is_dir():
                continue
            vmdir = VmDir(path)
            config = vmdir.config()
            if config is None or check_name(path.name) is not None:
                vmdir.remove()                    # a creation that never finished
                continue
            vm = Vm(vmdir, config, "exited")
            if vmdir.exit() is None:
                pid = vmdir.pid()
                if pid is None:
                    vmdir.record_exit(None, "lost", "the VM process ended while no daemon watched it; "
                                      "how it ended is unknown", time.time())
                else:
                    vm.pid, vm.adopted = pid, True
                    try:
                        vm.state = _daemon_state(control.ask(vmdir.control_socket, "status", timeout=2.0))
                    except control.ControlError:
                        vm.state = "running"
            self._vms[vm.name] = vm
            self._event("recover", vm)

    # ---- events

    def _event(self, event_type: str, vm: Vm, **fields: Any) -> None:
        with self._changed:
            self._sequence += 1
            self._events.append({"seq": self._sequence, "time": time.time(), "type": event_type, "name": vm.name,
                                 **fields})
            self._changed.notify_all()

    def events(self, since: int, follow: bool) -> Iterator[bytes]:
        seen = since
        while True:
            with self._changed:
                pending = [event for event in self._events if event["seq"] > seen]
                if not pending and follow:
                    self._changed.wait(1.0)
                    pending = [event for event in self._events if event["seq"] > seen]
            for event in pending:
                seen = event["seq"]
                yield json.dumps(event).encode() + b"\n"
            if not follow:
                return
            if not pending:
                yield b""

    # ---- the VMs

    def _get(self, name: str) -> Vm:
        with self._lock:
            vm = self._vms.get(name)
        if vm is None:
            raise ApiError(404, f"no VM named {name!r}")
        return vm

    def describe(self, vm: Vm) -> dict[str, Any]:
        ended = vm.dir.exit() if vm.state == "exited" else None
        machine = vm.machine()
        return {"name": vm.name, "state": vm.state, "pid": vm.pid,
                "status": ended.get("status") if ended else None, "exit": ended,
                "created": vm.config.get("created"), "args": vm.config.get("args"), "cwd": vm.config.get("cwd"),
                "machine": machine, "dir": str(vm.dir.path), "console_log": str(vm.dir.console_log)}

    def listing(self, everything: bool) -> list[dict[str, Any]]:
        with self._lock:
            vms = sorted(self._vms.values(), key=lambda vm: (vm.config.get("created") or 0, vm.name))
        return [self.describe(vm) for vm in vms if everything or vm.state != "exited"]

    def inspect(self, name: str) -> dict[str, Any]:
        return self.describe(self._get(name))

    def _new_name(self) -> str:
        while True:
            name = f"vm-{secrets.token_hex(3)}"
            if name not in self._vms:
                return name

    def create(self, name: str | None, args: list[str], cwd: str) -> dict[str, Any]:
        with self._lock:
            if name is None:
                name = self._new_name()
            else:
                problem = check_name(name)
                if problem is not None:
                    raise ApiError(400, problem)
                if name in self._vms or (self.root / name).exists():
                    raise ApiError(409, f"the name {name!r} is in use by another VM")
            vmdir = VmDir(self.root / name)
            config = {"name": name, "args": args, "cwd": cwd, "created": time.time()}
            try:
                vmdir.create(config)
            except OSError as exc:
                vmdir.remove()
                raise ApiError(500, f"cannot create the VM's state directory {vmdir.path}: {exc}") from None
            vm = Vm(vmdir, config, "starting")
            self._vms[name] = vm
        try:
            report = self.forks.spawn(vmdir.path, args, cwd)
            self.spawned()
        except OSError as exc:
            self._kill(vm)                        # forked before the fork server died, perhaps
            self._forget(vm)
            raise ApiError(500, f"cannot start the VM process: {exc}") from None
        try:
            line = _read_report(report, START_TIMEOUT_SECONDS)
        finally:
            os.close(report)
        word, _, rest = line.partition(" ")
        if word != "ok" or not rest.isdigit():
            failed = vmdir.recorded_pid()
            with self._lock:
                if failed is not None and self._unclaimed.pop(failed, None) is None:
                    self._ignored.add(failed)
            self._kill(vm)                        # one that said nothing in time may still run
            self._forget(vm)
            raise ApiError(400, rest if word == "error" else "the VM process ended while it started")
        pid = int(rest)
        with self._lock:
            vm.pid, vm.state = pid, "running"
            self._by_pid[pid] = vm
            status = self._unclaimed.pop(pid, None)
            self.started += 1
        self._event("start", vm, pid=pid)
        if status is not None:
            self._child_ended(vm, status)
        return self.describe(vm)

    def _forget(self, vm: Vm) -> None:
        with self._lock:
            self._vms.pop(vm.name, None)
        vm.dir.remove()

    def steer(self, name: str, op: str) -> dict[str, Any]:
        """Pause or resume a VM through its control socket."""
        vm = self._get(name)
        if vm.state not in ("running", "paused"):
            raise ApiError(409, f"VM {name!r} is {vm.state}, not running")
        try:
            state = control.ask(vm.dir.control_socket, op)
        except control.ControlError as exc:
            raise ApiError(409, f"{op} {name}: {exc}") from None
        with self._lock:
            if vm.state != "exited":
                vm.state = _daemon_state(state)
        self._event(op, vm)
        return self.describe(vm)

    def send_input(self, name: str, data: bytes) -> dict[str, Any]:
        """Give `data` to a running or paused VM's console."""
        vm = self._get(name)
        if vm.state not in ("running", "paused"):
            raise ApiError(409, f"VM {name!r} is {vm.state}, not running")
        try:
            control.ask(vm.dir.control_socket, "input", data=data)
        except control.ControlError as exc:
            raise ApiError(409, f"console input for {name}: {exc}") from None
        return self.describe(vm)

    def stop(self, name: str, timeout: float) -> dict[str, Any]:
        """Press a running VM's ACPI power button and give the guest `timeout` seconds to power off;
        then stop the VM hard (SIGTERM: its VMM ends it), and kill the VM process when that has not
        ended it either. A paused VM cannot act on the button, and a VM process that does not answer
        cannot stop itself: the one is stopped hard at once, the other killed at the timeout."""
        vm = self._get(name)
        answered = True
        if vm.state == "running":
            deadline = time.monotonic() + timeout
            try:
                control.ask(vm.dir.control_socket, "stop", timeout=max(min(timeout, 5.0), 0.1))
            except control.ControlError:
                answered = False
            self._wait_ended(vm, max(deadline - time.monotonic(), 0.0))
        if vm.state != "exited":
            if answered:
                self._kill(vm, signal.SIGTERM)
                self._wait_ended(vm, KILL_WAIT_SECONDS)
            if vm.state != "exited":
                self._kill(vm)
                self._wait_ended(vm, KILL_WAIT_SECONDS)
        return self.describe(vm)

    def remove(self, name: str, force: bool) -> None:
        vm = self._get(name)
        if vm.state != "exited":
            if not force:
                raise ApiError(409, f"VM {name!r} is {vm.state}: stop it first, or remove it with force")
            self._kill(vm)
            if not self._wait_ended(vm, KILL_WAIT_SECONDS):
                raise ApiError(500, f"VM {name!r}: its process did not end after SIGKILL")
        with self._lock:
            self._vms.pop(name, None)
        vm.dir.remove()
        self._event("remove", vm)

    def logs(self, name: str, follow: bool) -> Iterator[bytes]:
        vm = self._get(name)
        try:
            log = open(vm.dir.console_log, "rb")    # open now: a missing VM is a 404, not half a stream
        except OSError:
            raise ApiError(404, f"VM {name!r} has no console log (removed meanwhile?)") from None

        def chunks() -> Iterator[bytes]:
            with log:
                while True:
                    ended = vm.state == "exited"
                    data = log.read(1 << 16)
                    if data:
                        yield data
                    elif ended or not follow:
                        return
                    else:
                        time.sleep(FOLLOW_POLL_SECONDS)
                        yield b""
        return chunks()

    # ---- watching the processes

    def _kill(self, vm: Vm, signum: int = signal.SIGKILL) -> None:
        pid = vm.dir.pid()
        if pid is not None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _wait_ended(self, vm: Vm, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: vm.state == "exited", timeout)

    def _ended(self, vm: Vm) -> None:
        with self._lock:
            vm.state = "exited"
            if vm.pid is not None:
                self._by_pid.pop(vm.pid, None)
            vm.pid = None
        ended = vm.dir.exit() or {}
        self._event("die", vm, status=ended.get("status"), kind=ended.get("kind"), message=ended.get("message"))

    def _child_ended(self, vm: Vm, wait_status: int) -> None:
        code = os.waitstatus_to_exitcode(wait_status)
        if code < 0:
            name = signal.Signals(-code).name
            vm.dir.record_exit(128 - code, "killed", f"the VM process was killed by {name}", time.time())
        else:
            vm.dir.record_exit(code, "lost", f"the VM process exited with status {code} without saying "
                               "how the VM ended", time.time())
        self._ended(vm)

    def _reap(self) -> None:
        while self._running:
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                self._children.wait(0.5)
                self._children.clear()
                continue
            except InterruptedError:
                continue
            if pid == self.forks.pid:
                self.forks.died(pid)
                continue
            with self._lock:
                vm = self._by_pid.get(pid)
                if vm is None:
                    if pid in self._ignored:
                        self._ignored.discard(pid)
                    else:
                        self._unclaimed[pid] = wait_status
                        while len(self._unclaimed) > MAX_UNCLAIMED:
                            self._unclaimed.popitem(last=False)
                    continue
            self._child_ended(vm, wait_status)

    def _watch_adopted(self) -> None:
        while self._running:
            with self._lock:
                adopted = [vm for vm in self._vms.values() if vm.adopted and vm.state != "exited"]
            for vm in adopted:
                if vm.dir.pid() is None:
                    vm.dir.record_exit(None, "lost", "the VM process ended while it was not this daemon's "
                                       "child; how it ended is unknown", time.time())
                    self._ended(vm)
            time.sleep(0.5)

    def live(self) -> list[tuple[str, Path]]:
        """The running and paused VMs: each one's name and control socket."""
        with self._lock:
            return [(vm.name, vm.dir.control_socket) for vm in self._vms.values()
                    if vm.state in ("running", "paused")]

    def state_of(self, name: str) -> tuple[str, Path]:
        """A VM's state and control socket (ApiError 404 when nobody holds `name`)."""
        vm = self._get(name)
        return vm.state, vm.dir.control_socket

    def counts(self) -> dict[str, int]:
        with self._lock:
            states = collections.Counter(vm.state for vm in self._vms.values())
        return dict(states)

    def spawned(self) -> None:
        """A child may exist now: the reaper waits for it."""
        self._children.set()


def _daemon_state(machine_state: str) -> str:
    return {"paused": "paused", "stopped": "exited"}.get(machine_state, "running")


def _read_report(fd: int, timeout: float) -> str:
    """The VM process's first line on its report pipe ("" if it closed the pipe without one)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while b"\n" not in data and len(data) < 65536:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0].decode(errors="replace")
