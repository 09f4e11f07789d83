"""How soon after exec `vmkit-firecracker` takes connections on its API socket, and answers GET /.

    python3 bench/firecracker_ready.py [--runs N] [--program PATH]

Each run starts the program with a fresh --api-sock, polls connect() on it (every 100 us) until one
succeeds (the socket listens: a client's connect no longer fails), then sends GET / on that
connection and waits for the answer (the server is up). It prints the median and the worst of each,
from the moment before the exec, and for scale the median time of `python3 -c pass`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"


def program() -> list[str]:
    found = shutil.which("vmkit-firecracker")
    if found is not None:
        real = os.path.realpath(found)    # a version manager's shim would add its own start-up
        return [real]
    return [sys.executable, "-m", "vmkit.api.firecracker"]


def one_run(command: list[str], folder: str, index: int) -> tuple[float, float]:
    path = os.path.join(folder, f"api{index}.sock")
    begin = time.perf_counter()
    process = subprocess.Popen([*command, "--api-sock", path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                client.close()
                if process.poll() is not None:
                    raise RuntimeError(f"{command} exited with {process.returncode} before it listened") from None
                time.sleep(0.0001)
        ready = time.perf_counter() - begin
        client.sendall(REQUEST)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                raise RuntimeError("the connection closed before an answer")
            answer += chunk
        answered = time.perf_counter() - begin
        client.close()
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"GET / answered {answer[:40]!r}")
        return ready, answered
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def python_start(runs: int) -> float:
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--program", help="the program to start (default: vmkit-firecracker on PATH)")
    args = parser.parse_args()
    command = [args.program] if args.program else program()
    with tempfile.TemporaryDirectory() as folder:
        results = [one_run(command, folder, index) for index in range(args.runs)]
    ready = [r for r, _ in results]
    answered = [a for _, a in results]
    print(f"program: {' '.join(command)} ({args.runs} runs)")
    print(f"exec -> accept-ready (connect succeeds): median {statistics.median(ready) * 1000:.1f} ms, "
          f"worst {max(ready) * 1000:.1f} ms")
    print(f"exec -> GET / answered:                  median {statistics.median(answered) * 1000:.1f} ms, "
          f"worst {max(answered) * 1000:.1f} ms")
    print(f"python3 -c pass, for scale:              median {python_start(args.runs) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
