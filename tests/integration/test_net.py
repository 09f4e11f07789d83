"""virtio-net with real backends: the guest kit's net_check over a tap the test makes (an address on
the host side and a UDP echo server bound to it), and over passt (ARP for the gateway it offers, UDP
to a host echo server through it). With `--vmm qemu` the same program runs against QEMU's
virtio-net-pci on the same tap.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import QEMU_MICROVM, Finished, run_vmkit
from vmkit.guest import build_guest

MAC = "02:00:00:0a:0b:0c"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="making a tap needs root and /dev/net/tun")


def ip_number(address: str) -> str:
    return hex(int(ipaddress.IPv4Address(address)))


class UdpEcho:
    """A UDP echo server on its own thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.port = self.sock.getsockname()[1]
        self.echoed = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
                self.sock.sendto(data, peer)
            except OSError:
                return
            self.echoed += 1

    def close(self) -> None:
        self.sock.close()


class Tap:
    def __init__(self, name: str, host_ip: str, guest_ip: str) -> None:
        self.name, self.host_ip, self.guest_ip = name, host_ip, guest_ip


@pytest.fixture
def tap():
    """A tap in the root namespace with 10.254.N.1/24 on the host side; deleted afterwards."""
    number = os.getpid() % 200 + 20
    name = f"vmkt{os.getpid() % 100000}"
    host_ip, guest_ip = f"10.254.{number}.1", f"10.254.{number}.2"
    subprocess.run(["ip", "tuntap", "add", name, "mode", "tap"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{host_ip}/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield Tap(name, host_ip, guest_ip)
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture
def echo_at():
    servers: list[UdpEcho] = []

    def start(address: str) -> UdpEcho:
        servers.append(UdpEcho(address))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def run_qemu(guest: str, cmdline: str, net_args: list[str]) -> Finished:
    machine = QEMU_MICROVM[3] + ",pcie=on"
    command = [*QEMU_MICROVM[:3], machine, *QEMU_MICROVM[4:], "-m", "64", "-kernel", str(build_guest(guest)),
               *net_args, "-append", f"{cmdline} pci_ecam=0xe0000000"]
    proc = subprocess.run(command, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    return Finished(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def boot_on_tap(request, guest: str, tap: Tap, cmdline: str) -> Finished:
    """Boot a guest-kit program with one NIC on `tap` (MAC given), under the VMM --vmm chooses."""
    if request.config.getoption("--vmm") == "qemu":
        return run_qemu(guest, cmdline, [
            "-netdev", f"tap,id=n0,ifname={tap.name},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC}"])
    return run_vmkit("run", "--kernel", str(build_guest(guest)), "--net", f"tap={tap.name},mac={MAC}",
                     "--cmdline", cmdline)


def test_net_check_over_a_tap(request, tap, echo_at):
    echo = echo_at(tap.host_ip)
    cmdline = f"ip={ip_number(tap.guest_ip)} peer={ip_number(tap.host_ip)} port={echo.port} count=8"
    done = boot_on_tap(request, "net_check", tap, cmdline)
    results = done.results()
    assert done.returncode == 1, done.stdout + done.stderr               # exit(0)
    assert results["net_check"] == "pass"
    assert results["mac"] == MAC and results["mtu"] == "1500" and results["link_up"] == "1"
    assert results["arp_reply"] == "ok"
    with open(f"/sys/class/net/{tap.name}/address") as f:
        assert results["peer_mac"] == f.read().strip()                 # the host's end of the tap answered
    assert results["udp_echoed"] == "8" and echo.echoed >= 8


def _default_route() -> tuple[str, str, int] | None:
    """The host's default gateway, its own address on that interface and the prefix length (what
    passt offers the guest)."""
    try:
        route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout.split()
        device = route[route.index("dev") + 1]
        gateway = route[route.index("via") + 1]
        addr = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", device], capture_output=True,
                              text=True).stdout.split()
        address, prefix = addr[addr.index("inet") + 1].split("/")
        return gateway, address, int(prefix)
    except (ValueError, IndexError, OSError):
        return None


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (apt-get install passt)")
def test_net_check_over_passt(request, echo_at):
    """passt offers the host's gateway and address; traffic to the gateway reaches the host's loopback."""
    if request.config.getoption("--vmm") == "qemu":
        pytest.skip("QEMU 7.2 has no -netdev passt")
    route = _default_route()
    if route is None:
        pytest.skip("passt needs a host with a default route")
    gateway, address, _ = route
    echo = echo_at("127.0.0.1")
    done = run_vmkit("run", "--kernel", str(build_guest("net_check")), "--net", "user", "--cmdline", f"ip={ip_number(address)} peer={ip_number(gateway)} "
                     f"port={echo.port} count=4")
    results = done.results()
    assert done.returncode == 1, done.stdout + done.stderr
    assert results["net_check"] == "pass" and results["arp_reply"] == "ok"
    assert results["udp_echoed"] == "4" and echo.echoed >= 4
    assert results["mac"].startswith("02:")                             # derived, locally administered


def test_missing_passt_is_a_start_error(tmp_path):
    env_path = str(tmp_path)                                             # a PATH with no passt in it
    proc = subprocess.run([shutil.which("python3") or "python3", "-m", "vmkit", "run", "--kernel",
                           str(build_guest("hello")), "--net", "user"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": env_path})
    assert proc.returncode == 125, proc.stderr
    assert "apt-get install passt" in proc.stderr and "--net user" in proc.stderr


def test_a_tap_that_cannot_be_attached_is_a_start_error(tap):
    held = subprocess.Popen(["python3", "-m", "vmkit", "run", "--kernel", str(build_guest("clock")),
                             "--net", f"tap={tap.name}", "--cmdline", "ms=30000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        carrier = f"/sys/class/net/{tap.name}/carrier"        # 1 once a process holds the tap
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and held.poll() is None:
            with open(carrier) as f:
                if f.read().strip() == "1":
                    break
            time.sleep(0.1)
        second = run_vmkit("run", "--net", f"tap={tap.name}")
        assert second.returncode == 125, second
        assert f"--net tap={tap.name}" in second.stderr and "in use" in second.stderr
    finally:
        held.kill()
        held.wait()


def test_net_bench_over_a_tap(request, tap, echo_at):
    """The benchmark program runs its phases (a short run: it checks that figures come out, not
    what they are)."""
    echo = echo_at(tap.host_ip)
    cmdline = f"ip={ip_number(tap.guest_ip)} peer={ip_number(tap.host_ip)} port={echo.port} seconds=1 size=512"
    done = boot_on_tap(request, "net_bench", tap, cmdline)
    results = done.results()
    assert done.returncode == 1 and results.get("net_bench") == "done", done.stdout + done.stderr
    assert int(results["rtt_rounds"]) > 10 and int(results["tx_pps"]) > 0 and int(results["echo_pps"]) > 0
    assert int(results["rx_frames"]) > int(results["rtt_rounds"])
