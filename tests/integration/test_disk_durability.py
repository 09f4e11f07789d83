"""Acknowledged writes are on the disk: the guest writes numbered sectors, FLUSHes, and says how far
it got; vmkit is killed with SIGKILL at a random moment, and every sector the guest saw flushed must
hold its data. A qcow2 image killed mid-write must pass `qemu-img check` (leaks allowed)."""

import random
import shutil
import struct
import subprocess
import threading
import time

import pytest

SECTOR = 512
MUL = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1


def expected_sector(index: int, tag: int) -> bytes:
    return struct.pack("<Q", (((index + 1) * MUL) & MASK) ^ tag) * (SECTOR // 8)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("image_format", ["raw", "qcow2"])
def test_flushed_writes_survive_sigkill(spawn, tmp_path, image_format, seed):
    qemu_img = shutil.which("qemu-img")
    assert qemu_img, "qemu-img is needed as the oracle: apt-get install qemu-utils"
    image = tmp_path / f"disk.{image_format}"
    subprocess.run([qemu_img, "create", "-q", "-f", image_format, str(image), "8M"], check=True)
    proc = spawn("run", "--guest", "blk_durability", "--disk", f"{image},format={image_format}",
                 "--cmdline", f"tag={seed}", stdin=subprocess.DEVNULL)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not any(line.startswith(b"FLUSHED") for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, b"".join(lines).decode(errors="replace")
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.05, 0.6))
    proc.kill()                                                  # SIGKILL: no clean-up of any kind
    proc.wait(30)
    reader.join(10)
    # only whole lines: the kill may cut the last one short ("FLUSHED 12" of "FLUSHED 120")
    flushed = max(int(line.split()[1]) for line in lines if line.startswith(b"FLUSHED ") and line.endswith(b"\n"))
    assert flushed > 0
    if image_format == "qcow2":
        checked = subprocess.run([qemu_img, "check", str(image)], capture_output=True, text=True)
        assert checked.returncode in (0, 3), checked.stdout + checked.stderr     # 3: leaked clusters only
        raw = tmp_path / "as.raw"
        subprocess.run([qemu_img, "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
        data = raw.read_bytes()
    else:
        data = image.read_bytes()
    lost = [i for i in range(flushed) if data[i * SECTOR : (i + 1) * SECTOR] != expected_sector(i, seed)]
    assert lost == [], f"{len(lost)} of {flushed} flushed sectors lost, first {lost[:5]}"
