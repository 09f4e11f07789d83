"""The guest-visible state of a virtio-pci function, as plain data, for snapshots.

`save_function` takes what the guest can see or has written (the PCI configuration space, the
MSI-X table and pending bits, the transport's registers, each queue's addresses and indices),
apart from the objects that serve it (fds, threads, the disk). `restore_function` puts such a
state into a freshly built function of the same kind, and treats it as untrusted input: a snapshot
file may be damaged or hostile, so every field is checked against what the device allows (sizes,
ranges, features it offers, rings inside guest memory) before anything is changed, and a
StateError names the first field that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmkit.devices.pci.config_space import CONFIG_SIZE
from vmkit.devices.pci.msix import ENTRY_SIZE
from vmkit.devices.state import StateError, check, check_int
from vmkit.devices.virtio.pci_transport import NO_VECTOR, STATUS_FEATURES_OK, VirtioPciDevice
from vmkit.devices.virtio.queue import Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory

U16, U32, U64 = 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1


@dataclass(frozen=True)
class QueueState:
    size: int
    ready: bool
    desc_table: int
    avail_ring: int
    used_ring: int
    msix_vector: int
    last_avail: int
    next_used: int


@dataclass(frozen=True)
class FunctionState:
    """One virtio-pci function: configuration space, MSI-X, transport registers and queues."""

    device_type: int
    config_space: bytes
    msix_table: bytes
    msix_pending: tuple[bool, ...]
    status: int
    device_feature_select: int
    driver_feature_select: int
    driver_features: int
    config_msix_vector: int
    queue_select: int
    isr: int
    queues: tuple[QueueState, ...] = field(default_factory=tuple)


def save_queue(queue: Virtqueue) -> QueueState:
    return QueueState(queue.size, queue.ready, queue.desc_table, queue.avail_ring, queue.used_ring,
                      queue.msix_vector, queue.last_avail, queue.next_used)


def save_function(function: VirtioPciDevice) -> FunctionState:
    """The function's guest-visible state (taken under its lock, so it is consistent)."""
    with function._lock:
        return FunctionState(
            function.device.device_type, bytes(function.config.data), bytes(function.msix.table),
            tuple(function.msix.pending), function.status, function.device_feature_select,
            function.driver_feature_select, function.driver_features, function.config_msix_vector,
            function.queue_select, function.isr, tuple(save_queue(q) for q in function.queues))


def _check_queue(state: QueueState, queue: Virtqueue, vectors: int, memory: GuestMemory, where: str) -> None:
    for name, limit in (("size", U16), ("desc_table", U64), ("avail_ring", U64), ("used_ring", U64),
                        ("msix_vector", U16), ("last_avail", U16), ("next_used", U16)):
        check_int(getattr(state, name), f"{where}.{name}", limit)
    check(isinstance(state.ready, bool), f"{where}.ready", f"{state.ready!r} is not true or false")
    check(state.msix_vector < vectors or state.msix_vector == NO_VECTOR, f"{where}.msix_vector",
           f"{state.msix_vector} names no MSI-X table entry (there are {vectors})")
    if state.ready:
        probe = Virtqueue(queue.max_size)
        probe.size, probe.desc_table, probe.avail_ring, probe.used_ring = (
            state.size, state.desc_table, state.avail_ring, state.used_ring)
        try:
            probe.validate_layout(memory)
        except VirtqueueError as exc:
            raise StateError(f"{where}: {exc}") from None


def check_function(state: FunctionState, function: VirtioPciDevice) -> None:
    """Raise StateError unless `state` is one `function` could have reached."""
    device = function.device
    check(state.device_type == device.device_type, "device_type",
           f"{state.device_type!r} is not this device's ({device.device_type})")
    check(isinstance(state.config_space, bytes) and len(state.config_space) == CONFIG_SIZE, "config_space",
           f"is not {CONFIG_SIZE} bytes")
    read_only = [i for i in range(CONFIG_SIZE)
                 if (state.config_space[i] ^ function.config.data[i]) & ~function.config.writable[i] & 0xFF]
    check(not read_only, "config_space", f"byte {read_only[0]:#x} differs in bits the guest cannot write"
           if read_only else "")
    vectors = function.msix.vectors
    check(isinstance(state.msix_table, bytes) and len(state.msix_table) == ENTRY_SIZE * vectors, "msix_table",
           f"is not {ENTRY_SIZE * vectors} bytes ({vectors} vectors)")
    check(len(state.msix_pending) == vectors and all(isinstance(p, bool) for p in state.msix_pending),
           "msix_pending", f"is not {vectors} true-or-false values")
    for name, limit in (("status", 0xFF), ("device_feature_select", U32), ("driver_feature_select", U32),
                        ("driver_features", U64), ("config_msix_vector", U16), ("queue_select", U16),
                        ("isr", 0xFF)):
        check_int(getattr(state, name), name, limit)
    check(not state.driver_features & ~device.features, "driver_features",
           f"{state.driver_features:#x} has bits the device does not offer ({device.features:#x})")
    check(not state.status & STATUS_FEATURES_OK or bool(state.driver_features), "status",
           "FEATURES_OK without negotiated features")
    check(state.config_msix_vector < vectors or state.config_msix_vector == NO_VECTOR, "config_msix_vector",
           f"{state.config_msix_vector} names no MSI-X table entry (there are {vectors})")
    check(len(state.queues) == len(function.queues), "queues",
           f"{len(state.queues)} saved, the device has {len(function.queues)}")
    for index, (saved, queue) in enumerate(zip(state.queues, function.queues, strict=True)):
        check(isinstance(saved, QueueState), f"queues[{index}]", "is not a queue state")
        _check_queue(saved, queue, vectors, function.memory, f"queues[{index}]")


def restore_function(function: VirtioPciDevice, state: FunctionState) -> None:
    """Put `state` into `function` (built fresh, not yet running), after checking all of it."""
    check_function(state, function)
    with function._lock:
        old_bar = function.config.bar_address(0)
        function.config.data[:] = state.config_space
        function.msix.table[:] = state.msix_table
        function.msix.pending[:] = list(state.msix_pending)
        function.status = state.status
        function.device_feature_select = state.device_feature_select
        function.driver_feature_select = state.driver_feature_select
        function.driver_features = state.driver_features
        function.config_msix_vector = state.config_msix_vector
        function.queue_select = state.queue_select
        function.isr = state.isr
        for saved, queue in zip(state.queues, function.queues, strict=True):
            queue.size, queue.ready = saved.size, saved.ready
            queue.desc_table, queue.avail_ring, queue.used_ring = saved.desc_table, saved.avail_ring, saved.used_ring
            queue.msix_vector, queue.last_avail, queue.next_used = saved.msix_vector, saved.last_avail, saved.next_used
        new_bar = function.config.bar_address(0)
    if new_bar != old_bar and function.config.on_bar_moved is not None:
        function.config.on_bar_moved(0, old_bar, new_bar)      # the bus (and ioeventfds) follow it
