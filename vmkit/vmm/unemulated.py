"""Guest instructions that KVM's emulator cannot run on PVM hosts and that vmkit completes itself.

On a PVM host guest ring-0 code runs in KVM's instruction emulator, which stops with an emulation
failure at a few instructions (docs/linux-guests.md). For those whose effect the VMM can reproduce
exactly from the vCPU's state, it does what the CPU would have done and lets the guest go on.
"""

from __future__ import annotations

from vmkit.kvm.vcpu import VcpuFd

INT3 = 0xCC
FWAIT = 0x9B
BP_VECTOR = 3          # breakpoint, a trap: reported after the int3
MF_VECTOR = 16         # x87 floating-point error, a fault: reported on the fwait

CR0_NE = 1 << 5        # native x87 error reporting (#MF), which every 64-bit OS turns on
FSW_ERROR_SUMMARY = 0x80
X87_EXCEPTION_BITS = 0x3F     # IE DE ZE OE UE PE, in the status word and (as masks) the control word


def _inject(vcpu: VcpuFd, vector: int) -> None:
    events = vcpu.get_vcpu_events()
    events.exception_injected = 1
    events.exception_nr = vector
    events.exception_has_error_code = 0
    events.exception_pending = 0
    vcpu.set_vcpu_events(events)


def _skip(vcpu: VcpuFd, length: int) -> None:
    regs = vcpu.get_regs()
    regs.rip += length
    vcpu.set_regs(regs)


def x87_error_pending(fsw: int, fcw: int) -> bool:
    """Would fwait raise #MF: an x87 exception flagged in the status word and not masked."""
    return bool(fsw & FSW_ERROR_SUMMARY) and bool(fsw & ~fcw & X87_EXCEPTION_BITS)


def complete(vcpu: VcpuFd, instruction: bytes) -> bool:
    """Carry out `instruction`, found at the vCPU's RIP, as the CPU would. False when it is not
    one vmkit knows how to complete (the VM then ends with the emulation failure)."""
    opcode = instruction[0] if instruction else None
    if opcode == INT3:
        _skip(vcpu, 1)
        _inject(vcpu, BP_VECTOR)
        return True
    if opcode == FWAIT:
        # fwait only reports a pending unmasked x87 error; without one it does nothing. (With
        # CR0.NE clear the error would go out as the legacy FERR# line, which is not modelled.)
        fpu = vcpu.get_fpu()
        if x87_error_pending(fpu.fsw, fpu.fcw) and vcpu.get_sregs().cr0 & CR0_NE:
            _inject(vcpu, MF_VECTOR)
        else:
            _skip(vcpu, 1)
        return True
    return False
