"""ctypes mirrors of the structures in include/uapi/linux/kvm.h (x86_64)."""

from __future__ import annotations

import ctypes

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class UserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class Regs(ctypes.Structure):
    _fields_ = [
        (name, u64)
        for name in (
            "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
        )
    ]


class Segment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class DTable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class Sregs(ctypes.Structure):
    _fields_ = [
        ("cs", Segment),
        ("ds", Segment),
        ("es", Segment),
        ("fs", Segment),
        ("gs", Segment),
        ("ss", Segment),
        ("tr", Segment),
        ("ldt", Segment),
        ("gdt", DTable),
        ("idt", DTable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * 4),
    ]


class CpuidEntry2(ctypes.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


MAX_CPUID_ENTRIES = 256


class Cpuid2(ctypes.Structure):
    _fields_ = [("nent", u32), ("padding", u32), ("entries", CpuidEntry2 * MAX_CPUID_ENTRIES)]


class MsrEntry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


def msrs_struct(count: int) -> type[ctypes.Structure]:
    """A kvm_msrs header followed by `count` entries."""

    class Msrs(ctypes.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", MsrEntry * count)]

    return Msrs


class MsrList(ctypes.Structure):
    _fields_ = [("nmsrs", u32), ("indices", u32 * 1024)]


class PitConfig(ctypes.Structure):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class IrqLevel(ctypes.Structure):
    _fields_ = [("irq", u32), ("level", u32)]


class Fpu(ctypes.Structure):
    """struct kvm_fpu: the x87 and SSE state (KVM_GET_FPU)."""

    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class VcpuEvents(ctypes.Structure):
    _fields_ = [
        ("exception_injected", u8),
        ("exception_nr", u8),
        ("exception_has_error_code", u8),
        ("exception_pending", u8),
        ("exception_error_code", u32),
        ("interrupt_injected", u8),
        ("interrupt_nr", u8),
        ("interrupt_soft", u8),
        ("interrupt_shadow", u8),
        ("nmi_injected", u8),
        ("nmi_pending", u8),
        ("nmi_masked", u8),
        ("nmi_pad", u8),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi_smm", u8),
        ("smi_pending", u8),
        ("smi_inside_nmi", u8),
        ("smi_latched_init", u8),
        ("reserved", u8 * 27),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class Msi(ctypes.Structure):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32),
                ("devid", u32), ("pad", u8 * 12)]


class IoEventFd(ctypes.Structure):
    """struct kvm_ioeventfd: a guest write to (addr, len) signals fd inside the kernel."""

    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", ctypes.c_int32), ("flags", u32),
                ("pad", u8 * 36)]


class IrqFd(ctypes.Structure):
    """struct kvm_irqfd: a write to fd raises the interrupt routed to gsi."""

    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class _IrqchipRoute(ctypes.Structure):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class _MsiRoute(ctypes.Structure):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _RouteUnion(ctypes.Union):
    _fields_ = [("irqchip", _IrqchipRoute), ("msi", _MsiRoute), ("pad", u32 * 8)]


class IrqRoutingEntry(ctypes.Structure):
    """struct kvm_irq_routing_entry: where a GSI goes (an irqchip pin, or an MSI message)."""

    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _RouteUnion)]


def irq_routing_struct(count: int) -> type[ctypes.Structure]:
    """A kvm_irq_routing header followed by `count` entries."""

    class IrqRouting(ctypes.Structure):
        _fields_ = [("nr", u32), ("flags", u32), ("entries", IrqRoutingEntry * count)]

    return IrqRouting


# --- struct kvm_run: the shared page a vCPU's exits are reported in --------


class _IoExit(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class _MmioExit(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _FailEntry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _InternalError(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _SystemEvent(ctypes.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _ExceptionExit(ctypes.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _ExitUnion(ctypes.Union):
    _fields_ = [
        ("io", _IoExit),
        ("mmio", _MmioExit),
        ("fail_entry", _FailEntry),
        ("internal", _InternalError),
        ("system_event", _SystemEvent),
        ("ex", _ExceptionExit),
        ("padding", u8 * 256),
    ]


class KvmRun(ctypes.Structure):
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", _ExitUnion),
    ]


assert ctypes.sizeof(Regs) == 144
assert ctypes.sizeof(Sregs) == 312
assert ctypes.sizeof(VcpuEvents) == 64
assert ctypes.sizeof(CpuidEntry2) == 40
assert ctypes.sizeof(IoEventFd) == 64
assert ctypes.sizeof(IrqFd) == 32
assert ctypes.sizeof(IrqRoutingEntry) == 48
assert KvmRun.exit.offset == 32
