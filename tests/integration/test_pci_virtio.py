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
