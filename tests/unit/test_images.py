"""Image building blocks: the cpio writer, the initramfs, the image store and the exit marker."""

import difflib
import shutil
import subprocess

import pytest

from vmkit.cli import ExitMarker
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
    for name in (b"init\0", b"bin/busybox\0", b"dev/console\0", b"TRAILER!!!\0"):
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
