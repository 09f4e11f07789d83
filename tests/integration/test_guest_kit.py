"""The guest test kit's programs, booted on /dev/kvm.

These tests check the guests as much as the VMM: `python3 -m pytest tests/integration/test_guest_kit.py
--vmm qemu` runs the same images under QEMU microvm.
"""

import pytest


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_every_vcpu_checks_in(boot, cpus):
    done = boot("smp", cpus=cpus)
    assert done.returncode == 1, done.stdout            # debug-exit 0: all expected CPUs came
    results = done.results()
    assert results["cpus_expected"] == results["cpus_online"] == str(cpus)
    assert sorted(int(x) for x in results["apic_ids"].split(",")) == list(range(cpus))


def test_pio_loop(boot):
    done = boot("pio_loop", cmdline="iterations=2000")
    assert done.returncode == 1 and done.results()["iterations"] == "2000"
    assert int(done.results()["tsc_cycles_per_iteration"]) > 0


def test_mmio_loop(boot):
    done = boot("mmio_loop", cmdline="iterations=2000")
    assert done.returncode == 1 and done.results()["iterations"] == "2000"
    if boot.vmm == "vmkit":
        assert done.results()["read_value"] == "ffffffff"   # nothing claims it: reads as all ones


@pytest.mark.parametrize("memory_mib", [32, 300])
def test_memtouch_writes_and_reads_back_all_ram(boot, memory_mib):
    done = boot("memtouch", memory_mib=memory_mib)
    assert done.returncode == 1, done.stdout
    results = done.results()
    assert results["mismatches"] == "0"
    image_and_low_memory_mib = 2
    assert int(results["mib"]) >= memory_mib - image_and_low_memory_mib


def test_power_off(boot):
    assert boot("poweroff").returncode == 0


def test_hello_reports_its_machine(boot):
    done = boot("hello", cpus=2, memory_mib=128, cmdline="kit=1")
    results = done.results()
    assert done.returncode == 1
    assert results["cpus_online"] == "2" and results["cmdline"] == "kit=1"
    assert int(results["ram_mib"]) in (126, 127)


def test_tsc_clock_agrees_with_the_host_clock(spawn):
    """The guest spins 500 ms by its TSC clock; the host sees roughly that long pass.
    Bounds are wide (0.3-3 s): this checks the calibration, not vmkit's speed."""
    import time

    proc = spawn("run", "--guest", "clock", "--cmdline", "ms=500")
    lines = {}
    for raw in proc.stdout:
        line = raw.decode().strip()
        lines[line] = time.monotonic()
    proc.wait(30)
    assert proc.returncode == 1
    hz = int(next(k for k in lines if k.startswith("RESULT tsc_hz=")).split("=")[1])
    assert 100_000_000 < hz < 10_000_000_000
    elapsed = lines["SPIN END"] - lines["SPIN START"]
    assert 0.3 < elapsed < 3.0, elapsed


def test_syscall_probe_reports_the_hosts_syscall_convention(boot):
    """Hardware KVM enters ring 0 on `syscall`; the PVM host keeps the guest in ring 3 (CS 0x33)."""
    from tests.conftest import ON_PVM

    results = boot("syscall_probe").results()
    assert results["syscall_enters_ring0"] == ("0" if ON_PVM else "1")
    assert int(results["syscall_entry_cs"], 16) & 3 == (3 if ON_PVM else 0)


def test_vmkit_probes_the_syscall_convention_itself():
    from tests.conftest import ON_PVM
    from vmkit.cli import syscall_reaches_ring0

    assert syscall_reaches_ring0() is (not ON_PVM)


def test_the_syscall_probe_runs_once_per_host_boot(tmp_path, monkeypatch):
    from tests.conftest import ON_PVM
    from vmkit import cli

    monkeypatch.setenv("VMKIT_CACHE_DIR", str(tmp_path))
    assert cli.syscall_probe_remembered() is (not ON_PVM)
    remembered = tmp_path / "host" / "syscall-probe"
    key, _, answer = remembered.read_text().rpartition(" ")
    assert answer == ("0" if ON_PVM else "1")
    remembered.write_text(f"{key} {1 - int(answer)}")          # a remembered answer is not probed again
    assert cli.syscall_probe_remembered() is ON_PVM
    remembered.write_text(f"another-boot {answer}")            # another boot of the host: probed anew
    assert cli.syscall_probe_remembered() is (not ON_PVM)
