"""The device manager's walk over a real machine's devices: what a guest did to them is saved,
restored into a machine built afresh from the same configuration, and reset back to power-on;
a state from another machine or a damaged one is refused with the place named."""

import dataclasses

import pytest

from vmkit.devices.state import StateError
from vmkit.devices.virtio.pci_transport import STATUS_DRIVER_OK
from vmkit.vmm.config import DiskSpec


@pytest.fixture
def config(tmp_path):
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    return {"memory_mib": 64, "devices": ("virtio-rng",), "disks": (DiskSpec(str(image), format="raw"),)}


def test_the_devices_a_guest_drove_save_restore_and_reset(machine_factory, config):
    first, console = machine_factory("blk_check", **config)
    power_on = first.devices.save()
    first.start()
    result = first.wait(120)
    assert result is not None and result.status == 1, console.text[-2000:]
    assert "RESULT blk_check=pass" in console.text
    saved = first.devices.save()
    assert [name for name, _ in saved.legacy] == ["serial0", "i8042", "rtc", "debug-exit", "debugcon", "acpi-power"]
    rng, blk = saved.virtio
    assert blk.transport.status & STATUS_DRIVER_OK and blk.transport.queues[0].next_used > 0   # the guest used it
    assert blk.device.capacity == 16 << 20 and blk.device.read_only is False
    assert rng.transport.status == 0                                  # blk_check never touched the rng
    first.close()                                                     # its image lock goes with it

    second, _ = machine_factory("blk_check", **config)
    assert second.devices.save() == power_on                          # the same configuration builds the same
    second.devices.restore(saved)
    assert second.devices.save() == saved
    second.devices.reset()
    assert second.devices.save() == power_on
    second.devices.reset()                                            # twice is harmless
    assert second.devices.save() == power_on


def test_a_state_from_another_machine_or_a_damaged_one_is_refused(machine_factory, config):
    machine, _ = machine_factory("blk_check", **config)
    saved = machine.devices.save()
    machine.close()

    without_rng, _ = machine_factory("blk_check", **{**config, "devices": ()})
    with pytest.raises(StateError, match=r"^devices\.virtio: slots \[1, 2\] saved, this machine has \[1\]$"):
        without_rng.devices.restore(saved)
    without_rng.close()

    same, _ = machine_factory("blk_check", **config)
    blk = saved.virtio[1]
    queue = dataclasses.replace(blk.transport.queues[0], ready=True, desc_table=1 << 40)
    damaged = saved._replace(virtio=(saved.virtio[0], blk._replace(
        transport=dataclasses.replace(blk.transport, queues=(queue,)))))
    with pytest.raises(StateError, match=r"^devices\.virtio\[slot 2\] \(virtio-blk0\): queues\[0\]: descriptor table"):
        same.devices.restore(damaged)
    wrong_disk = saved._replace(virtio=(saved.virtio[0], blk._replace(
        device=dataclasses.replace(blk.device, capacity=1 << 30))))
    with pytest.raises(StateError, match=r"virtio-blk0\.capacity: 1073741824 bytes saved, the disk has 16777216"):
        same.devices.restore(wrong_disk)
    renamed = saved._replace(legacy=saved.legacy[1:])
    with pytest.raises(StateError, match=r"^devices\.legacy: \['i8042'"):
        same.devices.restore(renamed)
