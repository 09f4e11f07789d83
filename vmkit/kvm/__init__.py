"""Typed bindings to the Linux KVM API (system, VM and vCPU file descriptors)."""

from vmkit.kvm.errors import KvmError, KvmUnavailable
from vmkit.kvm.system import Kvm
from vmkit.kvm.vcpu import VcpuFd
from vmkit.kvm.vm import VmFd

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "VcpuFd", "VmFd"]
