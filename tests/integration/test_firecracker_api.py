"""`vmkit-firecracker` driven as Firecracker's clients drive `firecracker`: its HTTP API on a Unix
socket (a plain http.client over one keep-alive connection), its --config-file and --no-api, its
process name and exit status, with guest-kit programs as the guests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.firecracker_client import PROGRAM, Api, Firecracker
from vmkit.guest import build_guest

ECHO = str(build_guest("serial_echo"))      # prints READY, waits for a line on the console, echoes it
HELLO = str(build_guest("hello"))
BLK_CHECK = str(build_guest("blk_check"))
CAN_MAKE_TAP = os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@pytest.fixture
def firecracker():
    started: list[Firecracker] = []

    def start(*args: str) -> Firecracker:
        process = Firecracker(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "rootfs.img"
    path.write_bytes(b"\0" * (1 << 20))
    return path


def test_a_client_configures_starts_pauses_and_resumes_a_guest(firecracker, tmp_path, image):
    sock = str(tmp_path / "api.sock")
    vm = firecracker("--api-sock", sock, "--id", "vm-one")
    api = vm.wait_for_socket(sock)
    assert api.ok("GET", "/") == {"id": "vm-one", "state": "Not started", "vmm_version": "0.1.0",
                                  "app_name": "vmkit"}
    assert set(api.ok("GET", "/version")) == {"firecracker_version"}
    api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})
    api.ok("PATCH", "/machine-config", {"track_dirty_pages": False})
    assert api.ok("GET", "/machine-config") == {"vcpu_count": 1, "mem_size_mib": 64, "smt": False,
                                                "track_dirty_pages": False, "huge_pages": "None"}
    api.ok("PUT", "/boot-source", {"kernel_image_path": ECHO, "boot_args": "quiet"})
    limiter = {"bandwidth": {"size": 1 << 20, "refill_time": 100}, "ops": {"size": 100, "refill_time": 1000,
                                                                          "one_time_burst": 10}}
    api.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(image), "is_root_device": True,
                                     "is_read_only": False, "rate_limiter": limiter, "cache_type": "Writeback"})
    api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    vm.wait_for_output("READY")
    assert api.ok("GET", "/")["state"] == "Running"
    with open(f"/proc/{vm.process.pid}/comm") as comm:
        assert comm.read().strip() == "firecracker"

    config = api.ok("GET", "/vm/config")
    assert config["boot-source"]["kernel_image_path"] == ECHO
    assert config["machine-config"]["mem_size_mib"] == 64
    [drive] = config["drives"]
    assert drive["drive_id"] == "rootfs" and drive["is_root_device"] and drive["path_on_host"] == str(image)
    assert drive["rate_limiter"] == {"bandwidth": {**limiter["bandwidth"], "one_time_burst": 0},
                                     "ops": limiter["ops"]}      # read back from the running virtio-blk device

    # What only a VM that has not started may change, and actions illegal now: a 400 each.
    for method, path, body in [
            ("PUT", "/boot-source", {"kernel_image_path": HELLO}),
            ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64}),
            ("PATCH", "/machine-config", {"vcpu_count": 2}),
            ("PUT", "/drives/data", {"drive_id": "data", "path_on_host": str(image), "is_root_device": False}),
            ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "fctap9"}),
            ("PUT", "/vsock", {"guest_cid": 3, "uds_path": str(tmp_path / "v.sock")}),
            ("PUT", "/logger", {"level": "Debug"}),
            ("PUT", "/metrics", {"metrics_path": str(image)}),
            ("PUT", "/entropy", {})]:
        assert "only before the VM starts (it is Running" in api.fault(method, path, body), path
    assert "started already" in api.fault("PUT", "/actions", {"action_type": "InstanceStart"})
    api.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})   # the power button: this guest ignores it
    assert "Resumed" in api.fault("PATCH", "/vm", {"state": "Resumed"})
    assert "swap" in api.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": HELLO})

    # A running drive's rate limiter changes (and is read back from the device).
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 5, "refill_time": 10}}})
    assert api.ok("GET", "/vm/config")["drives"][0]["rate_limiter"] == {
        "ops": {"size": 5, "refill_time": 10, "one_time_burst": 0}}

    # Paused, the guest does not answer its console; resumed, it does.
    api.ok("PATCH", "/vm", {"state": "Paused"})
    assert api.ok("GET", "/")["state"] == "Paused"
    assert "paused" in api.fault("PATCH", "/vm", {"state": "Paused"})
    vm.send(b"over the api\n")
    time.sleep(0.5)
    assert "ECHO" not in vm.stdout
    api.ok("PATCH", "/vm", {"state": "Resumed"})
    assert vm.wait() == 1, vm.stderr                        # the guest's exit(0) through debug-exit
    assert "ECHO over the api" in vm.stdout
    assert len(api.sockets) == 1                              # every request on one keep-alive connection
    assert not os.path.exists(sock)                           # the process removes its socket


BAD_REQUESTS: list[tuple[str, str, object, str]] = [
    ("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 64}, "vcpu_count: Input should be a valid integer"),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "colour": 1}, "colour: unknown field"),
    ("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 64}, "vcpu_count: Input should be less than"),
    ("PUT", "/machine-config", {"vcpu_count": True, "mem_size_mib": 64}, "vcpu_count"),
    ("PUT", "/machine-config", {"vcpu_count": 1.0, "mem_size_mib": 64}, "vcpu_count"),
    ("PUT", "/machine-config", {"mem_size_mib": 64}, "vcpu_count: missing"),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "smt": True}, "smt:"),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "T2"}, "cpu_template:"),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "Z9"}, "cpu_template:"),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "huge_pages": "2M"}, "huge_pages:"),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "track_dirty_pages": True}, "track_dirty_pages:"),
    ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 1}, "mem_size_mib:"),
    ("PUT", "/machine-config", b"null", "Input should be an object"),
    ("PUT", "/machine-config", b"[1, 2]", "Input should be an object"),
    ("PUT", "/machine-config", b"", "the body is empty"),
    ("PATCH", "/machine-config", {}, "changes nothing"),
    ("PATCH", "/machine-config", {"mem_size_mib": "big"}, "mem_size_mib"),
    ("PUT", "/boot-source", {}, "kernel_image_path: missing"),
    ("PUT", "/boot-source", {"kernel_image_path": 5}, "kernel_image_path: Input should be a valid string"),
    ("PUT", "/boot-source", {"kernel_image_path": "/no/such/kernel"}, "kernel_image_path: '/no/such/kernel'"),
    ("PUT", "/boot-source", {"kernel_image_path": "/"}, "not a regular file"),
    ("PUT", "/boot-source", {"kernel_image_path": HELLO, "boot_args": "a\u0000b"}, "boot_args:"),
    ("PUT", "/boot-source", {"kernel_image_path": HELLO, "initrd_path": "/no/initrd"}, "initrd_path:"),
    ("PUT", "/boot-source", b"{\"kernel_image_path\": ", "not valid JSON"),
    ("PUT", "/drives/root", {"drive_id": "other", "path_on_host": "IMAGE", "is_root_device": True},
     "'other' in the body does not match 'root' in the path"),
    ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": "IMAGE", "is_root_device": "yes"},
     "is_root_device: Input should be a valid boolean"),
    ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": "IMAGE", "is_root_device": True,
                             "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 10}}},
     "rate_limiter.bandwidth.size"),
    ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": "IMAGE", "is_root_device": True,
                             "rate_limiter": {"ops": {"size": 1}}}, "rate_limiter.ops.refill_time: missing"),
    ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": "IMAGE", "is_root_device": True,
                             "cache_type": "Fast"}, "cache_type"),
    ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": "/no/disk", "is_root_device": True}, "path_on_host:"),
    ("PUT", "/drives/root", {"drive_id": "root", "socket": "/tmp/vhost", "is_root_device": True}, "vhost-user"),
    ("PUT", "/drives/root", {"drive_id": "root", "is_root_device": True}, "path_on_host: missing"),
    ("PUT", "/drives/second", {"drive_id": "second", "path_on_host": "OTHER", "is_root_device": True},
     "'first' is the root device already"),
    ("PUT", "/drives/b%20d", {"drive_id": "b d", "path_on_host": "IMAGE", "is_root_device": False}, "is not an id"),
    ("PUT", "/drives/a/b", {"drive_id": "a"}, "no such endpoint"),
    ("PATCH", "/drives/first", {"drive_id": "first", "rate_limiter": {}}, "only once the VM has started"),
    ("PATCH", "/drives/nothing", {"drive_id": "nothing"}, "there is no drive 'nothing'"),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth1", "host_dev_name": "tap0"}, "does not match"),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"},
     "guest_mac:"),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "a/b"}, "host_dev_name:"),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0"}, "host_dev_name: missing"),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 10}, "mtu:"),
    ("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "fctap0"}, "interface 'eth0'"),
    ("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0"}, "only once the VM has started"),
    ("PUT", "/vsock", {"guest_cid": 2, "uds_path": "/tmp/v.sock"}, "guest_cid: Input should be greater"),
    ("PUT", "/vsock", {"guest_cid": 3}, "uds_path: missing"),
    ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/" + "x" * 120}, "longer than a Unix socket address"),
    ("PUT", "/actions", {"action_type": "Reboot"}, "action_type: Input should be"),
    ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, "has not started"),
    ("PUT", "/actions", {"action_type": "FlushMetrics"}, "metrics are not configured"),
    ("PATCH", "/vm", {"state": "Paused"}, "has not started"),
    ("PATCH", "/vm", {"state": "Stopped"}, "state: Input should be"),
    ("PUT", "/logger", {"level": "Loud"}, "level: 'Loud'"),
    ("PUT", "/logger", {"log_path": "/no/such/log"}, "log_path: cannot open"),
    ("PUT", "/logger", {"module": "api_server"}, "module:"),
    ("PUT", "/metrics", {}, "metrics_path: missing"),
    ("PUT", "/entropy", {"rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}, "no rate limiter"),
    ("PUT", "/balloon", {"amount_mib": 1, "deflate_on_oom": True}, "balloon"),
    ("GET", "/balloon", None, "balloon"),
    ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1}, "balloon"),
    ("PUT", "/snapshot/create", {"snapshot_path": "s", "mem_file_path": "m"}, "snapshots"),
    ("PUT", "/mmds", {}, "MMDS"),
    ("GET", "/nothing", None, "no such endpoint: GET /nothing"),
    ("DELETE", "/", None, "no such endpoint: DELETE /"),
    ("POST", "/actions", {"action_type": "InstanceStart"}, "no such endpoint"),
]


def test_every_bad_request_is_a_400_that_names_the_problem_and_the_server_goes_on(firecracker, tmp_path, image):
    sock = str(tmp_path / "api.sock")
    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 4096)
    vm = firecracker("--api-sock", sock)
    api = vm.wait_for_socket(sock)
    api.ok("PUT", "/drives/first", {"drive_id": "first", "path_on_host": str(image), "is_root_device": True})
    api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "fctap0",
                                               "guest_mac": "06:00:ac:10:00:02"})
    before = api.ok("GET", "/vm/config")
    for method, path, body, expected in BAD_REQUESTS:
        if isinstance(body, dict):
            body = json.loads(json.dumps(body).replace('"IMAGE"', json.dumps(str(image)))
                              .replace('"OTHER"', json.dumps(str(other))))
        message = api.fault(method, path, body)
        assert message.startswith(f"{method} {path}: "), message
        assert expected in message, (method, path, message)
        assert api.ok("GET", "/")["state"] == "Not started"
    assert api.ok("GET", "/vm/config") == before               # nothing that failed changed anything
    # A boot source that is no kernel is found out at InstanceStart; the VM stays unstarted.
    api.ok("PUT", "/boot-source", {"kernel_image_path": str(other)})
    message = api.fault("PUT", "/actions", {"action_type": "InstanceStart"})
    assert message.startswith("PUT /actions: InstanceStart: kernel_image_path") and str(other) in message
    assert api.ok("GET", "/")["state"] == "Not started"
    assert len(api.sockets) == 1
    assert vm.process.poll() is None


def test_oversized_and_malformed_requests_are_refused_and_the_server_keeps_serving(firecracker, tmp_path):
    sock = str(tmp_path / "api.sock")
    vm = firecracker("--api-sock", sock, "--http-api-max-payload-size", "1000")
    api = vm.wait_for_socket(sock)
    big = json.dumps({"kernel_image_path": "x" * 2000}).encode()
    status, body = api.raw("PUT", "/boot-source", big, {"Content-Type": "application/json"})
    assert status == 400 and b"larger than the limit of 1000 bytes" in body
    api.close()

    def exchange(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(sock)
            client.sendall(data)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
            return answer

    chunked = (b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"100\r\n" + b"a" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
    assert exchange(chunked).startswith(b"HTTP/1.1 400") and b"larger than the limit" in exchange(chunked)
    garbage = exchange(b"THIS IS NOT HTTP\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in garbage
    huge_headers = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 40000 + b"\r\n\r\n")
    assert huge_headers.startswith(b"HTTP/1.1 400")
    fresh = Api(sock)
    assert fresh.ok("GET", "/")["state"] == "Not started"
    # Pipelined requests on one connection are answered in order.
    answer = exchange(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 2 and answer.index(b"firecracker_version") < answer.index(b"app_name")
    assert vm.process.poll() is None


def test_the_socket_takes_connections_before_the_server_has_loaded(tmp_path):
    sock = str(tmp_path / "api.sock")
    begin = time.monotonic()
    process = subprocess.Popen([*PROGRAM, "--api-sock", sock], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = socket.socket(socket.AF_UNIX)
        while True:
            try:
                client.connect(sock)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert process.poll() is None and time.monotonic() - begin < 30
                time.sleep(0.0005)
        ready = time.monotonic() - begin
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")    # at once: it waits in the backlog
        client.settimeout(30)
        answer = client.recv(4096)
        answered = time.monotonic() - begin
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b'"state": "Not started"' in answer
        assert ready < answered
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
    assert not os.path.exists(sock)
    print(f"exec -> connect accepted {ready * 1000:.0f} ms, -> GET / answered {answered * 1000:.0f} ms")


def test_a_stop_signal_while_the_server_loads_removes_the_socket(tmp_path):
    sock = str(tmp_path / "api.sock")
    process = subprocess.Popen([*PROGRAM, "--api-sock", sock], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.0005)
        process.send_signal(signal.SIGTERM)                 # most likely while it still imports
        assert process.wait(30) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert not os.path.exists(sock)


def test_config_file_with_no_api_boots_a_drive_and_exits_with_the_guest_status(tmp_path):
    disk = tmp_path / "disk.img"
    from tests.integration.test_guest_blk import CAPACITY, HOST_TAG, pattern
    disk.write_bytes(pattern(0, CAPACITY, HOST_TAG))
    config = {
        "boot-source": {"kernel_image_path": BLK_CHECK, "boot_args": "host_pattern=1 strict=1"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(disk), "is_root_device": True, "is_read_only": False,
                    "rate_limiter": {"ops": {"size": 100000, "refill_time": 1000}}}],
        "balloon": None,
    }
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(config))
    sock = tmp_path / "never.sock"
    done = subprocess.run([*PROGRAM, "--no-api", "--config-file", str(path), "--api-sock", str(sock)],
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 1, (out, done.stderr)
    assert "RESULT blk_check=pass" in out
    assert not sock.exists()


def test_config_file_with_the_api_starts_at_once_and_serves(firecracker, tmp_path):
    path = tmp_path / "vm.json"
    vsock = tmp_path / "v.sock"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": ECHO},
                                "machine-config": {"vcpu_count": 2, "mem_size_mib": 32},
                                "vsock": {"guest_cid": 5, "uds_path": str(vsock)}, "entropy": {}}))
    sock = str(tmp_path / "api.sock")
    vm = firecracker("--api-sock", sock, "--config-file", str(path), "--boot-timer", "--level", "info")
    api = vm.wait_for_socket(sock)
    vm.wait_for_output("READY")
    assert api.ok("GET", "/")["state"] == "Running"
    assert api.ok("GET", "/machine-config")["vcpu_count"] == 2
    config = api.ok("GET", "/vm/config")
    assert config["vsock"] == {"guest_cid": 5, "uds_path": str(vsock), "vsock_id": None}
    assert config["entropy"] == {"rate_limiter": None}
    assert vsock.is_socket()                                  # the vsock device listens for the host
    vm.send(b"from the file\n")
    assert vm.wait() == 1
    assert "ECHO from the file" in vm.stdout
    assert "boot timer: the guest's first console output" in vm.stderr


@pytest.mark.parametrize("config, expected", [
    ({"boot-source": {"kernel_image_path": HELLO}, "balloon": {"amount_mib": 1}}, "'balloon' is not supported"),
    ({"boot-source": {"kernel_image_path": HELLO}, "gpu": {}}, "'gpu': unknown object"),
    ({"boot-source": {"kernel_image_path": HELLO}, "drives": [{"drive_id": "a", "is_root_device": 1}]},
     "drives[0]: is_root_device"),
    ({"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}, "no boot source"),
    ([1, 2], "expected a JSON object"),
])
def test_a_bad_config_file_is_a_start_error_naming_the_object(tmp_path, config, expected):
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(config))
    sock = tmp_path / "api.sock"
    done = subprocess.run([*PROGRAM, "--api-sock", str(sock), "--config-file", str(path)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 125, done.stderr
    assert expected in done.stderr
    assert not sock.exists()


def test_command_line_errors(tmp_path):
    taken = tmp_path / "taken.sock"
    taken.write_text("")
    for args, expected in [(["--api-sock", str(taken)], "cannot listen there"),
                           (["--no-api"], "--no-api needs --config-file"),
                           (["--api-sock", str(tmp_path / "a.sock"), "--id", "bad id!"], "--id: 'bad id!'"),
                           (["--api-sock", str(tmp_path / "b.sock"), "--level", "Loud"], "--level: 'Loud'"),
                           (["--api-sock", str(tmp_path / "c.sock"), "--metadata", "x"], "unrecognized arguments"),
                           (["--api-sock", str(tmp_path / "d.sock"), "--api"], "unrecognized arguments")]:
        done = subprocess.run([*PROGRAM, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120)
        assert done.returncode == 125 and expected in done.stderr, (args, done.stderr)
    assert taken.read_text() == ""                          # a file in the way is left alone
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken.sock"]   # no socket left behind


def test_a_stop_signal_ends_a_running_vm_and_the_log_and_metrics_files_tell(firecracker, tmp_path):
    sock = str(tmp_path / "api.sock")
    log, metrics = tmp_path / "fc.log", tmp_path / "fc.metrics"
    log.write_text("")
    os.mkfifo(metrics)
    metrics_reader = os.open(metrics, os.O_RDONLY | os.O_NONBLOCK)     # a FIFO, as SDKs give it
    try:
        vm = firecracker("--api-sock", sock, "--id", "logged", "--log-path", str(log), "--level", "Debug",
                         "--show-level", "--metrics-path", str(metrics))
        api = vm.wait_for_socket(sock)
        api.ok("PUT", "/boot-source", {"kernel_image_path": ECHO})
        api.fault("PUT", "/vsock", {"guest_cid": 1, "uds_path": "x"})
        api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
        vm.wait_for_output("READY")
        vm.process.send_signal(signal.SIGTERM)
        assert vm.wait() == 128 + signal.SIGTERM
        flushed = [json.loads(line) for line in os.read(metrics_reader, 65536).decode().splitlines()]
    finally:
        os.close(metrics_reader)
    assert not os.path.exists(sock)
    lines = log.read_text().splitlines()
    assert any(line.endswith(f"[logged:main:INFO] API server listening on {sock}") for line in lines)
    assert any("[logged:main:DEBUG] PUT /boot-source: 204" in line for line in lines)
    assert any("[logged:main:WARNING] PUT /vsock: 400" in line and "guest_cid" in line for line in lines)
    assert any("stopped by SIGTERM (exit status 143)" in line for line in lines)
    assert vm.stderr == ""                                     # the log went to its file
    [last] = flushed                                           # written once, as the VM ended
    assert last["put_api_requests"] == {"boot_source_count": 1, "vsock_fails": 1, "actions_count": 1}


@pytest.mark.skipif(not CAN_MAKE_TAP, reason="making a tap needs root and /dev/net/tun")
def test_a_network_interface_is_a_tap_with_rate_limits_changed_while_running(firecracker, tmp_path):
    name = f"fct{os.getpid() % 100000}"
    subprocess.run(["ip", "tuntap", "add", name, "mode", "tap"], check=True)
    try:
        sock = str(tmp_path / "api.sock")
        vm = firecracker("--api-sock", sock)
        api = vm.wait_for_socket(sock)
        api.ok("PUT", "/boot-source", {"kernel_image_path": ECHO})
        rx = {"bandwidth": {"size": 10000, "refill_time": 100}}
        api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": name,
                                                   "guest_mac": "06:00:AC:10:00:02", "rx_rate_limiter": rx})
        api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
        vm.wait_for_output("READY")
        fdinfo = Path(f"/proc/{vm.process.pid}/fdinfo")
        assert any(f"iff:\t{name}\n" in entry.read_text() for entry in fdinfo.iterdir())   # the tap is open
        [interface] = api.ok("GET", "/vm/config")["network-interfaces"]
        assert interface["rx_rate_limiter"] == {"bandwidth": {"size": 10000, "refill_time": 100, "one_time_burst": 0}}
        assert interface["tx_rate_limiter"] is None
        api.ok("PATCH", "/network-interfaces/eth0",
               {"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 50, "refill_time": 1000}}})
        interface = api.ok("GET", "/vm/config")["network-interfaces"][0]
        assert interface["tx_rate_limiter"] == {"ops": {"size": 50, "refill_time": 1000, "one_time_burst": 0}}
        assert interface["rx_rate_limiter"]["bandwidth"]["size"] == 10000
        vm.send(b"net\n")
        assert vm.wait() == 1
    finally:
        subprocess.run(["ip", "link", "delete", name], check=False)
