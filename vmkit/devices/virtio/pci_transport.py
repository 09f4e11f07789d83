"""The virtio 1.x PCI transport ("modern" virtio-pci, spec section 4.1).

BAR 0 (32 KiB of MMIO) holds, at fixed offsets:
  0x0000 common configuration   0x1000 ISR status   0x2000 device configuration
  0x3000 notifications (4 bytes per queue)   0x4000 MSI-X table   0x5000 MSI-X PBA
Queue notifications are handled on the vCPU thread that wrote them.
"""

from __future__ import annotations

import struct
import threading

from vmkit.devices.bus import Access
from vmkit.devices.pci.config_space import ConfigSpace
from vmkit.devices.pci.msix import MsixTable, SignalMsi
from vmkit.devices.virtio.device import VirtioDevice
from vmkit.devices.virtio.queue import Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory

VIRTIO_VENDOR = 0x1AF4
VIRTIO_F_VERSION_1 = 1 << 32
BAR_SIZE = 0x8000
COMMON, ISR, DEVICE, NOTIFY, MSIX_TABLE, MSIX_PBA = 0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
NOTIFY_MULTIPLIER = 4
NO_VECTOR = 0xFFFF
CAP_VENDOR, CAP_MSIX = 0x09, 0x11
CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE = 1, 2, 3, 4

STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK = 1, 2, 4
STATUS_FEATURES_OK, STATUS_NEEDS_RESET, STATUS_FAILED = 8, 0x40, 0x80
ISR_QUEUE, ISR_CONFIG = 1, 2


# virtio_pci_common_cfg, offsets 0x00..0x37: device/driver feature select and word, config MSI-X
# vector, number of queues, device status, config generation, queue select, size, MSI-X vector,
# enable, notify offset, and the three ring addresses.
COMMON_LAYOUT = "<IIIIHHBBHHHHHQQQ"
assert struct.calcsize(COMMON_LAYOUT) == 0x38
# The fields a driver writes, by offset, with their widths (spec 4.1.4.3); the rest are read-only.
COMMON_WRITABLE = {0x00: 4, 0x08: 4, 0x0C: 4, 0x10: 2, 0x14: 1, 0x16: 2, 0x18: 2, 0x1A: 2, 0x1C: 2}
RING_ADDRESS_FIELDS = {0x20: "desc_table", 0x28: "avail_ring", 0x30: "used_ring"}


# Taking and releasing a lock is a full memory barrier (a locked instruction on x86).
_FENCE = threading.Lock()


