"""Boot the guest test kit on the real /dev/kvm through each protocol, with 1..N vCPUs."""

import time

import pytest

from tests.conftest import ON_PVM
from vmkit.guest import build_guest
from vmkit.guest.images import make_bzimage


def test_default_guest_runs_with_no_arguments(vmkit):
    done = vmkit("run")
    assert done.returncode == 1, done.stderr          # debug-exit with 0: (0 << 1) | 1
    results = done.results()
    assert results["cpus_online"] == "1"
    assert results["ram_mib"] == "63"
    assert "guest wrote 0x0 to the debug-exit port (exit status 1)" in done.stderr
    assert ("PVM (software virtualization)" in done.stderr) == ON_PVM


@pytest.mark.parametrize("cpus", [1, 2, 4, 41])       # 41: more than the EBDA's MP table could hold
def test_every_vcpu_comes_up(vmkit, cpus):
    done = vmkit("run", "--cpus", str(cpus))
    results = done.results()
    assert results["cpus_in_tables"] == str(cpus) and results["cpu_table"] == "mptable"
    assert results["cpus_online"] == str(cpus), done.stdout


@pytest.mark.parametrize("protocol", ["pvh", "linux64"])
def test_cpus_are_also_described_by_the_acpi_madt(vmkit, protocol):
    done = vmkit("run", "--cpus", "3", "--boot-protocol", protocol)
    assert done.results()["cpus_in_madt"] == "3"
    assert "memory: [e0000, 100000) type 2" in done.stdout   # the ACPI area is reserved


def test_guest_reads_the_host_date_from_the_rtc(vmkit):
    before = time.strftime("%Y-%m-%d", time.gmtime())
    date = vmkit("run").results()["rtc_date"]
    assert date in (before, time.strftime("%Y-%m-%d", time.gmtime()))


def test_memory_size_reaches_the_guest(vmkit):
    results = vmkit("run", "--memory", "256").results()
    assert results["ram_mib"] == "255"               # 256 MiB less the 384 KiB below 1 MiB


def test_pvh_elf_from_the_command_line(vmkit):
    done = vmkit("run", "--kernel", str(build_guest("hello")), "--cmdline", "answer=42 x")
    assert done.returncode == 1
    assert done.results()["protocol"] == "pvh"
    assert done.results()["cmdline"] == "answer=42 x"


def test_elf_vmlinux_enters_in_64_bit_mode_with_boot_params(vmkit):
    done = vmkit("run", "--kernel", str(build_guest("hello", "vmlinux")), "-c", "via=boot_params", "-n", "2")
    assert done.returncode == 1, done.stderr
    results = done.results()
    assert results["protocol"] == "linux64" and results["cmdline"] == "via=boot_params"
    assert results["cpus_online"] == "2" and results["ram_mib"] == "63"


def test_bzimage(vmkit, tmp_path):
    image = tmp_path / "bzImage"
    image.write_bytes(make_bzimage(build_guest("hello", "vmlinux").read_bytes()))
    done = vmkit("run", "--kernel", str(image), "-c", "from=bzimage")
    assert done.returncode == 1, done.stderr
    assert done.results()["protocol"] == "linux64"
    cmdline = done.results()["cmdline"]
    if ON_PVM:
        # A bzImage is Linux: on PVM hosts vmkit adds the switches that avoid unemulated instructions.
        assert cmdline.startswith("from=bzimage clearcpuid=154,308,295,141,")
    else:
        assert cmdline == "from=bzimage"
    plain = vmkit("run", "--kernel", str(image), "-c", "from=bzimage", "--no-pvm-workarounds")
    assert plain.results()["cmdline"] == "from=bzimage"


def test_forcing_linux64_on_a_pvh_elf(vmkit):
    done = vmkit("run", "--boot-protocol", "linux64")
    assert done.results()["protocol"] == "linux64"


def test_console_to_a_file(vmkit, tmp_path):
    log = tmp_path / "console.log"
    done = vmkit("run", "--console", str(log))
    assert done.returncode == 1 and "RESULT" not in done.stdout
    assert "RESULT cpus_online=1" in log.read_text()
