"""Every device of a built machine against every access a guest can make, and seeded random traffic.

The machine is built by vmkit's own builder (real KVM fds, the real buses and devices) but not run:
accesses go through the buses exactly as the vCPU loop hands them over. A device must answer every
(offset, width) without raising, a read must return exactly `width` bytes, and nothing may change
guest memory except a virtqueue's used ring and the buffers the guest marked device-writable.
"""

from __future__ import annotations

import random
import struct

import pytest

from vmkit.arch.x86 import layout
from vmkit.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vmkit.vmm.config import DiskSpec

PIO_WIDTHS = (1, 2, 4)        # in/out: byte, word, dword
MMIO_WIDTHS = (1, 2, 4, 8)    # mov: up to a qword
SLOT_SPAN = 0x8000            # ECAM: one device's 8 functions


def _addresses(base: int, length: int) -> list[int]:
    """Every address of a range; of ECAM's 1 MiB, the populated slots, their neighbours and the end."""
    if length <= 0x8000:
        return list(range(base, base + length))
    picked = set()
    for slot in (0, 1, 2, 31):
        picked.update(range(base + slot * SLOT_SPAN, base + slot * SLOT_SPAN + 0x1000))
    picked.update(range(base + length - 16, base + length))
    return sorted(picked)


def _all_ranges(machine):
    return ([("pio", r, PIO_WIDTHS) for r in machine.buses.pio.ranges()]
            + [("mmio", r, MMIO_WIDTHS) for r in machine.buses.mmio.ranges()])


def _memory_image(machine) -> bytes:
    return b"".join(bytes(region.mapping) for region in machine.memory.regions)


def _changed(before: bytes, after: bytes, page: int = 4096) -> list[int]:
    """Addresses of the bytes that differ (page by page, so an unchanged image costs one compare)."""
    if before == after:
        return []
    return [start + i
            for start in range(0, len(before), page) if before[start : start + page] != after[start : start + page]
            for i in range(min(page, len(before) - start)) if before[start + i] != after[start + i]]


def test_every_offset_and_width_of_every_device(machine_factory, tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 20))
    machine, console = machine_factory("hello", memory_mib=16, devices=("virtio-rng",),
                                       disks=(DiskSpec(str(image)),))
    rng = random.Random(7)
    before = _memory_image(machine)
    labels = set()
    for bus_name, found, widths in _all_ranges(machine):
        bus = getattr(machine.buses, bus_name)
        labels.add(found.device.label)
        addresses = _addresses(found.base, found.length)
        for phase in ("read", "write", "read again"):
            for address in addresses:
                for width in widths:
                    if phase == "write":
                        bus.write(address, rng.getrandbits(8 * width).to_bytes(width, "little"))
                    else:
                        data = bus.read(address, width)
                        assert len(data) == width, (found.describe(), hex(address), width)
    assert {"serial0", "i8042", "rtc", "debug-exit", "debugcon", "acpi-power", "pci-config-io",
            "pci-ecam"} <= labels
    assert {"virtio-pci (virtio-rng) BAR0", "virtio-pci (virtio-blk0) BAR0"} <= labels
    # the writes may have ended the VM (debug-exit, reset, power-off): as the guest, never as a bug
    assert machine.outcome is None or machine.outcome.kind in ("debug-exit", "reset", "poweroff")
    assert _memory_image(machine) == before       # no queue was set up: memory is untouched


# --- a virtio device's queue under random traffic -----------------------------------------------

RAM = 16 << 20
DESC, AVAIL, USED = 0x100000, 0x101000, 0x102000
QSIZE = 16


