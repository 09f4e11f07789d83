"""MicroVm: one VM as Firecracker's API sees it, mapped onto vmkit's VmConfig and Machine.

Before InstanceStart it holds the configuration the API has put (boot source, machine config,
drives, network interfaces, vsock, entropy); InstanceStart turns it into a VmConfig, builds the
machine and starts it. After that only what Firecracker allows on a running VM changes: a drive's or
interface's rate limiters, pause and resume. Every refusal is an ApiError whose message names the
field or the state; the HTTP layer answers it with a 400.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmkit.api.firecracker import models
from vmkit.api.firecracker.machine_metrics import FlushedCounters, totals
from vmkit.api.firecracker.telemetry import Log, Metrics, TelemetryError
from vmkit.devices.rate_limiter import RateLimiter, RateLimiterError
from vmkit.vmm.config import MIN_MEMORY_MIB, ConfigError

if TYPE_CHECKING:
    from vmkit.devices.virtio.blk import VirtioBlk
    from vmkit.devices.virtio.net.device import VirtioNet
    from vmkit.vmm.config import VmConfig
    from vmkit.vmm.links import LinkSpec
    from vmkit.vmm.machine import Machine

# Firecracker's usual arguments less pci=off and 8250.nr_uarts=0: vmkit's devices are on PCI and
# its console is the serial port.
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 nomodule"
DEFAULT_MEMORY_MIB = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DRIVES = 16
MAX_INTERFACES = 8
MAX_BOOT_FILE = 1 << 30

NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"


class ApiError(Exception):
    """A request that cannot be carried out; the message says what and where."""


def check_id(value: str, what: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ApiError(f"{what}: {value[:80]!r} is not an id (1 to 64 letters, digits, '_' or '-')")
    return value


def _limiter(body: models.RateLimiter | None, field: str) -> RateLimiter | None:
    """A vmkit RateLimiter from Firecracker's object (None: no limit), with its checks."""
    if body is None:
        return None
    try:
        limiter = RateLimiter.from_firecracker(body.model_dump(exclude_none=True), field=field)
    except RateLimiterError as exc:
        raise ApiError(str(exc)) from None
    return limiter if limiter.enabled else None


def _link_parser(option: str) -> Callable[[str, int], LinkSpec]:
    """The parse_option of the `vmkit run` link option `option` (vmm/links.py)."""
    from vmkit.vmm.links import LINK_OPTIONS, parser_of

    for entry in LINK_OPTIONS:
        if entry.option == option:
            return parser_of(entry)
    raise ApiError(f"this vmkit has no {option} links")


def _limiter_config(limiter: RateLimiter | None) -> dict[str, Any] | None:
    return limiter.config() if limiter is not None else None


