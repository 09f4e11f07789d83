"""Image building blocks: the cpio writer, the initramfs, the image store and the exit marker."""

import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from vmkit.cli import ExitMarker, command_parameter
from vmkit.images import kernel, store
from vmkit.images.cpio import CpioWriter
from vmkit.images.initramfs import APPLETS, InitramfsError, build_initramfs, find_busybox


def test_cpio_archive_unpacks_with_the_system_cpio(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    archive = CpioWriter()
    archive.directory("bin")
    archive.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    archive.symlink("bin/hi", "hello")
    (tmp_path / "out").mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive.finish(), cwd=tmp_path / "out", check=True)
    assert (tmp_path / "out/bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "out/bin/hello").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out/bin/hi").readlink().name == "hello"


def test_initramfs_holds_init_busybox_and_applet_links():
    try:
        find_busybox()
    except InitramfsError:
        pytest.skip("busybox-static is not installed")
    data = build_initramfs()
    assert data[:6] == b"070701" and len(data) % 512 == 0
    for name in (b"init\0", b"bin/busybox\0", b"bin/vmkit-agent\0", b"bin/vmkit-power-button\0", b"dev/console\0",
                 b"TRAILER!!!\0"):
        assert name in data
    assert all(f"bin/{applet}\0".encode() in data for applet in APPLETS)


def test_initramfs_refuses_a_dynamic_busybox(tmp_path):
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF" + b"\0" * 100 + b"/lib64/ld-linux-x86-64.so.2")
    import vmkit.images.initramfs as initramfs
    original = initramfs.BUSYBOX_PATHS
    initramfs.BUSYBOX_PATHS = (str(fake),)
    try:
        with pytest.raises(InitramfsError, match="apt-get install busybox-static"):
            find_busybox()
    finally:
        initramfs.BUSYBOX_PATHS = original


def test_exit_marker_reads_the_status_and_passes_everything_on():
    seen = bytearray()
    marker = ExitMarker(seen.extend)
    for chunk in (b"boot...\nVMKIT_EXIT_", b"STATUS=42\r\n", b"reboot: Power down\n"):
        marker.write(chunk)
    assert marker.status == 42
    assert seen == b"boot...\nVMKIT_EXIT_STATUS=42\r\nreboot: Power down\n"


def test_store_errors_name_the_image(tmp_path, monkeypatch):
    monkeypatch.setenv("VMKIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(store.ImageError, match="no image named 'linux'.*vmkit image build"):
        store.load("linux")
    path = tmp_path / "images" / "linux"
    path.mkdir(parents=True)
    store.save_manifest(path, {"inputs": "x"})
    with pytest.raises(store.ImageError, match="incomplete: vmlinux is missing"):
        store.load("linux")
    assert [image.name for image in store.list_images()] == ["linux"]
    store.remove("linux")
    assert store.list_images() == []
    with pytest.raises(store.ImageError, match="no image named 'linux'"):
        store.remove("linux")


def test_missing_build_tools_are_named_with_their_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool in ("bc", "flex") else "/usr/bin/" + tool)
    with pytest.raises(kernel.KernelBuildError, match="apt-get install bc flex"):
        kernel.check_tools()


