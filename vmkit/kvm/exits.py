"""kvm_run decoded into typed exit objects.

`decode_exit` turns the shared kvm_run page into one of the records below,
so the run loop dispatches on types instead of on raw numbers.
"""

from __future__ import annotations

import ctypes

from vmkit.kvm import constants as c
from vmkit.kvm.structs import KvmRun


class ExitRecord:
    """A small immutable record: fields from __slots__, equal when type and fields match."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: object) -> None:
        if len(values) != len(self.__slots__):
            raise TypeError(f"{type(self).__name__} takes {len(self.__slots__)} values, got {len(values)}")
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class IoIn(ExitRecord):
    """The guest read `size` bytes from `port`, `count` times (string I/O)."""

    __slots__ = ('port', 'size', 'count', 'data_offset')
    port: int
    size: int
    count: int
    data_offset: int


class IoOut(ExitRecord):
    """The guest wrote `count` items of `size` bytes to `port`."""

    __slots__ = ('port', 'size', 'count', 'data_offset')
    port: int
    size: int
    count: int
    data_offset: int


class MmioRead(ExitRecord):
    __slots__ = ('address', 'length')
    address: int
    length: int


class MmioWrite(ExitRecord):
    __slots__ = ('address', 'data')
    address: int
    data: bytes


class Hlt(ExitRecord):
    """The guest halted (only seen without an in-kernel LAPIC)."""

    __slots__ = ()


class Shutdown(ExitRecord):
    """The guest triple-faulted (or otherwise shut the vCPU down)."""

    __slots__ = ()


class SystemEvent(ExitRecord):
    """KVM_EXIT_SYSTEM_EVENT: kind is 'shutdown', 'reset', 'crash' or 'unknown'."""

    __slots__ = ('kind', 'type_code')
    kind: str
    type_code: int


class Interrupted(ExitRecord):
    """KVM_RUN returned because a signal or immediate_exit asked it to."""

    __slots__ = ()


class EmulationFailure(ExitRecord):
    """KVM could not emulate an instruction (common on PVM hosts)."""

    __slots__ = ('instruction_bytes',)
    instruction_bytes: bytes


class InternalError(ExitRecord):
    __slots__ = ('suberror', 'data')
    suberror: int
    data: tuple[int, ...]


class FailEntry(ExitRecord):
    __slots__ = ('reason', 'cpu')
    reason: int
    cpu: int


class GuestException(ExitRecord):
    __slots__ = ('vector', 'error_code')
    vector: int
    error_code: int


class UnhandledExit(ExitRecord):
    __slots__ = ('reason',)
    reason: int


VcpuExit = (
    IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | SystemEvent | Interrupted
    | EmulationFailure | InternalError | FailEntry | GuestException | UnhandledExit
)

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