class MicroVm:
    """The API's view of one VM; see the module docstring."""

    def __init__(self, instance_id: str, log: Log, metrics: Metrics,
                 console_output: Callable[[bytes], None], boot_timer: bool = False) -> None:
        self.instance_id = instance_id
        self.log = log
        self.metrics = metrics
        self._flushed = FlushedCounters()
        self._console_output = console_output
        self._boot_timer = boot_timer
        self._started_at: float | None = None
        self.boot_source: models.BootSource | None = None
        self.machine_config = models.MachineConfig(vcpu_count=1, mem_size_mib=DEFAULT_MEMORY_MIB)
        self.drives: dict[str, models.Drive] = {}
        self.interfaces: dict[str, models.NetworkInterface] = {}
        self.vsock: models.Vsock | None = None
        self.entropy: models.Entropy | None = None
        self.machine: Machine | None = None
        self._blk: dict[str, VirtioBlk] = {}
        self._net: dict[str, VirtioNet] = {}
        self._on_start: list[Callable[[Machine], None]] = []

    # ---- what GET answers

    @property
    def state(self) -> str:
        if self.machine is None:
            return NOT_STARTED
        from vmkit.vmm.state import VmState

        return PAUSED if self.machine.state is VmState.PAUSED else RUNNING

    def describe(self, vmm_version: str) -> dict[str, Any]:
        return {"id": self.instance_id, "state": self.state, "vmm_version": vmm_version, "app_name": "vmkit"}

    def machine_config_body(self) -> dict[str, Any]:
        body = self.machine_config.model_dump(exclude_none=True)
        body.setdefault("huge_pages", "None")
        return body

    def vm_config_body(self) -> dict[str, Any]:
        drives = []
        for drive_id, drive in self.drives.items():
            body = drive.model_dump()
            body["is_read_only"] = bool(drive.is_read_only)
            device = self._blk.get(drive_id)        # once started, what the device has now
            limiter = device.limiter if device is not None else _limiter(drive.rate_limiter, "rate_limiter")
            body["rate_limiter"] = _limiter_config(limiter)
            drives.append(body)
        interfaces = []
        for iface_id, interface in self.interfaces.items():
            body = interface.model_dump()
            net = self._net.get(iface_id)
            rx = net.rx_limiter if net is not None else _limiter(interface.rx_rate_limiter, "rx_rate_limiter")
            tx = net.tx_limiter if net is not None else _limiter(interface.tx_rate_limiter, "tx_rate_limiter")
            body["rx_rate_limiter"], body["tx_rate_limiter"] = _limiter_config(rx), _limiter_config(tx)
            interfaces.append(body)
        return {"balloon": None,
                "boot-source": self.boot_source.model_dump() if self.boot_source else None,
                "drives": drives,
                "machine-config": self.machine_config_body(),
                "network-interfaces": interfaces,
                "vsock": self.vsock.model_dump() if self.vsock else None,
                "entropy": self.entropy.model_dump() if self.entropy else None,
                "logger": self.log.describe(),
                "metrics": {"metrics_path": self.metrics.path} if self.metrics.path else None,
                "mmds-config": None}

    # ---- pre-boot configuration

    def _pre_boot(self) -> None:
        if self.machine is not None:
            raise ApiError(f"allowed only before the VM starts (it is {self.state}, after InstanceStart)")

    def put_boot_source(self, body: models.BootSource) -> None:
        self._pre_boot()
        self._check_regular_file(body.kernel_image_path, "kernel_image_path")
        if body.initrd_path is not None:
            self._check_regular_file(body.initrd_path, "initrd_path")
        if body.boot_args is not None:
            from vmkit.vmm.config import check_cmdline

            try:
                check_cmdline(body.boot_args)
            except ConfigError as exc:
                raise ApiError(f"boot_args: {str(exc).removeprefix('cmdline: ')}") from None
        self.boot_source = body

    def put_machine_config(self, body: models.MachineConfig) -> None:
        self._pre_boot()
        self.machine_config = self._checked_machine_config(body)

    def patch_machine_config(self, body: models.MachineConfigPatch) -> None:
        self._pre_boot()
        given = body.model_dump(exclude_none=True)
        if not given:
            raise ApiError("the body changes nothing (give at least one field)")
        merged = self.machine_config.model_dump(exclude_none=True) | given
        self.machine_config = self._checked_machine_config(models.MachineConfig(**merged))

    @staticmethod
    def _checked_machine_config(body: models.MachineConfig) -> models.MachineConfig:
        from vmkit.vmm.config import MAX_MEMORY_MIB

        if not MIN_MEMORY_MIB <= body.mem_size_mib <= MAX_MEMORY_MIB:
            raise ApiError(f"mem_size_mib: {body.mem_size_mib} is out of range; vmkit supports "
                           f"{MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} MiB")
        if body.smt:
            raise ApiError("smt: vmkit gives its vCPUs no SMT siblings; only false is supported")
        if body.track_dirty_pages:
            raise ApiError("track_dirty_pages: vmkit's API has no diff snapshots to track pages for; "
                           "only false is supported")
        if body.cpu_template not in (None, "None"):
            raise ApiError(f"cpu_template: vmkit has no CPU templates ({body.cpu_template!r}); "
                           "only \"None\" is supported")
        if body.huge_pages not in (None, "None"):
            raise ApiError(f"huge_pages: vmkit backs guest memory with regular pages ({body.huge_pages!r}); "
                           "only \"None\" is supported")
        return body

    def put_drive(self, drive_id: str, body: models.Drive) -> None:
        check_id(drive_id, "drive_id")
        if body.drive_id != drive_id:
            raise ApiError(f"drive_id: {body.drive_id!r} in the body does not match {drive_id!r} in the path")
        self._pre_boot()
        if body.socket is not None:
            raise ApiError("socket: vhost-user block devices are not supported; give path_on_host")
        if body.path_on_host is None:
            raise ApiError("path_on_host: missing (it is required for a virtio-blk drive)")
        self._check_disk(body.path_on_host)
        if body.is_root_device:
            for other_id, other in self.drives.items():
                if other.is_root_device and other_id != drive_id:
                    raise ApiError(f"is_root_device: drive {other_id!r} is the root device already")
        for other_id, other in self.drives.items():
            if other_id != drive_id and other.path_on_host == body.path_on_host:
                raise ApiError(f"path_on_host: {body.path_on_host!r} is drive {other_id!r} already")
        if drive_id not in self.drives and len(self.drives) >= MAX_DRIVES:
            raise ApiError(f"drives: a VM has at most {MAX_DRIVES} drives here")
        _limiter(body.rate_limiter, "rate_limiter")
        self.drives[drive_id] = body

    def put_interface(self, iface_id: str, body: models.NetworkInterface) -> None:
        check_id(iface_id, "iface_id")
        if body.iface_id != iface_id:
            raise ApiError(f"iface_id: {body.iface_id!r} in the body does not match {iface_id!r} in the path")
        self._pre_boot()
        from vmkit.devices.virtio.net.mac import parse_mac
        from vmkit.devices.virtio.net.tap import check_tap_name

        why = check_tap_name(body.host_dev_name)
        if why is not None:
            raise ApiError(f"host_dev_name: {body.host_dev_name[:40]!r}: {why}")
        if body.guest_mac is not None:
            try:
                parse_mac(body.guest_mac)
            except ValueError as exc:
                raise ApiError(f"guest_mac: {exc}") from None
        for other_id, other in self.interfaces.items():
            if other_id == iface_id:
                continue
            if other.host_dev_name == body.host_dev_name:
                raise ApiError(f"host_dev_name: {body.host_dev_name!r} is used by interface {other_id!r} already")
            if body.guest_mac is not None and other.guest_mac is not None \
                    and parse_mac(other.guest_mac) == parse_mac(body.guest_mac):
                raise ApiError(f"guest_mac: {body.guest_mac} is used by interface {other_id!r} already")
        if iface_id not in self.interfaces and len(self.interfaces) >= MAX_INTERFACES:
            raise ApiError(f"network-interfaces: a VM has at most {MAX_INTERFACES} interfaces here")
        _limiter(body.rx_rate_limiter, "rx_rate_limiter")
        _limiter(body.tx_rate_limiter, "tx_rate_limiter")
        self._net_spec(body, 0)
        self.interfaces[iface_id] = body

    def put_vsock(self, body: models.Vsock) -> None:
        self._pre_boot()
        self._vsock_spec(body)
        self.vsock = body

    def put_entropy(self, body: models.Entropy) -> None:
        self._pre_boot()
        if _limiter(body.rate_limiter, "rate_limiter") is not None:
            raise ApiError("rate_limiter: vmkit's virtio-rng has no rate limiter; leave it out")
        self.entropy = body

    def put_logger(self, body: models.Logger) -> None:
        self._pre_boot()
        if body.module is not None:
            raise ApiError("module: vmkit's log has no module filter; leave it out")
        try:
            self.log.configure(path=body.log_path, level=body.level, show_level=body.show_level,
                               show_origin=body.show_log_origin)
        except TelemetryError as exc:
            raise ApiError(str(exc)) from None

    def put_metrics(self, body: models.Metrics) -> None:
        self._pre_boot()
        try:
            self.metrics.configure(body.metrics_path)
        except TelemetryError as exc:
            raise ApiError(str(exc)) from None

    # ---- after start

    def patch_drive(self, drive_id: str, body: models.DrivePatch) -> None:
        check_id(drive_id, "drive_id")
        if body.drive_id != drive_id:
            raise ApiError(f"drive_id: {body.drive_id!r} in the body does not match {drive_id!r} in the path")
        drive = self.drives.get(drive_id)
        if drive is None:
            raise ApiError(f"drive_id: there is no drive {drive_id!r}")
        device = self._blk.get(drive_id)
        if device is None:
            raise ApiError("allowed only once the VM has started (before InstanceStart, PUT the drive again)")
        if body.path_on_host is not None and body.path_on_host != drive.path_on_host:
            raise ApiError("path_on_host: vmkit cannot swap a running drive's backing file")
        if body.rate_limiter is not None:
            limiter = _limiter(body.rate_limiter, "rate_limiter")
            device.limiter = limiter
            self.drives[drive_id] = drive.model_copy(update={"rate_limiter": body.rate_limiter})

    def patch_interface(self, iface_id: str, body: models.NetworkInterfacePatch) -> None:
        check_id(iface_id, "iface_id")
        if body.iface_id != iface_id:
            raise ApiError(f"iface_id: {body.iface_id!r} in the body does not match {iface_id!r} in the path")
        if iface_id not in self.interfaces:
            raise ApiError(f"iface_id: there is no network interface {iface_id!r}")
        device = self._net.get(iface_id)
        if device is None:
            raise ApiError("allowed only once the VM has started (before InstanceStart, PUT the interface again)")
        rx = _limiter(body.rx_rate_limiter, "rx_rate_limiter")
        tx = _limiter(body.tx_rate_limiter, "tx_rate_limiter")
        if body.rx_rate_limiter is not None:
            device.rx_limiter = rx
        if body.tx_rate_limiter is not None:
            device.tx_limiter = tx

    def set_state(self, body: models.VmState) -> None:
        from vmkit.vmm.state import VmStateError

        if self.machine is None:
            raise ApiError(f"state: the VM has not started, so it cannot be {body.state} (InstanceStart first)")
        try:
            if body.state == "Paused":
                self.machine.pause()
            else:
                self.machine.resume()
        except VmStateError as exc:
            raise ApiError(f"state: {body.state}: {exc}") from None
        self.log.info(f"the VM is {self.state}")

    def action(self, body: models.Action) -> None:
        kind = body.action_type
        if kind == "InstanceStart":
            self.start()
        elif kind == "FlushMetrics":
            if not self.metrics.configured:
                raise ApiError("FlushMetrics: metrics are not configured (PUT /metrics first)")
            self.flush_metrics()
        elif self.machine is None:
            raise ApiError("SendCtrlAltDel: the VM has not started")
        elif not self.machine.press_power_button():
            raise ApiError("SendCtrlAltDel: the VM has ended")
        else:
            # vmkit's i8042 has no keyboard: the ACPI power button asks the guest to shut down instead
            self.log.info("SendCtrlAltDel: pressed the ACPI power button")

    def flush_metrics(self) -> None:
        """One line of the metrics file: the API's counters and the machine's (its vCPUs' exits, its
        drives', interfaces' and vsock's I/O), each counted since the last line."""
        from vmkit.vmm.metrics import device_name

        groups = totals(self.machine.metrics() if self.machine is not None else None,
                        {drive_id: device_name(device.label) for drive_id, device in self._blk.items()},
                        {iface_id: device_name(device.label) for iface_id, device in self._net.items()})
        groups["logger"] = {"missed_metrics_count": self.metrics.missed, "metrics_fails": self.metrics.missed,
                            "missed_log_count": self.log.dropped}
        self.metrics.flush(self._flushed.since_last(groups))

    def on_start(self, listener: Callable[[Machine], None]) -> None:
        """Call `listener` with the machine once InstanceStart has started it."""
        self._on_start.append(listener)

    # ---- InstanceStart

    def start(self) -> None:
        if self.machine is not None:
            raise ApiError(f"InstanceStart: the VM has started already (it is {self.state})")
        if self.boot_source is None:
            raise ApiError("InstanceStart: no boot source (PUT /boot-source first)")
        from vmkit.arch.x86.errors import BootError
        from vmkit.kvm.errors import KvmError
        from vmkit.vmm.builder import build_machine

        try:
            config = self.vm_config()
            machine = build_machine(config)
        except BootError as exc:
            raise ApiError(f"InstanceStart: kernel_image_path {self.boot_source.kernel_image_path!r}: {exc}") from None
        except (KvmError, ConfigError) as exc:
            raise ApiError(f"InstanceStart: {exc}") from None
        from vmkit.vmm import host

        for note in ([host.PVM_NOTICE] if host.host_kind() == "pvm" else []) + machine.notes:
            self.log.info(note)
        self._attach_limiters(machine)
        self.machine = machine
        for listener in self._on_start:
            listener(machine)
        self._started_at = time.monotonic()
        machine.start()
        self.log.info(f"InstanceStart: {config.vcpus} vCPU(s), {config.memory_mib} MiB, "
                      f"{len(config.disks)} drive(s), {len(config.links)} link(s)")

    def vm_config(self) -> VmConfig:
        """The VmConfig that InstanceStart builds (ConfigError naming the field that is wrong)."""
        from vmkit.vmm.config import MAX_VCPUS, DiskSpec, VmConfig
        from vmkit.vmm.host_files import read_input_file

        source = self.boot_source
        assert source is not None
        machine = self.machine_config
        limit = min(machine.mem_size_mib << 20, MAX_BOOT_FILE)
        kernel = read_input_file(source.kernel_image_path, "kernel_image_path", limit)
        initrd = read_input_file(source.initrd_path, "initrd_path", limit) if source.initrd_path else None
        cmdline = DEFAULT_BOOT_ARGS if source.boot_args is None else source.boot_args
        disks = []
        for drive in self._ordered_drives():
            assert drive.path_on_host is not None
            if drive.is_root_device:
                root = f"PARTUUID={drive.partuuid}" if drive.partuuid else "/dev/vda"
                cmdline = f"{cmdline} root={root} {'ro' if drive.is_read_only else 'rw'}".strip()
            disks.append(DiskSpec(drive.path_on_host, read_only=bool(drive.is_read_only), format="raw",
                                  cache="unsafe" if drive.cache_type == "Unsafe" else "writeback"))
        links: list[LinkSpec] = [self._net_spec(interface, index)
                                 for index, interface in enumerate(self.interfaces.values())]
        if self.vsock is not None:
            links.append(self._vsock_spec(self.vsock))
        config = VmConfig(kernel=kernel, kernel_name=source.kernel_image_path, cmdline=cmdline, initrd=initrd,
                          vcpus=machine.vcpu_count, memory_mib=machine.mem_size_mib,
                          console_output=self._console_sink(),
                          devices=("virtio-rng",) if self.entropy is not None else (),
                          disks=tuple(disks), links=tuple(links))
        config.validate(host_max_vcpus=MAX_VCPUS)
        return config

    def _ordered_drives(self) -> list[models.Drive]:
        """The root drive first (it is /dev/vda), then the others in the order they were put."""
        return sorted(self.drives.values(), key=lambda drive: not drive.is_root_device)

    def _attach_limiters(self, machine: Machine) -> None:
        """Firecracker's token buckets, exactly as given, on the devices the builder made."""
        from vmkit.devices.virtio.blk import VirtioBlk
        from vmkit.devices.virtio.net.device import VirtioNet

        backends = [entry.function.device for entry in machine.devices.virtio]
        blks = [device for device in backends if isinstance(device, VirtioBlk)]
        nets = [device for device in backends if isinstance(device, VirtioNet)]
        drive_ids = [drive.drive_id for drive in self._ordered_drives()]
        for drive_id, blk in zip(drive_ids, blks, strict=True):
            blk.limiter = _limiter(self.drives[drive_id].rate_limiter, "rate_limiter")
            self._blk[drive_id] = blk
        for (iface_id, interface), net in zip(self.interfaces.items(), nets, strict=True):
            net.rx_limiter = _limiter(interface.rx_rate_limiter, "rx_rate_limiter")
            net.tx_limiter = _limiter(interface.tx_rate_limiter, "tx_rate_limiter")
            self._net[iface_id] = net

    def _console_sink(self) -> Callable[[bytes], None]:
        if not self._boot_timer:
            return self._console_output
        forward, first = self._console_output, [True]

        def timed(data: bytes) -> None:
            if first[0] and self._started_at is not None:
                first[0] = False
                elapsed_us = int((time.monotonic() - self._started_at) * 1e6)
                self.log.info(f"boot timer: the guest's first console output {elapsed_us} us after start")
            forward(data)

        return timed

    @staticmethod
    def _net_spec(interface: models.NetworkInterface, index: int) -> LinkSpec:
        parse_option = _link_parser("--net")
        text = f"tap={interface.host_dev_name}"
        if interface.guest_mac is not None:
            text += f",mac={interface.guest_mac}"
        if interface.mtu is not None:
            text += f",mtu={interface.mtu}"
        if "," in interface.host_dev_name or "," in (interface.guest_mac or ""):
            raise ApiError("host_dev_name, guest_mac: a ',' is in neither an interface name nor a MAC")
        try:
            return parse_option(text, index)
        except ConfigError as exc:
            raise ApiError(f"network-interfaces/{interface.iface_id}: {exc}") from None

    @staticmethod
    def _vsock_spec(body: models.Vsock) -> LinkSpec:
        parse_option = _link_parser("--vsock")
        if "," in body.uds_path:
            raise ApiError(f"uds_path: {body.uds_path!r}: vmkit's vsock paths have no ','")
        try:
            return parse_option(f"{body.uds_path},cid={body.guest_cid}", 0)
        except ConfigError as exc:
            raise ApiError(f"vsock: {exc}") from None

    @staticmethod
    def _check_regular_file(path: str, field: str) -> None:
        try:
            info = os.stat(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a path"
            raise ApiError(f"{field}: {path[:200]!r}: {reason}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(f"{field}: {path[:200]!r} is not a regular file")

    @staticmethod
    def _check_disk(path: str) -> None:
        try:
            info = os.stat(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a path"
            raise ApiError(f"path_on_host: {path[:200]!r}: {reason}") from None
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise ApiError(f"path_on_host: {path[:200]!r} is neither a regular file nor a block device")
