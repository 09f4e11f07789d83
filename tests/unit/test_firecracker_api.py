"""The Firecracker-compatible API without a VM: body validation, the MicroVm's configuration rules,
the routes' answers, the HTTP server over a real Unix socket, the log and metrics files, the
command line, and a seeded fuzz run of every endpoint."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from pathlib import Path

import pytest

from tests.firecracker_client import Api
from vmkit.api.firecracker import models
from vmkit.api.firecracker.main import (
    DEFAULT_API_SOCK,
    ArgumentError,
    early_socket_path,
    listen,
    parse_arguments,
)
from vmkit.api.firecracker.microvm import DEFAULT_BOOT_ARGS, ApiError, MicroVm
from vmkit.api.firecracker.routes import Routes, fault
from vmkit.api.firecracker.service import StartError, apply_config_file
from vmkit.api.firecracker.telemetry import Log, Metrics, TelemetryError
from vmkit.api.http_server import Request, UnixHttpServer
from vmkit.guest import build_guest

HELLO = str(build_guest("hello"))


@pytest.fixture
def log(tmp_path) -> Log:
    path = tmp_path / "vm.log"
    path.write_text("")
    return Log("unit", "Debug", str(path))


@pytest.fixture
def vm(log) -> MicroVm:
    return MicroVm("unit", log, Metrics(0), lambda data: None)


@pytest.fixture
def disk(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 4096)
    return path


def drive(drive_id: str, path: Path, root: bool = False, **extra: object) -> models.Drive:
    return models.Drive(drive_id=drive_id, path_on_host=str(path), is_root_device=root, **extra)


# ---- bodies


@pytest.mark.parametrize("body, expected", [
    (b'{"vcpu_count": "2", "mem_size_mib": 64}', 'vcpu_count: Input should be a valid integer (got "2")'),
    (b'{"vcpu_count": false, "mem_size_mib": 64}', "vcpu_count: Input should be a valid integer (got false)"),
    (b'{"vcpu_count": 2, "mem_size_mib": 64, "extra": 1}', "extra: unknown field"),
    (b'{"vcpu_count": 2}', "mem_size_mib: missing (it is required)"),
    (b'{"vcpu_count": 0, "mem_size_mib": 64}', "vcpu_count: Input should be greater than or equal to 1 (got 0)"),
    (b'{"vcpu_count": 2, "mem_size_mib": 64', "the body is not valid JSON"),
    (b'"text"', "Input should be an object"),
])
def test_a_body_that_does_not_fit_its_definition_names_the_field(body, expected):
    with pytest.raises(models.BodyError) as error:
        models.parse(models.MachineConfig, body)
    assert expected in str(error.value)


def test_nested_fields_are_named_by_their_path_and_many_errors_are_summed_up():
    body = {"drive_id": "a", "is_root_device": True,
            "rate_limiter": {"ops": {"size": -1, "refill_time": 2**64}, "bandwidth": {"size": "1"}}}
    with pytest.raises(models.BodyError) as error:
        models.parse(models.Drive, json.dumps(body))
    message = str(error.value)
    assert "rate_limiter.bandwidth.size: Input should be a valid integer" in message
    assert "rate_limiter.bandwidth.refill_time: missing" in message
    assert "and 1 more" in message


# ---- the MicroVm's rules


def test_machine_config_accepts_what_vmkit_honours_and_refuses_the_rest(vm):
    assert vm.machine_config_body() == {"vcpu_count": 1, "mem_size_mib": 128, "smt": False,
                                        "track_dirty_pages": False, "huge_pages": "None"}
    vm.put_machine_config(models.MachineConfig(vcpu_count=4, mem_size_mib=256, cpu_template="None"))
    vm.patch_machine_config(models.MachineConfigPatch(mem_size_mib=32))
    assert vm.machine_config.vcpu_count == 4 and vm.machine_config.mem_size_mib == 32
    for body, field in [(dict(smt=True), "smt"), (dict(track_dirty_pages=True), "track_dirty_pages"),
                        (dict(cpu_template="C3"), "cpu_template"), (dict(huge_pages="2M"), "huge_pages"),
                        (dict(mem_size_mib=1), "mem_size_mib")]:
        with pytest.raises(ApiError, match=f"^{field}:"):
            vm.patch_machine_config(models.MachineConfigPatch(**body))
    assert vm.machine_config.mem_size_mib == 32                     # a refused PATCH changes nothing
    with pytest.raises(ApiError, match="changes nothing"):
        vm.patch_machine_config(models.MachineConfigPatch())


def test_drives_the_root_one_goes_first_and_names_itself_on_the_command_line(vm, disk, tmp_path):
    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 512)
    vm.put_boot_source(models.BootSource(kernel_image_path=HELLO))
    vm.put_drive("data", drive("data", other, is_read_only=True, cache_type="Writeback"))
    vm.put_drive("root", drive("root", disk, root=True, is_read_only=True))
    with pytest.raises(ApiError, match="'root' is the root device already"):
        vm.put_drive("root2", drive("root2", tmp_path / "other.img", root=True))
    with pytest.raises(ApiError, match="is drive 'data' already"):
        vm.put_drive("again", drive("again", other))
    config = vm.vm_config()
    assert [d.path for d in config.disks] == [str(disk), str(other)]
    assert [(d.read_only, d.cache, d.format) for d in config.disks] == [(True, "unsafe", "raw"),
                                                                      (True, "writeback", "raw")]
    assert config.cmdline == f"{DEFAULT_BOOT_ARGS} root=/dev/vda ro"
    vm.put_drive("root", drive("root", disk, root=True, partuuid="abcd-01"))
    vm.put_boot_source(models.BootSource(kernel_image_path=HELLO, boot_args="console=ttyS0"))
    assert vm.vm_config().cmdline == "console=ttyS0 root=PARTUUID=abcd-01 rw"


def test_ids_must_match_the_path_and_be_plain(vm, disk):
    with pytest.raises(ApiError, match="'b' in the body does not match 'a' in the path"):
        vm.put_drive("a", drive("b", disk))
    with pytest.raises(ApiError, match="is not an id"):
        vm.put_drive("a b", drive("a b", disk))
    with pytest.raises(ApiError, match="is not an id"):
        vm.put_drive("x" * 65, drive("x" * 65, disk))


def test_interfaces_and_vsock_become_link_specs(vm, tmp_path):
    vm.put_boot_source(models.BootSource(kernel_image_path=HELLO))
    vm.put_interface("eth0", models.NetworkInterface(iface_id="eth0", host_dev_name="fctap0",
                                                     guest_mac="06:00:ac:10:00:02", mtu=9000))
    with pytest.raises(ApiError, match="host_dev_name: 'fctap0' is used by interface 'eth0' already"):
        vm.put_interface("eth1", models.NetworkInterface(iface_id="eth1", host_dev_name="fctap0"))
    with pytest.raises(ApiError, match="guest_mac: 06:00:AC:10:00:02 is used by interface 'eth0' already"):
        vm.put_interface("eth1", models.NetworkInterface(iface_id="eth1", host_dev_name="fctap1",
                                                         guest_mac="06:00:AC:10:00:02"))
    vm.put_vsock(models.Vsock(guest_cid=9, uds_path=str(tmp_path / "v.sock")))
    with pytest.raises(ApiError, match="uds_path"):
        vm.put_vsock(models.Vsock(guest_cid=9, uds_path=str(tmp_path / "a,b.sock")))
    vm.put_entropy(models.Entropy())
    config = vm.vm_config()
    net, vsock = config.links
    assert str(net).startswith("--net tap=fctap0,mac=06:00:ac:10:00:02,mtu=9000")
    assert str(vsock) == f"--vsock {tmp_path / 'v.sock'},cid=9"
    assert config.devices == ("virtio-rng",)


def test_actions_and_states_that_need_a_started_vm_say_so(vm):
    with pytest.raises(ApiError, match="no boot source"):
        vm.action(models.Action(action_type="InstanceStart"))
    with pytest.raises(ApiError, match="has not started"):
        vm.action(models.Action(action_type="SendCtrlAltDel"))
    with pytest.raises(ApiError, match="metrics are not configured"):
        vm.action(models.Action(action_type="FlushMetrics"))
    with pytest.raises(ApiError, match="has not started"):
        vm.set_state(models.VmState(state="Resumed"))
    with pytest.raises(ApiError, match="there is no drive 'none'"):
        vm.patch_drive("none", models.DrivePatch(drive_id="none"))
    vm.drives["d"] = models.Drive(drive_id="d", path_on_host="/x", is_root_device=False)
    with pytest.raises(ApiError, match="only once the VM has started"):
        vm.patch_drive("d", models.DrivePatch(drive_id="d"))
    assert vm.state == "Not started"


def test_rate_limiters_take_firecrackers_objects_and_refuse_bad_buckets(vm, disk):
    limiter = models.RateLimiter(bandwidth=models.TokenBucket(size=1000, refill_time=2**64 - 1))
    with pytest.raises(ApiError, match="rate_limiter.bandwidth.refill_time"):
        vm.put_drive("d", drive("d", disk, rate_limiter=limiter))
    vm.put_drive("d", drive("d", disk, rate_limiter=models.RateLimiter(
        ops=models.TokenBucket(size=0, refill_time=100))))        # size 0: no limit, as Firecracker
    assert vm.vm_config_body()["drives"][0]["rate_limiter"] is None
    vm.put_drive("d", drive("d", disk, rate_limiter=models.RateLimiter(
        bandwidth=models.TokenBucket(size=4096, refill_time=100))))
    assert vm.vm_config_body()["drives"][0]["rate_limiter"] == {
        "bandwidth": {"size": 4096, "refill_time": 100, "one_time_burst": 0}}    # as a running device shows it


# ---- routes


def test_routes_answer_204_200_and_400_as_firecracker_does(vm, disk):
    routes = Routes(vm, "0.1.0", "1.7.0")
    put = routes(Request("PUT", "/drives/d", json.dumps(
        {"drive_id": "d", "path_on_host": str(disk), "is_root_device": True}).encode()))
    assert put.status == 204 and put.body == b""
    got = routes(Request("GET", "/", b""))
    assert got.status == 200
    assert json.loads(got.body) == {"id": "unit", "state": "Not started", "vmm_version": "0.1.0", "app_name": "vmkit"}
    assert json.loads(routes(Request("GET", "/version", b"")).body) == {"firecracker_version": "1.7.0"}
    refused = routes(Request("PUT", "/balloon", b'{"amount_mib": 1}'))
    assert refused.status == 400 and "balloon" in json.loads(refused.body)["fault_message"]
    assert vm.metrics.requests["put_api_requests"] == {"drives_count": 1, "balloon_fails": 1}


# ---- the HTTP server


@pytest.fixture
def served(tmp_path, vm):
    """A real UnixHttpServer for `vm` on a thread; yields the socket path."""
    path = str(tmp_path / "api.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    server = UnixHttpServer(listener, Routes(vm, "0.1.0", "1.7.0"), fault, max_body=1024)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.poll(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(5)
    server.close()


def test_the_server_keeps_connections_alive_and_bounds_bodies(served):
    api = Api(served)
    for _ in range(5):
        assert api.ok("GET", "/")["state"] == "Not started"
    assert len(api.sockets) == 1
    status, body = api.raw("PUT", "/logger", b"{" + b" " * 2000 + b"}", {"Content-Type": "application/json"})
    assert status == 400 and b"2002 bytes, larger than the limit of 1024" in body
    again = Api(served)
    assert again.ok("GET", "/version") == {"firecracker_version": "1.7.0"}


def test_a_client_that_expects_100_continue_gets_it_or_an_early_400(served):
    body = json.dumps({"level": "Debug", "show_level": True}).encode()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(served)
        client.sendall(b"PUT /logger HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body))
        assert client.recv(4096) == b"HTTP/1.1 100 \r\n\r\n"
        client.sendall(body)
        assert client.recv(4096).startswith(b"HTTP/1.1 204 ")
        client.sendall(b"PUT /logger HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"larger than the limit of 1024" in answer


def test_a_client_that_vanishes_mid_request_leaves_the_server_serving(served):
    for partial in (b"PUT /logger HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", b"GET / HT", b"\x00\xff\r\n\r\n"):
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(served)
            client.sendall(partial)
    assert Api(served).ok("GET", "/")["app_name"] == "vmkit"


def test_fuzzed_requests_get_answers_never_a_crash(served, disk):
    """Seeded random methods, paths and bodies (valid and broken JSON of the right and wrong shapes):
    every answer is 200, 204 or 400 with a fault_message, and the server serves on."""
    rng = random.Random(1234)
    paths = ["/", "/version", "/machine-config", "/boot-source", "/drives/d0", "/drives/d1", "/network-interfaces/e",
             "/vsock", "/actions", "/vm", "/vm/config", "/logger", "/metrics", "/entropy", "/balloon", "/x/y/z",
             "/drives/", "//", "/drives/d0/extra"]
    values: list[object] = [None, True, 0, -1, 2**64, 1.5, "", "x", "/dev/null", str(disk), [], {}, "06:00:00:00:00:01",
                            "InstanceStart", "FlushMetrics", "Paused", "Resumed", "Info", {"size": 1, "refill_time": 1}]
    keys = ["vcpu_count", "mem_size_mib", "smt", "kernel_image_path", "boot_args", "drive_id", "path_on_host",
            "is_root_device", "is_read_only", "rate_limiter", "iface_id", "host_dev_name", "guest_cid", "uds_path",
            "action_type", "state", "level", "log_path", "metrics_path", "bandwidth", "ops", "junk"]
    api = Api(served)
    for _ in range(400):
        method = rng.choice(["GET", "PUT", "PATCH", "DELETE"])
        path = rng.choice(paths)
        shape = rng.random()
        if shape < 0.1:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        else:
            obj = {rng.choice(keys): rng.choice(values) for _ in range(rng.randrange(0, 5))}
            if "drive_id" in obj and path.startswith("/drives/") and rng.random() < 0.5:
                obj["drive_id"] = path.split("/")[2]
            body = json.dumps(obj).encode()
        if method == "GET":
            body = b""
        if b"InstanceStart" in body:
            body = body.replace(b"InstanceStart", b"FlushMetrics")    # no VM is built in a unit test
        status, answer = api.raw(method, path, body or None, {"Content-Type": "application/json"})
        assert status in (200, 204, 400), (method, path, body, status, answer)
        if status == 400:
            assert set(json.loads(answer)) == {"fault_message"}
    assert api.ok("GET", "/")["state"] == "Not started"


# ---- log, metrics, command line, config file


def test_the_log_writes_lines_at_its_level_to_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    log = Log("vm-7", "Warning", None)
    log.configure(path=str(fifo), level="info", show_level=True, show_origin=None)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log.debug("not shown")
        log.info("shown")
        text = os.read(reader, 4096).decode()
        assert text.endswith("[vm-7:main:INFO] shown\n") and "not shown" not in text
        for _ in range(2000):              # more than the pipe holds: lines are dropped, nothing blocks
            log.error("x" * 100)
        assert log.dropped > 0
    finally:
        os.close(reader)
        log.close()
    with pytest.raises(TelemetryError, match="level: 'loud'"):
        log.configure(path=None, level="loud", show_level=None, show_origin=None)
    with pytest.raises(TelemetryError, match="neither a regular file nor a named pipe"):
        log.configure(path="/dev/null", level=None, show_level=None, show_origin=None)
    with pytest.raises(TelemetryError, match="Is a directory"):
        log.configure(path=str(tmp_path), level=None, show_level=None, show_origin=None)


def test_flush_metrics_writes_one_json_line_of_counters(vm, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("")
    routes = Routes(vm, "0.1.0", "1.7.0")
    assert routes(Request("PUT", "/metrics", json.dumps({"metrics_path": str(path)}).encode())).status == 204
    routes(Request("GET", "/", b""))
    assert routes(Request("PUT", "/actions", b'{"action_type": "FlushMetrics"}')).status == 204
    routes(Request("PUT", "/actions", b'{"action_type": "FlushMetrics"}'))
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["get_api_requests"] == {"root_count": 1}
    assert first["put_api_requests"] == {"metrics_count": 1}
    assert second["put_api_requests"] == {"actions_count": 1}     # counted since the last flush


def test_the_command_line_is_firecrackers():
    args = parse_arguments(["--api-sock", "/tmp/x.sock", "--id", "a1", "--level", "Debug", "--boot-timer",
                            "--no-seccomp", "--start-time-us", "5", "--show-level"])
    assert (args.api_sock, args.id, args.level, args.boot_timer, args.show_level) == \
        ("/tmp/x.sock", "a1", "Debug", True, True)
    assert parse_arguments([]).api_sock == "/run/firecracker.socket"
    with pytest.raises(ArgumentError, match="--no-api needs --config-file"):
        parse_arguments(["--no-api"])
    with pytest.raises(ArgumentError, match="unrecognized arguments"):
        parse_arguments(["--mmds-size-limit", "5"])


@pytest.mark.parametrize("argv", [[], ["--api-sock", "/a"], ["--api-sock=/a"], ["--id", "x", "--api-sock", "/a"],
                                  ["--api-sock", "/b", "--api-sock", "/a"], ["--no-api", "--config-file", "f"],
                                  ["--version"], ["--level", "Info", "--api-sock"]])
def test_the_socket_path_found_before_argparse_is_the_one_argparse_reads(argv):
    """The socket listens before argparse is loaded: its path must be the one argparse then reads."""
    early = early_socket_path(argv)
    try:
        args = parse_arguments(argv)
    except ArgumentError:
        return                               # main closes the early socket again
    if args.no_api or args.version:
        assert early is None
    else:
        assert early == args.api_sock
    assert early_socket_path([]) == DEFAULT_API_SOCK


def test_a_config_file_puts_each_object_as_the_api_would(log, tmp_path, disk):
    vm = MicroVm("unit", log, Metrics(0), lambda data: None)
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({
        "boot-source": {"kernel_image_path": HELLO, "boot_args": "x=1"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 32},
        "drives": [{"drive_id": "root", "path_on_host": str(disk), "is_root_device": True}],
        "network-interfaces": [], "vsock": None, "balloon": None, "mmds-config": None}))
    apply_config_file(vm, str(path))
    assert vm.machine_config.vcpu_count == 2 and list(vm.drives) == ["root"]
    vm = MicroVm("unit", log, Metrics(0), lambda data: None)
    path.write_text(json.dumps({"drives": [{"drive_id": "ok", "path_on_host": str(disk), "is_root_device": False},
                                           {"drive_id": "bad", "is_root_device": False, "pathonhost": "x"}]}))
    with pytest.raises(StartError, match=r"drives\[1\]: pathonhost: unknown field"):
        apply_config_file(vm, str(path))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(StartError, match="not JSON"):
        apply_config_file(vm, str(path))


def test_the_api_socket_appears_only_once_it_listens_and_never_replaces_a_file(tmp_path):
    path = str(tmp_path / "api.sock")
    bound: list[str] = []
    sock = listen(path, bound)
    try:
        assert bound == [path] and os.listdir(tmp_path) == ["api.sock"]    # no staging name left
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
        with pytest.raises(OSError, match="Address already in use"):
            listen(path, bound)
        assert bound == [path]
    finally:
        sock.close()
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(OSError):
        listen(str(taken))
    assert taken.read_text() == "mine"
    long_path = str(tmp_path / ("x" * (100 - len(str(tmp_path)))))   # fits an address; its staging name does not
    sock = listen(long_path)
    sock.close()
    assert os.path.exists(long_path)


def test_the_console_script_is_declared_and_its_dependencies_pinned():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["vmkit-firecracker"] == "vmkit.api.firecracker.main:entry"
    pins = {line.partition("==")[0]: line.partition("==")[2] for line in project["dependencies"]}
    import h11
    import pydantic

    assert pins["h11"] == h11.__version__ and pins["pydantic"] == pydantic.VERSION    # what the tests ran with
