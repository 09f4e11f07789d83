"""DeviceManager: the one list of a machine's devices, and where each one sits.

It places every device: legacy devices on their fixed ports (arch/x86/layout.py), PCI functions in
slots from 1 with BAR 0 at PCI_MMIO_BASE + slot * PCI_MMIO_STRIDE (stable addresses, in the order
they are added), and the virtio queues' kicks on the I/O thread. It follows the guest's BAR moves
(the MMIO bus and the ioeventfds move together), gives each virtio device its DeviceHost (the I/O
thread's fds and timers, its own queues), and is the one list that reset, save (snapshot), restore
and close walk. Adding a virtio device type is one module plus one line in VIRTIO_FACTORIES (or, for
a link to the host, in vmm/links.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple, Protocol

from vmkit.arch.x86 import layout
from vmkit.devices.bus import Bus, BusDevice
from vmkit.devices.pci.root import HostBridge, PciConfigIo, PciConfigMmio, PciRoot
from vmkit.devices.state import StateError, Stateful, check
from vmkit.kvm import VmFd
from vmkit.memory import GuestMemory
from vmkit.vmm.io_engine import IoEngine

if TYPE_CHECKING:
    from vmkit.devices.virtio.device import VirtioDevice
    from vmkit.devices.virtio.pci_transport import VirtioPciDevice
    from vmkit.devices.virtio.state import FunctionState
    from vmkit.vmm.queue_kicks import QueueKicks


def _rng() -> VirtioDevice:
    from vmkit.devices.virtio.rng import VirtioRng
    return VirtioRng()


# The virtio devices `--device NAME` adds (disks come with --disk), imported only when used.
VIRTIO_FACTORIES: dict[str, Callable[[], VirtioDevice]] = {"virtio-rng": _rng}


class LegacyDevice(BusDevice, Stateful, Protocol):
    """A device on fixed ports that keeps its state for snapshots."""


class VirtioDeviceState(NamedTuple):
    slot: int
    transport: FunctionState      # configuration space, MSI-X, queues (devices/virtio/state.py)
    device: object                # the device type's own (its save())


class DevicesState(NamedTuple):
    """Every device of a machine, in the order they were placed."""

    legacy: tuple[tuple[str, object], ...]
    virtio: tuple[VirtioDeviceState, ...]


class VirtioSlot(NamedTuple):
    slot: int
    function: VirtioPciDevice
    kicks: QueueKicks | None
    power_on: FunctionState       # the transport as built: what a machine reset goes back to


class DeviceManager:
    def __init__(self, memory: GuestMemory, vm_fd: VmFd, pio: Bus, mmio: Bus, engine: IoEngine | None,
                 ioeventfd: bool, signal_msi: Callable[[int, int], None]) -> None:
        self._memory, self._vm_fd, self._pio, self._mmio = memory, vm_fd, pio, mmio
        self._engine = engine if ioeventfd else None      # kicks are served there only with ioeventfds
        self._timers = engine
        self._signal_msi = signal_msi
        self.legacy: dict[str, LegacyDevice] = {}
        self.pci = PciRoot()
        self.pci.add(HostBridge(), slot=0)
        pio.insert(PciConfigIo(self.pci), layout.PCI_CONFIG_PORT, 8)
        mmio.insert(PciConfigMmio(self.pci), layout.PCI_ECAM_ADDR, layout.PCI_ECAM_SIZE)
        self.virtio: list[VirtioSlot] = []

    def add_legacy(self, name: str, device: LegacyDevice, port: int, length: int) -> None:
        self._pio.insert(device, port, length)
        self.legacy[name] = device

    def add_virtio(self, backend: VirtioDevice) -> VirtioPciDevice:
        """Put a virtio device in the next PCI slot, its BAR mapped and its queues served."""
        from vmkit.devices.virtio.pci_transport import BAR_SIZE, VirtioPciDevice
        from vmkit.vmm.queue_kicks import QueueKicks

        slot = len(self.pci.functions)
        bar = layout.PCI_MMIO_BASE + slot * layout.PCI_MMIO_STRIDE
        function = VirtioPciDevice(backend, self._memory, bar, self._signal_msi)
        self.pci.add(function, slot)
        self._mmio.insert(function.bar, bar, BAR_SIZE)
        kicks = QueueKicks(self._vm_fd, self._engine, function, bar) if self._engine is not None else None
        function.config.on_bar_moved = partial(self._bar_moved, function, kicks, BAR_SIZE)
        if self._timers is not None:
            backend.attach(_FunctionHost(self._timers, function))
        from vmkit.devices.virtio.state import save_function
        self.virtio.append(VirtioSlot(slot, function, kicks, save_function(function)))
        return function

    def _bar_moved(self, function: VirtioPciDevice, kicks: QueueKicks | None, size: int,
                   index: int, old: int, new: int) -> None:
        """Follow a guest's BAR write; a BAR placed over another device stays unmapped."""
        mapped = self._mmio.move(function.bar, old, new, size)
        if kicks is not None:
            kicks.place(new if mapped else None)

    # --- reset, snapshot, restore: one walk over every device ---------------------------------
    def reset(self) -> None:
        """Every device back to its state at build time (a machine reset)."""
        from vmkit.devices.virtio.state import restore_function

        for device in self.legacy.values():
            device.reset()
        for entry in self.virtio:
            entry.function.reset()                            # the device, its queues and registers
            restore_function(entry.function, entry.power_on)  # configuration space, BAR and MSI-X too

    def save(self) -> DevicesState:
        """The guest-visible state of every device (take it with the vCPUs paused)."""
        from vmkit.devices.virtio.state import save_function

        return DevicesState(
            tuple((name, device.save()) for name, device in self.legacy.items()),
            tuple(VirtioDeviceState(e.slot, save_function(e.function), e.function.device.save())
                  for e in self.virtio))

    def restore(self, state: DevicesState) -> None:
        """Put a saved state into this machine's devices, built afresh from the same configuration and
        not yet started. Every part is checked as untrusted (StateError names the first that is wrong);
        a machine whose restore failed part-way is to be closed, not run. Queues the driver had made
        ready are served once when the I/O thread starts, so requests offered before the snapshot
        are not left waiting for a kick that already happened."""
        from vmkit.devices.virtio.state import restore_function

        check(isinstance(state, DevicesState), "devices", f"the state is a {type(state).__name__}")
        names = [name for name, _ in state.legacy]
        check(names == list(self.legacy), "devices.legacy", f"{names} saved, this machine has {list(self.legacy)}")
        slots = [entry.slot for entry in state.virtio]
        check(slots == [e.slot for e in self.virtio], "devices.virtio",
              f"slots {slots} saved, this machine has {[e.slot for e in self.virtio]}")
        for (_, saved), device in zip(state.legacy, self.legacy.values(), strict=True):
            device.restore(saved)
        for saved_function, entry in zip(state.virtio, self.virtio, strict=True):
            where = f"devices.virtio[slot {entry.slot}] ({entry.function.device.label})"
            try:
                restore_function(entry.function, saved_function.transport)
                entry.function.device.restore(saved_function.device)
            except StateError as exc:
                raise StateError(f"{where}: {exc}") from None
            if self._timers is not None:
                for index, queue in enumerate(entry.function.queues):
                    if queue.ready:
                        self._timers.call_later(0, partial(entry.function.notify, index))

    def close(self) -> None:
        """Stop serving queue kicks (after the I/O thread stopped)."""
        for entry in self.virtio:
            if entry.kicks is not None:
                entry.kicks.close()


class _FunctionHost:
    """A device's DeviceHost: the machine's I/O engine, and its own function's queues."""

    def __init__(self, engine: IoEngine, function: VirtioPciDevice) -> None:
        self._engine, self._function = engine, function

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        self._engine.add(fd, handler, eventfd=False)

    def unwatch(self, fd: int) -> None:
        self._engine.remove(fd)

    def call_later(self, delay_ns: int, handler: Callable[[], None]) -> None:
        self._engine.call_later(delay_ns, handler)

    def serve(self, queue_index: int) -> None:
        self._function.notify(queue_index)
