"""Linux, end to end: `vmkit stop` shuts a Linux guest down through its ACPI power button. ONE boot
of the image through the daemon, with an ext4 disk: the command mounts it, writes a file and sleeps;
`vmkit stop` presses the button, the image's acpid and init stop every process, sync, unmount the
disk and power off, well before the timeout; the file is on the disk afterwards and the file system
was unmounted cleanly.

Slow on PVM hosts (the kernel runs in KVM's instruction emulator: a minute or two per boot here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from tests.integration.test_daemon import Daemon, running_daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT_S = 900
STOP_TIMEOUT_S = 600         # `vmkit stop -t`: far more than a graceful shutdown takes, even on PVM
NOTE = "written just before the stop"


@pytest.fixture(scope="module")
def daemon():
    with running_daemon("vkp") as running:
        yield running


def _wait_for_log(daemon: Daemon, name: str, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = daemon.ok("logs", name)
        if re.search(rf"^{marker}\r?$", log, re.MULTILINE):       # its own line, not the command's
            return log
        vm = daemon.vm(name)
        assert vm["state"] == "running", f"the VM ended before {marker!r}:\n{log[-3000:]}"
        assert time.monotonic() < deadline, f"{marker!r} not seen in {timeout} s:\n{log[-3000:]}"
        time.sleep(1)


def test_stop_shuts_linux_down_through_the_power_button(image, daemon, tmp_path):
    mke2fs = shutil.which("mke2fs") or "/sbin/mke2fs"
    disk = tmp_path / "disk.ext4"
    subprocess.run([mke2fs, "-q", "-t", "ext4", str(disk), "16M"], check=True)
    command = (f"mkdir /tmp/d && mount -t ext4 /dev/vda /tmp/d && echo '{NOTE}' > /tmp/d/note.txt"
               " && grep /tmp/d /proc/mounts && echo NOTE-''WRITTEN && exec sleep 3600")   # not the marker itself
    assert daemon.ok("run", "-d", "--name", "lin", "--image", image, "--memory", "256", "--cmdline", "panic=-1",
                     "--disk", str(disk), "--", "sh", "-c", command) == "lin\n"
    before = _wait_for_log(daemon, "lin", "NOTE-WRITTEN", BOOT_TIMEOUT_S)
    assert "ACPI: button: Power Button [PWRB]" in before                  # the DSDT's PNP0C0C, bound

    started = time.monotonic()
    stopped = daemon.cli("stop", "-t", str(STOP_TIMEOUT_S), "lin", timeout=STOP_TIMEOUT_S + 60)
    took = time.monotonic() - started
    assert stopped.returncode == 0 and stopped.stdout == "lin\n", stopped.stderr
    log = daemon.ok("logs", "lin")
    vm = daemon.vm("lin")
    assert vm["state"] == "exited", vm
    assert vm["exit"]["kind"] == "poweroff" and vm["status"] == 0, (vm, log[-3000:])   # not SIGTERM, not a kill
    assert took < STOP_TIMEOUT_S / 2, took
    shutdown = log[re.search(r"^NOTE-WRITTEN\r?$", log, re.MULTILINE).start():]
    assert "vmkit-init: power button: stopping processes, unmounting file systems, powering off" in shutdown
    assert "vmkit-init: powering off" in shutdown
    assert "reboot: Power down" in shutdown
    assert "VMKIT_EXIT_STATUS=" not in shutdown                         # the command did not end by itself

    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    found = subprocess.run([debugfs, "-R", "cat /note.txt", str(disk)], capture_output=True, text=True)
    assert found.stdout == NOTE + "\n", found.stderr + log[-6000:]
    header = subprocess.run([shutil.which("dumpe2fs") or "/sbin/dumpe2fs", "-h", str(disk)],
                            capture_output=True, text=True).stdout
    assert "Filesystem state:         clean" in header and "needs_recovery" not in header, header
    checked = subprocess.run(["/sbin/e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
