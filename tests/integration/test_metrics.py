"""Metrics from real VMs: guest-kit programs do known work and the counters show it (exits by kind,
a disk's requests and bytes, a NIC's frames, a share's messages, queue kicks, rate-limit throttles);
the daemon serves them as Prometheus text that a strict parser accepts, a stuck or killed VM does
not break a scrape; vmkit-firecracker writes them in Firecracker's metrics-file lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.firecracker_client import PROGRAM, Firecracker, UnixHTTPConnection
from tests.integration import test_daemon
from tests.integration.test_daemon import Daemon
from tests.prometheus_text import parse_exposition, value
from vmkit.daemon.prometheus import Exposition
from vmkit.guest import build_guest
from vmkit.vmm.config import DiskSpec
from vmkit.vmm.links import parse_links

pytestmark = pytest.mark.timeout(180)
held_daemon = test_daemon.daemon              # the daemon tests' fixture: a daemon of its own, torn down

MIB = 1 << 20
ECHO = str(build_guest("serial_echo"))          # prints READY, waits for a line on its console


# ---- counters of known work, in process ------------------------------------------------------

def run_to_end(machine, timeout: float = 120):
    started = time.monotonic_ns()
    machine.start()
    ended = machine.wait(timeout)
    assert ended is not None and ended.kind == "debug-exit" and ended.status == 1, ended
    return time.monotonic_ns() - started


@pytest.mark.parametrize("guest, kind", [("pio_loop", "io_in"), ("mmio_loop", "mmio_read")])
def test_each_exit_the_guest_makes_is_counted_by_kind(machine_factory, guest, kind):
    machine, console = machine_factory(guest, cmdline="iterations=3000")
    elapsed_ns = run_to_end(machine)
    [vcpu] = machine.metrics().vcpus
    loop_kinds = {"io_in": 3000 if kind == "io_in" else 0, "mmio_read": 3000 if kind == "mmio_read" else 0}
    assert vcpu.exits == {**dict.fromkeys(vcpu.exits, 0), **loop_kinds,
                          "io_out": len(console.data) + 1}       # a byte a console write, and the debug exit
    assert 0 < vcpu.cpu_ns <= elapsed_ns
    machine.close()
    assert machine.metrics().vcpus[0] == vcpu                        # final once the machine ended


def test_a_snapshot_from_another_thread_while_the_guest_runs(machine_factory):
    machine, console = machine_factory("serial_echo")
    machine.start()
    console.wait_for("READY")
    first = machine.metrics()
    assert first.state == "running" and first.vcpus[0].exits["io_out"] >= len("READY\n")
    machine.console.receive(b"hi\n")
    assert machine.wait(30).status == 1
    last = machine.metrics()
    assert last.state == "stopped"
    assert last.vcpus[0].exits["io_in"] >= first.vcpus[0].exits["io_in"] + 3     # the line, read byte by byte
    assert last.vcpus[0].cpu_ns >= first.vcpus[0].cpu_ns


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(16 * MIB)
    return path


def test_a_disks_requests_bytes_kicks_and_throttles_are_what_the_guest_did(machine_factory, disk):
    # blk_bench with ops=8: 8 sequential 1 MiB writes and a FLUSH, 8 sequential 1 MiB reads, 8 random
    # 4 KiB reads one at a time, 8 random 4 KiB reads 4 at a time. 20 requests a second hold it back.
    machine, console = machine_factory("blk_bench", cmdline="ops=8 qd=4 seq_qd=4 size_mib=16",
                                       disks=(DiskSpec(str(disk), iops=20),))
    run_to_end(machine)
    assert "RESULT blk_bench=done" in console.text
    [device] = machine.metrics().devices
    assert (device.name, device.kind) == ("virtio-blk0", "blk")
    assert device.counters == {"reads": 24, "writes": 8, "flushes": 1, "discards": 0, "get_ids": 0, "other": 0,
                               "read_bytes": 8 * MIB + 16 * 4096, "write_bytes": 8 * MIB, "ioerr": 0, "unsupp": 0}
    assert 1 <= device.notifications[0] <= 25                         # kicks coalesce, never exceed requests
    assert device.throttled["io"] >= 1                                # 25 requests at 20 a second

    exposition = Exposition()
    exposition.add_machine("disky", machine.metrics())
    families = parse_exposition(exposition.render())
    at = {"vm": "disky", "device": "virtio-blk0"}
    assert value(families, "vmkit_blk_requests_total", **at, op="read") == 24
    assert value(families, "vmkit_blk_requests_total", **at, op="flush") == 1
    assert value(families, "vmkit_blk_read_bytes_total", **at) == 8 * MIB + 16 * 4096
    assert value(families, "vmkit_blk_written_bytes_total", **at) == 8 * MIB
    assert value(families, "vmkit_rate_limiter_throttled_total", **at, limiter="io") == device.throttled["io"]
    assert value(families, "vmkit_virtio_queue_notifications_total", **at, queue="0") == device.notifications[0]
    assert value(families, "vmkit_vcpu_exits_total", vm="disky", vcpu="0", kind="io_out") == \
        machine.metrics().vcpus[0].exits["io_out"]


def test_a_shares_messages_count_every_request(machine_factory, tmp_path):
    (tmp_path / "data").write_bytes(bytes(i % 251 for i in range(1 << 16)))     # what p9_bench checks
    machine, console = machine_factory("p9_bench", cmdline="ops=10 bs=4096 msize=65536", memory_mib=64,
                                       links=parse_links({"--share": [f"{tmp_path},tag=m,rw"]}))
    run_to_end(machine)
    assert "RESULT p9_bench=done" in console.text, console.text
    [device] = machine.metrics().devices
    assert device.kind == "9p" and device.name == "virtio-9p0"
    assert device.counters["messages"] >= 4 * 10                     # read, write, getattr, walk phases
    assert 1 <= device.notifications[0] <= device.counters["messages"]


MAC = "02:00:00:0a:0b:0d"


@pytest.fixture
def tap():
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("making a tap needs root and /dev/net/tun")
    number = (os.getpid() + 77) % 200 + 20
    name = f"vmkm{os.getpid() % 100000}"
    subprocess.run(["ip", "tuntap", "add", name, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"10.253.{number}.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name, f"10.253.{number}.1", f"10.253.{number}.2"
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_a_nics_frames_and_bytes_cover_what_net_check_sent_and_received(machine_factory, tap):
    import socket

    name, host_ip, guest_ip = tap
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((host_ip, 0))
    echoed = []

    def serve() -> None:
        while True:
            try:
                data, peer = echo.recvfrom(65536)
            except OSError:
                return
            echoed.append(len(data))
            echo.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()
    number = lambda address: hex(int.from_bytes(socket.inet_aton(address), "big"))   # noqa: E731
    try:
        machine, console = machine_factory(
            "net_check", cmdline=f"ip={number(guest_ip)} peer={number(host_ip)} port={echo.getsockname()[1]} count=8",
            links=parse_links({"--net": [f"tap={name},mac={MAC}"]}))
        run_to_end(machine)
    finally:
        echo.close()
    results = dict(re.findall(r"^RESULT (\w+)=(\S*)$", console.text, re.M))
    assert results["net_check"] == "pass", console.text
    [device] = machine.metrics().devices
    counters = device.counters
    # The guest counts the frames it sent and took in: the device saw the same.
    assert (counters["tx_frames"], counters["rx_frames"]) == (int(results["tx_frames"]), int(results["rx_frames"]))
    frames = [size + 14 + 20 + 8 for size in echoed]                 # each datagram's Ethernet frame
    assert len(echoed) == 8
    assert counters["tx_bytes"] >= 42 + sum(frames) and counters["rx_bytes"] >= 42 + sum(frames)   # ARP, UDP
    assert counters["tx_malformed"] == counters["tx_errors"] == counters["rx_too_large"] == 0
    assert 1 <= device.notifications[1] <= counters["tx_frames"]


# ---- the daemon's /metrics ---------------------------------------------------------------------

def get(daemon: Daemon, path: str) -> tuple[int, str, str]:
    connection = UnixHTTPConnection(str(daemon.socket), timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def start_echo(daemon: Daemon, name: str) -> int:
    vm = daemon.client.request("POST", "/vms", {"name": name, "args": ["--kernel", ECHO], "cwd": "/"})
    deadline = time.monotonic() + 30
    while "READY" not in Path(vm["console_log"]).read_text():
        assert time.monotonic() < deadline, "the guest never said READY"
        time.sleep(0.02)
    return vm["pid"]


def test_the_daemon_serves_its_own_and_every_running_vms_metrics(held_daemon):
    daemon = held_daemon
    start_echo(daemon, "m1")
    start_echo(daemon, "m2")
    daemon.client.request("POST", "/vms/m2/pause", {})
    status, content_type, text = get(daemon, "/metrics")
    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(text)
    assert value(families, "vmkit_daemon_vms", state="running") == 1
    assert value(families, "vmkit_daemon_vms", state="paused") == 1
    assert value(families, "vmkit_daemon_vms_started_total") == 2
    assert value(families, "vmkit_daemon_forkserver_restarts_total") == 0
    assert value(families, "vmkit_daemon_api_requests_total", code="201") == 2
    assert value(families, "vmkit_daemon_metrics_scrape_errors_total") == 0
    for name in ("m1", "m2"):                                         # a paused VM answers too
        assert value(families, "vmkit_vm_up", vm=name) == 1
        assert value(families, "vmkit_vm_vcpus", vm=name) == 1
        assert value(families, "vmkit_vcpu_exits_total", vm=name, vcpu="0", kind="io_out") >= len("READY\n")
        assert value(families, "vmkit_vcpu_cpu_seconds_total", vm=name, vcpu="0") > 0

    status, content_type, text = get(daemon, "/vms/m1/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    one = parse_exposition(text)
    assert all(dict(labels)["vm"] == "m1" for family in one.values() for labels in family["samples"])
    assert value(one, "vmkit_vm_up", vm="m1") == 1 and "vmkit_daemon_vms" not in one
    assert get(daemon, "/vms/nobody/metrics")[0] == 404
    assert value(parse_exposition(daemon.ok("stats")), "vmkit_vm_up", vm="m2") == 1     # the CLI's view
    assert value(parse_exposition(daemon.ok("stats", "m1")), "vmkit_vm_vcpus", vm="m1") == 1
    refused = daemon.cli("stats", "nobody")
    assert refused.returncode == 125 and refused.stderr.strip() == "vmkit: error: no VM named 'nobody'"

    forkserver = daemon.info()["forkserver_pid"]
    os.kill(forkserver, signal.SIGKILL)                               # the next start needs a new one
    deadline = time.monotonic() + 10
    while daemon.info()["forkserver_pid"] == forkserver:             # until the daemon has seen it die
        assert time.monotonic() < deadline
        time.sleep(0.02)
    start_echo(daemon, "m3")
    families = parse_exposition(get(daemon, "/metrics")[2])
    assert value(families, "vmkit_daemon_api_requests_total", code="404") == 2
    assert value(families, "vmkit_daemon_forkserver_restarts_total") == 1
    assert value(families, "vmkit_daemon_vms_started_total") == 3


def test_a_stuck_or_killed_vm_does_not_break_a_scrape(held_daemon):
    daemon = held_daemon
    stuck = start_echo(daemon, "stuck")
    killed = start_echo(daemon, "killed")
    start_echo(daemon, "fine")
    os.kill(stuck, signal.SIGSTOP)                                    # its control socket never answers
    try:
        started = time.monotonic()
        status, _, text = get(daemon, "/metrics")
        took = time.monotonic() - started
        assert status == 200 and took < 5, took
        families = parse_exposition(text)
        assert value(families, "vmkit_vm_up", vm="stuck") == 0
        assert value(families, "vmkit_vm_up", vm="fine") == value(families, "vmkit_vm_up", vm="killed") == 1
        assert value(families, "vmkit_daemon_metrics_scrape_errors_total") == 1
        assert not any(dict(labels).get("vm") == "stuck" for name, family in families.items() if name != "vmkit_vm_up"
                       for labels in family["samples"])
        status, _, text = get(daemon, "/vms/stuck/metrics")
        assert status == 503 and "did not give its metrics" in json.loads(text)["error"]

        os.kill(killed, signal.SIGKILL)
        status, _, text = get(daemon, "/metrics")                     # whether or not the reaper saw it yet
        assert status == 200
        assert value(parse_exposition(text), "vmkit_vm_up", vm="fine") == 1
        daemon.wait_state("killed", "exited")
        families = parse_exposition(get(daemon, "/metrics")[2])
        assert ("vm", "killed") not in {label for labels in families["vmkit_vm_up"]["samples"] for label in labels}
        assert value(families, "vmkit_daemon_vms", state="exited") == 1
        assert get(daemon, "/vms/killed/metrics")[0] == 409
    finally:
        os.kill(stuck, signal.SIGCONT)
    families = parse_exposition(get(daemon, "/metrics")[2])
    assert value(families, "vmkit_vm_up", vm="stuck") == 1                  # answers again once it runs


# ---- vmkit-firecracker's metrics file -----------------------------------------------------------

def test_flush_metrics_writes_firecrackers_groups_counted_since_the_last_line(tmp_path):
    sock, metrics = str(tmp_path / "api.sock"), tmp_path / "fc.metrics"
    metrics.write_text("")
    vm = Firecracker("--api-sock", sock)
    try:
        api = vm.wait_for_socket(sock)
        api.ok("PUT", "/metrics", {"metrics_path": str(metrics)})
        api.ok("PUT", "/boot-source", {"kernel_image_path": ECHO})
        api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
        vm.wait_for_output("READY\n")
        api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
        api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})    # the guest waits meanwhile: no exits
        vm.send(b"hi\n")
        assert vm.wait() == 1
    finally:
        vm.kill()
    first, second, last = (json.loads(line) for line in metrics.read_text().splitlines())
    for line in (first, second, last):
        assert {"utc_timestamp_ms", "api_server", "vcpu", "block", "net", "vsock", "entropy", "interrupts",
                "logger"} <= set(line)
        assert set(line["vcpu"]) == {"exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures",
                                     "kvmclock_ctrl_fails"}
        assert "rx_bytes_count" in line["net"] and "read_bytes" in line["block"]
    assert first["utc_timestamp_ms"] <= second["utc_timestamp_ms"] <= last["utc_timestamp_ms"]
    assert first["vcpu"]["exit_io_out"] == 1 + len("READY\n")        # the UART's IER, then a byte a write
    assert second["vcpu"]["exit_io_out"] == 0 and second["vcpu"]["exit_io_in"] <= 1   # its first LSR read, perhaps
    total = {key: sum(line["vcpu"][key] for line in (first, second, last)) for key in first["vcpu"]}
    assert total["exit_io_out"] == 1 + len(vm.output) + 1               # every console byte, and the debug exit
    assert total["exit_io_in"] >= 1 + len("hi\n")                      # the line, read byte by byte
    assert first["put_api_requests"]["actions_count"] == 1 and second["put_api_requests"] == {"actions_count": 1}


def test_the_metrics_file_counts_a_drives_requests_exactly(tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 * MIB)
    metrics = tmp_path / "fc.metrics"
    metrics.write_text("")
    config = {"boot-source": {"kernel_image_path": str(build_guest("blk_bench")),
                              "boot_args": "ops=4 qd=4 seq_qd=4 size_mib=16"},
              "drives": [{"drive_id": "scratch", "path_on_host": str(disk), "is_root_device": False,
                          "is_read_only": False}],
              "metrics": {"metrics_path": str(metrics)}}
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([*PROGRAM, "--no-api", "--config-file", str(path)], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 1 and b"RESULT blk_bench=done" in done.stdout, done.stderr
    [line] = (json.loads(text) for text in metrics.read_text().splitlines())   # written as the VM ended
    drive = line["block_scratch"]
    assert {key: drive[key] for key in ("read_count", "write_count", "flush_count", "read_bytes", "write_bytes",
                                        "execute_fails", "invalid_reqs_count")} == \
        {"read_count": 12, "write_count": 4, "flush_count": 1, "read_bytes": 4 * MIB + 8 * 4096,
         "write_bytes": 4 * MIB, "execute_fails": 0, "invalid_reqs_count": 0}
    assert 1 <= drive["queue_event_count"] <= 13
    assert line["block"] == drive                                     # the one drive is all of them
    assert line["vcpu"]["exit_mmio_write"] >= 1                       # setting the device up
