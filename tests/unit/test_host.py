"""Host detection and the Linux command-line switches vmkit adds on PVM hosts."""

from vmkit.vmm.host import LINUX_PVM_ARGS, host_kind, linux_cmdline_for_pvm


def test_switches_are_added_once():
    assert linux_cmdline_for_pvm("console=ttyS0") == f"console=ttyS0 {LINUX_PVM_ARGS}"
    assert linux_cmdline_for_pvm("clearcpuid=1") == "clearcpuid=1"


def test_clearcpuid_fits_what_linux_reads_of_it():
    name, _, value = LINUX_PVM_ARGS.partition("=")
    assert name == "clearcpuid" and " " not in value and len(value) <= 127


def test_switches_go_before_the_init_arguments():
    cmdline = linux_cmdline_for_pvm("console=ttyS0 panic=-1 -- echo hello -- world")
    assert cmdline == f"console=ttyS0 panic=-1 {LINUX_PVM_ARGS} -- echo hello -- world"


def test_host_kind_reads_sys_module(tmp_path):
    assert host_kind(str(tmp_path)) == "unknown"
    (tmp_path / "kvm_amd").mkdir()
    assert host_kind(str(tmp_path)) == "amd"
    (tmp_path / "kvm_pvm").mkdir()
    assert host_kind(str(tmp_path)) == "pvm"


def test_fwait_reports_only_unmasked_pending_x87_errors():
    from vmkit.vmm.unemulated import x87_error_pending

    assert not x87_error_pending(fsw=0x0000, fcw=0x037F)      # nothing flagged
    assert not x87_error_pending(fsw=0x0081, fcw=0x037F)      # invalid operation, but masked
    assert x87_error_pending(fsw=0x0081, fcw=0x037E)          # invalid operation, unmasked
    assert x87_error_pending(fsw=0x0084, fcw=0x037B)          # divide by zero, unmasked
    assert not x87_error_pending(fsw=0x0001, fcw=0x037E)      # no error summary bit: not pending
