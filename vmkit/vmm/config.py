"""VmConfig: everything needed to build a VM, validated before anything is created."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

MAX_VCPUS = 254           # the MP table's limit (APIC IDs 0..253, the IOAPIC takes the next)
MIN_MEMORY_MIB = 2
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
        limit = min(MAX_VCPUS, host_max_vcpus)
        if not 1 <= self.vcpus <= limit:
            raise ConfigError(f"vcpus: {self.vcpus} is out of range; this host allows 1..{limit}")
        if self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(f"memory: {self.memory_mib} MiB is too little; the minimum is {MIN_MEMORY_MIB} MiB")
        if self.memory_mib > 1 << 20:
            raise ConfigError(f"memory: {self.memory_mib} MiB is more than vmkit supports (1 TiB)")
        for name in self.devices:
            if name not in DEVICE_TYPES:
                raise ConfigError(f"device: {name!r} is not a device vmkit has; there are: {', '.join(DEVICE_TYPES)}")
        if self.protocol not in (None, "pvh", "linux64"):
            raise ConfigError(f"protocol: {self.protocol!r} is not one of pvh, linux64")
