"""Linux, end to end: build the image from distribution packages, boot it with 1 and 2 vCPUs,
run a command in it and get its output and exit status back.

Slow on PVM hosts (the kernel runs in KVM's instruction emulator: about two minutes per boot
here, several minutes for the first image build). There `syscall` from user mode does not enter
ring 0; the image's kernel carries a patch that makes those system calls from its page-fault
handler (docs/linux-guests.md), so the same checks hold on PVM and on hardware KVM.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import run_vmkit

# A cold image build (extract, configure, compile) takes several minutes on 2 cores: more than the
# suite's default per-test limit, which also covers fixture set-up.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def image():
    built = run_vmkit("image", "build", "linux", timeout=3600)
    assert built.returncode == 0, built.stdout + built.stderr
    listed = run_vmkit("image", "list")
    assert listed.stdout.startswith("linux\tLinux 6.1.")
    return "linux"


# The second command counts the guest's CPUs and shows that every argument arrives exactly as given:
# spaces, quotes, a $ and an empty one, with no shell on the way to split or expand them.
ARGV_SCRIPT = 'nproc; printf "<%s>" "$@"; echo; exit 3'


@pytest.mark.parametrize(("cpus", "command", "output", "status"), [
    (1, ["echo", "hello-from-linux"], r"^hello-from-linux\r?$", 0),
    (2, ["sh", "-c", ARGV_SCRIPT, "sh", "a b", "c'd", "$HOME", ""], r"^2\r?\n<a b><c'd><\$HOME><>\r?$", 3),
])
def test_linux_boots_and_runs_a_command(image, cpus, command, output, status):
    done = run_vmkit("run", "--image", image, "--cpus", str(cpus), "--memory", "256", "--cmdline", "panic=-1",
                     "--", *command, timeout=BOOT_TIMEOUT_S)
    out = done.stdout
    assert "Linux version 6.1." in out                                   # the kernel banner
    assert f"smp: Brought up 1 node, {cpus} CPU" in out                  # every vCPU found
    memory = re.search(r"Memory: (\d+)K/(\d+)K available", out)
    assert memory and 240_000 <= int(memory.group(2)) <= 262_144         # its 256 MiB
    assert "Run /init as init process" in out
    assert f"vmkit-init: running: {shlex.join(command)}" in out          # init got exactly the command
    assert re.search(output, out, re.MULTILINE), out[-3000:]             # its output, through the UART
    assert f"VMKIT_EXIT_STATUS={status}" in out
    assert done.returncode == status, done.stderr
    assert f"the command exited with status {status}" in done.stderr
    assert "does not enter ring 0" not in done.stderr                    # no warning: the image copes


def test_linux_reads_and_writes_an_ext4_disk(image, tmp_path):
    """One boot, several checks: the guest finds its virtio disk, mounts the ext4 file system the
    host made, hashes a file from it, writes a file, and the host finds that file afterwards."""
    mke2fs = shutil.which("mke2fs") or "/sbin/mke2fs"
    content = tmp_path / "content"
    content.mkdir()
    payload = os.urandom(300_000)
    (content / "data.bin").write_bytes(payload)
    disk = tmp_path / "disk.ext4"
    subprocess.run([mke2fs, "-q", "-t", "ext4", "-d", str(content), str(disk), "16M"], check=True)
    command = ("mkdir /tmp/m && mount -t ext4 /dev/vda /tmp/m && busybox sha256sum /tmp/m/data.bin"
               " && echo written-by-the-guest > /tmp/m/from-guest.txt && umount /tmp/m")
    done = run_vmkit("run", "--image", image, "--memory", "256", "--cmdline", "panic=-1",
                     "--disk", str(disk), "--", "sh", "-c", command, timeout=BOOT_TIMEOUT_S)
    out = done.stdout
    assert "virtio_blk virtio0: [vda] 32768 512-byte logical blocks" in out, out[-3000:]
    assert re.search(rf"^{hashlib.sha256(payload).hexdigest()}  /tmp/m/data.bin\r?$", out, re.MULTILINE), out[-3000:]
    assert done.returncode == 0, done.stderr
    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    found = subprocess.run([debugfs, "-R", "cat /from-guest.txt", str(disk)], capture_output=True, text=True)
    assert found.stdout == "written-by-the-guest\n"
    checked = subprocess.run(["/sbin/e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr        # the guest left it clean
