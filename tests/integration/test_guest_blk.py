"""The guest's virtio-blk driver (runtime/virtio_blk.c) and its programs, blk_check and blk_bench,
against raw disk images that the host prepares and reads back.

They run against vmkit's device, and with `--vmm qemu` against QEMU's virtio-blk-pci. The
hostile-chain results asserted here are what QEMU 7.2 does, and vmkit is held to more: the cases
QEMU lets through must be refused too (blk_check strict=1).
"""

import hashlib
import sys
from array import array

import pytest

SECTOR = 512
MUL = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1
HOST_TAG = 0x686F73745F706174       # "host_pat": what the host writes (blk_check host_pattern=1)
GUEST_TAG = 0x67756573745F7772      # "guest_wr": what blk_check leaves in its signature zones
DISK_MIB = 16
CAPACITY = DISK_MIB * 2048

# The chains blk_check must see refused, by an error status or by DEVICE_NEEDS_RESET.
HOSTILE = ["status_missing", "status_readable", "status_readable_in", "header_writable", "header_short",
           "data_outside_in", "data_outside_out", "data_straddling_ram_end"]
# Those QEMU 7.2 completes with status OK (1-page bounce buffer, a wrap to guest page 0).
LET_THROUGH_BY_QEMU = ["data_wrapping", "data_outside_in_page", "data_outside_out_page", "status_outside"]


def pattern(first_sector: int, sectors: int, tag: int) -> bytes:
    """Word i of the disk (8 bytes, little-endian) holds i * MUL ^ tag, as blk_check's pattern()."""
    first = first_sector * SECTOR // 8
    words = array("Q", (((first + i) * MUL) & MASK ^ tag for i in range(sectors * SECTOR // 8)))
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()


def read_sectors(path, first_sector: int, sectors: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(first_sector * SECTOR)
        return f.read(sectors * SECTOR)


def hostile_fields(value: str) -> dict[str, str]:
    """'returned:0 status:none used:0 devstatus:4f' -> {'returned': '0', ...}"""
    return dict(item.split(":", 1) for item in value.split())


@pytest.fixture
def disk(tmp_path):
    """A 16 MiB raw image holding the host pattern everywhere."""
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(0, CAPACITY, HOST_TAG))
    return path


def test_blk_check_writes_what_the_host_reads(boot, disk):
    strict = "strict=1" if boot.vmm == "vmkit" else ""
    done = boot("blk_check", cmdline=f"host_pattern=1 {strict}".strip(), disks=[(disk, False)])
    results = done.results()
    assert done.returncode == 1, done.stdout + done.stderr          # exit(0)
    assert results["blk_check"] == "pass"
    assert results["capacity"] == str(CAPACITY) and results["blk_size"] == "512"
    assert results["serial"] == "vmkit-test-serial"
    assert results["ro_offered"] == "0"
    assert int(results["sweep_pairs"]) == 49 and results["scatter_gather"] == "ok"
    assert results["flush"] == "ok"
    assert results["read_past_end"] == results["read_across_end"] == results["write_past_end"] == "ioerr"
    assert results["unknown_type"] == "unsupp"
    assert results["msix_interrupts"] == "4"
    for name in HOSTILE:
        fields = hostile_fields(results[f"hostile_{name}"])
        assert int(fields["devstatus"], 16) & 0x40, (name, fields)   # DEVICE_NEEDS_RESET
        assert fields["returned"] == "0" and fields["status"] in ("none", "unwritten"), (name, fields)
    for name in LET_THROUGH_BY_QEMU:
        assert f"hostile_{name}" in results

    # The host finds what the guest wrote, and the host's pattern where the guest wrote nothing.
    sig = int(results["sig_sector"])
    assert sig == CAPACITY * 3 // 8 and results["sig_sectors"] == "256"
    assert read_sectors(disk, sig, 256) == pattern(sig, 256, GUEST_TAG)
    assert read_sectors(disk, CAPACITY - 16, 16) == pattern(CAPACITY - 16, 16, GUEST_TAG)
    assert read_sectors(disk, CAPACITY // 4, 256) == pattern(CAPACITY // 4, 256, HOST_TAG)
    if results["discard"] == "ok":
        assert results["discard_zeroed"] == "1"
        assert read_sectors(disk, int(results["discard_sector"]), 256) == bytes(256 * SECTOR)
    if results["write_zeroes"] == "ok":
        assert read_sectors(disk, int(results["write_zeroes_sector"]), 254) == bytes(254 * SECTOR)


def test_blk_check_read_only_disk(boot, disk):
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    done = boot("blk_check", cmdline="ro=1 host_pattern=1", disks=[(disk, True)])
    results = done.results()
    assert done.returncode == 1, done.stdout + done.stderr
    assert results["blk_check"] == "pass"
    assert results["ro_offered"] == "1" and results["ro_write"] == "ioerr"
    assert results["write_past_end"] == "ioerr"
    assert results.get("discard", "ioerr") != "ok" and results.get("write_zeroes", "ioerr") != "ok"
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_blk_check_without_a_disk_fails_clearly(boot):
    done = boot("blk_check")
    assert done.returncode == 7 and done.results()["blk_fail"] == "no_device"     # exit(3)


def test_blk_bench_short(boot, tmp_path):
    image = tmp_path / "bench.img"
    with open(image, "wb") as f:
        f.truncate(DISK_MIB << 20)
    done = boot("blk_bench", cmdline="size_mib=16 ops=400", disks=[(image, False)])
    results = done.results()
    assert done.returncode == 1, done.stdout + done.stderr
    assert results["blk_bench"] == "done" and results["errors"] == "0"
    assert results["region_mib"] == "16"
    for key in ("seqwrite_mibps", "seqread_mibps", "randread_qd1_iops", "randread_qd32_iops"):
        assert int(results[key]) > 0, key
    assert results["randread_qd1_ops"] == results["randread_qd32_ops"] == "400"
