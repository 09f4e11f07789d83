"""A virtio-pci function's queue notifications as ioeventfds, served on the I/O thread.

Each queue gets an eventfd registered with KVM_IOEVENTFD at the queue's notify address (a 2-byte
write, as drivers make it). The guest's kick then completes in the kernel and wakes the I/O thread;
no exit reaches a vCPU thread. A write KVM does not match (another width) still exits and reaches
the device through the MMIO bus, so both paths lead to the same handler. The registrations follow
the guest's moves of BAR 0.
"""

from __future__ import annotations

import os
from functools import partial

from vmkit.devices.virtio.pci_transport import NOTIFY, NOTIFY_MULTIPLIER, VirtioPciDevice
from vmkit.kvm import KvmError, VmFd
from vmkit.vmm.io_engine import IoEngine, new_eventfd

NOTIFY_WIDTH = 2          # virtio 1.x drivers write the queue index as 16 bits (spec 4.1.5.2)


class QueueKicks:
    """The ioeventfds of one function's queues, registered where its BAR 0 is mapped."""

    def __init__(self, vm_fd: VmFd, engine: IoEngine, function: VirtioPciDevice, bar_address: int) -> None:
        self._vm_fd = vm_fd
        self._engine = engine
        self.fds = [new_eventfd() for _ in function.queues]
        for index, fd in enumerate(self.fds):
            engine.add(fd, partial(function.kick, index))
        self.registered_at: int | None = None
        self.place(bar_address)

    def _set(self, bar_address: int, assign: bool, *, tolerant: bool = False) -> None:
        """(De)register every queue's ioeventfd; `tolerant` goes on past the ones KVM refuses (undoing
        a registration that failed half-way, some of whose parts were never made)."""
        for index, fd in enumerate(self.fds):
            try:
                self._vm_fd.set_ioeventfd(fd, bar_address + NOTIFY + NOTIFY_MULTIPLIER * index, NOTIFY_WIDTH,
                                          assign=assign)
            except KvmError:
                if not tolerant:
                    raise

    def place(self, bar_address: int | None) -> None:
        """Register at `bar_address` (None: the BAR is not mapped), after removing the old place.
        A registration KVM refuses leaves the kicks to the MMIO exit path."""
        if self.registered_at is not None:
            self._set(self.registered_at, assign=False)
            self.registered_at = None
        if bar_address is None:
            return
        try:
            self._set(bar_address, assign=True)
        except KvmError:
            self._set(bar_address, assign=False, tolerant=True)
            return
        self.registered_at = bar_address

    def close(self) -> None:
        """Stop serving and close the eventfds (the VM fd's registrations die with it)."""
        for fd in self.fds:
            self._engine.remove(fd)
            os.close(fd)
        self.fds = []
