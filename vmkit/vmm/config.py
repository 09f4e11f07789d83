"""VmConfig: everything needed to build a VM, validated before anything is created."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from vmkit.arch.x86.boot import MIN_MEMORY
from vmkit.arch.x86.layout import CMDLINE_MAX
from vmkit.arch.x86.mptable import MAX_CPUS
from vmkit.devices.pci.root import MAX_DEVICES

MAX_VCPUS = MAX_CPUS          # what the MP table and the MADT describe (APIC IDs 0..253)
MIN_MEMORY_MIB = MIN_MEMORY >> 20
MAX_MEMORY_MIB = 1 << 20      # 1 TiB
MAX_PCI_DEVICES = MAX_DEVICES - 1   # slot 0 is the host bridge
DEVICE_TYPES = ("virtio-rng",)


def _discard(data: bytes) -> None:
    """The default console sink: guest output goes nowhere."""


class ConfigError(ValueError):
    """A VM setting is out of range or inconsistent; the message names the setting."""


class VmConfig(NamedTuple):
    kernel: bytes
    kernel_name: str = "kernel"
    cmdline: str = ""
    initrd: bytes | None = None
    vcpus: int = 1
    memory_mib: int = 64
    protocol: Literal["pvh", "linux64"] | None = None
    pvm_workarounds: bool = True
    console_output: Callable[[bytes], None] = _discard
    devices: tuple[str, ...] = ()

    def validate(self, host_max_vcpus: int) -> None:
        """Raise ConfigError naming the first setting this machine cannot have."""
        limit = min(MAX_VCPUS, host_max_vcpus)
        if not 1 <= self.vcpus <= limit:
            raise ConfigError(f"vcpus: {self.vcpus} is out of range; this host allows 1..{limit}")
        if not MIN_MEMORY_MIB <= self.memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(f"memory: {self.memory_mib} MiB is out of range; "
                              f"vmkit supports {MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} MiB")
        if not self.kernel:
            raise ConfigError(f"kernel: {self.kernel_name} is empty")
        if self.initrd is not None and not self.initrd:
            raise ConfigError("initrd: it is empty")
        check_cmdline(self.cmdline)
        if len(self.devices) > MAX_PCI_DEVICES:
            raise ConfigError(f"device: {len(self.devices)} devices asked for; PCI bus 0 has room "
                              f"for {MAX_PCI_DEVICES} besides its host bridge")
        for name in self.devices:
            if name not in DEVICE_TYPES:
                raise ConfigError(f"device: {name!r} is not a device vmkit has; there are: {', '.join(DEVICE_TYPES)}")
        if self.protocol not in (None, "pvh", "linux64"):
            raise ConfigError(f"protocol: {self.protocol!r} is not one of pvh, linux64")


def check_cmdline(cmdline: str) -> None:
    """A kernel command line is text without NUL bytes that fits the boot protocol's buffer."""
    if "\0" in cmdline:
        raise ConfigError("cmdline: it contains a NUL byte, which would end it early")
    try:
        encoded = cmdline.encode()
    except UnicodeEncodeError as exc:
        raise ConfigError(f"cmdline: character {exc.start} is not valid text (UTF-8)") from None
    if len(encoded) >= CMDLINE_MAX:
        raise ConfigError(f"cmdline: it is {len(encoded)} bytes; the limit is {CMDLINE_MAX - 1}")
