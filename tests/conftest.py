"""Shared fixtures: running the vmkit command, and building machines that always get torn down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from vmkit.guest import build_guest
from vmkit.vmm.builder import build_machine
from vmkit.vmm.config import VmConfig
from vmkit.vmm.host import host_kind

ON_PVM = host_kind() == "pvm"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def results(self) -> dict[str, str]:
        """The guest's RESULT key=value lines."""
        pairs = {}
        for line in self.stdout.splitlines():
            if line.startswith("RESULT ") and "=" in line:
                key, _, value = line[7:].partition("=")
                pairs[key] = value
        return pairs


def vmkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmkit", *args]


def run_vmkit(*args: str, input: bytes | None = None, timeout: float = 120) -> Finished:
    proc = subprocess.run(vmkit_command(*args), input=input, capture_output=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)
    return Finished(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


@pytest.fixture
def vmkit():
    return run_vmkit


@pytest.fixture
def spawn():
    """spawn(*vmkit_args, **popen_kwargs) -> Popen of `vmkit ...`; killed at teardown if still running,
    so a failing test never leaves a VM behind."""
    started: list[subprocess.Popen] = []

    def start(*args: str, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(vmkit_command(*args), **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def pytest_addoption(parser):
    parser.addoption("--vmm", choices=("vmkit", "qemu"), default="vmkit",
                     help="VMM the guest-kit tests boot their images with (default vmkit)")


QEMU_MICROVM = ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
                "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]


QEMU_DEVICES = {"virtio-rng": "virtio-rng-pci,disable-legacy=on"}


def qemu_disk_args(index: int, path: str, readonly: bool) -> list[str]:
    """A raw image as a modern virtio-blk-pci device (discard=unmap: a DISCARD punches a hole)."""
    drive = (f"file={path.replace(',', ',,')},if=none,id=d{index},format=raw,cache=writeback,discard=unmap"
             + (",readonly=on" if readonly else ""))
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive=d{index},disable-legacy=on,serial={disk_serial(index)}"]


def disk_serial(index: int) -> str:
    """The serial each VMM gives the test's disk `index`."""
    return "vmkit-test-serial" + (str(index) if index else "")


@pytest.fixture
def boot(request):
    """boot(guest, cpus=1, memory_mib=64, cmdline="", devices=(), disks=()) -> Finished, under the
    VMM chosen by --vmm. `disks`: (path, readonly) pairs, each a raw image behind a virtio-blk
    device (vmkit: `--disk PATH[,ro]`; QEMU: virtio-blk-pci)."""
    vmm = request.config.getoption("--vmm")

    def run(guest: str, cpus: int = 1, memory_mib: int = 64, cmdline: str = "",
            devices: tuple[str, ...] = (), disks=()) -> Finished:
        image = str(build_guest(guest))
        disks = [(str(path), bool(readonly)) for path, readonly in disks]
        if vmm == "vmkit":
            extra = [arg for name in devices for arg in ("--device", name)]
            extra += [arg for index, (path, readonly) in enumerate(disks)
                      for arg in ("--disk", f"{path},serial={disk_serial(index)}" + (",ro" if readonly else ""))]
            return run_vmkit("run", "--kernel", image, "--cpus", str(cpus), "--memory", str(memory_mib),
                             "--cmdline", cmdline, *extra)
        machine = QEMU_MICROVM[3] + (",pcie=on" if devices or disks else "")
        command = [*QEMU_MICROVM[:3], machine, *QEMU_MICROVM[4:], "-smp", str(cpus), "-m", str(memory_mib),
                   "-kernel", image]
        for name in devices:
            command += ["-device", QEMU_DEVICES[name]]
        for index, (path, readonly) in enumerate(disks):
            command += qemu_disk_args(index, path, readonly)
        if devices or disks:   # QEMU microvm describes its ECAM only in AML; tell the guest where it is
            cmdline = f"{cmdline} pci_ecam=0xe0000000".strip()
        if cmdline:
            command += ["-append", cmdline]
        proc = subprocess.run(command, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        return Finished(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    run.vmm = vmm
    return run


class ConsoleBuffer:
    """Collects guest console output; wait_for() blocks until a marker shows up."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data.extend(chunk)

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def wait_for(self, marker: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker!r} not seen in guest output:\n{self.text}")
            time.sleep(0.01)


@pytest.fixture
def machine_factory(request):
    """make(guest_name, **config) -> (machine, console). Machines are closed after the test;
    on failure, each machine's console output is printed."""
    made = []

    def make(guest: str = "hello", variant: str = "pvh", **overrides):
        console = ConsoleBuffer()
        config = VmConfig(kernel=build_guest(guest, variant).read_bytes(), kernel_name=guest,
                          console_output=console.write, **overrides)
        machine = build_machine(config)
        made.append((machine, console))
        return machine, console

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for machine, console in made:
        machine.close()
        if failed:
            sys.stderr.write(f"--- guest console ({machine.boot.kind}) ---\n{console.text}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_report_header(config):
    return [f"KVM host: {host_kind()} (/dev/kvm {'present' if os.path.exists('/dev/kvm') else 'MISSING'})"]
