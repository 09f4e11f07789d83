"""virtio-vsock end to end with the guest kit: vsock_echo (runtime/virtio_vsock.c) booted with
`--vsock PATH`, host programs on both sides of the Unix socket protocol, then hostile packets from
the live guest.

This runs under vmkit only: QEMU's vsock is vhost-vsock-pci, which needs /dev/vhost-vsock, and
this host has none (QEMU has no userspace vsock device to compare with).
"""

import hashlib
import random
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from tests.conftest import vmkit_command
from vmkit.guest import build_guest

ECHO_PORT, HOST_PORT, NOBODY_PORT = 1234, 7000, 7001
STREAMS = 4
STREAM_BYTES = 2 << 20
OUT_BYTES = 300_000


@pytest.fixture
def short_dir():
    """A directory with a short path: PATH_<port> must fit a Unix socket address."""
    path = tempfile.mkdtemp(prefix="vsk", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pattern(length: int) -> bytes:
    """What vsock_echo sends when it connects out: byte i is (i * 131 + 7) & 0xff."""
    return bytes((i * 131 + 7) & 0xFF for i in range(length))


class Console:
    """The VM's stdout, line by line, on a thread; wait_for() a RESULT line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} in:\n" + "\n".join(self.lines))

    def results(self) -> dict[str, str]:
        return dict(line[7:].split("=", 1) for line in self.lines if line.startswith("RESULT ") and "=" in line)


def host_listener(path: str, received: dict) -> threading.Thread:
    """Accept one connection at PATH_<HOST_PORT> and keep all it sends until EOF."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"{path}_{HOST_PORT}")
    server.listen()
    server.settimeout(60)

    def serve() -> None:
        with server:
            peer, _ = server.accept()
            peer.settimeout(60)
            data = bytearray()
            while chunk := peer.recv(1 << 16):
                data += chunk
            received["data"] = bytes(data)
            peer.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def connect(path: str, port: int) -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(f"CONNECT {port}\n".encode())
    sock.settimeout(10)
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return sock, line


def echo_all(socks: list[socket.socket], payloads: list[bytes], timeout: float = 120) -> list[bytes]:
    """Send each payload on its socket, then shut its write side; read each echo until EOF; all
    at once, as a host program with several streams would."""
    selector = selectors.DefaultSelector()
    sent = [0] * len(socks)
    echoed = [bytearray() for _ in socks]
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)
    open_count = len(socks)
    end = time.monotonic() + timeout
    while open_count and time.monotonic() < end:
        for key, events in selector.select(1):
            index, sock = key.data, key.fileobj
            if events & selectors.EVENT_WRITE:
                try:
                    sent[index] += sock.send(payloads[index][sent[index] : sent[index] + (1 << 16)])
                except BlockingIOError:
                    pass
                if sent[index] == len(payloads[index]):
                    sock.shutdown(socket.SHUT_WR)
                    selector.modify(sock, selectors.EVENT_READ, index)
            if events & selectors.EVENT_READ:
                chunk = sock.recv(1 << 16)
                if chunk:
                    echoed[index] += chunk
                else:
                    selector.unregister(sock)
                    open_count -= 1
    return [bytes(e) for e in echoed]


