"""Guest builds that are interrupted or killed leave nothing behind; the compiler's identity is cached.

These run the real compiler (gcc) in a fresh cache directory: no part of the build is faked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from vmkit.guest import build as guest_build

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

COMPILER_PARTS = {"cc1", "as"}


class Proc(NamedTuple):
    comm: str
    state: str
    ppid: int
    pgrp: int


def _processes() -> dict[int, Proc]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        comm = stat[stat.index(b"(") + 1: stat.rindex(b")")].decode(errors="replace")
        found[int(entry)] = Proc(comm, fields[0].decode(), int(fields[1]), int(fields[2]))
    return found


def _descendants(root: int, processes: dict[int, Proc]) -> set[int]:
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, proc in processes.items() if proc.ppid in frontier} - found
        found |= frontier
    return found


def _mentions(pid: int, text: str) -> bool:
    """Does process `pid` name `text` in its working directory, command line or environment?"""
    needle = text.encode()
    try:
        if needle in os.readlink(f"/proc/{pid}/cwd").encode():
            return True
    except OSError:
        pass
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as handle:
                if needle in handle.read():
                    return True
        except OSError:
            pass
    return False


def _left_of_build(cache: Path, groups: set[int], seen: set[int]) -> list[str]:
    """Running (not zombie) processes that belong to the build: in one of its process groups, seen
    as its descendants, or naming its cache directory."""
    left = []
    for pid, proc in _processes().items():
        if pid == os.getpid() or proc.state in ("Z", "X"):
            continue
        if proc.pgrp in groups or pid in seen or _mentions(pid, str(cache)):
            left.append(f"{pid} {proc.comm} state {proc.state} group {proc.pgrp}")
    return left


def _is_executable_elf(path: Path) -> bool:
    """A linked program (ELF type ET_EXEC), not the object file of an assembler that ran on."""
    with open(path, "rb") as handle:
        header = handle.read(18)
    return header[:4] == b"\x7fELF" and header[16:18] == b"\x02\x00"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


class Build(NamedTuple):
    proc: subprocess.Popen
    cache: Path
    seen: set[int]          # every descendant seen while it ran
    children: set[int]      # the direct ones among them (the compiler driver)
    groups: set[int]        # their process groups, other than the test's


@pytest.fixture
def interrupted_build(tmp_path):
    """start() -> Build: `vmkit build-guest hello` in a fresh cache, once a compiler (cc1 or as)
    runs under it. Whatever is left of it is killed at teardown."""
    started: list[Build] = []

    def start() -> Build:
        cache = tmp_path / "cache"
        env = {**os.environ, "VMKIT_CACHE_DIR": str(cache)}
        proc = subprocess.Popen([sys.executable, "-m", "vmkit", "build-guest", "hello"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        build = Build(proc, cache, set(), set(), set())
        started.append(build)
        deadline = time.monotonic() + 20
        while True:
            processes = _processes()
            below = _descendants(proc.pid, processes)
            build.seen.update(below)
            build.children.update(pid for pid in below if processes[pid].ppid == proc.pid)
            build.groups.update(processes[pid].pgrp for pid in below if pid in processes)
            if any(processes[pid].comm in COMPILER_PARTS for pid in below):
                build.groups.discard(os.getpgrp())
                return build
            if proc.poll() is not None:
                pytest.fail(f"the build ended before a compiler was seen running: {proc.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail("no compiler ran under `vmkit build-guest hello` within 20 s")
            time.sleep(0.002)

    yield start
    for build in started:
        if build.proc.poll() is None:
            build.proc.kill()
            build.proc.wait()
        for group in build.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass


def _stop_and_check(build: Build, signum: int) -> int:
    os.kill(build.proc.pid, signum)
    try:
        status = build.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"vmkit did not exit within 15 s of {signal.Signals(signum).name}")
    if signum == signal.SIGTERM and status == -signal.SIGTERM:
        pytest.xfail("the CLI does not turn SIGTERM into an exception yet: vmkit died at once (-15), "
                     "so nothing could clean up")
    assert status != 0
    left = _left_of_build(build.cache, build.groups, build.seen)
    assert not left, "processes of the interrupted build still run:\n" + "\n".join(left)
    assert list(build.cache.rglob("*.tmp")) == []
    assert list(build.cache.rglob("*.elf")) == []
    return status


def test_sigint_during_a_build_kills_the_compiler_and_removes_its_files(interrupted_build):
    _stop_and_check(interrupted_build(), signal.SIGINT)


def test_sigterm_during_a_build_kills_the_compiler_and_removes_its_files(interrupted_build):
    _stop_and_check(interrupted_build(), signal.SIGTERM)


def test_what_a_sigkilled_build_leaves_is_removed_by_the_next_build(interrupted_build, monkeypatch):
    build = interrupted_build()
    build.proc.kill()
    build.proc.wait()
    deadline = time.monotonic() + 10                                  # cc1 and as finish their file
    while _left_of_build(build.cache, set(), set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    running = {pid for pid, proc in _processes().items() if proc.state not in ("Z", "X")}
    assert build.children and not running & build.children, "the compiler driver outlived vmkit"
    linked = [path for path in build.cache.rglob("*") if path.is_file() and _is_executable_elf(path)]
    assert not linked, "the driver died with vmkit (PR_SET_PDEATHSIG): nothing was linked"
    left = list(build.cache.rglob("*.tmp"))
    assert left, "a build killed outright leaves its work directory"
    out_dir = left[0].parent

    ours = out_dir / f"hello.elf.{os.getpid()}.abcdefgh.tmp"          # its owner runs: kept
    ours.write_bytes(b"")
    dead = out_dir / f"poweroff.elf.{_dead_pid()}.abcdefgh.tmp"       # its owner is gone: removed
    dead.write_bytes(b"")
    monkeypatch.setenv("VMKIT_CACHE_DIR", str(build.cache))
    image = guest_build.build_guest("hello")
    assert image.parent == out_dir and image.read_bytes()[:4] == b"\x7fELF"
    assert sorted(build.cache.rglob("*.tmp")) == [ours]


def test_a_changed_compiler_gives_another_digest_and_an_unchanged_one_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VMKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CC", raising=False)
    with_gcc = guest_build.build_guest("hello")

    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec gcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    with_wrapper = guest_build.build_guest("hello")
    assert with_wrapper.parent != with_gcc.parent
    assert "--version" in log.read_text()

    log.write_text("")
    assert guest_build.build_guest("hello") == with_wrapper
    assert log.read_text() == "", "an unchanged compiler is not run again to learn its identity"

    wrapper.write_text(f'#!/bin/sh\n# changed\necho "$*" >> {log}\nexec gcc "$@"\n')
    changed = guest_build.build_guest("hello")
    assert changed.parent not in (with_gcc.parent, with_wrapper.parent)
    assert "--version" in log.read_text()
    assert list((tmp_path / "cache").rglob("*.tmp")) == []
