"""Linux, end to end, with networks: one boot with two NICs. eth0 is on a tap the test makes (a
static address from vmkit.ip= on the kernel command line), eth1 on passt (the address passt would
lease, the host's own, from vmkit.ip1=: the image's kernel has no packet sockets for DHCP). The
guest fetches a page with wget from an HTTP server on the host side of the tap, another from a
server on the host's loopback through passt's gateway.

Slow on PVM hosts (a minute or two per boot here), like test_linux_boot.py.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import secrets
import shutil
import subprocess
import threading

import pytest

from tests.conftest import run_vmkit
from tests.integration.test_net import _default_route

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                 reason="making a tap needs root and /dev/net/tun")]
BOOT_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def image():
    built = run_vmkit("image", "build", "linux", timeout=3600)
    assert built.returncode == 0, built.stdout + built.stderr
    return "linux"


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


def test_linux_reaches_the_host_through_a_tap_and_passt(image, tmp_path):
    route = _default_route()
    if shutil.which("passt") is None or route is None:
        pytest.skip("needs passt and a host with a default route")
    gateway, address, prefix = route
    number = os.getpid() % 200 + 20
    tap, host_ip = f"vmkt{os.getpid() % 100000}", f"10.254.{number}.1"
    tokens = [secrets.token_hex(8) for _ in range(2)]
    (tmp_path / "tap").mkdir()
    (tmp_path / "tap" / "page").write_text(f"over-the-tap-{tokens[0]}\n")
    (tmp_path / "lo").mkdir()
    (tmp_path / "lo" / "page").write_text(f"through-passt-{tokens[1]}\n")
    subprocess.run(["ip", "tuntap", "add", tap, "mode", "tap"], check=True)
    servers: list[PageServer] = []
    try:
        subprocess.run(["ip", "addr", "add", f"{host_ip}/24", "dev", tap], check=True)
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        servers.append(PageServer(host_ip, str(tmp_path / "tap")))
        servers.append(PageServer("127.0.0.1", str(tmp_path / "lo")))
        command = (f"cat /sys/class/net/eth0/address; ip -4 -o addr; "
                   f"wget -q -O - http://{host_ip}:{servers[0].port}/page; "
                   f"wget -q -O - http://{gateway}:{servers[1].port}/page; echo NET-DONE")
        done = run_vmkit("run", "--image", image, "--memory", "256",
                         "--cmdline", f"panic=-1 vmkit.ip=10.254.{number}.2/24 vmkit.ip1={address}/{prefix} "
                         f"vmkit.gw={gateway}",
                         "--net", f"tap={tap},mac=02:00:00:00:00:31", "--net", "user",
                         "--", "sh", "-c", command, timeout=BOOT_TIMEOUT_S)
    finally:
        for server in servers:
            server.close()
        subprocess.run(["ip", "link", "del", tap], check=False)
    out = done.stdout
    assert re.search(r"^NET-DONE\r?$", out, re.MULTILINE), out[-4000:] + done.stderr[-2000:]
    assert "02:00:00:00:00:31" in out                                   # eth0's MAC from --net
    assert f"10.254.{number}.2/24" in out                               # eth0: the static address
    assert f"{address}/{prefix}" in out                                 # eth1: passt's (the host's) address
    assert f"over-the-tap-{tokens[0]}" in out
    assert f"through-passt-{tokens[1]}" in out
    assert "VMKIT_EXIT_STATUS=0" in out
