"""Linux, end to end, with networks: one boot with two NICs. eth0 is on a tap the test makes (a
static address from vmkit.ip= on the kernel command line; the guest's offloads on, so the host
sends it TSO segments), eth1 on passt, configured by DHCP (address, default route, DNS server).
The guest fetches a small page and a 4 MiB file over the tap, another page from a server on the
host's loopback through passt's gateway, and serves a line on a port the host reaches through
passt's forward (`--net user,hostfwd=tcp:H:G`).

Slow on PVM hosts (a minute or two per boot here), like test_linux_boot.py.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import http.server
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from tests.integration.test_net import _default_route

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                 reason="making a tap needs root and /dev/net/tun")]
BOOT_TIMEOUT_S = 900


class PageServer:
    """An HTTP server on its own thread serving `directory`."""

    def __init__(self, address: str, directory: str) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
        self.server = http.server.ThreadingHTTPServer((address, 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SIOCETHTOOL, ETHTOOL_GTSO = 0x8946, 0x1E
GUEST_PORT = 8080


def tso_enabled(interface: str) -> bool:
    """Whether the interface sends TCP segmentation offload frames (ethtool's ETHTOOL_GTSO)."""
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GTSO, 0), 8)
    request = struct.pack("=16sQ", interface.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCETHTOOL, request)
    return struct.unpack("=II", value.raw)[1] != 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def through_forward(port: int, tries: int = 20) -> bytes:
    """Send a line to the forwarded host port and return what the guest's listener answers. The
    host speaks first: passt 0.0~git20230309 (Debian 12) completes the guest's handshake only once
    the host side has sent data (docs/networking.md)."""
    for _ in range(tries):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"ping-from-host\n")
                data = sock.recv(4096)
            if data:
                return data
        except OSError:
            pass
        time.sleep(0.5)                  # nc not listening yet: passt closed the connection
    return b""


def test_linux_reaches_the_host_through_a_tap_and_passt(image, tmp_path, spawn):
    route = _default_route()
    if shutil.which("passt") is None or route is None:
        pytest.skip("needs passt and a host with a default route")
    gateway, address, prefix = route
    number = os.getpid() % 200 + 20
    tap, host_ip = f"vmkt{os.getpid() % 100000}", f"10.254.{number}.1"
    tokens = [secrets.token_hex(8) for _ in range(3)]
    (tmp_path / "tap").mkdir()
    (tmp_path / "tap" / "page").write_text(f"over-the-tap-{tokens[0]}\n")
    big = os.urandom(4 << 20)
    (tmp_path / "tap" / "big").write_bytes(big)
    (tmp_path / "lo").mkdir()
    (tmp_path / "lo" / "page").write_text(f"through-passt-{tokens[1]}\n")
    host_port = free_port()
    subprocess.run(["ip", "tuntap", "add", tap, "mode", "tap"], check=True)
    servers: list[PageServer] = []
    try:
        subprocess.run(["ip", "addr", "add", f"{host_ip}/24", "dev", tap], check=True)
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        servers.append(PageServer(host_ip, str(tmp_path / "tap")))
        servers.append(PageServer("127.0.0.1", str(tmp_path / "lo")))
        tap_url = f"http://{host_ip}:{servers[0].port}"
        command = (f"cat /sys/class/net/eth0/address; ip -4 -o addr; ip route; cat /etc/resolv.conf; "
                   f"wget -q -O - {tap_url}/page; "
                   f"echo BIG $(wget -q -O - {tap_url}/big | busybox md5sum); "
                   f"wget -q -O - http://{gateway}:{servers[1].port}/page; "
                   f"echo FWD-LISTENING; echo forwarded-{tokens[2]} | busybox timeout 300 nc -l -p {GUEST_PORT}; "
                   f"echo NET-DONE")
        proc = spawn("run", "--image", image, "--memory", "256",
                     "--cmdline", f"panic=-1 vmkit.ip=10.254.{number}.2/24",
                     "--net", f"tap={tap},mac=02:00:00:00:00:31",
                     "--net", f"user,hostfwd=tcp:{host_port}:{GUEST_PORT}",
                     "--", "sh", "-c", command, stderr=subprocess.STDOUT)
        lines: list[bytes] = []
        listening = threading.Event()

        def read() -> None:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(b"FWD-LISTENING"):
                    listening.set()
            listening.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert listening.wait(BOOT_TIMEOUT_S), "the guest never got to its listener"
        tso_on = tso_enabled(tap)                                        # the driver is up by now
        answer = through_forward(host_port)
        proc.wait(timeout=BOOT_TIMEOUT_S)
        reader.join(10)
    finally:
        for server in servers:
            server.close()
        subprocess.run(["ip", "link", "del", tap], check=False)
    out = b"".join(lines).decode(errors="replace")
    assert re.search(r"^NET-DONE\r?$", out, re.MULTILINE), out[-4000:]
    assert "02:00:00:00:00:31" in out                                   # eth0's MAC from --net
    assert f"10.254.{number}.2/24" in out                               # eth0: the static address
    assert re.search(rf"eth1\s+inet {re.escape(address)}/", out), out[-4000:]  # eth1: passt's lease
    assert re.search(rf"default via {re.escape(gateway)} dev eth1", out), out[-4000:]
    assert re.search(r"^nameserver \S+", out, re.MULTILINE), out[-4000:]   # DNS from the lease
    assert f"over-the-tap-{tokens[0]}" in out
    assert f"BIG {hashlib.md5(big).hexdigest()}" in out                 # 4 MiB, TSO segments and all
    assert f"through-passt-{tokens[1]}" in out
    assert answer.strip() == f"forwarded-{tokens[2]}".encode()          # host port -> guest listener
    assert "ping-from-host" in out                                      # and the other way
    assert tso_on, "the tap has no TSO: the guest's offloads were not applied"
    assert "VMKIT_EXIT_STATUS=0" in out