def test_streams_echo_megabytes_and_the_guest_reaches_a_host_listener(short_dir):
    path = f"{short_dir}/vm.sock"
    received: dict = {}
    listener = host_listener(path, received)
    image = str(build_guest("vsock_echo"))
    cmdline = (f"port={ECHO_PORT} host_port={HOST_PORT} refused_port={NOBODY_PORT} out_bytes={OUT_BYTES} "
               f"streams={STREAMS} timeout_s=120 hostile=1")
    proc = subprocess.Popen(vmkit_command("run", "--kernel", image, "--memory", "64", "--cmdline", cmdline,
                                          "--vsock", path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        console = Console(proc.stdout)
        console.wait_for("RESULT listening=")
        listener.join(30)
        assert received.get("data") == pattern(OUT_BYTES)         # the guest's own stream arrived whole

        nobody, line = connect(path, 4242)                       # nobody listens on 4242 in the guest
        assert line == b"" and nobody.recv(16) == b""
        rng = random.Random(20261125)
        payloads = [rng.randbytes(STREAM_BYTES) for _ in range(STREAMS)]
        socks, ports = [], set()
        for _ in range(STREAMS):
            sock, line = connect(path, ECHO_PORT)
            assert line.startswith(b"OK ") and line.endswith(b"\n"), line
            ports.add(int(line[3:]))
            socks.append(sock)
        assert len(ports) == STREAMS and min(ports) >= 1 << 30
        echoed = echo_all(socks, payloads)
        for index, (sent, back) in enumerate(zip(payloads, echoed, strict=True)):
            assert len(back) == len(sent), (index, len(back))
            assert hashlib.sha256(back).digest() == hashlib.sha256(sent).digest(), index
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    results = console.results()
    assert status == 1, (status, proc.stderr.read().decode(errors="replace"), console.lines)   # exit(0)
    assert results["vsock_cid"] == "3"
    assert results["connect_out"] == "ok" and results["out_sent"] == str(OUT_BYTES)
    assert results["connect_refused"] == "1"
    assert results["echo_streams"] == str(STREAMS) and results["echo_bytes"] == str(STREAMS * STREAM_BYTES)
    assert int(results["max_concurrent"]) >= 2                    # the streams were open side by side
    assert results["credit_violations"] == "0" and results["odd_packets"] == "0"
    # hostile packets after the echo: dropped ones leave the device working (status 0xf: DRIVER_OK),
    # a chain too short for a header makes it DEVICE_NEEDS_RESET (0x40); reset, it answers again
    assert results["hostile_len_past_chain"] == results["hostile_other_cid"] == "f"
    assert results["hostile_still_answers"] == "1"
    assert int(results["hostile_short_header"], 16) & 0x40
    assert results["hostile_after_reset"] == "1"
    assert results["vsock_echo"] == "pass"


def test_a_machine_with_vsock_saves_and_restores_through_the_device_walk(machine_factory, short_dir):
    """The device manager's walk: a vsock device a guest drove saves its CID beside the transport's
    state, and restores into a machine built afresh (streams are not saved: it owes the driver a
    transport reset event); a machine with another CID refuses the state."""
    from vmkit.devices.state import StateError
    from vmkit.devices.virtio.pci_transport import STATUS_DRIVER_OK
    from vmkit.devices.virtio.vsock.spec import VsockSpec
    from vmkit.devices.virtio.vsock.state import VsockState

    def config(name: str, cid: int = 3) -> dict:
        return {"memory_mib": 64, "cmdline": f"streams=0 refused_port={NOBODY_PORT}",
                "links": (VsockSpec(f"{short_dir}/{name}", cid),)}

    first, console = machine_factory("vsock_echo", **config("a"))
    first.start()
    result = first.wait(60)
    assert result is not None and result.status == 1, console.text[-2000:]
    assert "RESULT connect_refused=1" in console.text
    saved = first.devices.save()
    vsock = saved.virtio[-1]
    assert vsock.device == VsockState(3) and vsock.transport.status & STATUS_DRIVER_OK
    assert vsock.transport.queues[0].next_used > 0 and vsock.transport.queues[1].next_used > 0   # RST, REQUEST
    first.close()

    second, _ = machine_factory("vsock_echo", **config("b"))
    second.devices.restore(saved)
    assert second.devices.save() == saved
    assert second.devices.virtio[-1].function.device.reset_event_due

    other, _ = machine_factory("vsock_echo", **config("c", cid=4))
    with pytest.raises(StateError, match=r"guest_cid: 3 is not this device's \(4\)"):
        other.devices.restore(saved)
