"""Linux, end to end, with vsock: one boot of the image with `--vsock PATH`. The guest's
vsock_probe (a static program in the initramfs) connects to the host's port 5000, which a host
program listening at PATH_5000 answers; then it listens on port 6000 and echoes a stream a host
program opens with `CONNECT 6000` on PATH.

Slow on PVM hosts (a minute or two per boot here), like test_linux_boot.py. Under vmkit only: QEMU's
vsock needs /dev/vhost-vsock, which this host lacks.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading

import pytest

from tests.conftest import vmkit_command
from tests.integration.test_vsock import Console, connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT_S = 900
HOST_PORT, GUEST_PORT = 5000, 6000
ECHO_BYTES = 200_000


def answer_once(path: str, heard: list[bytes]) -> threading.Thread:
    """Listen at PATH_<HOST_PORT>: take one connection, keep its line, answer, close."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"{path}_{HOST_PORT}")
    server.listen()
    server.settimeout(BOOT_TIMEOUT_S)

    def serve() -> None:
        with server:
            peer, _ = server.accept()
            with peer:
                peer.settimeout(60)
                data = b""
                while chunk := peer.recv(4096):
                    data += chunk
                heard.append(data)
                peer.sendall(b"host-says-hello\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_linux_guest_streams_reach_host_programs_both_ways(image, short_dir):
    path = f"{short_dir}/vm.sock"
    heard: list[bytes] = []
    answerer = answer_once(path, heard)
    command = (f"vsock_probe connect {HOST_PORT} hello-from-linux-vsock && vsock_probe echo {GUEST_PORT} 1 && "
               "cat /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*/device")
    proc = subprocess.Popen(vmkit_command("run", "--image", image, "--memory", "256", "--cmdline", "panic=-1",
                                          "--vsock", path, "--", "sh", "-c", command),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        console = Console(proc.stdout)
        console.wait_for(f"vsock_probe: listening on {GUEST_PORT}", timeout=BOOT_TIMEOUT_S)
        answerer.join(10)
        assert heard == [b"hello-from-linux-vsock\n"]
        assert any(line.rstrip("\r") == "host-says-hello" for line in console.lines)   # the guest read it
        payload = random.Random(6000).randbytes(ECHO_BYTES)
        sock, line = connect(path, GUEST_PORT)
        assert line.startswith(b"OK ") and int(line[3:]) >= 1 << 30, line
        sock.settimeout(300)
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        echoed = bytearray()
        while chunk := sock.recv(1 << 16):
            echoed += chunk
        sender.join(60)
        assert bytes(echoed) == payload
        console.wait_for(f"vsock_probe: echoed {ECHO_BYTES} bytes", timeout=60)
        status = proc.wait(BOOT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "\n".join(console.lines)
    assert "VMKIT_EXIT_STATUS=0" in out, out[-3000:]
    assert any(line.rstrip("\r") == "0x0013" for line in console.lines), out[-3000:]   # virtio device 19
    assert status == 0, proc.stderr.read().decode(errors="replace")
