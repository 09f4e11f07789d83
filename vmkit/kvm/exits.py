"""kvm_run decoded into typed exit objects.

`decode_exit` turns the shared kvm_run page into one of the records below,
so the run loop dispatches on types instead of on raw numbers. The records are NamedTuples:
one is built on every exit, and a tuple is the cheapest record Python builds.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple, cast, get_args

from vmkit.kvm import constants as c
from vmkit.kvm.structs import KvmRun


class IoIn(NamedTuple):
    """The guest read `size` bytes from `port`, `repeats` times (string I/O)."""

    port: int
    size: int
    repeats: int       # not `count`: a NamedTuple field may not shadow tuple.count
    data_offset: int


class IoOut(NamedTuple):
    """The guest wrote `repeats` items of `size` bytes to `port`."""

    port: int
    size: int
    repeats: int       # not `count`: a NamedTuple field may not shadow tuple.count
    data_offset: int


class MmioRead(NamedTuple):
    address: int
    length: int


class MmioWrite(NamedTuple):
    address: int
    data: bytes


class Hlt(NamedTuple):
    """The guest halted (only seen without an in-kernel LAPIC)."""


class Shutdown(NamedTuple):
    """The guest triple-faulted (or otherwise shut the vCPU down)."""


class SystemEvent(NamedTuple):
    """KVM_EXIT_SYSTEM_EVENT: kind is 'shutdown', 'reset', 'crash' or 'unknown'."""

    kind: str
    type_code: int


class Interrupted(NamedTuple):
    """KVM_RUN returned because a signal or immediate_exit asked it to."""


class EmulationFailure(NamedTuple):
    """KVM could not emulate an instruction (common on PVM hosts)."""

    instruction_bytes: bytes


class InternalError(NamedTuple):
    suberror: int
    data: tuple[int, ...]


class FailEntry(NamedTuple):
    reason: int
    cpu: int


class GuestException(NamedTuple):
    vector: int
    error_code: int


class UnhandledExit(NamedTuple):
    reason: int


VcpuExit = (
    IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | SystemEvent | Interrupted
    | EmulationFailure | InternalError | FailEntry | GuestException | UnhandledExit
)


def _same_exit(self: tuple, other: object) -> bool:
    return type(other) is type(self) and tuple.__eq__(self, cast(tuple, other))


def _other_exit(self: tuple, other: object) -> bool:
    return not _same_exit(self, other)


def _exit_hash(self: tuple) -> int:
    return hash((type(self), tuple(self)))


def _is_an_exit(self: tuple) -> bool:
    return True       # an exit with no fields is still an exit, not an empty (false) tuple


# Exits compare equal only to exits of the same kind (plain tuples would make IoIn == IoOut).
for _kind in get_args(VcpuExit):
    _kind.__eq__, _kind.__ne__, _kind.__hash__, _kind.__bool__ = _same_exit, _other_exit, _exit_hash, _is_an_exit

_SYSTEM_EVENT_KINDS = {
    c.SYSTEM_EVENT_SHUTDOWN: "shutdown",
    c.SYSTEM_EVENT_RESET: "reset",
    c.SYSTEM_EVENT_CRASH: "crash",
}

_HLT = Hlt()
_SHUTDOWN = Shutdown()
_INTERRUPTED = Interrupted()


def decode_exit(run: KvmRun) -> VcpuExit:
    """Read kvm_run after KVM_RUN returned and describe why the vCPU stopped."""
    reason = run.exit_reason
    if reason == c.EXIT_IO:
        io = run.exit.io
        cls = IoOut if io.direction else IoIn
        return cls(io.port, io.size, io.count, io.data_offset)
    if reason == c.EXIT_MMIO:
        mmio = run.exit.mmio
        if mmio.is_write:
            return MmioWrite(mmio.phys_addr, bytes(mmio.data[: mmio.len]))
        return MmioRead(mmio.phys_addr, mmio.len)
    if reason == c.EXIT_HLT:
        return _HLT
    if reason == c.EXIT_SHUTDOWN:
        return _SHUTDOWN
    if reason == c.EXIT_INTR:
        return _INTERRUPTED
    if reason == c.EXIT_SYSTEM_EVENT:
        event = run.exit.system_event
        return SystemEvent(_SYSTEM_EVENT_KINDS.get(event.type, "unknown"), event.type)
    if reason == c.EXIT_INTERNAL_ERROR:
        internal = run.exit.internal
        if internal.suberror == c.INTERNAL_ERROR_EMULATION:
            return EmulationFailure(_instruction_bytes(run))
        ndata = min(internal.ndata, 16)
        return InternalError(internal.suberror, tuple(internal.data[:ndata]))
    if reason == c.EXIT_FAIL_ENTRY:
        fail = run.exit.fail_entry
        return FailEntry(fail.hardware_entry_failure_reason, fail.cpu)
    if reason == c.EXIT_EXCEPTION:
        return GuestException(run.exit.ex.exception, run.exit.ex.error_code)
    return UnhandledExit(reason)


def _instruction_bytes(run: KvmRun) -> bytes:
    """The bytes of the instruction that failed emulation, when KVM reports them.

    Layout (kvm.h, emulation_failure): u32 suberror, u32 ndata, u64 flags,
    u8 insn_size, u8 insn_bytes[15].
    """
    internal = run.exit.internal
    if internal.ndata < 3 or not internal.data[0] & c.INTERNAL_ERROR_FLAG_INSTRUCTION_BYTES:
        return b""
    base = ctypes.addressof(internal) + 16
    size = min(ctypes.c_uint8.from_address(base).value, 15)
    return ctypes.string_at(base + 1, size)
