"""The fork server: one process that has imported vmkit and forks a VM process per request.

The daemon starts it with one end of a SOCK_SEQPACKET socket pair. Each request is one message,
{"dir": STATE_DIR, "args": [...], "cwd": DIR}; the answer is one message carrying the read end of a
pipe on which the new VM process reports "ok PID" or "error MESSAGE" (vm_process.py). The VM process
is forked twice and starts a session of its own, so it belongs to neither the fork server nor the
daemon's terminal: the daemon, a child subreaper, adopts it and reaps it. The fork server runs no
threads (a fork copies only the calling thread), and ends when the daemon's end of the pair closes.

What a VM process costs in memory is the pages it writes after the fork (CPython writes reference
counts into every object it touches): so before serving, the fork server imports everything, runs
one short VM through (what a first VM builds lazily is then shared), freezes its heap for the
collector, and lets KSM merge the pages the VM processes write alike.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

MAX_REQUEST = 1 << 20
SPAWN_TIMEOUT_SECONDS = 10.0
PR_SET_MEMORY_MERGE = 67


def allow_page_merging() -> bool:
    """Let the kernel's same-page merging (KSM) merge this process's private anonymous pages and
    those of the processes it forks (prctl PR_SET_MEMORY_MERGE, Linux 6.4 and later). The VM
    processes' Python heaps are alike page for page: where the host runs KSM
    (/sys/kernel/mm/ksm/run is 1) it merges them (measured: 4.7 -> 1.8 MiB PSS per idle VM). Guest
    RAM is a shared memfd mapping, which KSM does not merge. False where the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0


def warm() -> None:
    """Import what every VM process needs, build the argument parser and run one VM through, so no
    VM pays for them; then freeze the heap out of the garbage collector's reach, so a VM process's
    collections do not touch (and copy) the pages it shares with the fork server."""
    import vmkit.guest  # noqa: F401
    import vmkit.vmm.builder  # noqa: F401
    import vmkit.vmm.console  # noqa: F401
    import vmkit.vmm.guest_profiler  # noqa: F401
    from vmkit.daemon.vm_process import run_parser
    from vmkit.vmm.host import host_kind

    host_kind()
    run_parser()
    rehearse()
    gc.collect()
    gc.freeze()


def rehearse(guest: str = "hello", limit_seconds: float = 10.0) -> None:
    """Run one short VM (`guest`) as a VM process runs its VM, and forget it: what a first VM builds
    lazily (caches, compiled patterns, ctypes types, thread machinery) is then built here, in pages
    the VM processes share, not once in each (measured: 0.41 MiB less PSS per VM). A guest still
    running after `limit_seconds` is stopped. Best effort: a VM that cannot run here (no compiler
    for the guest, no /dev/kvm) says so when a request asks for one."""
    import contextlib
    import io
    import tempfile
    import time

    from vmkit.daemon.vm_process import Report, VmProcess
    from vmkit.daemon.vmdir import VmDir
    from vmkit.guest import build_guest

    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory(prefix="vmkit-forksrv-") as scratch:
            vmdir = VmDir(Path(scratch) / "rehearsal")
            vmdir.create({"name": "rehearsal"})
            read_end, write_end = os.pipe()
            report = Report(write_end)
            process = VmProcess(vmdir, ["--kernel", str(build_guest(guest))], scratch)
            timer = threading.Timer(limit_seconds, process.request_stop)
            timer.start()
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    process.run(report)
            finally:
                timer.cancel()
                timer.join()
                report.say("done")                     # closes its end if the run did not
                os.close(read_end)
    except Exception:                                  # only a warm-up
        pass
    finally:
        os.chdir(cwd)
    deadline = time.monotonic() + 2.0                  # its control thread ends once its socket closed
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def _fork_vm(channel: socket.socket, request: dict[str, object]) -> int:
    """Fork the VM process for `request`; the read end of its report pipe."""
    from vmkit.daemon import vm_process
    from vmkit.daemon.vmdir import VmDir

    directory, args, cwd = request.get("dir"), request.get("args"), request.get("cwd")
    if not (isinstance(directory, str) and isinstance(cwd, str) and isinstance(args, list)
            and all(isinstance(arg, str) for arg in args)):
        raise ValueError("malformed fork request")
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:                                    # the intermediate: a new session, then gone
        try:
            channel.close()
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                vm_process.main(VmDir(Path(directory)), list(args), cwd, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    return read_end


def serve(channel: socket.socket) -> None:
    while True:
        try:
            message = channel.recv(MAX_REQUEST)
        except InterruptedError:
            continue
        if not message:
            return                                    # the daemon is gone
        try:
            request = json.loads(message)
            if not isinstance(request, dict):
                raise ValueError("a fork request is a JSON object")
            report = _fork_vm(channel, request)
        except (ValueError, OSError) as exc:
            channel.send(json.dumps({"error": str(exc)}).encode())
            continue
        try:
            socket.send_fds(channel, [b'{"ok": true}'], [report])
        finally:
            os.close(report)


def main() -> None:
    from vmkit.daemon.vm_process import set_process_name

    set_process_name("vmkit-forksrv")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=int(sys.argv[1]))
    allow_page_merging()
    warm()
    channel.send(b'{"ready": true}')
    serve(channel)


class ForkServer:
    """The daemon's handle on its fork server: started on first use, started again if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channel: socket.socket | None = None
        self.pid: int | None = None
        self.starts = 0                       # fork servers started (metrics: restarts are the rest)

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            theirs.set_inheritable(True)
            pid = os.posix_spawn(sys.executable,
                                 [sys.executable, "-m", "vmkit.daemon.forkserver", str(theirs.fileno())],
                                 dict(os.environ), setsid=True)
        finally:
            theirs.close()
        ours.settimeout(60.0)                 # the first start imports everything
        try:
            ready = ours.recv(64)
        except OSError:
            ready = b""
        if ready != b'{"ready": true}':
            ours.close()
            raise OSError("the fork server did not start")
        ours.settimeout(SPAWN_TIMEOUT_SECONDS)
        self._channel, self.pid = ours, pid
        self.starts += 1

    def ensure_started(self) -> None:
        with self._lock:
            if self._channel is None:
                self._start()

    def died(self, pid: int) -> None:
        """The reaper saw fork server `pid` end: unless one was started since, the next request
        starts a new one."""
        with self._lock:
            if pid != self.pid:
                return
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self.pid = None

    def spawn(self, directory: Path, args: list[str], cwd: str) -> int:
        """Fork a VM process; the read end of its report pipe (the caller closes it)."""
        message = json.dumps({"dir": str(directory), "args": args, "cwd": cwd}).encode()
        with self._lock:
            for _attempt in range(2):
                if self._channel is None:
                    self._start()
                channel = self._channel
                assert channel is not None
                try:
                    channel.send(message)
                except OSError:                           # it had died: start another, ask once more
                    channel.close()
                    self._channel = None
                    continue
                try:
                    answer, fds, _, _ = socket.recv_fds(channel, 4096, 1)
                except OSError:
                    answer, fds = b"", []
                if answer and fds:
                    return fds[0]
                for fd in fds:
                    os.close(fd)
                if answer:
                    raise OSError(json.loads(answer).get("error", "the fork server refused the request"))
                channel.close()                           # it died while forking: not asked again,
                self._channel = None                      # lest the VM be forked twice
                raise OSError("the fork server died while forking the VM process")
            raise OSError("the fork server cannot be started")

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


if __name__ == "__main__":
    main()