def _feature_word(features: int, select: int) -> int:
    """The 32-bit half of a 64-bit feature set that `select` (0 or 1) names; 0 beyond."""
    return (features >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0


class VirtioPciDevice:
    """A PCI function wrapping one virtio device: configuration space, BAR 0 and interrupts."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, bar_address: int,
                 signal_msi: SignalMsi, class_code: int = 0xFF0000) -> None:
        self.device = device
        self.label = f"virtio-pci ({device.label})"
        self.memory = memory
        self.queues = [Virtqueue(size, index) for index, size in enumerate(device.queue_sizes)]
        self.notifications = [0] * len(self.queues)   # the driver's kicks, per queue (metrics)
        self.interrupts = 0                           # queue and configuration interrupts raised
        self._lock = threading.RLock()
        self.config = ConfigSpace(VIRTIO_VENDOR, 0x1040 + device.device_type, class_code, revision=1,
                                  subsystem_vendor=VIRTIO_VENDOR, subsystem=0x40)
        self.config.add_memory_bar(0, bar_address, BAR_SIZE)
        self._add_virtio_cap(CFG_COMMON, COMMON, 0x38)
        self._add_virtio_cap(CFG_NOTIFY, NOTIFY, NOTIFY_MULTIPLIER * len(self.queues),
                             extra=struct.pack("<I", NOTIFY_MULTIPLIER))
        self._add_virtio_cap(CFG_ISR, ISR, 1)
        self._add_virtio_cap(CFG_DEVICE, DEVICE, max(len(device.config()), 4))
        vectors = len(self.queues) + 1
        self._msix_cap = self.config.add_capability(
            CAP_MSIX, struct.pack("<HII", vectors - 1, MSIX_TABLE, MSIX_PBA), writable=b"\x00\xc0")
        self.msix = MsixTable(vectors, lambda: self.config.u16(self._msix_cap + 2), signal_msi)
        self.config.on_written = self._config_written
        self.bar = VirtioPciBar(self)
        self.reset()

    def _add_virtio_cap(self, cfg_type: int, offset: int, length: int, extra: bytes = b"") -> None:
        body = struct.pack("<BBBBBBII", 16 + len(extra), cfg_type, 0, 0, 0, 0, offset, length) + extra
        self.config.add_capability(CAP_VENDOR, body)

    def _config_written(self, offset: int, length: int) -> None:
        """The message control word may have unmasked the function or enabled MSI-X."""
        control = self._msix_cap + 2
        if offset < control + 2 and control < offset + length:
            self.msix.deliver_pending()

    # --- state ---------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.status = 0
            self.device_feature_select = 0
            self.driver_feature_select = 0
            self.driver_features = 0
            self.queue_select = 0
            self.config_msix_vector = NO_VECTOR
            self.isr = 0
            for queue in self.queues:
                queue.reset()
            self.device.reset()

    @property
    def _queue(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    error: str | None = None

    def _fail(self, reason: str) -> None:
        """The driver broke the rules: stop, set DEVICE_NEEDS_RESET, tell the driver."""
        self.status |= STATUS_NEEDS_RESET
        self.error = reason
        self._interrupt(self.config_msix_vector, ISR_CONFIG)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        self.interrupts += 1
        self.isr |= isr_bit
        if vector != NO_VECTOR:
            self.msix.notify(vector)

    # --- common configuration ------------------------------------------------
    def read_common(self, offset: int, size: int) -> bytes:
        q = self._queue
        raw = struct.pack(
            COMMON_LAYOUT,
            self.device_feature_select, _feature_word(self.device.features, self.device_feature_select),
            self.driver_feature_select, _feature_word(self.driver_features, self.driver_feature_select),
            self.config_msix_vector, len(self.queues), self.status, 0, self.queue_select,
            q.size if q else 0, q.msix_vector if q else NO_VECTOR, int(q.ready) if q else 0,
            self.queue_select if q else 0,
            q.desc_table if q else 0, q.avail_ring if q else 0, q.used_ring if q else 0,
        )
        return raw[offset : offset + size].ljust(size, b"\0")

    def write_common(self, offset: int, data: bytes) -> None:
        """A driver write to the common configuration. Only a field's natural access reaches it (a
        64-bit ring address also as two 32-bit halves, spec 4.1.3.1); any other write is ignored."""
        value = int.from_bytes(data, "little")
        width = len(data)
        q = self._queue
        if offset in RING_ADDRESS_FIELDS and width in (4, 8) or offset - 4 in RING_ADDRESS_FIELDS and width == 4:
            if q is not None and not q.ready:            # a live queue's layout is fixed
                field = RING_ADDRESS_FIELDS[offset & ~7]
                if width == 8:
                    setattr(q, field, value)
                else:
                    shift = 32 if offset & 4 else 0
                    setattr(q, field, (getattr(q, field) & ~(0xFFFFFFFF << shift)) | (value << shift))
            return
        if COMMON_WRITABLE.get(offset) != width:
            return
        if offset == 0x00:
            self.device_feature_select = value
        elif offset == 0x08:
            self.driver_feature_select = value
        elif offset == 0x0C and self.driver_feature_select < 2 and not self.status & STATUS_FEATURES_OK:
            # once FEATURES_OK is set the negotiated features are fixed (spec 3.1.1; QEMU does the same)
            shift = 32 * self.driver_feature_select
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif offset == 0x10:
            self.config_msix_vector = self._vector(value)
        elif offset == 0x14:
            self._write_status(value)
        elif offset == 0x16:
            self.queue_select = value
        elif q is None:
            return
        elif offset == 0x1A:
            q.msix_vector = self._vector(value)
        elif q.ready:
            return                                   # a live queue's size is fixed
        elif offset == 0x18:
            q.size = value
        elif offset == 0x1C and value == 1:
            try:
                q.validate_layout(self.memory)
            except VirtqueueError as exc:
                self._fail(f"queue {self.queue_select}: {exc}")
                return
            q.ready = True

    def _vector(self, value: int) -> int:
        """The vector an event is mapped to: a table entry that exists, else NO_VECTOR, which is how a
        device reports a mapping it cannot make (spec 4.1.5.1.2.1; the driver reads it back)."""
        return value if value < self.msix.vectors else NO_VECTOR

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            unknown = self.driver_features & ~self.device.features
            if unknown or not self.driver_features & VIRTIO_F_VERSION_1:
                value &= ~STATUS_FEATURES_OK             # refuse: the driver sees FEATURES_OK clear
        starting = value & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK
        self.status = value | (self.status & STATUS_NEEDS_RESET)
        if starting and value & STATUS_FEATURES_OK:
            self.device.activate(self.driver_features)   # the features are final: the device may use them

    # --- notifications -------------------------------------------------------
    def kick(self, queue_index: int) -> None:
        """The driver notified a queue (through an ioeventfd, or a write to the notify region):
        count it, then serve the queue."""
        with self._lock:
            if queue_index < len(self.notifications):
                self.notifications[queue_index] += 1
            self.notify(queue_index)

    def notify(self, queue_index: int) -> None:
        with self._lock:
            if not self.status & STATUS_DRIVER_OK or self.status & STATUS_NEEDS_RESET:
                return
            if queue_index >= len(self.queues) or not self.queues[queue_index].ready:
                return
            queue = self.queues[queue_index]
            try:
                used = self._serve(queue)
                if used and not queue.interrupt_suppressed(self.memory):
                    self._interrupt(queue.msix_vector, ISR_QUEUE)
            except VirtqueueError as exc:
                self._fail(f"queue {queue_index}: {exc}")

    def _serve(self, queue: Virtqueue) -> bool:
        """Let the device serve the queue, with the driver's kicks off meanwhile (each costs the guest an
        exit). Kicks go back on before the device stops looking, and the available index is read once
        more after a full fence: a driver that offered buffers meanwhile either saw kicks wanted (and
        kicked) or has its offer served by another round here, so no offer waits unserved (spec
        2.7.10). A device that leaves buffers in the queue on purpose (a rate limit) ends the rounds
        as soon as the driver offers nothing new."""
        memory = self.memory
        used = False
        while True:
            queue.set_kicks_wanted(memory, False)
            offered = queue.available_index(memory)
            used = self.device.process(queue, memory) or used
            queue.set_kicks_wanted(memory, True)
            with _FENCE:                   # a locked instruction: the store above before the load below
                pass
            if queue.available_index(memory) == offered:
                return used


class VirtioPciBar:
    """BAR 0 of a virtio-pci function, as a device on the MMIO bus.

    Every width from 1 to 8 bytes reaches it; each region applies its own rules: reads of the
    common and device configuration return their bytes (zeros past their end), writes reach only
    whole fields; the ISR is read (and cleared) at its first byte; the MSI-X table and PBA take
    aligned 4- and 8-byte accesses only, as the PCI spec defines.
    """

    access = Access(frozenset({1, 2, 4, 8}))

    def __init__(self, owner: VirtioPciDevice) -> None:
        self.owner = owner
        self.label = f"{owner.label} BAR0"

    def read(self, offset: int, size: int) -> bytes:
        o = self.owner
        with o._lock:
            if offset < ISR:
                return o.read_common(offset, size)
            if offset < DEVICE:
                if offset != ISR:
                    return bytes(size)
                isr, o.isr = o.isr, 0                      # reading the ISR clears it
                return bytes([isr]).ljust(size, b"\0")
            if offset < NOTIFY:
                return o.device.config()[offset - DEVICE : offset - DEVICE + size].ljust(size, b"\0")
            if offset < MSIX_TABLE:
                return bytes(size)
            if offset < MSIX_PBA:
                return o.msix.read_table(offset - MSIX_TABLE, size)
            return o.msix.read_pba(offset - MSIX_PBA, size)

    def write(self, offset: int, data: bytes) -> None:
        o = self.owner
        if NOTIFY <= offset < MSIX_TABLE:
            o.kick((offset - NOTIFY) // NOTIFY_MULTIPLIER)
            return
        with o._lock:
            if offset < ISR:
                o.write_common(offset, data)
            elif MSIX_TABLE <= offset < MSIX_PBA:
                o.msix.write_table(offset - MSIX_TABLE, data)
