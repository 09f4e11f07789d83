"""KVM ioctl requests, capabilities and exit reasons used by vmkit."""

from __future__ import annotations

import ctypes

from vmkit.kvm import structs as s
from vmkit.kvm.ioctl import io, ior, iow, iowr

API_VERSION = 12

# System ioctls (on /dev/kvm)
KVM_GET_API_VERSION = io(0x00)
KVM_CREATE_VM = io(0x01)
KVM_GET_MSR_INDEX_LIST = iowr(0x02, 4)
KVM_CHECK_EXTENSION = io(0x03)
KVM_GET_VCPU_MMAP_SIZE = io(0x04)
KVM_GET_SUPPORTED_CPUID = iowr(0x05, 8)

# VM ioctls
KVM_CREATE_VCPU = io(0x41)
KVM_SET_USER_MEMORY_REGION = iow(0x46, ctypes.sizeof(s.UserspaceMemoryRegion))
KVM_SET_TSS_ADDR = io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = iow(0x48, 8)
KVM_CREATE_IRQCHIP = io(0x60)
KVM_IRQ_LINE = iow(0x61, ctypes.sizeof(s.IrqLevel))
KVM_CREATE_PIT2 = iow(0x77, ctypes.sizeof(s.PitConfig))
KVM_SIGNAL_MSI = iow(0xA5, ctypes.sizeof(s.Msi))
KVM_SET_GSI_ROUTING = iow(0x6A, 8)
KVM_IRQFD = iow(0x76, ctypes.sizeof(s.IrqFd))
KVM_IOEVENTFD = iow(0x79, ctypes.sizeof(s.IoEventFd))

# vCPU ioctls
KVM_RUN = io(0x80)
KVM_GET_REGS = ior(0x81, ctypes.sizeof(s.Regs))
KVM_SET_REGS = iow(0x82, ctypes.sizeof(s.Regs))
KVM_GET_SREGS = ior(0x83, ctypes.sizeof(s.Sregs))
KVM_SET_SREGS = iow(0x84, ctypes.sizeof(s.Sregs))
KVM_SET_MSRS = iow(0x89, 8)
KVM_GET_FPU = ior(0x8C, ctypes.sizeof(s.Fpu))
KVM_SET_CPUID2 = iow(0x90, 8)
KVM_GET_VCPU_EVENTS = ior(0x9F, ctypes.sizeof(s.VcpuEvents))
KVM_SET_VCPU_EVENTS = iow(0xA0, ctypes.sizeof(s.VcpuEvents))

# Capabilities (KVM_CHECK_EXTENSION arguments)
CAP_IRQCHIP = 0
CAP_HLT = 1
CAP_USER_MEMORY = 3
CAP_SET_TSS_ADDR = 4
CAP_EXT_CPUID = 7
CAP_NR_VCPUS = 9
CAP_PIT2 = 33
CAP_IRQ_INJECT_STATUS = 26
CAP_MAX_VCPUS = 66
CAP_IOEVENTFD = 36
CAP_IRQFD = 32
CAP_IRQ_ROUTING = 25

IOEVENTFD_FLAG_DATAMATCH = 1 << 0
IOEVENTFD_FLAG_PIO = 1 << 1
IOEVENTFD_FLAG_DEASSIGN = 1 << 2
IRQFD_FLAG_DEASSIGN = 1 << 0
IRQ_ROUTING_IRQCHIP = 1
IRQ_ROUTING_MSI = 2
IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, IRQCHIP_IOAPIC = 0, 1, 2
IOAPIC_PINS = 24

REQUIRED_CAPS = {
    CAP_IRQCHIP: "KVM_CAP_IRQCHIP (in-kernel LAPIC/IOAPIC/PIC)",
    CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY",
    CAP_SET_TSS_ADDR: "KVM_CAP_SET_TSS_ADDR",
    CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
    CAP_PIT2: "KVM_CAP_PIT2 (in-kernel PIT)",
}

# Exit reasons (kvm_run.exit_reason)
EXIT_UNKNOWN = 0
EXIT_EXCEPTION = 1
EXIT_IO = 2
EXIT_HYPERCALL = 3
EXIT_DEBUG = 4
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_IRQ_WINDOW_OPEN = 7
EXIT_SHUTDOWN = 8
EXIT_FAIL_ENTRY = 9
EXIT_INTR = 10
EXIT_INTERNAL_ERROR = 17
EXIT_SYSTEM_EVENT = 24

INTERNAL_ERROR_EMULATION = 1
INTERNAL_ERROR_FLAG_INSTRUCTION_BYTES = 1

SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2
SYSTEM_EVENT_CRASH = 3

PIT_SPEAKER_DUMMY = 1
