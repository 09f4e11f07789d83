"""How a VM ended and the status `vmkit run` exits with.

Expected values come from their sources, not from vmm/outcome.py: QEMU's isa-debug-exit exits with
(v << 1) | 1 and the OS keeps 8 bits of an exit status; sysexits.h's EX_SOFTWARE is 70; a shell
reports death by signal n as 128 + n; the README's status table.
"""

import signal

import pytest

from vmkit.vmm import outcome
from vmkit.vmm.outcome import EXIT_STATUSES, POWEROFF, QUIT, RESET, Outcome, exit_status_help


@pytest.mark.parametrize("value,status", [
    (0x00, 0x01), (0x01, 0x03), (0x10, 0x21), (0x7E, 0xFD), (0x7F, 0xFF),
    (0x80, 0x01),            # (0x80 << 1) | 1 = 0x101: the OS keeps 8 bits
    (0x81, 0x03), (0xFF, 0xFF),
])
def test_debug_exit_status_is_qemu_s_in_8_bits(value, status):
    ended = Outcome.debug_exit(value)
    assert (ended.kind, ended.status, ended.detail) == ("debug-exit", status, "")
    assert ended.message == f"guest wrote {value:#x} to the debug-exit port"


def test_every_debug_exit_status_is_odd_and_fits_a_byte():
    for value in range(256):
        status = Outcome.debug_exit(value).status
        assert status == (2 * value + 1) % 256
        assert status % 2 == 1 and 0 < status < 256


def test_the_statuses_vmkit_decides():
    assert (POWEROFF.kind, POWEROFF.status, POWEROFF.message) == ("poweroff", 0, "guest powered off")
    assert (RESET.kind, RESET.status, RESET.message) == ("reset", 2, "guest asked for a reset (reboot)")
    assert (QUIT.kind, QUIT.status, QUIT.message) == ("quit", 0, "stopped from the console (Ctrl-A x)")
    assert outcome.STATUS_TRIPLE_FAULT == 4 and outcome.STATUS_VM_ERROR == 6
    assert outcome.STATUS_INTERNAL_ERROR == 70                      # EX_SOFTWARE
    assert outcome.STATUS_START_ERROR == 125
    assert outcome.STATUS_SIGHUP == 128 + signal.SIGHUP == 129
    assert outcome.STATUS_SIGINT == 128 + signal.SIGINT == 130
    assert outcome.STATUS_SIGTERM == 128 + signal.SIGTERM == 143
    decided = [POWEROFF.status, RESET.status, QUIT.status, outcome.STATUS_TRIPLE_FAULT,
               outcome.STATUS_VM_ERROR, outcome.STATUS_INTERNAL_ERROR]
    assert all(status % 2 == 0 for status in decided)               # never a guest's debug-exit status


def test_triple_fault_names_the_vcpu_and_rip():
    ended = outcome.triple_fault(3, 0xFFFFFFF0)
    assert ended == Outcome("triple-fault", 4, "vCPU 3 triple-faulted (shutdown) at RIP 0xfffffff0", "")


def test_error_carries_the_message():
    assert outcome.error("KVM_RUN failed: EFAULT") == Outcome("error", 6, "KVM_RUN failed: EFAULT", "")


def test_internal_keeps_the_traceback_out_of_the_message():
    ended = outcome.internal("KeyError: 3", "Traceback ...")
    assert ended == Outcome("internal", 70, "internal error: KeyError: 3", "Traceback ...")
    assert outcome.internal("boom").detail == ""


def test_signalled_reports_the_signal():
    assert outcome.signalled("SIGTERM", 143) == Outcome("signal", 143, "stopped by SIGTERM", "")


def test_the_status_table_lists_every_status_once():
    statuses = [row.status for row in EXIT_STATUSES]
    assert statuses == ["(v << 1) | 1", "0", "2", "4", "6", "70", "125", "129, 130, 143"]
    assert all(row.meaning for row in EXIT_STATUSES)


def test_the_status_help_is_the_table_in_two_aligned_columns():
    lines = exit_status_help().split("\n")
    assert len(lines) == len(EXIT_STATUSES)
    width = len("129, 130, 143")                                    # the widest status
    for line, row in zip(lines, EXIT_STATUSES, strict=True):
        assert line == "  " + row.status.ljust(width) + "  " + row.meaning
        assert line[2 + width : 4 + width] == "  " and line[4 + width :] == row.meaning
    assert lines[1].startswith("  0" + " " * 14 + "the guest powered off")
