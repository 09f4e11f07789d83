"""How a VM ends: debug-exit, reset, triple fault, emulation failures, signals, the console escape."""

import os
import pty
import signal
import subprocess
import time

from tests.conftest import ON_PVM


def test_acpi_power_off(vmkit):
    done = vmkit("run", "--guest", "poweroff")
    assert done.returncode == 0, done.stdout
    assert "guest powered off (exit status 0)" in done.stderr
    assert "still running" not in done.stdout


def test_reset_through_the_i8042(vmkit):
    done = vmkit("run", "--guest", "reset")
    assert done.returncode == 2
    assert "guest asked for a reset" in done.stderr


def test_triple_fault(vmkit):
    done = vmkit("run", "--guest", "triple_fault")
    assert done.returncode == 4
    assert "vCPU 0 triple-faulted" in done.stderr and "at RIP 0x" in done.stderr
    assert "still alive" not in done.stdout


def test_ring0_int3_and_unsupported_instructions(vmkit):
    done = vmkit("run", "--guest", "ring0_insn")
    assert done.results()["breakpoints"] == "1"       # #BP delivered and resumed from
    assert done.results()["x87_errors_idle"] == "0"   # fwait with nothing pending: a no-op
    assert done.results()["x87_errors_pending"] == "1"  # fwait with an unmasked x87 error: #MF
    if ON_PVM:
        # popcnt in ring 0 cannot be emulated on PVM: a clear report, not a traceback.
        assert done.returncode == 6
        assert "vCPU 0: KVM could not emulate the instruction at RIP 0x" in done.stderr
        assert "(bytes: f3 48 0f b8" in done.stderr
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode == 1 and done.results()["popcnt"] == "8"


def _start_waiting_guest(spawn, **kwargs) -> subprocess.Popen:
    proc = spawn("run", "--guest", "serial_echo", **kwargs)
    assert proc.stdout.readline() == b"READY\n"
    return proc


def test_sigterm_stops_the_vm_cleanly(spawn):
    proc = _start_waiting_guest(spawn, stdin=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert b"stopped by SIGTERM" in err and b"Traceback" not in err


def test_sigint_stops_the_vm_cleanly(spawn):
    proc = _start_waiting_guest(spawn, stdin=subprocess.PIPE)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"stopped by SIGINT" in err


def test_ctrl_a_x_on_a_terminal_quits_and_restores_it(spawn):
    controller, terminal = pty.openpty()
    try:
        proc = _start_waiting_guest(spawn, stdin=terminal)
        time.sleep(0.3)                                # let vmkit put the terminal in raw mode
        os.write(controller, b"\x01x")
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert b"Ctrl-A x" in err
    finally:
        os.close(controller)
        os.close(terminal)


def test_a_signal_after_the_status_is_decided_does_not_change_it(spawn):
    proc = _start_waiting_guest(spawn, stdin=subprocess.PIPE)
    proc.stdin.write(b"bye\n")
    proc.stdin.flush()
    for line in proc.stderr:
        if b"(exit status" in line:
            break
    try:
        for _ in range(20):                  # as long as the process lives, keep asking it to die
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.005)
    except ProcessLookupError:
        pass
    proc.wait(30)
    assert proc.returncode == 1              # the guest's status, not -15 or 143


def test_the_exit_status_table_is_the_same_in_the_code_the_help_and_the_readme(vmkit):
    from pathlib import Path

    from vmkit.vmm.outcome import EXIT_STATUSES

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    help_text = " ".join(vmkit("run", "--help").stdout.split())
    for row in EXIT_STATUSES:
        assert f"| {row.status.replace('|', chr(92) + '|')} | {row.meaning} |" in readme, row
        assert " ".join(f"{row.status} {row.meaning}".split()) in help_text, row
