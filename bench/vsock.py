"""vsock throughput: a host program's streams echoed by a guest through vmkit's virtio-vsock, against
the same host program and an echo process on the other end of plain Unix socket pairs.

    python3 -m bench.vsock [--runs N] [--mib M] [--streams S] [--output PATH]

QEMU is not compared: its vsock is vhost-vsock-pci, which needs /dev/vhost-vsock, and this host has
none. The guest is the guest kit's vsock_echo (vmkit/guest/programs/vsock_echo.c: polled queues,
64 KiB rx buffers), booted with 1 vCPU and 64 MiB and `--vsock PATH`. The host program opens S
streams with `CONNECT 1234`, sends M MiB of random bytes on each and reads the echo back at the same
time (one selector loop, 64 KiB sends and reads), and times from the first byte sent to the last
byte echoed; every byte is checked. Reported: medians of the rate (MiB/s of payload one way, all
streams together) and, for vmkit, its CPU time per MiB (the process's user + system time, all
threads, less its vCPU's guest time, sampled before and after the transfer; as bench.blk measures
it). The baseline is the same host program against S socketpairs whose other ends a separate
Python process echoes (one thread per stream): the cost of the host program and of Unix sockets
alone. Runs are interleaved after one unrecorded warm-up round; before each round the bench waits
until other processes keep at most --max-load threads runnable, and records the load.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.blk import TICK, sample
from bench.common import (
    install_vmkit_venv,
    median,
    others_running,
    source_revision,
    table,
    vmkit_command,
    wait_for_quiet,
)
from vmkit.guest import build_guest

ECHO_PORT = 1234
CHUNK = 1 << 16
# The baseline's echo process: one thread per inherited socket, echoing until EOF.
ECHO_PROCESS = """
import socket, sys, threading
def echo(fd):
    s = socket.socket(fileno=fd)
    while data := s.recv(65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threads = [threading.Thread(target=echo, args=(int(fd),)) for fd in sys.argv[1:]]
for t in threads: t.start()
for t in threads: t.join()
"""


def pump(socks: list[socket.socket], payloads: list[bytes]) -> tuple[float, list[bytes]]:
    """Send each payload on its socket (then shut the sending side) while reading the echoes back
    until EOF; the seconds from the first byte sent to the last byte echoed, and the echoes."""
    selector = selectors.DefaultSelector()
    sent = [0] * len(socks)
    echoed = [bytearray() for _ in socks]
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)
    open_streams = len(socks)
    start = time.perf_counter()
    while open_streams:
        events = selector.select(30)
        if not events:
            raise SystemExit(f"no progress for 30 s: sent {sent}, echoed {[len(e) for e in echoed]}")
        for key, mask in events:
            index = key.data
            sock = socks[index]
            if mask & selectors.EVENT_WRITE:
                try:
                    sent[index] += sock.send(memoryview(payloads[index])[sent[index] : sent[index] + CHUNK])
                except BlockingIOError:
                    pass
                if sent[index] == len(payloads[index]):
                    sock.shutdown(socket.SHUT_WR)
                    selector.modify(sock, selectors.EVENT_READ, index)
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(CHUNK)
                except BlockingIOError:
                    continue
                if data:
                    echoed[index] += data
                else:
                    selector.unregister(sock)
                    open_streams -= 1
    return time.perf_counter() - start, [bytes(e) for e in echoed]


def check(payloads: list[bytes], echoed: list[bytes], where: str) -> None:
    for index, (sent, back) in enumerate(zip(payloads, echoed, strict=True)):
        if hashlib.sha256(sent).digest() != hashlib.sha256(back).digest():
            raise SystemExit(f"{where}: stream {index} echoed {len(back)} bytes that differ from the {len(sent)} sent")


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(f"CONNECT {ECHO_PORT}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise SystemExit(f"the guest refused CONNECT {ECHO_PORT}")
        line += byte
    if not line.startswith(b"OK "):
        raise SystemExit(f"unexpected answer {line!r}")
    return sock


def run_vmkit(launcher: str, guest: str, payloads: list[bytes], workdir: str) -> tuple[float, float]:
    """One boot: the transfer's seconds and the VMM's CPU seconds during it."""
    path = f"{workdir}/vm.sock"
    cmdline = f"port={ECHO_PORT} streams={len(payloads)} timeout_s=300"
    command = [*vmkit_command(launcher, guest), "--vsock", path, "--cmdline", cmdline]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    console, errors = proc.stdout, proc.stderr
    assert console is not None and errors is not None
    results: dict[str, str] = {}
    listening = threading.Event()

    def read_console() -> None:
        for raw in console:
            line = raw.decode(errors="replace").strip()
            if line.startswith("RESULT ") and "=" in line:
                key, _, value = line[7:].partition("=")
                results[key] = value
                if key == "listening":
                    listening.set()

    reader = threading.Thread(target=read_console, daemon=True)
    reader.start()
    try:
        if not listening.wait(60):
            raise SystemExit(f"vsock_echo did not start: {errors.read()[-800:]!r}")
        socks = [connect(path) for _ in payloads]
        before = sample(proc.pid)
        seconds, echoed = pump(socks, payloads)
        after = sample(proc.pid)
        for sock in socks:
            sock.close()
        check(payloads, echoed, "vmkit")
        proc.wait(60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if proc.returncode != 1 or results.get("vsock_echo") != "pass":
        raise SystemExit(f"vsock_echo failed: status {proc.returncode}, results {results}")
    return seconds, (after.vmm - before.vmm) / TICK


def run_socketpairs(payloads: list[bytes]) -> float:
    """The same host program against an echo process over socketpairs: the transfer's seconds."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in payloads]
    far = [b.fileno() for _, b in pairs]
    echo = subprocess.Popen([sys.executable, "-c", ECHO_PROCESS, *map(str, far)], pass_fds=far)
    for _, b in pairs:
        b.close()
    seconds, echoed = pump([a for a, _ in pairs], payloads)
    echo.wait(60)
    check(payloads, echoed, "socketpair")
    for a, _ in pairs:
        a.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="recorded rounds (default 5)")
    parser.add_argument("--mib", type=int, default=16, help="MiB sent on each stream (default 16)")
    parser.add_argument("--streams", type=int, default=1, help="streams at once (default 1)")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="wait until other processes keep at most this many threads runnable (default 0.5)")
    parser.add_argument("--load-wait", type=float, default=300, help="longest wait for it, seconds (default 300)")
    parser.add_argument("--output", default="bench/results/vsock-latest.md")
    args = parser.parse_args()
    launcher = install_vmkit_venv()
    revision = source_revision()
    guest = str(build_guest("vsock_echo"))
    rng = random.Random(1234)
    payloads = [rng.randbytes(args.mib << 20) for _ in range(args.streams)]
    total_mib = args.mib * args.streams
    rates: dict[str, list[float]] = {"vmkit": [], "socketpair": []}
    cpu_per_mib: list[float] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vsk", dir="/tmp") as workdir:
        run_vmkit(launcher, guest, payloads, workdir)                       # warm-up
        run_socketpairs(payloads)
        for round_index in range(args.runs):
            loads.append(wait_for_quiet(args.max_load, poll_s=5, limit_s=args.load_wait, load=others_running))
            order = ["vmkit", "socketpair"] if round_index % 2 == 0 else ["socketpair", "vmkit"]
            for name in order:
                if name == "vmkit":
                    seconds, cpu = run_vmkit(launcher, guest, payloads, workdir)
                    cpu_per_mib.append(cpu * 1e3 / total_mib)
                else:
                    seconds = run_socketpairs(payloads)
                rates[name].append(total_mib / seconds)
                print(f"round {round_index + 1} {name}: {total_mib / seconds:.1f} MiB/s", file=sys.stderr, flush=True)
    vmkit_rate, pair_rate = median(rates["vmkit"]), median(rates["socketpair"])
    rows: list[tuple[str, ...]] = [
        ("echo rate (MiB/s, one way)", f"{vmkit_rate:.1f}", f"{pair_rate:.1f}", f"{vmkit_rate / pair_rate:.2f}"),
        ("vmkit CPU per MiB (ms)", f"{median(cpu_per_mib):.2f}", "", ""),
    ]
    report = "\n".join([
        f"# vsock echo: vmkit against a Unix socket pair ({revision})", "",
        f"{args.streams} stream(s) of {args.mib} MiB each, echoed; medians of {args.runs} rounds; "
        f"other processes' runnable threads before each round: {', '.join(f'{x:.2f}' for x in loads)}.", "",
        table(rows, ("measure", "vmkit virtio-vsock", "socketpair + echo process", "vmkit / socketpair")), "",
        "Every round: " + "; ".join(f"{name} " + ", ".join(f"{r:.1f}" for r in values)
                                    for name, values in rates.items()) + " MiB/s.", ""])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
