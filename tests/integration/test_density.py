"""The density benchmark's machinery, small: idle VMs held by a daemon, measured, all removed.

bench/density.py holds thousands; here 50 keep its steps honest (every VM started, READY, measured,
removed, nothing left behind), and the `idle` guest is checked under vmkit and QEMU alike.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bench.common import QEMU, qemu_command
from bench.daemon import start_daemon
from bench.density import DaemonDensity, kill_left
from vmkit.guest import build_guest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def held():
    """A daemon of its own, as the benchmark starts it; every VM process is gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="vkdens", dir="/tmp"))
    process, client = start_daemon(root)
    try:
        yield root, process, client
    finally:
        process.terminate()
        process.wait(30)
        kill_left(root)
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("vmkit-vm")
    except OSError:
        return False


def test_fifty_idle_vms_are_held_measured_and_removed_leaving_nothing(held):
    root, process, client = held
    density = DaemonDensity(client, process.pid, root, str(build_guest("idle")), memory_mib=16, clients=4,
                            reserve_kib=1 << 20, settle_s=0)
    step = density.run(50)
    assert step.limit is None
    assert step.held == 50
    assert len(step.vm_pss_kib) == 50 and all(pss > 0 for pss in step.vm_pss_kib)   # all 50 were alive
    assert step.daemon_pss_kib > 0 and step.forkserver_pss_kib > 0
    assert len(step.get_vm_ms) == 200 and len(step.list_ms) == 10
    assert step.leftovers == []
    assert client.request("GET", "/vms?all=1") == []
    assert list((root / "vms").iterdir()) == []
    assert len(step.vm_pids) == 50 and not any(_alive(pid) for pid in step.vm_pids)


def test_an_idle_vm_ends_on_q_and_on_sigterm(held):
    root, _, client = held
    image = str(build_guest("idle"))
    for name in ("typed", "termed"):
        client.request("POST", "/vms", {"name": name, "args": ["--kernel", image], "cwd": "/"})
    deadline = time.monotonic() + 30
    while not all(b"READY" in (root / "vms" / name / "console.log").read_bytes() for name in ("typed", "termed")):
        assert time.monotonic() < deadline, "no READY"
        time.sleep(0.05)
    client.request("POST", "/vms/typed/console", {"data": "x\nq"})
    os.kill(client.request("GET", "/vms/termed")["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:
        vms = {name: client.request("GET", f"/vms/{name}") for name in ("typed", "termed")}
        if all(vm["state"] == "exited" and vm["exit"] for vm in vms.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert vms["typed"]["status"] == 1                      # debug-exit 0: (0 << 1) | 1, as QEMU
    assert vms["termed"]["status"] == 143 and vms["termed"]["exit"]["kind"] == "signal"


@pytest.mark.skipif(shutil.which(QEMU) is None, reason="QEMU is not installed")
def test_the_idle_guest_runs_unchanged_under_qemu():
    proc = subprocess.Popen(qemu_command(str(build_guest("idle"))), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == b"READY"
        proc.stdin.write(b"abc\nq")
        proc.stdin.flush()
        assert proc.wait(30) == 1                           # isa-debug-exit: (0 << 1) | 1
    finally:
        proc.kill()
        proc.wait()


def test_the_bench_module_runs_as_a_command():
    done = subprocess.run([sys.executable, "-m", "bench.density", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--steps" in done.stdout


def test_vm_processes_are_open_to_same_page_merging(held):
    root, _, client = held
    pid = client.request("POST", "/vms", {"name": "merged", "args": ["--kernel", str(build_guest("idle"))],
                                          "cwd": "/"})["pid"]
    try:
        stat = Path(f"/proc/{pid}/ksm_stat").read_text()
    except OSError:
        pytest.skip("this kernel has no /proc/PID/ksm_stat")
    if "ksm_merge_any" not in stat:
        pytest.skip("this kernel does not report PR_SET_MEMORY_MERGE")
    assert "ksm_merge_any: yes" in stat
    client.request("DELETE", "/vms/merged?force=1")


def test_the_fork_server_s_rehearsal_ends_a_guest_that_does_not_and_leaves_no_thread(tmp_path, monkeypatch):
    from vmkit.daemon.forkserver import rehearse

    monkeypatch.chdir(tmp_path)
    before = set(threading.enumerate())                   # earlier tests' threads may still run
    started = time.monotonic()
    rehearse("idle", limit_seconds=0.5)                    # idle never ends by itself
    assert time.monotonic() - started < 20
    assert os.getcwd() == str(tmp_path)
    assert [thread.name for thread in set(threading.enumerate()) - before] == []