def _setup_queue(bar_write, bar_read):
    def common(offset, value, width):
        bar_write(offset, value.to_bytes(width, "little"))

    common(0x14, 0, 1)                               # reset
    common(0x14, 1 | 2, 1)                           # ACKNOWLEDGE | DRIVER
    common(0x08, 1, 4)
    common(0x0C, 1, 4)                               # VIRTIO_F_VERSION_1 (bit 32)
    common(0x14, 1 | 2 | 8, 1)                       # FEATURES_OK
    assert bar_read(0x14, 1)[0] & 8
    common(0x16, 0, 2)
    common(0x18, QSIZE, 2)
    common(0x20, DESC, 8)
    common(0x28, AVAIL, 8)
    common(0x30, USED, 8)
    common(0x1C, 1, 2)
    common(0x14, 1 | 2 | 8 | 4, 1)                   # DRIVER_OK


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("device_kind", ["virtio-rng", "virtio-blk"])
def test_random_queue_traffic_touches_only_what_the_guest_gave(machine_factory, tmp_path, device_kind, seed):
    if device_kind == "virtio-rng":
        machine, _ = machine_factory("hello", memory_mib=RAM >> 20, devices=("virtio-rng",))
    else:
        image = tmp_path / "disk.raw"
        image.write_bytes(bytes(1 << 20))
        machine, _ = machine_factory("hello", memory_mib=RAM >> 20, disks=(DiskSpec(str(image)),))
    memory = machine.memory
    rng = random.Random(seed)
    bar = layout.PCI_MMIO_BASE + 0x10000
    mmio = machine.buses.mmio

    def bar_write(offset, data):
        mmio.write(bar + offset, data)

    def bar_read(offset, width):
        return mmio.read(bar + offset, width)

    _setup_queue(bar_write, bar_read)
    avail_idx = 0
    served = resets = 0
    for _ in range(200):
        # the guest writes descriptors: mostly sane, some hostile
        table = []
        for index in range(QSIZE):
            kind = rng.random()
            if kind < 0.6:
                address = rng.randrange(0x200000, RAM - 0x10000)
                length = rng.randrange(0, 4096)
            elif kind < 0.8:
                address = rng.randrange(RAM - 64, RAM + 64)          # straddling the end of RAM
                length = rng.randrange(0, 256)
            else:
                address = rng.getrandbits(64)
                length = rng.getrandbits(32)
            flags = rng.choice((0, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                                VIRTQ_DESC_F_NEXT, rng.getrandbits(16)))
            next_index = rng.choice((index + 1, rng.randrange(QSIZE), rng.getrandbits(16)))
            table.append((address, length, flags, next_index))
            memory.write(DESC + 16 * index, struct.pack("<QIHH", address, length, flags, next_index))
        moved = rng.choice((1, 1, 2, QSIZE, QSIZE + 1, rng.getrandbits(16)))
        for i in range(min(moved, QSIZE)):
            memory.write(AVAIL + 4 + 2 * ((avail_idx + i) % QSIZE), struct.pack("<H", rng.randrange(QSIZE + 2)))
        avail_idx = (avail_idx + moved) & 0xFFFF
        memory.write(AVAIL + 2, struct.pack("<H", avail_idx))

        before = _memory_image(machine)
        used_before = memory.read(USED + 2, 2)
        bar_write(0x3000, b"\0\0")                              # notify queue 0
        after = _memory_image(machine)
        served += memory.read(USED + 2, 2) != used_before
        allowed = [(USED, USED + 6 + 8 * QSIZE)] + [
            (address, address + length) for address, length, flags, _ in table if flags & VIRTQ_DESC_F_WRITE]
        stray = [hex(i) for i in _changed(before, after) if not any(lo <= i < hi for lo, hi in allowed)]
        assert stray == [], f"device wrote outside what the guest gave it: {stray[:8]}"

        status = bar_read(0x14, 1)[0]
        if status & 0x40:                                       # DEVICE_NEEDS_RESET: start over
            _setup_queue(bar_write, bar_read)
            avail_idx = 0
            memory.write(AVAIL + 2, b"\0\0")
            resets += 1
    assert machine.outcome is None
    assert resets > 0                          # hostile chains were refused ...
    assert served > 0 or device_kind == "virtio-blk"   # ... and others served (random blk chains rarely parse)


DEVICE_LABELS = ("serial0", "i8042", "rtc", "debug-exit", "debugcon", "acpi-power", "pci-config-io",
                 "pci-ecam", "virtio-pci (virtio-rng) BAR0")


@pytest.mark.parametrize("label", DEVICE_LABELS)
def test_seeded_random_register_traffic_per_device(machine_factory, label):
    """Random sequences of reads and writes of random widths and values at random offsets of one
    device (and just past its ends), with a fixed seed per device."""
    machine, _ = machine_factory("hello", memory_mib=8, devices=("virtio-rng",))
    bus_name, found, widths = next((b, r, w) for b, r, w in _all_ranges(machine) if r.device.label == label)
    bus = getattr(machine.buses, bus_name)
    rng = random.Random(label)
    before = _memory_image(machine)
    span = min(found.length, 0x10000)
    for _ in range(3000):
        address = found.base + rng.randrange(-4, span + 4)
        width = rng.choice(widths)
        if rng.random() < 0.5:
            assert len(bus.read(address, width)) == width
        else:
            bus.write(address, rng.getrandbits(8 * width).to_bytes(width, "little"))
    assert machine.outcome is None or machine.outcome.kind in ("debug-exit", "reset", "poweroff")
    allowed = []
    for queue in machine.devices.pci.functions[1].queues:
        if queue.ready:             # random writes may have enabled a queue: its used ring, and the
            allowed.append((queue.used_ring, queue.used_ring + 6 + 8 * queue.size))   # writable buffers
            for index in range(queue.size):
                at = queue.desc_table + 16 * index
                address, length, flags, _ = struct.unpack("<QIHH", before[at : at + 16])
                if flags & VIRTQ_DESC_F_WRITE:
                    allowed.append((address, address + length))
    stray = [hex(i) for i in _changed(before, _memory_image(machine)) if not any(lo <= i < hi for lo, hi in allowed)]
    assert stray == []
