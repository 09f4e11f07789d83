"""DeviceManager: the one list of a machine's devices, and where each one sits.

It places every device: legacy devices on their fixed ports (arch/x86/layout.py), PCI functions in
slots from 1 with BAR 0 at PCI_MMIO_BASE + slot * PCI_MMIO_STRIDE (stable addresses, in the order
they are added), and the virtio queues' kicks on the I/O thread. It follows the guest's BAR moves
(the MMIO bus and the ioeventfds move together) and is what close walks. Adding a virtio device
type is one module plus one line in VIRTIO_FACTORIES.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from vmkit.arch.x86 import layout
from vmkit.devices.bus import Bus, BusDevice
from vmkit.devices.pci.root import HostBridge, PciConfigIo, PciConfigMmio, PciRoot
from vmkit.kvm import VmFd
from vmkit.memory import GuestMemory
from vmkit.vmm.io_engine import IoEngine

if TYPE_CHECKING:
    from vmkit.devices.virtio.device import VirtioDevice
    from vmkit.devices.virtio.pci_transport import VirtioPciDevice
    from vmkit.vmm.queue_kicks import QueueKicks


def _rng() -> VirtioDevice:
    from vmkit.devices.virtio.rng import VirtioRng
    return VirtioRng()


# The virtio devices `--device NAME` adds (disks come with --disk), imported only when used.
VIRTIO_FACTORIES: dict[str, Callable[[], VirtioDevice]] = {"virtio-rng": _rng}


class VirtioSlot(NamedTuple):
    slot: int
    function: VirtioPciDevice
    kicks: QueueKicks | None


class DeviceManager:
    def __init__(self, memory: GuestMemory, vm_fd: VmFd, pio: Bus, mmio: Bus, engine: IoEngine | None,
                 ioeventfd: bool, signal_msi: Callable[[int, int], None]) -> None:
        self._memory, self._vm_fd, self._pio, self._mmio = memory, vm_fd, pio, mmio
        self._engine = engine if ioeventfd else None      # kicks are served there only with ioeventfds
        self._timers = engine
        self._signal_msi = signal_msi
        self.legacy: dict[str, BusDevice] = {}
        self.pci = PciRoot()
        self.pci.add(HostBridge(), slot=0)
        pio.insert(PciConfigIo(self.pci), layout.PCI_CONFIG_PORT, 8)
        mmio.insert(PciConfigMmio(self.pci), layout.PCI_ECAM_ADDR, layout.PCI_ECAM_SIZE)
        self.virtio: list[VirtioSlot] = []

    def add_legacy(self, name: str, device: BusDevice, port: int, length: int) -> None:
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
        self.virtio.append(VirtioSlot(slot, function, kicks))
        return function

    def _bar_moved(self, function: VirtioPciDevice, kicks: QueueKicks | None, size: int,
                   index: int, old: int, new: int) -> None:
        """Follow a guest's BAR write; a BAR placed over another device stays unmapped."""
        mapped = self._mmio.move(function.bar, old, new, size)
        if kicks is not None:
            kicks.place(new if mapped else None)

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
