"""One thread per vCPU: KVM_RUN, decode the exit, hand it to the buses, loop.

The loop is flat: one `match` hands each exit type to its handler. Work done here is
short; a handler that ends the VM reports an Outcome to the machine.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmkit.kvm import exits as x
from vmkit.kvm.errors import KvmError
from vmkit.kvm.vcpu import VcpuFd
from vmkit.vmm import outcome, unemulated
from vmkit.vmm.state import Lifecycle

if TYPE_CHECKING:
    from vmkit.devices.bus import Bus

KICK_SIGNAL = signal.SIGUSR1


def install_kick_handler() -> None:
    """A no-op handler, so the kick signal interrupts KVM_RUN instead of killing the process."""
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class VcpuRunner:
    """Runs one vCPU on its own thread until the machine ends or stops it."""

    def __init__(
        self,
        vcpu: VcpuFd,
        pio: Bus,
        mmio: Bus,
        end_vm: Callable[[outcome.Outcome], None],
        lifecycle: Lifecycle,
        complete_unemulated: bool,
    ) -> None:
        self.vcpu = vcpu
        self.pio = pio
        self.mmio = mmio
        self.end_vm = end_vm
        self.lifecycle = lifecycle
        self.complete_unemulated = complete_unemulated   # PVM hosts: see vmm/unemulated.py
        self.thread = threading.Thread(target=self._main, name=f"vcpu{vcpu.index}", daemon=True)
        self.exit_count = 0
        # Exits by kind, each bumped by its handler on this thread alone (read without a lock: an
        # int attribute is read whole). vmm/metrics.py gathers them.
        self.io_in_exits = self.io_out_exits = self.mmio_read_exits = self.mmio_write_exits = 0
        self.interrupted_exits = self.hlt_exits = self.shutdown_exits = self.system_event_exits = 0
        self.emulation_failure_exits = self.other_exits = 0
        self.cpu_ns_at_exit: int | None = None      # the thread's CPU time, once it has ended
        self.sample_sink: Callable[[int], None] | None = None   # set by a guest profiler
        self.sample_requested = False

    def start(self) -> None:
        self.thread.start()

    def kick(self) -> None:
        """Make KVM_RUN return now (or at once when next entered)."""
        self.vcpu.set_immediate_exit()
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    # --- the loop ------------------------------------------------------------
    def _main(self) -> None:
        try:
            while self.lifecycle.wait_runnable(self.vcpu.index):
                self.exit_count += 1
                if not self._dispatch(self.vcpu.run()):
                    return
        except KvmError as exc:
            self.end_vm(outcome.error(str(exc)))
        except Exception as exc:  # a VMM bug must end the VM, not hang it, and say it is a bug
            self.end_vm(outcome.internal(f"vCPU {self.vcpu.index}: {exc!r}", traceback.format_exc()))
        finally:
            self.cpu_ns_at_exit = time.thread_time_ns()
            self.lifecycle.runner_exited(self.vcpu.index)

    def _dispatch(self, exit_: x.VcpuExit) -> bool:
        """Hand one exit to its handler (the common ones first); False leaves the loop."""
        match exit_:
            case x.IoOut():
                return self._io_out(exit_)
            case x.IoIn():
                return self._io_in(exit_)
            case x.MmioWrite():
                return self._mmio_write(exit_)
            case x.MmioRead():
                return self._mmio_read(exit_)
            case x.Interrupted():
                return self._interrupted(exit_)
            case x.Shutdown():
                return self._shutdown(exit_)
            case x.SystemEvent():
                return self._system_event(exit_)
            case x.EmulationFailure():
                return self._emulation_failure(exit_)
            case x.Hlt():
                return self._halted(exit_)
        self.other_exits += 1
        self.end_vm(outcome.error(f"vCPU {self.vcpu.index}: unhandled exit {exit_}"))
        return False

    # --- handlers: return False to leave the loop ------------------------------
    def _interrupted(self, e: x.Interrupted) -> bool:
        self.interrupted_exits += 1
        if self.sample_requested and self.sample_sink is not None:
            self.sample_requested = False
            self.sample_sink(self.vcpu.get_regs().rip)
        return True

    def _io_out(self, e: x.IoOut) -> bool:
        self.io_out_exits += 1
        data = self.vcpu.io_data(e.data_offset, e.size * e.repeats)
        write = self.pio.write
        for i in range(0, e.size * e.repeats, e.size):
            write(e.port, bytes(data[i : i + e.size]))
        return True

    def _io_in(self, e: x.IoIn) -> bool:
        self.io_in_exits += 1
        data = self.vcpu.io_data(e.data_offset, e.size * e.repeats)
        for i in range(0, e.size * e.repeats, e.size):
            data[i : i + e.size] = self.pio.read(e.port, e.size)
        return True

    def _mmio_write(self, e: x.MmioWrite) -> bool:
        self.mmio_write_exits += 1
        self.mmio.write(e.address, e.data)
        return True

    def _mmio_read(self, e: x.MmioRead) -> bool:
        self.mmio_read_exits += 1
        value = self.mmio.read(e.address, e.length)
        self.vcpu.run_page.exit.mmio.data[: e.length] = value
        return True

    def _shutdown(self, e: x.Shutdown) -> bool:
        self.shutdown_exits += 1
        self.end_vm(outcome.triple_fault(self.vcpu.index, self.vcpu.get_regs().rip))
        return False

    def _system_event(self, e: x.SystemEvent) -> bool:
        self.system_event_exits += 1
        if e.kind == "reset":
            self.end_vm(outcome.RESET)
        elif e.kind == "shutdown":
            self.end_vm(outcome.POWEROFF)
        else:
            self.end_vm(outcome.error(f"vCPU {self.vcpu.index}: guest {e.kind} (system event {e.type_code})"))
        return False

    def _halted(self, e: x.Hlt) -> bool:
        self.hlt_exits += 1
        self.end_vm(outcome.error(f"vCPU {self.vcpu.index} halted with no in-kernel irqchip to wake it"))
        return False

    def _emulation_failure(self, e: x.EmulationFailure) -> bool:
        self.emulation_failure_exits += 1
        if self.complete_unemulated and unemulated.complete(self.vcpu, e.instruction_bytes):
            return True
        shown = e.instruction_bytes.hex(" ") or "not reported"
        self.end_vm(outcome.error(
            f"vCPU {self.vcpu.index}: KVM could not emulate the instruction at RIP {self.vcpu.get_regs().rip:#x} "
            f"(bytes: {shown}); on a PVM host some instructions are unsupported in guest ring 0"
        ))
        return False
