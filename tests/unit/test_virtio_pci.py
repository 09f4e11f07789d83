"""The virtio-pci transport's rules: feature negotiation, queue enabling, DEVICE_NEEDS_RESET."""

import struct

import pytest

from vmkit.devices.virtio import pci_transport as t
from vmkit.devices.virtio.rng import VirtioRng
from vmkit.memory import GuestMemory


@pytest.fixture
def dev():
    memory = GuestMemory.create(4 << 20)
    device = t.VirtioPciDevice(VirtioRng(), memory, 0xC0000000, lambda address, data: None)
    yield device
    memory.close()


def common_write(dev, offset, value, size):
    dev.bar.write(t.COMMON + offset, value.to_bytes(size, "little"))


def common_read(dev, offset, size):
    return int.from_bytes(dev.bar.read(t.COMMON + offset, size), "little")


def negotiate(dev, features):
    common_write(dev, 0x14, t.STATUS_ACKNOWLEDGE | t.STATUS_DRIVER, 1)
    for half in (0, 1):
        common_write(dev, 0x08, half, 4)
        common_write(dev, 0x0C, (features >> (32 * half)) & 0xFFFFFFFF, 4)
    common_write(dev, 0x14, t.STATUS_ACKNOWLEDGE | t.STATUS_DRIVER | t.STATUS_FEATURES_OK, 1)
    return common_read(dev, 0x14, 1)


def test_device_offers_version_1():
    memory = GuestMemory.create(4 << 20)
    dev = t.VirtioPciDevice(VirtioRng(), memory, 0xC0000000, lambda a, d: None)
    common_write(dev, 0x00, 1, 4)
    assert common_read(dev, 0x04, 4) == 1                     # bit 32: VIRTIO_F_VERSION_1
    assert common_read(dev, 0x12, 2) == 1                     # one queue
    assert dev.config.read(0, 4) == struct.pack("<HH", 0x1AF4, 0x1044)
    memory.close()


def test_features_ok_is_refused_without_version_1_or_with_unknown_bits(dev):
    assert not negotiate(dev, 0) & t.STATUS_FEATURES_OK
    common_write(dev, 0x14, 0, 1)                             # reset
    assert not negotiate(dev, t.VIRTIO_F_VERSION_1 | 1 << 5) & t.STATUS_FEATURES_OK
    common_write(dev, 0x14, 0, 1)
    assert negotiate(dev, t.VIRTIO_F_VERSION_1) & t.STATUS_FEATURES_OK


def test_enabling_a_queue_outside_memory_sets_needs_reset(dev):
    negotiate(dev, t.VIRTIO_F_VERSION_1)
    common_write(dev, 0x16, 0, 2)
    common_write(dev, 0x18, 16, 2)
    common_write(dev, 0x20, 0x7FFF00000000, 8)
    common_write(dev, 0x1C, 1, 2)
    assert common_read(dev, 0x1C, 2) == 0
    assert common_read(dev, 0x14, 1) & t.STATUS_NEEDS_RESET
    assert "descriptor table" in dev.error
    common_write(dev, 0x14, 0, 1)                             # a reset clears it
    assert common_read(dev, 0x14, 1) == 0


def test_notify_before_driver_ok_is_ignored(dev):
    dev.bar.write(t.NOTIFY, b"\0\0")                          # nothing set up: no crash, no effect
    assert common_read(dev, 0x14, 1) == 0
