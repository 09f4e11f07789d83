"""Linux, end to end: build the image from distribution packages, boot it with 1 and 2 vCPUs.

Slow on PVM hosts (the kernel runs in KVM's instruction emulator: about a minute per boot here,
a few minutes for the first image build). What the guest reaches depends on the host:

* where `syscall` enters ring 0 (hardware KVM), the init runs the command, prints its status
  and powers the VM off, and vmkit exits with the command's status;
* on PVM hosts that keep `syscall` in ring 3 (see docs/linux-guests.md), the kernel boots to its
  init, which is killed at its first system call; with panic=-1 the VM then resets.
"""

import re

import pytest

from tests.conftest import run_vmkit
from vmkit.cli import syscall_reaches_ring0
from vmkit.images import store
from vmkit.vmm.guest_profiler import elf_symbols

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


def symbols(name: str) -> dict[str, int]:
    return {symbol: address for address, symbol in elf_symbols(store.load(name).kernel.read_bytes())}


@pytest.mark.parametrize("cpus", [1, 2])
def test_linux_boots_to_its_init(image, cpus):
    done = run_vmkit("run", "--image", image, "--cpus", str(cpus), "--memory", "256", "--cmdline", "panic=-1",
                     "--", "echo", "hello-from-linux", timeout=BOOT_TIMEOUT_S)
    out = done.stdout
    assert "Linux version 6.1." in out                                   # the kernel banner
    assert f"smp: Brought up 1 node, {cpus} CPU" in out                  # every vCPU found
    memory = re.search(r"Memory: (\d+)K/(\d+)K available", out)
    assert memory and 240_000 <= int(memory.group(2)) <= 262_144         # its 256 MiB
    assert "Run /init as init process" in out
    if syscall_reaches_ring0():
        assert "hello-from-linux" in out and "VMKIT_EXIT_STATUS=0" in out
        assert done.returncode == 0 and "the command exited with status 0" in done.stderr
    else:
        syscall_entry = symbols(image)["entry_SYSCALL_64"]
        assert f"init[1]: segfault at {syscall_entry:x} ip {syscall_entry:x}" in out   # fetched in ring 3
        assert done.returncode == 2, done.stderr                         # panic=-1: the VM resets
        assert "syscall` from guest ring 3 does not enter ring 0" in done.stderr
