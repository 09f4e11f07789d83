"""Every way `vmkit run` can be misused gets one clear line and exit status 125."""

import struct

import pytest


@pytest.mark.parametrize("args,message", [
    (["--kernel", "/nonexistent/vmlinux"], "kernel '/nonexistent/vmlinux' does not exist"),
    (["--kernel", "/etc/hostname"], "not a bzImage, an ELF vmlinux or a PVH ELF kernel"),
    (["--kernel", "/tmp"], "is a directory"),
    (["--memory", "1"], "memory: 1 MiB is out of range"),
    (["--cpus", "300"], "vcpus: 300 is out of range"),
    (["--guest", "nope"], "no guest program 'nope'"),
    (["--initrd", "/nonexistent"], "initrd '/nonexistent' does not exist"),
    (["--console", "/nonexistent/dir/log"], "--console '/nonexistent/dir/log' does not exist"),
])
def test_bad_options(vmkit, args, message):
    done = vmkit("run", *args)
    assert done.returncode == 125, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_initrd_too_large_for_memory(vmkit, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(40 << 20))
    done = vmkit("run", "--memory", "32", "--initrd", str(initrd))
    assert done.returncode == 125 and "is 40.0 MiB, more than the 32.0 MiB it may be here" in done.stderr
    initrd.write_bytes(bytes(31 << 20))              # smaller than RAM, but not above the kernel
    done = vmkit("run", "--memory", "32", "--initrd", str(initrd))
    assert done.returncode == 125 and "initrd is 31.0 MiB but only" in done.stderr


def _elf_loading_at(paddr: int) -> bytes:
    """A minimal ELF64 x86-64 file with one 4 KiB PT_LOAD segment at `paddr`."""
    header = struct.pack("<4sBBBB8sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, bytes(8), 2, 62, 1,
                         paddr, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, paddr, paddr, 120, 4096, 4096)
    return header + segment


def test_kernel_too_big_for_memory(vmkit, tmp_path):
    kernel = tmp_path / "high.elf"
    kernel.write_bytes(_elf_loading_at(64 << 20))
    done = vmkit("run", "--memory", "32", "--kernel", str(kernel))
    assert done.returncode == 125
    assert "ELF segment 0 at [0x4000000, 0x4001000) is outside guest RAM (32 MiB)" in done.stderr


@pytest.mark.parametrize("args,message", [
    (["--cpus", "0"], "must be a positive number"),
    (["--memory", "lots"], "is not a number"),
    (["--boot-protocol", "uefi"], "invalid choice"),
])
def test_argument_errors(vmkit, args, message):
    done = vmkit("run", *args)
    assert done.returncode == 125 and message in done.stderr
    assert len(done.stderr.splitlines()) == 1
