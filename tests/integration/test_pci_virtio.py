"""PCI enumeration and the guest's virtio 1.x driver core against vmkit's virtio-rng.

`--vmm qemu` runs the same guests against QEMU's virtio-rng-pci.
"""

import pytest


@pytest.mark.parametrize("access", ["ecam", "cf8"])
def test_pci_scan_finds_the_host_bridge_and_devices(boot, access):
    if boot.vmm == "qemu" and access == "cf8":
        pytest.skip("QEMU microvm's PCIe host bridge has ECAM only, no 0xCF8/0xCFC ports")
    done = boot("pci_scan", devices=("virtio-rng",), cmdline="pci_cf8=1" if access == "cf8" else "")
    results = done.results()
    assert done.returncode == 1 and results["pci_access"] == access
    assert results["pci_functions"] == "2"
    assert results["pci.01"].startswith("1af4:1044")


def test_pci_scan_without_devices(boot):
    if boot.vmm == "qemu":
        pytest.skip("QEMU microvm without pcie=on has no PCI bus at all")
    results = boot("pci_scan").results()
    assert results["pci_functions"] == "1" and results["pci.00"].startswith("8086:0d57")


def test_virtio_rng_polled_and_by_msix(boot):
    done = boot("virtio_rng", devices=("virtio-rng",))
    results = done.results()
    assert done.returncode == 1, done.stdout
    assert results["polled_bytes"] == "32" and results["polled_random"] == "1"
    assert results["msix_interrupts"] == "1" and results["msix_bytes"] == "32"


def test_hostile_descriptor_gets_needs_reset_and_the_vmm_keeps_running(boot):
    done = boot("virtio_rng", devices=("virtio-rng",), cmdline="hostile=1")
    results = done.results()
    assert done.returncode == 1, done.stdout + done.stderr
    if boot.vmm == "vmkit":
        assert int(results["hostile_status"], 16) & 0x40     # DEVICE_NEEDS_RESET
        assert results["hostile_used"] == "0"                # the bad buffer was never touched
    assert results["after_reset_bytes"] == "32"              # a reset brings the device back


def test_virtio_rng_absent_is_reported(boot):
    done = boot("virtio_rng")
    assert done.returncode == 5 and done.results()["virtio_rng"] == "absent"   # exit(2)


def _record_bar_writes(machine):
    function = machine.devices.pci.functions[1]
    writes = []
    real_write = function.bar.write

    def recording(offset, data):
        writes.append(offset)
        real_write(offset, data)

    function.bar.write = recording
    return writes


def test_queue_kicks_complete_in_the_kernel_and_are_served_on_the_io_thread(machine_factory):
    from vmkit.devices.virtio.pci_transport import MSIX_TABLE, NOTIFY

    machine, console = machine_factory("virtio_rng", devices=("virtio-rng",))
    assert machine.io_engine is not None and machine.notes == []
    writes = _record_bar_writes(machine)
    machine.start()
    assert machine.wait(60).status == 1, console.text
    assert "RESULT polled_bytes=32" in console.text and "RESULT msix_bytes=32" in console.text
    assert [o for o in writes if NOTIFY <= o < MSIX_TABLE] == []       # no kick reached a vCPU thread
    assert any(o < NOTIFY for o in writes)                             # while set-up writes did


def test_without_ioeventfd_kicks_exit_to_vmkit_and_it_says_so(machine_factory, monkeypatch):
    from vmkit.devices.virtio.pci_transport import MSIX_TABLE, NOTIFY
    from vmkit.kvm import Kvm
    from vmkit.kvm.constants import CAP_IOEVENTFD

    real = Kvm.check_extension
    monkeypatch.setattr(Kvm, "check_extension", lambda self, cap: 0 if cap == CAP_IOEVENTFD else real(self, cap))
    machine, console = machine_factory("virtio_rng", devices=("virtio-rng",))
    assert "no ioeventfd" in machine.notes[0]
    assert [entry.kicks for entry in machine.devices.virtio] == [None]              # no kicks registered
    writes = _record_bar_writes(machine)
    machine.start()
    assert machine.wait(60).status == 1, console.text
    assert "RESULT polled_bytes=32" in console.text
    assert [o for o in writes if NOTIFY <= o < MSIX_TABLE]              # the kicks came as exits


def test_interrupts_go_out_through_irqfds_not_signal_msi(machine_factory, monkeypatch):
    from vmkit.kvm.vm import VmFd

    def refuse(self, address, data):
        raise AssertionError("KVM_SIGNAL_MSI used while irqfd routes exist")

    monkeypatch.setattr(VmFd, "signal_msi", refuse)
    machine, console = machine_factory("virtio_rng", devices=("virtio-rng",))
    machine.start()
    assert machine.wait(60).status == 1, console.text
    assert "RESULT msix_interrupts=1" in console.text and "RESULT msix_bytes=32" in console.text
    router = next(r for r in machine.io_resources if type(r).__name__ == "MsiRouter")
    assert router.routes == 1                              # the one message the guest programmed


def test_a_guest_cycling_through_messages_keeps_the_routing_table_bounded(machine_factory):
    from vmkit.vmm.msi_router import MsiRouter

    machine, _ = machine_factory("hello")
    router = MsiRouter(machine.vm_fd, max_routes=8)
    try:
        for vector in range(0x30, 0x30 + 50):              # 50 distinct messages, 8 routes at most
            router.signal(0xFEE00000, vector)
        assert router.routes == 8
        router.signal(0x12345678, 0x41)                    # whatever KVM thinks of it: no exception
        assert router.routes <= 8
    finally:
        router.close()
