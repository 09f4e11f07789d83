"""A VM file descriptor: memory slots, in-kernel irqchip and PIT, vCPU creation, IRQ lines."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vmkit.kvm import constants as c
from vmkit.kvm.errors import KvmError
from vmkit.kvm.ioctl import raw_ioctl
from vmkit.kvm.structs import IrqLevel, Msi, PitConfig, UserspaceMemoryRegion

if TYPE_CHECKING:
    from vmkit.kvm.system import Kvm
    from vmkit.kvm.vcpu import VcpuFd


class VmFd:
    """Wraps the fd returned by KVM_CREATE_VM."""

    def __init__(self, fd: int, kvm: Kvm) -> None:
        self.fd = fd
        self.kvm = kvm

    def _call(self, name: str, request: int, arg: object = 0) -> int:
        ret = raw_ioctl(self.fd, request, arg)  # type: ignore[arg-type]
        if ret < 0:
            raise KvmError(name, -ret)
        return ret

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int, host_addr: int) -> None:
        region = UserspaceMemoryRegion(slot, 0, guest_phys_addr, size, host_addr)
        self._call("KVM_SET_USER_MEMORY_REGION", c.KVM_SET_USER_MEMORY_REGION, region)

    def set_tss_address(self, address: int) -> None:
        self._call("KVM_SET_TSS_ADDR", c.KVM_SET_TSS_ADDR, address)

    def create_irqchip(self) -> None:
        self._call("KVM_CREATE_IRQCHIP", c.KVM_CREATE_IRQCHIP)

    def create_pit2(self) -> None:
        config = PitConfig()
        config.flags = c.PIT_SPEAKER_DUMMY
        self._call("KVM_CREATE_PIT2", c.KVM_CREATE_PIT2, config)

    def set_irq_line(self, irq: int, level: bool) -> None:
        """Drive a GSI of the in-kernel PIC/IOAPIC high or low (safe from any thread)."""
        self._call("KVM_IRQ_LINE", c.KVM_IRQ_LINE, IrqLevel(irq, 1 if level else 0))

    def signal_msi(self, address: int, data: int) -> None:
        """Inject a message-signalled interrupt (safe from any thread)."""
        self._call("KVM_SIGNAL_MSI", c.KVM_SIGNAL_MSI, Msi(address & 0xFFFFFFFF, address >> 32, data, 0, 0))

    def create_vcpu(self, index: int) -> VcpuFd:
        from vmkit.kvm.vcpu import VcpuFd

        fd = self._call(f"KVM_CREATE_VCPU {index}", c.KVM_CREATE_VCPU, index)
        return VcpuFd(fd, index, self.kvm.vcpu_mmap_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
