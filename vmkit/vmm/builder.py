"""build_machine: the one linear recipe that turns a VmConfig into a Machine.

Order matters and is fixed, so device addresses are stable:
  1. open /dev/kvm, create the VM, in-kernel irqchip and PIT
  2. guest memory, registered with KVM
  3. load the kernel and write the boot structures
  4. devices on the PIO bus (ACPI tables name the power registers)
  5. vCPUs: CPUID, MSRs, and the boot vCPU's entry registers
The machine comes back in the CREATED state; Machine.start runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from vmkit.arch.x86 import acpi, cpu_state, layout
from vmkit.arch.x86.boot import BootPlan, detect_kind, load_guest
from vmkit.arch.x86.cpuid import vcpu_cpuid
from vmkit.arch.x86.errors import BootError
from vmkit.arch.x86.msrs import boot_msrs
from vmkit.devices.bus import Bus
from vmkit.devices.legacy.acpi_power import AcpiPower
from vmkit.devices.legacy.debug_exit import DebugConsole, DebugExit
from vmkit.devices.legacy.i8042 import I8042
from vmkit.devices.legacy.power_button import PowerButton
from vmkit.devices.legacy.rtc import CmosRtc
from vmkit.devices.legacy.serial import Serial16550
from vmkit.kvm import Kvm, KvmError, VcpuFd, VmFd
from vmkit.kvm.constants import CAP_IOEVENTFD, CAP_IRQ_ROUTING, CAP_IRQFD
from vmkit.memory import GuestMemory
from vmkit.vmm import host, outcome
from vmkit.vmm.config import ConfigError, DiskSpec, VmConfig
from vmkit.vmm.device_manager import VIRTIO_FACTORIES, DeviceManager
from vmkit.vmm.ending import Ending
from vmkit.vmm.io_engine import IoEngine
from vmkit.vmm.machine import Buses, Closable, Machine
from vmkit.vmm.msi_router import MsiRouter
from vmkit.vmm.state import Lifecycle
from vmkit.vmm.vcpu_runner import VcpuRunner

if TYPE_CHECKING:
    from vmkit.storage.disk import CacheMode, Disk



def is_linux(kernel: bytes) -> bool:
    """bzImages are Linux; so is an ELF that carries Linux's version banner. False for a file that
    is no kernel at all (loading it reports why)."""
    try:
        kind = detect_kind(kernel)
    except BootError:
        return False
    return kind == "bzimage" or b"Linux version " in kernel


def build_machine(config: VmConfig, kvm: Kvm | None = None) -> Machine:
    kvm = kvm or Kvm()
    vm_fd: VmFd | None = None
    memory: GuestMemory | None = None
    vcpus: list[VcpuFd] = []
    engine: IoEngine | None = None
    resources: list[Closable] = []     # closed when the machine closes: device kicks, MSI routes, disks
    notes: list[str] = []
    try:
        config.validate(kvm.max_vcpus)
        on_pvm = host.host_kind() == "pvm"
        disks = _open_disks(config.disks, resources)  # a bad image is a start error, before the VM exists

        # 1. VM with in-kernel LAPIC/IOAPIC/PIC and PIT
        vm_fd = kvm.create_vm()
        vm_fd.set_tss_address(layout.TSS_ADDR)
        vm_fd.create_irqchip()
        vm_fd.create_pit2()

        # 2. guest memory
        try:
            memory = GuestMemory.create(config.memory_mib << 20)
        except OSError as exc:
            raise ConfigError(f"memory: cannot allocate {config.memory_mib} MiB of guest RAM on this "
                              f"host: {exc.strerror}") from None
        for slot, region in enumerate(memory.regions):
            vm_fd.set_user_memory_region(slot, int(region.start), region.size, region.host_address)

        # 3. kernel and boot structures
        cmdline = config.cmdline
        if on_pvm and config.pvm_workarounds and is_linux(config.kernel):
            cmdline = host.linux_cmdline_for_pvm(cmdline)
        boot = load_guest(memory, config.kernel, cmdline=cmdline, initrd=config.initrd,
                          num_cpus=config.vcpus, protocol=config.protocol)

        # 4. devices
        ending = Ending()                          # before any device: devices report to it
        end_vm = ending.report

        pio, mmio = Bus("pio"), Bus("mmio")
        signal_msi: Callable[[int, int], None] = partial(_signal_msi, vm_fd)
        ioeventfd = kvm.check_extension(CAP_IOEVENTFD) > 0
        if config.devices or disks or config.links:
            engine = IoEngine(lambda message, trace: end_vm(outcome.internal(message, trace)))
            if not ioeventfd:
                notes.append("vmkit: this host's KVM has no ioeventfd, so virtio queue kicks exit to vmkit (slower)")
            if kvm.check_extension(CAP_IRQFD) and kvm.check_extension(CAP_IRQ_ROUTING):
                router = MsiRouter(vm_fd)
                resources.append(router)
                signal_msi = router.signal
            else:
                notes.append("vmkit: this host's KVM has no irqfd or MSI routing: interrupts go by KVM_SIGNAL_MSI")
        devices = DeviceManager(memory, vm_fd, pio, mmio, engine, ioeventfd, signal_msi)
        resources.insert(0, devices)               # its kicks close before the disks they serve
        serial = Serial16550(config.console_output, lambda level: vm_fd.set_irq_line(layout.COM1_IRQ, level))
        devices.add_legacy("serial0", serial, layout.COM1_PORT, 8)
        devices.add_legacy("i8042", I8042(lambda: end_vm(outcome.RESET)), layout.I8042_PORT, 5)
        devices.add_legacy("rtc", CmosRtc(), layout.RTC_PORT, 2)
        devices.add_legacy("debug-exit", DebugExit(lambda value: end_vm(outcome.Outcome.debug_exit(value))),
                           layout.DEBUG_EXIT_PORT, 1)
        devices.add_legacy("debugcon", DebugConsole(config.console_output), layout.DEBUGCON_PORT, 1)
        devices.add_legacy("acpi-power", AcpiPower(lambda: end_vm(outcome.POWEROFF), lambda: end_vm(outcome.RESET),
                                                   acpi.RESET_VALUE), acpi.SLEEP_CONTROL_PORT, 3)
        power_button = PowerButton(partial(vm_fd.set_irq_line, layout.POWER_BUTTON_GSI))   # the DSDT's GED
        for name in config.devices:
            devices.add_virtio(VIRTIO_FACTORIES[name]())
        if disks:
            from vmkit.devices.rate_limiter import RateLimiter
            from vmkit.devices.virtio.blk import VirtioBlk

            for index, (disk, spec) in enumerate(zip(disks, config.disks, strict=True)):
                devices.add_virtio(VirtioBlk(disk, spec.serial, label=f"virtio-blk{index}",
                                             limiter=RateLimiter.per_second(bps=spec.bps, iops=spec.iops)))
        for link in config.links:
            try:
                device = link.open()
            except OSError as exc:
                raise ConfigError(f"{link}: {exc.strerror or exc}") from None
            resources.append(device)
            devices.add_virtio(device)

        # 5. vCPUs
        supported_cpuid = kvm.supported_cpuid()
        msrs = boot_msrs(set(kvm.msr_index_list()))
        for index in range(config.vcpus):
            vcpu = vm_fd.create_vcpu(index)
            vcpus.append(vcpu)
            vcpu.set_cpuid2(vcpu_cpuid(supported_cpuid, index, config.vcpus,
                                       kvm_pv_features=not (on_pvm and config.pvm_workarounds)))
            vcpu.set_msrs(msrs)
        _set_boot_registers(vcpus[0], memory, boot)

        lifecycle = Lifecycle(config.vcpus)
        runners = [VcpuRunner(v, pio, mmio, end_vm, lifecycle, complete_unemulated=on_pvm) for v in vcpus]
        machine = Machine(kvm, vm_fd, memory, Buses(pio, mmio), runners, lifecycle, boot, ending, devices, serial,
                          io_engine=engine, io_resources=resources, notes=notes, power_button=power_button)
        return machine
    except BaseException:
        for resource in resources:
            resource.close()
        if engine is not None:
            engine.close()
        for vcpu in vcpus:
            vcpu.close()
        if vm_fd is not None:
            vm_fd.close()
        if memory is not None:
            memory.close()
        kvm.close()
        raise


def _open_disks(specs: tuple[DiskSpec, ...], opened: list[Closable]) -> list[Disk]:
    """Open each --disk image (appended to `opened` as it opens, so a failure closes the others)."""
    if not specs:
        return []
    from vmkit.storage import open_disk
    from vmkit.storage.errors import StorageError

    disks = []
    for spec in specs:
        try:
            disk = open_disk(spec.path, spec.format, spec.read_only, cast("CacheMode", spec.cache))
        except (StorageError, OSError, ValueError) as exc:
            raise ConfigError(f"--disk {spec.path!r}: {exc}") from None
        opened.append(disk)
        disks.append(disk)
    return disks


def _signal_msi(vm_fd: VmFd, address: int, data: int) -> None:
    """Deliver an MSI with KVM_SIGNAL_MSI; one KVM refuses (a bad address) is dropped."""
    try:
        vm_fd.signal_msi(address, data)
    except KvmError:
        pass


def _set_boot_registers(vcpu: VcpuFd, memory: GuestMemory, boot: BootPlan) -> None:
    sregs = vcpu.get_sregs()
    if boot.protocol == "pvh":
        cpu_state.protected_mode_sregs(sregs)
        regs = cpu_state.boot_regs(boot.entry, rbx=boot.boot_info)
    else:
        cpu_state.long_mode_sregs(sregs, memory)
        regs = cpu_state.boot_regs(boot.entry, rsi=boot.boot_info)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(regs)
