"""What a virtio device type provides to the transport, and what the machine offers it.

Kept free of heavy imports: option tables and type hints name these without loading the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vmkit.devices.virtio.queue import Virtqueue
    from vmkit.memory import GuestMemory


class DeviceHost(Protocol):
    """What the machine offers a device beyond its queue kicks. Handlers and served queues run on
    the VM's I/O thread, one at a time, so a device needs no locks of its own for them."""

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Run `handler` whenever `fd` is readable (a tap, a socket); the handler reads it."""
        ...

    def unwatch(self, fd: int) -> None:
        """Stop watching `fd` (before closing it, or while the device has nowhere to put its data)."""
        ...

    def call_later(self, delay_ns: int, handler: Callable[[], None]) -> None:
        """Run `handler` once, `delay_ns` from now (a rate limit's wait)."""
        ...

    def serve(self, queue_index: int) -> None:
        """Serve queue `queue_index` now, as if the driver had kicked it (process, then interrupt);
        only from the I/O thread, e.g. from a handler when the host side has data for the guest."""
        ...


class VirtioDevice(Protocol):
    """What a device type provides to the transport."""

    label: str
    device_type: int
    features: int
    queue_sizes: tuple[int, ...]

    def config(self) -> bytes: ...

    def process(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        """Serve the queue's available chains; True if any was returned to the driver. `queue.index`
        says which of the device's queues it is (its place in queue_sizes)."""
        ...

    def reset(self) -> None: ...

    def activate(self, features: int) -> None:
        """The driver accepted `features` (a subset of `features` offered) and set DRIVER_OK; a reset
        takes the device back to none."""
        ...

    def attach(self, host: DeviceHost) -> None:
        """Called once, when the device is placed in a machine: what it may ask of it."""
        ...

    def save(self) -> object:
        """The device's own guest-visible state (beyond the transport's), as immutable plain data
        (vmkit/devices/state.py); vmkit.devices.state.NoState when it keeps none."""
        ...

    def restore(self, state: object) -> None:
        """Take a state `save` returned, after checking every field (StateError names the first
        that is wrong); called on a device built afresh, before the machine runs."""
        ...
