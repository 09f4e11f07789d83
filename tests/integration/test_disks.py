"""Disks end to end: `vmkit disk create/info`, the guest kit's blk_check on raw and qcow2 images under
vmkit, read-only disks, image locks between two VMs, and bad --disk values."""

import shutil
import subprocess
import time

import pytest

QEMU_IMG = shutil.which("qemu-img")


def qemu_img(*args):
    assert QEMU_IMG, "qemu-img is needed as the oracle: apt-get install qemu-utils"
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True)


def test_disk_create_and_info_agree_with_qemu_img(vmkit, tmp_path):
    base, overlay = tmp_path / "base.raw", tmp_path / "overlay.qcow2"
    assert vmkit("disk", "create", str(base), "64M").returncode == 0
    assert base.stat().st_size == 64 << 20
    assert vmkit("disk", "create", str(overlay), "--backing", str(base)).returncode == 0
    assert qemu_img("check", str(overlay)).returncode == 0
    assert '"virtual-size": 67108864' in qemu_img("info", "--output=json", str(overlay)).stdout
    shown = vmkit("disk", "info", str(overlay)).stdout
    assert f"{overlay}: qcow2, virtual size 67108864 bytes" in shown and f"backing: {base}: raw" in shown
    again = vmkit("disk", "create", str(overlay), "1G")
    assert again.returncode == 125 and "already exists" in again.stderr


def _run_blk_check(vmkit, disk, *extra):
    return vmkit("run", "--guest", "blk_check", "--memory", "64", "--disk", disk, *extra)


@pytest.mark.parametrize("kind", ["raw", "qcow2", "qcow2 over raw"])
def test_the_guest_reads_back_what_it_wrote(vmkit, tmp_path, kind):
    image = tmp_path / "disk"
    if kind == "raw":
        subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    elif kind == "qcow2":
        assert qemu_img("create", "-q", "-f", "qcow2", str(image), "16M").returncode == 0
    else:
        base = tmp_path / "base.raw"
        base.write_bytes(b"\x5a" * (16 << 20))
        assert qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(image)).returncode == 0
    done = _run_blk_check(vmkit, str(image))
    assert done.results().get("blk_check") == "pass", done.stdout[-3000:] + done.stderr
    assert done.returncode == 1
    if kind != "raw":
        assert qemu_img("check", str(image)).returncode == 0          # vmkit's qcow2 writes are sound


def test_a_read_only_disk_is_refused_writes(vmkit, tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(16 << 20))
    done = _run_blk_check(vmkit, f"{image},ro", "--cmdline", "ro=1")
    assert done.results().get("ro_offered") == "1", done.stdout[-2000:]
    assert done.results().get("blk_check") == "pass", done.stdout[-3000:]
    assert image.read_bytes() == bytes(16 << 20)


def test_a_writable_image_is_locked_against_a_second_vm(spawn, vmkit, tmp_path):
    image = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    first = spawn("run", "--guest", "serial_echo", "--disk", str(image), stdin=subprocess.PIPE)
    assert first.stdout.readline() == b"READY\n"
    second = vmkit("run", "--guest", "hello", "--disk", str(image))
    assert second.returncode == 125 and str(image) in second.stderr and "lock" in second.stderr
    assert len(second.stderr.splitlines()) == 1
    first.stdin.write(b"bye\n")
    first.stdin.flush()
    assert first.wait(30) == 1
    time.sleep(0.1)
    assert vmkit("run", "--guest", "hello", "--disk", str(image)).returncode == 1   # free again


@pytest.mark.parametrize("value,message", [
    ("{tmp}/missing.raw", "does not exist"),
    ("{tmp}", "directory"),
    ("{tmp}/disk.raw,format=vmdk", "format='vmdk' is not one of raw, qcow2"),
    ("{tmp}/disk.raw,cache=sometimes", "cache='sometimes' is not one of"),
    ("{tmp}/disk.raw,bogus", "unknown option 'bogus'"),
    (",ro", "the path is missing"),
    ("{tmp}/bad.qcow2", "qcow2"),
])
def test_bad_disk_values_are_one_line_naming_the_disk(vmkit, tmp_path, value, message):
    (tmp_path / "disk.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "bad.qcow2").write_bytes(b"QFI\xfb" + bytes(100))           # a qcow2 magic, a broken header
    done = vmkit("run", "--disk", value.format(tmp=tmp_path))
    assert done.returncode == 125, done.stderr
    assert message in done.stderr and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("limit,key,low,high", [
    ("iops=150", "randread_qd1_iops", 100, 190),      # 150 requests a second, at QD1 and QD32 alike
    ("iops=150", "randread_qd32_iops", 100, 190),
    ("bps=2097152", "seqread_mibps", 1, 3),           # 2 MiB a second of 1 MiB reads
])
def test_rate_limits_hold_the_guest_to_its_share(vmkit, tmp_path, limit, key, low, high):
    image = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    done = vmkit("run", "--guest", "blk_bench", "--memory", "128", "--disk", f"{image},{limit}",
                 "--cmdline", "seconds=2")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    assert low <= int(done.results()[key]) <= high, done.stdout[-2000:]


@pytest.mark.parametrize("value,message", [
    ("iops=0", "iops='0' is not a whole number from 1"),
    ("bps=-5", "bps='-5' is not a whole number"),
    ("iops=1e3", "iops='1e3'"),
])
def test_bad_rate_limits_are_refused(vmkit, tmp_path, value, message):
    (tmp_path / "disk.raw").write_bytes(bytes(1 << 20))
    done = vmkit("run", "--disk", f"{tmp_path / 'disk.raw'},{value}")
    assert done.returncode == 125 and message in done.stderr


@pytest.mark.parametrize("args,message", [
    (["create", "{tmp}/a.raw", "100"], "'100' must be a positive multiple of 512 bytes"),
    (["create", "{tmp}/a.raw", "lots"], "'lots' is not a size"),
    (["create", "{tmp}/a.raw"], "give a SIZE"),
    (["create", "{tmp}/a.raw", "1M", "--format", "raw", "--backing", "{tmp}/b.raw"], "only qcow2 images can have a backing"),
    (["create", "{tmp}/a.qcow2", "--backing", "{tmp}/missing.raw"], "missing.raw"),
    (["create", "{tmp}/no/such/dir/a.raw", "1M"], "a.raw"),
    (["info", "{tmp}/missing.raw"], "does not exist"),
])
def test_bad_disk_commands_are_one_line(vmkit, tmp_path, args, message):
    done = vmkit("disk", *(arg.format(tmp=tmp_path) for arg in args))
    assert done.returncode == 125, done.stderr
    assert message in done.stderr and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