def _diff(path: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        f"a/{path}", f"b/{path}"))


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch is not installed")
def test_kernel_patches_apply_once_and_follow_changes(tmp_path, monkeypatch):
    tree, patches = tmp_path / "tree", tmp_path / "patches"
    (tree / "mm").mkdir(parents=True)
    patches.mkdir()
    source = tree / "mm" / "fault.c"
    original = "one\ntwo\nthree\n"
    source.write_text(original)
    monkeypatch.setattr(kernel, "PATCHES_DIR", patches)
    applied: list[str] = []

    (patches / "0001-two.patch").write_text(_diff("mm/fault.c", original, "one\nTWO\nthree\n"))
    kernel._apply_patches(tree, applied.append)
    kernel._apply_patches(tree, applied.append)            # already applied: nothing to do
    assert source.read_text() == "one\nTWO\nthree\n"
    assert applied == ["applying 0001-two.patch"]

    (patches / "0001-two.patch").write_text(_diff("mm/fault.c", original, "one\n2\nthree\n"))
    kernel._apply_patches(tree, applied.append)            # changed: the old one is reverted first
    assert source.read_text() == "one\n2\nthree\n"

    (patches / "0001-two.patch").unlink()
    kernel._apply_patches(tree, applied.append)            # gone: reverted
    assert source.read_text() == original

    (patches / "0001-broken.patch").write_text(_diff("mm/fault.c", "no such\nlines\n", "at all\n"))
    with pytest.raises(kernel.KernelBuildError, match="applying kernel patch 0001-broken.patch failed"):
        kernel._apply_patches(tree, applied.append)


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch is not installed")
def test_a_kernel_patch_that_does_not_fit_leaves_the_tree_as_it_was(tmp_path, monkeypatch):
    tree, patches = tmp_path / "tree", tmp_path / "patches"
    (tree / "mm").mkdir(parents=True)
    patches.mkdir()
    (tree / "mm" / "a.c").write_text("one\n")
    (tree / "mm" / "b.c").write_text("two\n")
    monkeypatch.setattr(kernel, "PATCHES_DIR", patches)
    (patches / "0001-half.patch").write_text(_diff("mm/a.c", "one\n", "ONE\n")          # fits
                                            + _diff("mm/b.c", "no such line\n", "TWO\n"))  # does not
    with pytest.raises(kernel.KernelBuildError, match="applying kernel patch 0001-half.patch failed"):
        kernel._apply_patches(tree, lambda line: None)
    assert (tree / "mm" / "a.c").read_text() == "one\n"       # not half applied
    assert not (tree / kernel.APPLIED_PATCHES / "0001-half.patch").exists()
    assert not (tree / kernel.PATCHING).exists()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_kernel_source_extraction_cleans_up_after_killed_and_half_patched_builds(tmp_path):
    top = tmp_path / "linux-source-9.9"
    top.mkdir()
    (top / "Makefile").write_text("all:\n")
    source = tmp_path / "linux-source-9.9.tar.xz"
    with tarfile.open(source, "w:xz") as archive:
        archive.add(top, arcname="linux-source-9.9")
    build_root = tmp_path / "build"
    stale = build_root / f"linux-source-9.9.{_dead_pid()}.abcdefgh.partial"   # a killed vmkit's
    (stale / "linux-source-9.9").mkdir(parents=True)
    running = build_root / f"linux-source-9.9.{os.getpid()}.abcdefgh.partial"  # a running one's
    running.mkdir()
    said: list[str] = []

    tree = kernel._extract(source, build_root, said.append)
    assert (tree / "Makefile").read_text() == "all:\n"
    assert sorted(build_root.iterdir()) == [tree, running]
    assert kernel._extract(source, build_root, said.append) == tree and len(said) == 1   # kept

    (tree / kernel.PATCHING).touch()                       # a patch was being applied when killed
    (tree / "half-patched").touch()
    kernel._extract(source, build_root, said.append)
    assert sorted(p.name for p in tree.iterdir()) == ["Makefile"]
    assert "extracting it again" in said[1]
    assert sorted(build_root.iterdir()) == [tree, running]


def _group_running(pgid: int) -> list[int]:
    running = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            running.append(int(entry))
    return running


def _wait_for_file(path, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)
    return path.read_text()


def test_an_interrupted_kernel_build_step_kills_every_process_it_started(tmp_path):
    pids = tmp_path / "pids"
    script = (f"echo $$ > {pids}; sleep 60 & echo $! >> {pids}; sleep 60 & echo $! >> {pids}; "
              "for i in $(seq 100); do echo \"  CC file$i.o\"; done; wait")

    def progress(line: str) -> None:
        raise KeyboardInterrupt                # what Ctrl-C raises in the middle of `make -j`

    with pytest.raises(KeyboardInterrupt):
        kernel._run(["sh", "-c", script], tmp_path, "make vmlinux", progress, re.compile(r"\s+CC\s"))
    shell, *sleeps = map(int, pids.read_text().split())
    assert len(sleeps) == 2
    assert _group_running(shell) == []         # the shell led a group of its own; all of it is gone
    for pid in (shell, *sleeps):
        with contextlib.suppress(FileNotFoundError):
            assert Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")


def test_make_gets_sigterm_when_vmkit_dies_outright(tmp_path):
    """PR_SET_PDEATHSIG: a SIGKILLed vmkit still stops `make`, with SIGTERM, so that it can stop
    its jobs and delete what they left half-written."""
    pid_file, got = tmp_path / "pid", tmp_path / "got"
    script = f"trap 'echo TERM > {got}; exit 1' TERM; echo $$ > {pid_file}; sleep 60 & wait"
    builder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from vmkit.images import kernel; "
                                "kernel._run(['sh', '-c', sys.argv[1]], Path('.'), 'make', print)", script],
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(kernel.__file__).parents[2])})
    try:
        _wait_for_file(pid_file)
        builder.kill()
        builder.wait()
        assert _wait_for_file(got) == "TERM\n"
    finally:
        builder.kill()
        builder.wait()
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)   # the orphaned sleep


@pytest.mark.parametrize("argv", [
    ["uname", "-a"],
    ["sh", "-c", "uname -a; nproc", "sh", "a b", "c'd", '"q"', "$HOME", "`id`", "", "line\nbreak", "tab\there"],
    ["printf", "%s|", "ünïcode", "*", "~", ";", "&&", "\\"],
])
def test_a_command_reaches_init_as_the_same_argv(argv):
    """What the image's init does with vmkit.cmd= (decode, then `eval "set -- ..."`), done by busybox's
    sh here: the argv comes back exactly, and nothing in it is expanded or run."""
    parameter = command_parameter(argv)
    assert parameter.startswith("vmkit.cmd=") and " " not in parameter      # one word on the kernel line
    encoded = parameter.removeprefix("vmkit.cmd=")
    script = 'eval "set -- $(echo "$1" | base64 -d)"; for a in "$@"; do printf "%s\\0" "$a"; done'
    done = subprocess.run(["busybox", "sh", "-c", script, "init", encoded], capture_output=True, check=True)
    assert done.stdout.decode().split("\0")[:-1] == argv
    assert command_parameter([]) == ""
