"""The ACPI power button from the guest's side: the guest kit's power_button program finds the
Generic Event Device's interrupt in the DSDT, routes it through the IOAPIC, and counts presses, made
by Machine.press_power_button and by vmkit-firecracker's SendCtrlAltDel."""

import time

from tests.firecracker_client import Firecracker
from vmkit.arch.x86 import layout
from vmkit.guest import build_guest


def test_each_press_is_one_interrupt_on_the_gsi_the_dsdt_names(machine_factory):
    machine, console = machine_factory("power_button", memory_mib=16)
    assert machine.press_power_button() is False                  # not started: nothing to press
    machine.start()
    console.wait_for("READY")
    assert f"RESULT gsi={layout.POWER_BUTTON_GSI}\n" in console.text
    assert machine.press_power_button() is True
    console.wait_for("PRESSED 1")
    # A press while paused is latched by the IOAPIC and delivered once the guest runs again.
    machine.pause()
    assert machine.press_power_button() is True
    time.sleep(0.2)
    assert "PRESSED 2" not in console.text
    machine.resume()
    outcome = machine.wait(60)
    assert outcome is not None and outcome.kind == "debug-exit" and outcome.status == 1, console.text
    assert "PRESSED 2" in console.text and "RESULT presses=2\n" in console.text   # one interrupt each
    assert machine.power_button is not None and machine.power_button.presses == 2
    assert machine.press_power_button() is False                  # ended: nothing to press


def test_firecracker_send_ctrl_alt_del_presses_the_power_button(tmp_path):
    """vmkit-firecracker's SendCtrlAltDel: vmkit has no i8042 keyboard, so it presses the ACPI power
    button, which the guest sees as its Generic Event Device's interrupt."""
    sock = str(tmp_path / "api.sock")
    vm = Firecracker("--api-sock", sock)
    try:
        api = vm.wait_for_socket(sock)
        api.ok("PUT", "/boot-source", {"kernel_image_path": str(build_guest("power_button"))})
        api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32})
        assert "has not started" in api.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
        vm.wait_for_output("READY")
        api.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        vm.wait_for_output("PRESSED 1")
        api.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        assert vm.wait() == 1                                     # the guest's debug exit 0, as Firecracker's
        assert "RESULT presses=2" in vm.stdout
    finally:
        vm.kill()
