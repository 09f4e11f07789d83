"""Machine: a built VM (KVM fds, memory, devices, vCPU runners) and its lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from vmkit.arch.x86.boot import BootPlan
from vmkit.devices.bus import Bus
from vmkit.devices.legacy.power_button import PowerButton
from vmkit.devices.legacy.serial import Serial16550
from vmkit.kvm import Kvm, KvmError, VmFd
from vmkit.memory import GuestMemory
from vmkit.vmm.device_manager import DeviceManager
from vmkit.vmm.ending import Ending
from vmkit.vmm.guest_profiler import GuestProfiler
from vmkit.vmm.io_engine import IoEngine
from vmkit.vmm.outcome import Outcome
from vmkit.vmm.state import Command, Lifecycle, VmState, VmStateError
from vmkit.vmm.vcpu_runner import VcpuRunner, install_kick_handler

if TYPE_CHECKING:
    from vmkit.vmm.metrics import MachineMetrics


class Closable(Protocol):
    """What the machine releases when it closes, after its threads stopped (eventfds, disks)."""

    def close(self) -> None: ...


class Buses(NamedTuple):
    pio: Bus
    mmio: Bus


class Machine:
    """A VM ready to run. Drive it with start/pause/resume/stop; wait() returns how it ended."""

    def __init__(self, kvm: Kvm, vm_fd: VmFd, memory: GuestMemory, buses: Buses,
                 runners: list[VcpuRunner], lifecycle: Lifecycle, boot: BootPlan, ending: Ending,
                 devices: DeviceManager, console: Serial16550, io_engine: IoEngine | None = None,
                 io_resources: list[Closable] | None = None, notes: list[str] | None = None,
                 power_button: PowerButton | None = None) -> None:
        self.kvm = kvm
        self.vm_fd = vm_fd
        self.memory = memory
        self.buses = buses
        self.runners = runners
        self.boot = boot
        self.devices = devices
        self.console = console            # the UART behind the guest's console (host input goes here)
        self.io_engine = io_engine
        self.io_resources = io_resources or []
        self.notes = notes or []          # what a user should know about this machine (said once)
        self.power_button = power_button  # the ACPI power button (the builder always makes one)
        self.lifecycle = lifecycle
        self.ending = ending
        ending.on_end(self._stop_vcpus)
        self._closed = False

    @property
    def state(self) -> VmState:
        return self.lifecycle.state

    @property
    def outcome(self) -> Outcome | None:
        return self.ending.outcome

    def start(self) -> None:
        install_kick_handler()
        self.lifecycle.apply(Command.START)
        if self.io_engine is not None:
            self.io_engine.start()
        for runner in self.runners:
            runner.start()

    def pause(self) -> None:
        self.lifecycle.apply(Command.PAUSE)
        self._kick_all()
        self.lifecycle.wait_parked(timeout=5.0)

    def resume(self) -> None:
        self.lifecycle.apply(Command.RESUME)

    def press_power_button(self) -> bool:
        """Press the ACPI power button once (from any thread): a guest that handles it shuts down and
        powers off; one that does not goes on running. A paused guest sees the press when resumed.
        False, and nothing pressed, when the VM is not running or paused (not started, or ended)."""
        if self.power_button is None or self.lifecycle.state not in (VmState.RUNNING, VmState.PAUSED):
            return False
        try:
            self.power_button.press()
        except KvmError:
            return False                          # the machine closed meanwhile
        return True

    def stop(self, reason: Outcome) -> None:
        """Stop the VM from the host side (signal, console, API); the first ending reported wins."""
        self.ending.report(reason)

    def _stop_vcpus(self) -> None:
        """The VM has ended (reported by anyone): the lifecycle says so, and every vCPU leaves."""
        try:
            self.lifecycle.apply(Command.STOP)
        except VmStateError:
            pass                                  # closed (stopped) already
        self._kick_all()

    def attach_profiler(self, profiler: GuestProfiler) -> None:
        """Sample every vCPU's RIP until the machine ends (see vmm/guest_profiler.py)."""
        for runner in self.runners:
            runner.sample_sink = profiler.record

        def request() -> None:
            for runner in self.runners:
                runner.sample_requested = True

        profiler.start(self._kick_all, request)

    def metrics(self) -> MachineMetrics:
        """Every counter now: exits and CPU time per vCPU, I/O per device (vmm/metrics.py); from any
        thread, at any time, also once the machine has ended or closed."""
        from vmkit.vmm.metrics import snapshot

        return snapshot(self)

    def wait(self, timeout: float | None = None) -> Outcome | None:
        return self.ending.wait(timeout)

    def _kick_all(self) -> None:
        for runner in self.runners:
            runner.kick()

    def close(self) -> None:
        """Join vCPU threads and release fds and memory. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.lifecycle.state != VmState.STOPPED:
            try:
                self.lifecycle.apply(Command.STOP)
            except VmStateError:
                pass                              # the ending stopped it a moment ago
        for runner in self.runners:
            if runner.thread.is_alive():
                for _ in range(50):
                    runner.kick()
                    runner.thread.join(0.1)
                    if not runner.thread.is_alive():
                        break
        if self.io_engine is not None:
            self.io_engine.stop()
        for resource in self.io_resources:
            resource.close()
        if self.io_engine is not None:
            self.io_engine.close()
        for runner in self.runners:
            if not runner.thread.is_alive():
                runner.vcpu.close()
        self.vm_fd.close()
        self.memory.close()
        self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
