"""A live hostile guest: random reads and writes of random widths to every port and MMIO range
vmkit emulates (guest program `hostile`), then a check that the VM is still there to report and
that a virtio-rng device, reset, still serves a request.

Whatever a guest does to vmkit's devices, vmkit must answer as hardware would and keep running:
no exception out of a device decoder (an "internal error"), no traceback. A failing seed is
reproduced with `vmkit run --guest hostile --device virtio-rng --cmdline "seed=N iterations=M
trace_from=0"`: each access is printed (through the debug console, port 0xe9) before it is made,
so the last TRACE line is the access vmkit failed on.
"""

import pytest

ITERATIONS = 10000      # about 1.5 s a run on the project's PVM host


def _check(done, devices: int) -> dict[str, str]:
    results = done.results()
    report = f"status {done.returncode}\n--- stderr\n{done.stderr}\n--- results\n{results}"
    assert "Traceback" not in done.stderr, report
    assert "internal error" not in done.stderr, report
    assert "bug in vmkit" not in done.stderr, report
    assert done.returncode == 1, report                    # exit(0) through debug-exit
    assert results.get("hostile_done") == "1", report
    assert results.get("hostile_rng_devices") == str(devices), report
    assert results.get("hostile_rng_after") == "1", report   # reset, the device still serves
    # It did make a mess: port I/O, MMIO, and accesses to each kind of target.
    assert int(results["hostile_accesses"]) >= ITERATIONS // 2, report
    assert int(results["hostile_pio"]) > 0 and int(results["hostile_mmio"]) > 0, report
    assert int(results["hostile_ecam_ops"]) > 0 and int(results["hostile_virtio_ops"]) > 0, report
    return results


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_hostile_guest_does_not_break_vmkit(vmkit, seed):
    done = vmkit("run", "--guest", "hostile", "--device", "virtio-rng",
                 "--cmdline", f"seed={seed} iterations={ITERATIONS}")
    _check(done, devices=1)


def test_hostile_guest_with_two_devices_and_two_vcpus(vmkit):
    done = vmkit("run", "--guest", "hostile", "--cpus", "2", "--device", "virtio-rng", "--device", "virtio-rng",
                 "--cmdline", f"seed=5 iterations={ITERATIONS}")
    _check(done, devices=2)
