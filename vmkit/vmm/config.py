"""VmConfig: everything needed to build a VM, validated before anything is created."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

from vmkit.arch.x86.boot import MIN_MEMORY
from vmkit.arch.x86.layout import CMDLINE_MAX
from vmkit.arch.x86.mptable import MAX_CPUS
from vmkit.devices.pci.root import MAX_DEVICES
from vmkit.vmm.device_manager import VIRTIO_FACTORIES

if TYPE_CHECKING:
    from vmkit.vmm.links import LinkSpec

MAX_VCPUS = MAX_CPUS          # what the MP table and the MADT describe (APIC IDs 0..253)
MIN_MEMORY_MIB = MIN_MEMORY >> 20
MAX_MEMORY_MIB = 1 << 20      # 1 TiB
MAX_PCI_DEVICES = MAX_DEVICES - 1   # slot 0 is the host bridge
DEVICE_TYPES = tuple(VIRTIO_FACTORIES)


def _discard(data: bytes) -> None:
    """The default console sink: guest output goes nowhere."""


class ConfigError(ValueError):
    """A VM setting is out of range or inconsistent; the message names the setting."""


DISK_FORMATS = ("raw", "qcow2")
DISK_CACHE_MODES = ("writeback", "none", "unsafe")


class DiskSpec(NamedTuple):
    """One disk of a VM, as `--disk PATH[,ro][,format=F][,cache=C][,serial=S][,iops=N][,bps=N]` gives it
    (/dev/vda, /dev/vdb, ...)."""

    path: str
    read_only: bool = False
    format: str | None = None      # None: probed (qcow2 by its magic, else raw, with QEMU's guard)
    cache: str = "writeback"
    serial: str = ""               # GET_ID's answer (20 bytes at most); "" derives one from the file
    iops: int = 0                  # requests per second (a token bucket refilled each second); 0: no limit
    bps: int = 0                   # bytes per second, likewise

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        """Parse the --disk option's value; ConfigError names the part that is wrong."""
        path, *options = text.split(",")
        if not path:
            raise ConfigError(f"--disk {text!r}: the path is missing (--disk PATH[,ro][,format=raw|qcow2]"
                              "[,cache=writeback|none|unsafe])")
        spec = cls(path)
        for option in options:
            key, equals, value = option.partition("=")
            if key == "ro" and not equals:
                spec = spec._replace(read_only=True)
            elif key == "format" and value in DISK_FORMATS:
                spec = spec._replace(format=value)
            elif key == "cache" and value in DISK_CACHE_MODES:
                spec = spec._replace(cache=value)
            elif key in ("iops", "bps") and equals:
                if not value.isdigit() or not 0 < int(value) < 1 << 64:
                    raise ConfigError(f"--disk {text!r}: {key}={value!r} is not a whole number from 1 to 2**64-1")
                spec = spec._replace(iops=int(value)) if key == "iops" else spec._replace(bps=int(value))
            elif key == "serial" and equals:
                if not (value.isascii() and value.isprintable() and 0 < len(value) <= 20):
                    raise ConfigError(f"--disk {text!r}: serial={value!r} is not 1..20 printable ASCII characters")
                spec = spec._replace(serial=value)
            elif key in ("format", "cache"):
                choices = DISK_FORMATS if key == "format" else DISK_CACHE_MODES
                raise ConfigError(f"--disk {text!r}: {key}={value!r} is not one of {', '.join(choices)}")
            else:
                raise ConfigError(f"--disk {text!r}: unknown option {option!r} "
                                  "(ro, format=raw|qcow2, cache=writeback|none|unsafe, serial=TEXT, iops=N, bps=N)")
        return spec


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
    disks: tuple[DiskSpec, ...] = ()
    links: tuple[LinkSpec, ...] = ()         # network, vsock, shared folders (vmm/links.py)

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
        pci_devices = len(self.devices) + len(self.disks) + len(self.links)
        if pci_devices > MAX_PCI_DEVICES:
            raise ConfigError(f"device: {pci_devices} PCI devices asked for (disks and links included); "
                              f"PCI bus 0 has room for {MAX_PCI_DEVICES} besides its host bridge")
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
