"""Pause, resume and stop a running VM in-process; illegal transitions name the state."""

import pytest

from vmkit.vmm.state import VmState, VmStateError


def test_pause_resume_and_illegal_transitions(machine_factory):
    machine, console = machine_factory("serial_echo", vcpus=2)
    assert machine.state is VmState.CREATED
    with pytest.raises(VmStateError, match="cannot pause a VM that is created"):
        machine.pause()
    machine.start()
    console.wait_for("READY")
    machine.pause()
    assert machine.state is VmState.PAUSED and machine.lifecycle.parked == 2
    with pytest.raises(VmStateError, match="cannot start a VM that is paused"):
        machine.start()
    serial = machine.console
    serial.receive(b"after pause\n")
    assert "ECHO" not in console.text                  # no vCPU runs while paused
    machine.resume()
    result = machine.wait(60)
    assert result is not None and result.kind == "debug-exit" and result.status == 1
    assert "ECHO after pause" in console.text
    assert machine.state is VmState.STOPPED
    with pytest.raises(VmStateError, match="cannot resume a VM that is stopped"):
        machine.resume()


def test_many_vms_at_once(machine_factory):
    machines = [machine_factory("hello", vcpus=2, memory_mib=32) for _ in range(8)]
    for machine, _ in machines:
        machine.start()
    for machine, console in machines:
        result = machine.wait(60)
        assert result is not None and result.status == 1
        assert "RESULT cpus_online=2" in console.text


def test_a_bar_moved_over_another_device_is_left_unmapped(machine_factory):
    import struct

    from vmkit.arch.x86 import layout

    machine, _ = machine_factory("hello", devices=("virtio-rng",))
    function = machine.devices.pci.functions[1]
    ecam = machine.buses.mmio.find(layout.PCI_ECAM_ADDR).device
    function.config.write(0x10, struct.pack("<I", layout.PCI_ECAM_ADDR))   # onto ECAM: refused
    assert machine.buses.mmio.find(layout.PCI_ECAM_ADDR).device is ecam
    assert machine.buses.mmio.find(layout.PCI_MMIO_BASE + 0x10000) is None
    function.config.write(0x10, struct.pack("<I", 0xC8000000))             # somewhere free: mapped
    assert machine.buses.mmio.find(0xC8000000).device is function.bar
    machine.start()
    assert machine.wait(30).status == 1                                     # the VM is fine


def test_an_msi_kvm_refuses_is_dropped(machine_factory):
    """This host's KVM accepts any MSI a guest can program, so the refusal is made real by pointing
    the VM's fd at a file that is not a VM for one delivery: the kernel answers the ioctl with an
    error, the device drops the message, and the VM still runs to its end."""
    import os
    import struct

    machine, _ = machine_factory("hello", devices=("virtio-rng",))
    function = machine.devices.pci.functions[1]
    function.msix.write_table(0, struct.pack("<II", 0xFEE00000, 0))
    function.msix.write_table(8, struct.pack("<II", 0x41, 0))                     # unmasked
    function.config.write(function._msix_cap + 2, struct.pack("<H", 0x8000))     # MSI-X enabled
    vm_fd, not_a_vm = machine.vm_fd.fd, os.open("/dev/null", os.O_RDONLY)
    machine.vm_fd.fd = not_a_vm
    try:
        assert function.msix.notify(0)                 # KVM_SIGNAL_MSI fails (ENOTTY): dropped
    finally:
        machine.vm_fd.fd = vm_fd
        os.close(not_a_vm)
    assert not function.msix.pending[0]
    machine.start()
    assert machine.wait(30).status == 1
