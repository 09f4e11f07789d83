"""A virtio-pci function's state saved as plain data, restored into a fresh function, and refused
when it is damaged or hostile (restore treats a snapshot as untrusted input)."""

import dataclasses
import re
import struct

import pytest

from vmkit.devices.virtio import pci_transport as t
from vmkit.devices.virtio.rng import VirtioRng
from vmkit.devices.virtio.state import FunctionState, StateError, restore_function, save_function
from vmkit.memory import GuestMemory

DESC, AVAIL, USED, BUFFER = 0x10000, 0x11000, 0x12000, 0x20000
BAR, MOVED_BAR = 0xC0000000, 0xC1000000


@pytest.fixture
def memory():
    mem = GuestMemory.create(4 << 20)
    yield mem
    mem.close()


def common(dev, offset, value, size):
    dev.bar.write(t.COMMON + offset, value.to_bytes(size, "little"))


def driven(memory, moves=None):
    """A function a driver has set up: features, one queue, an MSI-X entry, its BAR moved."""
    dev = t.VirtioPciDevice(VirtioRng(), memory, BAR, lambda address, data: None)
    if moves is not None:
        dev.config.on_bar_moved = lambda index, old, new: moves.append((old, new))
    common(dev, 0x14, 3, 1)
    common(dev, 0x08, 1, 4)
    common(dev, 0x0C, 1, 4)                                   # VERSION_1
    common(dev, 0x14, 11, 1)                                  # FEATURES_OK
    for offset, value, width in ((0x16, 0, 2), (0x18, 8, 2), (0x1A, 0, 2), (0x20, DESC, 8), (0x28, AVAIL, 8),
                                 (0x30, USED, 8), (0x1C, 1, 2)):
        common(dev, offset, value, width)
    common(dev, 0x14, 15, 1)                                  # DRIVER_OK
    dev.bar.write(t.MSIX_TABLE, struct.pack("<II", 0xFEE00000, 0))
    dev.bar.write(t.MSIX_TABLE + 8, struct.pack("<II", 0x41, 0))
    dev.config.write(0x10, struct.pack("<I", MOVED_BAR))
    return dev


def offer_one(memory, dev, index):
    memory.write(DESC, struct.pack("<QIHH", BUFFER, 16, 2, 0))   # one device-writable buffer
    memory.write(AVAIL + 4 + 2 * (index % 8), b"\0\0")
    memory.write(AVAIL + 2, struct.pack("<H", index + 1))
    dev.notify(0)
    return struct.unpack("<H", memory.read(USED + 2, 2))[0]


def test_a_state_survives_a_round_trip_through_plain_data(memory):
    dev = driven(memory)
    offer_one(memory, dev, 0)
    saved = save_function(dev)
    data = dataclasses.asdict(saved)                            # plain data, as a snapshot file holds it
    moves = []
    fresh = t.VirtioPciDevice(VirtioRng(), memory, BAR, lambda address, data: None)
    fresh.config.on_bar_moved = lambda index, old, new: moves.append((old, new))
    restored = FunctionState(**{**data, "queues": tuple(type(saved.queues[0])(**q) for q in data["queues"])})
    restore_function(fresh, restored)
    assert save_function(fresh) == saved
    assert moves == [(BAR, MOVED_BAR)]                          # the bus is told where the BAR is
    assert fresh.config.bar_address(0) == MOVED_BAR
    assert offer_one(memory, fresh, 1) == 2                     # and it carries on where it was


def _damaged(saved, **changes):
    return dataclasses.replace(saved, **changes)


@pytest.mark.parametrize("change,message", [
    (lambda s: _damaged(s, device_type=2), "device_type"),
    (lambda s: _damaged(s, config_space=s.config_space[:100]), "config_space: is not 4096 bytes"),
    (lambda s: _damaged(s, config_space=b"\0" + s.config_space[1:]), "config_space: byte 0x0 differs"),
    (lambda s: _damaged(s, msix_table=b"\0" * 8), "msix_table"),
    (lambda s: _damaged(s, msix_pending=(True,)), "msix_pending"),
    (lambda s: _damaged(s, status=256), "status"),
    (lambda s: _damaged(s, driver_features=1 << 40), "driver_features"),
    (lambda s: _damaged(s, config_msix_vector=7), "config_msix_vector"),
    (lambda s: _damaged(s, queue_select=True), "queue_select"),
    (lambda s: _damaged(s, queues=()), "queues: 0 saved"),
    (lambda s: _damaged(s, queues=(dataclasses.replace(s.queues[0], size=3),)), "queues[0]: queue size 3"),
    (lambda s: _damaged(s, queues=(dataclasses.replace(s.queues[0], used_ring=0x7FFF0000),)), "outside guest memory"),
    (lambda s: _damaged(s, queues=(dataclasses.replace(s.queues[0], last_avail=-1),)), "queues[0].last_avail"),
    (lambda s: _damaged(s, queues=(dataclasses.replace(s.queues[0], msix_vector=9),)), "queues[0].msix_vector"),
])
def test_a_damaged_or_hostile_state_is_refused_and_changes_nothing(memory, change, message):
    saved = save_function(driven(memory))
    fresh = t.VirtioPciDevice(VirtioRng(), memory, BAR, lambda address, data: None)
    before = save_function(fresh)
    with pytest.raises(StateError, match=re.escape(message)):
        restore_function(fresh, change(saved))
    assert save_function(fresh) == before
