"""The VM daemon, its fork server and the docker-like CLI over it, with guest-kit VMs.

Each test starts its own daemon in a temporary runtime directory ($XDG_RUNTIME_DIR) and stops it, and
every VM process it left, at the end. "hello" exits at once; "serial_echo" waits for console input
(it gives up after a minute), so it is the VM that runs while a test steers it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmkit.daemon.client import Client, DaemonError
from vmkit.daemon.commands import COLUMNS
from vmkit.daemon.vmdir import VmDir, process_start_time

pytestmark = pytest.mark.timeout(180)


class Daemon:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "vmkit" / "daemon.sock"
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(root)}
        self.env.pop("VMKIT_DAEMON_SOCKET", None)
        self.process: subprocess.Popen | None = None
        self.client = Client(self.socket, autostart=False)

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "vmkit", "daemon"], env=self.env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.client.request("GET", "/")["forkserver_pid"] is not None:
                    return
            except DaemonError:
                assert self.process.poll() is None, "the daemon ended at start"
                time.sleep(0.05)
        raise AssertionError("the daemon and its fork server were not up within 30 s")

    def info(self) -> dict:
        return self.client.request("GET", "/")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vmkit", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def vm(self, name: str) -> dict:
        return self.client.request("GET", f"/vms/{name}")

    def wait_state(self, name: str, state: str, timeout: float = 20) -> dict:
        """The VM once it is in `state` (and, for "exited", once its exit record has been read: a
        full CI run once saw a VM listed as exited whose status was still None for a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            vm = self.vm(name)
            settled = vm["state"] == state and (state != "exited" or vm.get("exit") is not None)
            if settled or time.monotonic() > deadline:
                assert vm["state"] == state, vm
                return vm
            time.sleep(0.02)

    def vm_pids(self) -> list[int]:
        pids = []
        for path in (self.socket.parent / "vms").glob("*"):
            pid = VmDir(path).pid()
            if pid is not None:
                pids.append(pid)
        return pids

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def running_daemon(prefix: str = "vk") -> Iterator[Daemon]:
    """A daemon of its own in a fresh runtime directory; afterwards it is stopped and whatever it
    leaves (VM processes, its fork server, the directory) is killed and removed."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    running = Daemon(root)
    running.start()
    try:
        yield running
    finally:
        pids = running.vm_pids()
        forkserver = None
        try:
            forkserver = running.info().get("forkserver_pid")
        except DaemonError:
            pass
        running.stop()
        for pid in [*pids, *([forkserver] if forkserver else [])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def daemon():
    with running_daemon() as running:
        yield running


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:                                   # gone meanwhile
        return b""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    return int(re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_run_detached_hello_shows_in_ps_logs_and_inspect(daemon):
    assert daemon.ok("run", "-d", "--guest", "hello", "--name", "h1") == "h1\n"
    vm = daemon.wait_state("h1", "exited")
    assert vm["status"] == 1 and vm["exit"]["kind"] == "debug-exit"
    ps_all = daemon.ok("ps", "-a").splitlines()
    assert ps_all[0].split()[:3] == ["NAME", "STATE", "STATUS"]
    row = next(line for line in ps_all if line.startswith("h1 "))
    assert row.split()[1:4] == ["exited", "exited", "(1)"]
    assert "h1" not in daemon.ok("ps")                  # only running VMs without -a
    assert "vmkit guest: hello from ring 3" in daemon.ok("logs", "h1")
    inspected = json.loads(daemon.ok("inspect", "h1"))
    assert inspected["name"] == "h1" and inspected["status"] == 1 and inspected["pid"] is None
    assert inspected["machine"]["kernel"] == "built-in guest hello" and inspected["machine"]["memory_mib"] == 64
    state_dir = Path(inspected["dir"])
    assert json.loads((state_dir / "config.json").read_text())["name"] == "h1"
    assert json.loads((state_dir / "exit.json").read_text())["status"] == 1
    generated = daemon.ok("run", "-d", "-g", "hello").strip()       # a name of its own
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", generated) and generated != "h1"
    assert daemon.wait_state(generated, "exited")["status"] == 1


def test_pause_resume_stop_and_rm(daemon):
    assert daemon.ok("run", "-d", "-g", "serial_echo", "--name", "echo") == "echo\n"
    daemon.wait_state("echo", "running")
    pid = daemon.vm("echo")["pid"]
    assert _alive(pid)
    assert "READY" in daemon.ok("logs", "echo")
    row = next(line for line in daemon.ok("ps").splitlines() if line.startswith("echo "))
    assert row.split()[1:3] == ["running", str(pid)]
    assert daemon.ok("pause", "echo") == "echo\n"
    assert daemon.vm("echo")["state"] == "paused"
    assert "paused" in daemon.ok("ps")
    assert daemon.cli("pause", "echo").returncode == 125          # paused already: refused
    assert daemon.ok("resume", "echo") == "echo\n"
    assert daemon.vm("echo")["state"] == "running"
    refused = daemon.cli("rm", "echo")
    assert refused.returncode == 125 and "stop it first" in refused.stderr
    started = time.monotonic()
    assert daemon.ok("stop", "-t", "1", "echo") == "echo\n"    # serial_echo ignores the power button
    assert 1 <= time.monotonic() - started < 10
    vm = daemon.vm("echo")
    assert vm["state"] == "exited" and vm["status"] == 143 and vm["exit"]["kind"] == "signal"
    assert not _alive(pid)
    state_dir = Path(vm["dir"])
    assert state_dir.is_dir()
    assert daemon.ok("rm", "echo") == "echo\n"
    assert not state_dir.exists()
    assert "echo" not in daemon.ok("ps", "-a")
    assert daemon.cli("inspect", "echo").returncode == 125


def test_logs_follow_ends_when_the_vm_ends_and_rm_force_kills(daemon):
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "f1")
    follower = subprocess.Popen([sys.executable, "-m", "vmkit", "logs", "-f", "f1"], env=daemon.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert follower.poll() is None                    # still following a running VM
        daemon.ok("stop", "-t", "0", "f1")
        out, err = follower.communicate(timeout=20)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert b"READY" in out
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "f2")
    pid = daemon.vm("f2")["pid"]
    assert daemon.ok("rm", "-f", "f2") == "f2\n"
    assert not _alive(pid)
    assert "f2" not in daemon.ok("ps", "-a")


def test_stop_ends_a_paused_vm_and_kills_one_that_does_not_answer(daemon):
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "paused")
    daemon.ok("pause", "paused")
    assert daemon.ok("stop", "paused") == "paused\n"
    assert daemon.vm("paused")["status"] == 143
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "frozen")
    pid = daemon.vm("frozen")["pid"]
    os.kill(pid, signal.SIGSTOP)                       # its VMM cannot act on the request
    started = time.monotonic()
    assert daemon.ok("stop", "--time", "1", "frozen") == "frozen\n"
    assert time.monotonic() - started < 8
    vm = daemon.vm("frozen")
    assert vm["state"] == "exited" and vm["status"] == 137 and vm["exit"]["kind"] == "killed"
    assert not _alive(pid)


def test_stop_presses_the_power_button_and_a_guest_that_handles_it_powers_off(daemon):
    daemon.ok("run", "-d", "-g", "power_button", "--cmdline", "presses=1 poweroff=1", "--name", "button")
    deadline = time.monotonic() + 20
    while "READY" not in daemon.ok("logs", "button") and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert daemon.ok("stop", "-t", "60", "button") == "button\n"
    assert time.monotonic() - started < 20                       # the guest's power-off, not the timeout
    vm = daemon.vm("button")
    assert vm["state"] == "exited" and vm["status"] == 0 and vm["exit"]["kind"] == "poweroff", vm
    assert "PRESSED 1" in daemon.ok("logs", "button")


def test_attach_feeds_the_console_and_ends_with_the_vm(daemon):
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "talk")
    attached = subprocess.run([sys.executable, "-m", "vmkit", "attach", "talk"], input="hello there\n",
                              env=daemon.env, capture_output=True, text=True, timeout=60)
    assert attached.returncode == 0, attached.stderr
    assert "READY" in attached.stdout and "ECHO hello there" in attached.stdout
    assert daemon.wait_state("talk", "exited")["status"] == 1       # the guest read it and exited
    status, body = _raw(daemon.socket, _post("/vms/talk/console", b'{"data": "late"}'))
    assert status == 409 and "exited" in body["error"]
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "big")
    status, body = _raw(daemon.socket, _post("/vms/big/console", json.dumps({"data": "x" * 5000}).encode()))
    assert status == 400 and "data" in body["error"]
    status, body = _raw(daemon.socket, _post("/vms/big/console", json.dumps({"data": 5}).encode()))
    assert status == 400 and "data" in body["error"]


def test_errors_are_one_line_with_status_125(daemon):
    daemon.ok("run", "-d", "-g", "hello", "--name", "taken")
    cases = [
        (("run", "-d", "--name", "bad name"), "must match"),
        (("run", "-d", "--name", "-x"), ""),
        (("run", "-d", "--name", "taken"), "in use"),
        (("run", "-d", "--kernel", "/nonexistent/kernel"), "does not exist"),
        (("run", "-d", "--guest", "no_such_program"), "no_such_program"),
        (("run", "-d", "--console", "none"), "--console"),
        (("run", "--name", "x"), "with -d"),
        (("pause", "nobody"), "no VM named 'nobody'"),
        (("logs", "nobody"), "no VM named"),
        (("stop", "nobody"), "no VM named"),
        (("rm", "nobody"), "no VM named"),
    ]
    for args, text in cases:
        done = daemon.cli(*args)
        assert done.returncode == 125, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vmkit: error:") and text in lines[0], (args, lines)
    vms = daemon.client.request("GET", "/vms?all=1")
    assert [vm["name"] for vm in vms] == ["taken"]         # no failed start left anything behind
    assert sorted(p.name for p in (daemon.socket.parent / "vms").iterdir()) == ["taken"]


def test_sigkill_of_a_vm_process_is_reported_with_its_status(daemon):
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "victim")
    pid = daemon.vm("victim")["pid"]
    os.kill(pid, signal.SIGKILL)
    vm = daemon.wait_state("victim", "exited")
    assert vm["status"] == 137 and vm["exit"]["kind"] == "killed" and "SIGKILL" in vm["exit"]["message"]
    row = next(line for line in daemon.ok("ps", "-a").splitlines() if line.startswith("victim "))
    assert "killed (137)" in row
    events = [json.loads(line) for line in daemon.ok("events").splitlines()]
    assert {"type": "die", "name": "victim", "status": 137}.items() <= events[-1].items()


def test_daemon_sigkill_and_restart_finds_running_vms(daemon):
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "keep")
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "held")
    daemon.ok("run", "-d", "-g", "hello", "--name", "done")
    daemon.wait_state("done", "exited")
    daemon.ok("pause", "held")
    pids = {name: daemon.vm(name)["pid"] for name in ("keep", "held")}
    daemon.kill()
    time.sleep(0.2)
    assert all(_alive(pid) for pid in pids.values())       # the VMs outlived the daemon
    daemon.start()
    assert daemon.vm("keep")["state"] == "running" and daemon.vm("keep")["pid"] == pids["keep"]
    assert daemon.vm("held")["state"] == "paused"
    assert daemon.vm("done")["status"] == 1
    daemon.ok("resume", "held")
    daemon.ok("stop", "-t", "0", "keep")
    assert daemon.vm("keep")["status"] == 143             # the VM process wrote how it ended
    os.kill(pids["held"], signal.SIGKILL)                 # not this daemon's child: status unknown
    vm = daemon.wait_state("held", "exited", timeout=10)
    assert vm["exit"]["kind"] == "lost" and vm["status"] is None
    assert "lost (?)" in daemon.ok("ps", "-a")


def test_the_cli_starts_the_daemon_on_demand():
    root = Path(tempfile.mkdtemp(prefix="vk", dir="/tmp"))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(root)}
    env.pop("VMKIT_DAEMON_SOCKET", None)
    socket_path = root / "vmkit" / "daemon.sock"
    try:
        racing = [subprocess.Popen([sys.executable, "-m", "vmkit", "ps"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for process in racing:                          # three commands start it at once: one daemon
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0 and out.split() == list(COLUMNS), err
        done = subprocess.run([sys.executable, "-m", "vmkit", "run", "-d", "-g", "hello", "--name", "od"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout == "od\n", done.stderr
        assert socket_path.exists()
        info = Client(socket_path, autostart=False).request("GET", "/")
        assert _alive(info["pid"]) and _alive(info["forkserver_pid"])
        assert [pid for pid in _children(1) if _comm(pid) == "vmkit-forksrv" and
                str(root).encode() in _environ(pid)] == []      # none left behind by a daemon that lost
    finally:
        pid = int((root / "vmkit" / "daemon.sock.lock").read_text() or 0)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


def test_sigkill_of_the_fork_server_is_recovered_from(daemon):
    before = daemon.info()["forkserver_pid"]
    os.kill(before, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert daemon.ok("run", "-d", "-g", "hello", "--name", "after") == "after\n"
    assert daemon.wait_state("after", "exited")["status"] == 1
    after = daemon.info()["forkserver_pid"]
    assert after != before and _alive(after)


def test_a_hundred_vms_started_and_removed_leave_nothing_behind(daemon):
    client = daemon.client
    info = daemon.info()
    daemon_pid, forkserver = info["pid"], info["forkserver_pid"]
    client.request("POST", "/vms", {"args": ["-g", "hello"], "cwd": "/"})   # everything warmed once
    client.request("DELETE", f"/vms/{client.request('GET', '/vms?all=1')[0]['name']}?force=1")
    time.sleep(0.3)                                   # the connections' threads finish
    baseline = (_fds(daemon_pid), _fds(forkserver), sorted(_children(daemon_pid)))
    memory = (_rss_kib(daemon_pid), _rss_kib(forkserver))
    for index in range(100):
        program = "serial_echo" if index % 10 == 0 else "hello"
        vm = client.request("POST", "/vms", {"name": f"loop{index}", "args": ["-g", program], "cwd": "/"})
        pid = vm["pid"]
        if program == "hello":
            deadline = time.monotonic() + 10
            while client.request("GET", f"/vms/loop{index}")["state"] != "exited" and time.monotonic() < deadline:
                time.sleep(0.005)
        client.request("DELETE", f"/vms/loop{index}?force=1")
        assert not _alive(pid)
    assert client.request("GET", "/vms?all=1") == []
    assert list((daemon.socket.parent / "vms").iterdir()) == []
    time.sleep(0.3)
    assert (_fds(daemon_pid), _fds(forkserver), sorted(_children(daemon_pid))) == baseline
    assert _children(forkserver) == []
    assert _rss_kib(daemon_pid) - memory[0] < 8 * 1024        # the bounded event log, no more
    assert _rss_kib(forkserver) - memory[1] < 1024


def _raw(path: Path, data: bytes) -> tuple[int, dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        try:
            sock.sendall(data)
        except BrokenPipeError:                       # refused before it was all sent (too large)
            pass
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.strip() else {}


def _post(target: str, body: bytes, method: str = "POST") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def test_bad_requests_get_400_and_the_daemon_keeps_serving(daemon):
    daemon.ok("run", "-d", "-g", "hello", "--name", "there")
    daemon.wait_state("there", "exited")
    cases = [
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed"),
        (_post("/nowhere", b""), "no such endpoint"),
        (_post("/vms", b"", method="PUT"), "not allowed"),
        (_post("/vms", b"{not json"), "not JSON"),
        (_post("/vms", b"[1, 2]"), "JSON object"),
        (_post("/vms", b'{"args": "-g hello"}'), "args"),
        (_post("/vms", b'{"args": [1]}'), "args.0"),
        (_post("/vms", b'{"name": 7}'), "name"),
        (_post("/vms", b'{"surprise": true}'), "surprise"),
        (_post("/vms", b'{"cwd": "relative"}'), "cwd"),
        (_post("/vms", b'{"args": ["--memory", "zero"]}'), "--memory"),
        (_post("/vms", b'{"name": "../../etc", "args": []}'), "must match"),
        (_post("/vms", b"x" * (2 << 20)), "larger than"),
        (_post("/vms/there/stop", b'{"timeout": "soon"}'), "timeout"),
        (_post("/vms/there/stop", b'{"timeout": -1}'), "timeout"),
        (_post("/vms/there/pause", b'{"extra": 1}'), "extra"),
        (_post("/vms?all=maybe", b"", method="GET"), "all="),
        (_post("/events?since=x", b"", method="GET"), "since"),
    ]
    for request, text in cases:
        status, body = _raw(daemon.socket, request)
        assert status == 400, (request[:60], status, body)
        assert text in body["error"], (request[:60], body)
    status, body = _raw(daemon.socket, _post("/vms/nobody", b"", method="GET"))
    assert status == 404 and "nobody" in body["error"]
    status, body = _raw(daemon.socket, _post("/vms/there/pause", b""))
    assert status == 409 and "exited" in body["error"]
    assert daemon.info()["app"] == "vmkit-daemon"
    assert [vm["name"] for vm in daemon.client.request("GET", "/vms?all=1")] == ["there"]
    assert daemon.ok("run", "-d", "-g", "hello", "--name", "still") == "still\n"
    assert process_start_time(daemon.info()["pid"]) is not None
    idle = []                                          # a flood of idle connections is bounded
    try:
        for _ in range(300):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(daemon.socket))
            idle.append(sock)
        time.sleep(0.5)
        assert daemon.process is not None
        assert len(os.listdir(f"/proc/{daemon.process.pid}/task")) < 280
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert daemon.info()["app"] == "vmkit-daemon"
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o600"


def test_seeded_random_requests_never_break_the_daemon(daemon):
    """Random methods, paths, queries and bodies: each gets an answer other than a 500 (no handler
    failed), nothing is created, and the daemon serves a real request afterwards."""
    import random

    rng = random.Random(20261125)
    daemon.ok("run", "-d", "-g", "hello", "--name", "kept")
    segments = ["vms", "kept", "nobody", "logs", "pause", "resume", "stop", "events", "version", "..", "%00",
                "a" * 300, "", "vms?x", "\u00e9"]
    answered = 0
    for _ in range(300):
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "FOO"])
        path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(0, 4)))
        if rng.random() < 0.5:
            path += "?" + "&".join(f"{rng.choice(['all', 'force', 'follow', 'since', 'x'])}="
                                   f"{rng.choice(['0', 'false', 'maybe', '-1', 'x' * 50])}"
                                   for _ in range(rng.randint(1, 3)))
        if method == "DELETE" and "kept" in path:
            continue                                  # the one VM a valid request could remove
        kind = rng.random()
        if kind < 0.3:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
        elif kind < 0.6:
            fields = {"zz": 1, rng.choice(["name", "args", "cwd", "timeout"]):
                      rng.choice([None, 1, -5.5, "x", [], [1], {"a": 1}, True, "a" * 100])}
            body = json.dumps(fields).encode()
        else:
            body = b"" if method != "POST" else b'{"zz": 1}'    # an empty POST /vms would be valid
        request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode("utf-8", "replace") + body
        try:
            status, _ = _raw(daemon.socket, request)
        except (ValueError, IndexError):              # a HEAD answer has no body to decode
            continue
        assert status in (200, 204, 400, 404, 409), (request[:120], status)
        answered += 1
    assert answered > 200
    assert [vm["name"] for vm in daemon.client.request("GET", "/vms?all=1")] == ["kept"]
    assert daemon.ok("run", "-d", "-g", "hello", "--name", "after") == "after\n"
