"""Host detection and the Linux command-line switches vmkit adds on PVM hosts."""

from vmkit.vmm.host import LINUX_PVM_ARGS, host_kind, linux_cmdline_for_pvm


def test_switches_are_added_once():
    assert linux_cmdline_for_pvm("console=ttyS0") == f"console=ttyS0 {LINUX_PVM_ARGS}"
    assert linux_cmdline_for_pvm("noxsave clearcpuid=1") == "noxsave clearcpuid=1"


def test_switches_go_before_the_init_arguments():
    cmdline = linux_cmdline_for_pvm("console=ttyS0 panic=-1 -- echo hello -- world")
    assert cmdline == f"console=ttyS0 panic=-1 {LINUX_PVM_ARGS} -- echo hello -- world"


def test_host_kind_reads_sys_module(tmp_path):
    assert host_kind(str(tmp_path)) == "unknown"
    (tmp_path / "kvm_amd").mkdir()
    assert host_kind(str(tmp_path)) == "amd"
    (tmp_path / "kvm_pvm").mkdir()
    assert host_kind(str(tmp_path)) == "pvm"
