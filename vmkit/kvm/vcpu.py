"""A vCPU file descriptor: registers, CPUID, MSRs, events and KVM_RUN."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

from vmkit.kvm import constants as c
from vmkit.kvm.errors import KvmError
from vmkit.kvm.exits import Interrupted, VcpuExit, decode_exit
from vmkit.kvm.ioctl import IoctlArg, raw_ioctl
from vmkit.kvm.structs import Cpuid2, Fpu, KvmRun, MsrEntry, Regs, Sregs, VcpuEvents, msrs_struct

_INTERRUPTED = Interrupted()


class VcpuFd:
    """Wraps the fd returned by KVM_CREATE_VCPU and its mmapped kvm_run page."""

    def __init__(self, fd: int, index: int, mmap_size: int) -> None:
        self.fd = fd
        self.index = index
        self._mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_buffer = ctypes.c_char.from_buffer(self._mmap)
        self.run_page = KvmRun.from_buffer(self._mmap)
        self._run_bytes = memoryview(self._mmap)
        self.run_address = ctypes.addressof(self._run_buffer)

    def _call(self, name: str, request: int, arg: IoctlArg = 0) -> int:
        ret = raw_ioctl(self.fd, request, arg)
        if ret < 0:
            raise KvmError(f"{name} (vCPU {self.index})", -ret)
        return ret

    # --- registers ---------------------------------------------------------
    def get_regs(self) -> Regs:
        regs = Regs()
        self._call("KVM_GET_REGS", c.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: Regs) -> None:
        self._call("KVM_SET_REGS", c.KVM_SET_REGS, regs)

    def get_sregs(self) -> Sregs:
        sregs = Sregs()
        self._call("KVM_GET_SREGS", c.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: Sregs) -> None:
        self._call("KVM_SET_SREGS", c.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> Fpu:
        fpu = Fpu()
        self._call("KVM_GET_FPU", c.KVM_GET_FPU, fpu)
        return fpu

    def set_cpuid2(self, cpuid: Cpuid2) -> None:
        self._call("KVM_SET_CPUID2", c.KVM_SET_CPUID2, cpuid)

    def set_msrs(self, values: dict[int, int]) -> None:
        msrs = msrs_struct(len(values))()
        msrs.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            msrs.entries[i] = MsrEntry(index, 0, data)
        written = self._call("KVM_SET_MSRS", c.KVM_SET_MSRS, msrs)
        if written != len(values):
            bad = list(values)[written]
            raise KvmError(f"KVM_SET_MSRS (vCPU {self.index})", 0, f"MSR {bad:#x} was refused")

    def get_vcpu_events(self) -> VcpuEvents:
        events = VcpuEvents()
        self._call("KVM_GET_VCPU_EVENTS", c.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: VcpuEvents) -> None:
        self._call("KVM_SET_VCPU_EVENTS", c.KVM_SET_VCPU_EVENTS, events)

    # --- running -----------------------------------------------------------
    def run(self) -> VcpuExit:
        """Enter the guest until the next exit; EINTR comes back as Interrupted."""
        ret = raw_ioctl(self.fd, c.KVM_RUN, 0)
        if ret < 0:
            if -ret in (errno.EINTR, errno.EAGAIN):
                self.run_page.immediate_exit = 0
                return _INTERRUPTED
            raise KvmError(f"KVM_RUN (vCPU {self.index})", -ret)
        return decode_exit(self.run_page)

    def io_data(self, offset: int, length: int) -> memoryview:
        """The bytes of a port-I/O exit's data inside the kvm_run mapping."""
        return self._run_bytes[offset : offset + length]

    def set_immediate_exit(self) -> None:
        """Make the next (or current, once kicked) KVM_RUN return at once."""
        self.run_page.immediate_exit = 1

    def close(self) -> None:
        if self.fd >= 0:
            self._run_bytes.release()
            del self.run_page, self._run_buffer
            self._mmap.close()
            os.close(self.fd)
            self.fd = -1
