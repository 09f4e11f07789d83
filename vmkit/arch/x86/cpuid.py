"""The CPUID a vCPU sees: the host's supported leaves, shaped into a stable template."""

from __future__ import annotations

import ctypes

from vmkit.kvm.structs import Cpuid2

HYPERVISOR_BIT = 1 << 31   # leaf 1 ECX: running under a hypervisor
HTT_BIT = 1 << 28          # leaf 1 EDX: more than one logical processor per package


def _bits_for(count: int) -> int:
    return max(count - 1, 0).bit_length()


KVM_CPUID_FEATURES = 0x40000001
# kvmclock (KVM_FEATURE_CLOCKSOURCE, CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT) is read from shared
# memory and needs no hypercall; it is what lets a guest know its TSC frequency.
KVM_CLOCK_FEATURES = (1 << 0) | (1 << 3) | (1 << 24)


def vcpu_cpuid(supported: Cpuid2, cpu_index: int, num_cpus: int, *, kvm_pv_features: bool = True) -> Cpuid2:
    """A copy of `supported` patched for vCPU `cpu_index` of a `num_cpus` guest.

    Topology: one package with `num_cpus` cores, one thread each; APIC ID = index.
    Performance monitoring (leaf 0xA) is hidden, as vmkit offers no vPMU. With
    kvm_pv_features=False the KVM paravirtual features that work through hypercalls (leaf
    0x40000001) are hidden too; kvmclock stays.
    """
    cpuid = Cpuid2()
    ctypes.memmove(ctypes.addressof(cpuid), ctypes.addressof(supported), ctypes.sizeof(Cpuid2))
    core_shift = _bits_for(num_cpus)
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (cpu_index << 24) | (min(num_cpus, 255) << 16)
            e.ecx |= HYPERVISOR_BIT
            e.edx = e.edx | HTT_BIT if num_cpus > 1 else e.edx & ~HTT_BIT
        elif e.function == 4:
            e.eax = (e.eax & 0x3FFF) | ((num_cpus - 1) << 26) if e.eax & 0x1F else e.eax
        elif e.function in (0xB, 0x1F):
            e.edx = cpu_index
            if e.index == 0:      # SMT level: one thread per core
                e.eax, e.ebx, e.ecx = 0, 1, (1 << 8) | 0
            elif e.index == 1:    # core level
                e.eax, e.ebx, e.ecx = core_shift, num_cpus, (2 << 8) | 1
            else:
                e.eax, e.ebx, e.ecx = 0, 0, e.index
        elif e.function == 0xA:
            e.eax = e.ebx = e.ecx = e.edx = 0
        elif e.function == KVM_CPUID_FEATURES and not kvm_pv_features:
            e.eax &= KVM_CLOCK_FEATURES   # keep kvmclock; no PV EOI, spinlock kicks, IPIs, yields
            e.edx = 0
    return cpuid
