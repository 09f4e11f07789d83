"""MSI delivery through irqfds.

Each (address, data) message a guest programs into an MSI-X table entry gets a GSI with an MSI
route (KVM_SET_GSI_ROUTING) and an eventfd registered as that GSI's irqfd (KVM_IRQFD); delivering the
message is then a write to the eventfd, from any thread, and the kernel injects it. Routes follow
the guest's table lazily: a message seen for the first time gets its route then. Masking and pending
bits stay with the device's MSI-X table, which calls `signal` only for a message it may send. A
guest that programs message after message (hostile, or just busy) recycles the least recently used
route, so the routing table stays bounded.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from vmkit.kvm import KvmError, VmFd
from vmkit.kvm.constants import IOAPIC_PINS
from vmkit.vmm.io_engine import new_eventfd

MAX_ROUTES = 256


class MsiRouter:
    """`signal(address, data)` for MSI-X tables, backed by irqfds."""

    def __init__(self, vm_fd: VmFd, max_routes: int = MAX_ROUTES) -> None:
        self._vm_fd = vm_fd
        self._max_routes = max_routes
        self._routes: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()  # message -> (gsi, fd)
        self._spare: list[tuple[int, int]] = []     # (gsi, irqfd) pairs with no route (a refused message's)
        self._allocated = 0
        self._lock = threading.Lock()

    @property
    def routes(self) -> int:
        return len(self._routes)

    def signal(self, address: int, data: int) -> None:
        """Send one message; a message KVM refuses to route (a bad address) is dropped."""
        message = (address, data)
        with self._lock:
            route = self._routes.get(message)
            if route is None:
                try:
                    route = self._add(message)
                except KvmError:
                    return
            else:
                self._routes.move_to_end(message)
            fd = route[1]
        os.eventfd_write(fd, 1)

    def _add(self, message: tuple[int, int]) -> tuple[int, int]:
        """A GSI and irqfd for a new message: a spare pair, a new one, or the least recently used."""
        if self._spare:
            gsi, fd = self._spare.pop()
        elif self._allocated < self._max_routes:
            gsi, fd = IOAPIC_PINS + self._allocated, new_eventfd()
            try:
                self._vm_fd.set_irqfd(fd, gsi)        # injects nothing until its GSI has a route
            except KvmError:
                os.close(fd)
                raise
            self._allocated += 1
        else:
            _, (gsi, fd) = self._routes.popitem(last=False)
        table = {route_gsi: routed for routed, (route_gsi, _) in self._routes.items()}
        try:
            self._vm_fd.set_msi_routes({**table, gsi: message})
        except KvmError:
            self._spare.append((gsi, fd))
            self._vm_fd.set_msi_routes(table)
            raise
        self._routes[message] = (gsi, fd)
        return gsi, fd

    def close(self) -> None:
        """Close the eventfds (the VM fd's irqfds and routes die with it)."""
        with self._lock:
            for _, fd in [*self._routes.values(), *self._spare]:
                os.close(fd)
            self._routes.clear()
            self._spare.clear()
