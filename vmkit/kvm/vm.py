"""A VM file descriptor: memory slots, in-kernel irqchip and PIT, vCPU creation, IRQ lines."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vmkit.kvm import constants as c
from vmkit.kvm.errors import KvmError
from vmkit.kvm.ioctl import IoctlArg, raw_ioctl
from vmkit.kvm.structs import (
    IoEventFd,
    IrqFd,
    IrqLevel,
    Msi,
    PitConfig,
    UserspaceMemoryRegion,
    irq_routing_struct,
)

if TYPE_CHECKING:
    from vmkit.kvm.system import Kvm
    from vmkit.kvm.vcpu import VcpuFd


class VmFd:
    """Wraps the fd returned by KVM_CREATE_VM."""

    def __init__(self, fd: int, kvm: Kvm) -> None:
        self.fd = fd
        self.kvm = kvm

    def _call(self, name: str, request: int, arg: IoctlArg = 0) -> int:
        ret = raw_ioctl(self.fd, request, arg)
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

    def set_ioeventfd(self, fd: int, address: int, length: int, *, pio: bool = False,
                      assign: bool = True) -> None:
        """KVM_IOEVENTFD: a guest write of `length` bytes to `address` (MMIO, or a port with `pio`)
        signals eventfd `fd` inside the kernel and resumes the guest, with no exit to vmkit.
        `assign=False` removes a registration made with the same arguments."""
        flags = (c.IOEVENTFD_FLAG_PIO if pio else 0) | (0 if assign else c.IOEVENTFD_FLAG_DEASSIGN)
        what = "KVM_IOEVENTFD" if assign else "KVM_IOEVENTFD (deassign)"
        self._call(f"{what} at {address:#x}", c.KVM_IOEVENTFD, IoEventFd(0, address, length, fd, flags))

    def set_irqfd(self, fd: int, gsi: int, *, assign: bool = True) -> None:
        """KVM_IRQFD: a write to eventfd `fd` raises `gsi` (routed by set_msi_routes), from any thread."""
        flags = 0 if assign else c.IRQFD_FLAG_DEASSIGN
        self._call(f"KVM_IRQFD gsi {gsi}", c.KVM_IRQFD, IrqFd(fd, gsi, flags, 0))

    def set_msi_routes(self, routes: dict[int, tuple[int, int]]) -> None:
        """KVM_SET_GSI_ROUTING: KVM's default routes of the in-kernel PIC and IOAPIC, plus each
        `gsi: (address, data)` MSI route (GSIs from 24 up). The table is replaced whole."""
        entries = []
        for gsi in range(c.IOAPIC_PINS):
            entries.append((gsi, c.IRQ_ROUTING_IRQCHIP, c.IRQCHIP_IOAPIC, gsi))
            if gsi < 16:
                entries.append((gsi, c.IRQ_ROUTING_IRQCHIP,
                                c.IRQCHIP_PIC_MASTER if gsi < 8 else c.IRQCHIP_PIC_SLAVE, gsi % 8))
        table = irq_routing_struct(len(entries) + len(routes))()
        table.nr = len(entries) + len(routes)
        for i, (gsi, kind, chip, pin) in enumerate(entries):
            entry = table.entries[i]
            entry.gsi, entry.type = gsi, kind
            entry.u.irqchip.irqchip, entry.u.irqchip.pin = chip, pin
        for i, (gsi, (address, data)) in enumerate(sorted(routes.items()), start=len(entries)):
            if gsi < c.IOAPIC_PINS:
                raise ValueError(f"MSI route on GSI {gsi}: GSIs below {c.IOAPIC_PINS} belong to the IOAPIC")
            entry = table.entries[i]
            entry.gsi, entry.type = gsi, c.IRQ_ROUTING_MSI
            entry.u.msi.address_lo, entry.u.msi.address_hi = address & 0xFFFFFFFF, address >> 32
            entry.u.msi.data = data
        self._call("KVM_SET_GSI_ROUTING", c.KVM_SET_GSI_ROUTING, table)

    def create_vcpu(self, index: int) -> VcpuFd:
        from vmkit.kvm.vcpu import VcpuFd

        fd = self._call(f"KVM_CREATE_VCPU {index}", c.KVM_CREATE_VCPU, index)
        return VcpuFd(fd, index, self.kvm.vcpu_mmap_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
