"""Build commands (gcc, make, patch) run as process groups that die with the build, and temporary
files in the cache that name their owner. Standard library only.

Each command leads a session of its own (start_new_session=True): the terminal's Ctrl-C reaches
vmkit only, and vmkit decides. When waiting for the command ends in any exception
(KeyboardInterrupt, the exception the CLI raises in the main thread on SIGTERM or SIGHUP, an
error in vmkit), the whole group gets SIGTERM, a short grace to exit (make deletes its
half-written targets, gcc its temporary files), then SIGKILL; it is reaped, and only then does
the exception go on, so the caller can remove what the command left.

Temporary paths are named NAME.PID.RANDOM.tmp (or another suffix) next to where the result goes,
and are locked (flock) while their owner works in them. remove_stale() deletes the ones whose
owner is gone: a vmkit killed with SIGKILL gets no chance to clean up, the next build does it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

GRACE_S = 3.0            # from SIGTERM to SIGKILL; ends as soon as the group has exited
KILL_WAIT_S = 5.0        # after SIGKILL, how long to wait for the group to be gone
STOP_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}   # what stops vmkit
PR_SET_PDEATHSIG = 1

Command = Sequence[str | os.PathLike]


# --- running commands ------------------------------------------------------------------------------

def run(command: Command, *, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
        input: bytes | None = None, grace_s: float = GRACE_S,
        death_signal: int = signal.SIGKILL) -> subprocess.CompletedProcess[bytes]:
    """Run `command` to its end; its stdout and stderr come back as bytes. No pipes: the input
    and the outputs are unnamed temporary files, which leave nothing behind whatever happens."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr, \
            (tempfile.TemporaryFile() if input is not None else open(os.devnull, "rb")) as stdin:
        if input is not None:
            stdin.write(input)
            stdin.seek(0)
        with process_group(command, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                           grace_s=grace_s, death_signal=death_signal) as proc:
            pass
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(list(command), proc.returncode, stdout.read(), stderr.read())


def stream(command: Command, on_line: Callable[[str], None], *, cwd: str | os.PathLike | None = None,
           env: dict[str, str] | None = None, grace_s: float = GRACE_S,
           death_signal: int = signal.SIGKILL) -> int:
    """Run `command`, handing each line of its output (stdout and stderr together) to on_line as
    it comes; returns the exit status."""
    with process_group(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                       grace_s=grace_s, death_signal=death_signal) as proc:
        assert proc.stdout is not None          # stdout=PIPE
        for line in proc.stdout:
            on_line(line)
    return proc.returncode


@contextmanager
def process_group(command: Command, *, grace_s: float = GRACE_S, death_signal: int = signal.SIGKILL,
                  **popen_args) -> Iterator[subprocess.Popen]:
    """Start `command` as the leader of a new session and process group. The with-body talks to
    it; at the end of the body the command is waited for. If the body or the waiting raises
    anything, the group is killed and reaped before the exception goes on. Processes of the
    group still running when the leader exits are killed too: nothing of a build outlives it.

    death_signal goes to the command if vmkit dies without cleaning up (SIGKILL)."""
    with signals_held():   # a Ctrl-C now would lose the Popen: the child would run on, unowned
        proc = subprocess.Popen(command, start_new_session=True,
                                preexec_fn=_child_setup(os.getpid(), death_signal), **popen_args)
    try:
        try:
            yield proc
            _wait_exited(proc.pid)
            # The leader exited but is not reaped yet, so its pid cannot name another group.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        except BaseException:
            _kill_group(proc, grace_s)
            raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGHUP, SIGINT and SIGTERM back for a short step that must not be split (starting a child,
    applying a patch); they take effect right after it. Holds them in this thread only: with
    other threads running, the process's signals may be taken there."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _libc_prctl():
    import ctypes  # only when a build runs: not on the path of a cached start
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _child_setup(parent: int, death_signal: int) -> Callable[[], None]:
    """What the child does between fork and exec.

    PR_SET_PDEATHSIG makes the kernel send death_signal to the child when vmkit dies, SIGKILL
    included. What it does not cover: only the direct child gets it (the gcc driver, make), not
    its children (cc1, as, ld, make's jobs), which run on to their end or until their parent's
    own cleanup stops them; it follows the thread that started the child, not the process (a
    build started from a thread that then exits loses its child); exec of a set-user-ID program
    clears it. What a killed build leaves in the cache, remove_stale() removes at the next build."""
    prctl = _libc_prctl()   # loaded before fork: the child only calls it

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent:     # vmkit died before the line above took effect
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # held by the parent: see above
    return setup


def _wait_exited(pid: int) -> None:
    """Block until `pid` has exited, without reaping it (interruptible by signal handlers)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_running(pgid: int) -> bool:
    """Is any process of group `pgid` still running (not a zombie)?"""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _wait_group(pgid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _group_running(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the group, up to grace_s for it to exit, SIGKILL, reap. A second interrupt
    during the grace cuts it short: the SIGKILL and the reaping happen regardless."""
    pgid = proc.pid   # the leader is not reaped before the end: the group id stays its own
    try:
        _signal_group(pgid, signal.SIGTERM)
        _wait_group(pgid, grace_s)
    finally:
        with signals_held():
            _signal_group(pgid, signal.SIGKILL)
            _wait_group(pgid, KILL_WAIT_S)   # gone before the caller removes their files
            proc.wait()


# --- temporary paths that name their owner ---------------------------------------------------------

_OWNED = re.compile(r"^(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+(?P<suffix>\.[a-z]+)$")


@contextmanager
def owned_tempdir(parent: Path, name: str, suffix: str = ".tmp") -> Iterator[Path]:
    """A directory parent/NAME.PID.RANDOM.SUFFIX, locked for as long as the with-body runs, and
    removed at its end whatever happens: move what should stay out of it before."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}.{os.getpid()}.", suffix=suffix, dir=parent))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _lock(fd)
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path next to `target` (TARGET.PID.RANDOM.tmp) for the with-body to write; it
    replaces `target` atomically at the end, or is removed if the body raises."""
    fd, name = tempfile.mkstemp(prefix=f"{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        _lock(fd)
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def remove_tree(path: Path, suffix: str = ".tmp") -> None:
    """Remove a directory tree so that no interruption can leave a part of it under its name: it
    is renamed to PATH.PID.RANDOM.SUFFIX first, which remove_stale() finishes if this process dies."""
    doomed = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale(directory: Path, suffix: str = ".tmp") -> list[Path]:
    """Remove the NAME.PID.RANDOM.SUFFIX entries of `directory` whose owner is gone: no process
    PID here, and no lock held on it (a live owner in another PID namespace keeps its lock).
    Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _OWNED.match(path.name)
        if match is None or match["suffix"] != suffix or _pid_alive(int(match["pid"])):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # its owner is alive
            os.close(fd)
            continue
        except OSError:           # no locks on this file system: the pid decides alone
            pass
        try:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:   # a file system without locks: the pid in the name is the only mark
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
