"""How a VM ended, and the exit-status contract of `vmkit run`: every status vmkit exits with.

The guest's own statuses come from the debug-exit port and are always odd: (v << 1) | 1, as QEMU's
isa-debug-exit. The statuses vmkit itself decides are listed in EXIT_STATUSES, the one table the
CLI's help, the README and the tests are checked against. A bug in vmkit (an exception it did not
expect) exits with STATUS_INTERNAL_ERROR, which is even, so it is never a debug-exit status and never
a guest's success.
"""

from __future__ import annotations

from typing import NamedTuple

STATUS_POWEROFF = 0
STATUS_RESET = 2
STATUS_TRIPLE_FAULT = 4
STATUS_VM_ERROR = 6
STATUS_INTERNAL_ERROR = 70     # a bug in vmkit (sysexits' EX_SOFTWARE)
STATUS_START_ERROR = 125       # vmkit could not start the VM: bad option, file, setting or host
SIGNAL_STATUS_BASE = 128       # stopped by signal n: 128 + n, as a shell reports it
STATUS_SIGHUP = SIGNAL_STATUS_BASE + 1
STATUS_SIGINT = SIGNAL_STATUS_BASE + 2
STATUS_SIGTERM = SIGNAL_STATUS_BASE + 15


class StatusRow(NamedTuple):
    status: str
    meaning: str


EXIT_STATUSES: tuple[StatusRow, ...] = (
    StatusRow("(v << 1) | 1", "the guest wrote v to the debug-exit port 0xf4 (as QEMU's isa-debug-exit): "
              "always odd; the test guests write 0 on success, so they end with 1"),
    StatusRow(str(STATUS_POWEROFF), "the guest powered off, or Ctrl-A x was pressed on the console"),
    StatusRow(str(STATUS_RESET), "the guest reset (reboot: i8042, ACPI reset register or KVM reset event)"),
    StatusRow(str(STATUS_TRIPLE_FAULT), "a vCPU triple-faulted"),
    StatusRow(str(STATUS_VM_ERROR), "the VM failed: an instruction KVM could not emulate, or KVM refused "
              "to run it (vCPU, RIP and bytes are printed)"),
    StatusRow(str(STATUS_INTERNAL_ERROR), "a bug in vmkit: it prints where the report was written and "
              "how to report it; --debug shows the traceback"),
    StatusRow(str(STATUS_START_ERROR), "vmkit could not start the VM: a bad option or argument, a missing "
              "or unusable file, a setting out of range, no KVM; one line says what and where"),
    StatusRow(f"{STATUS_SIGHUP}, {STATUS_SIGINT}, {STATUS_SIGTERM}",
              "stopped by SIGHUP, SIGINT or SIGTERM (before or while the guest ran)"),
)


def exit_status_help() -> str:
    """The status table as plain text, for `vmkit run --help`."""
    width = max(len(row.status) for row in EXIT_STATUSES)
    return "\n".join(f"  {row.status:<{width}}  {row.meaning}" for row in EXIT_STATUSES)


class Outcome(NamedTuple):
    """kind: debug-exit | poweroff | reset | triple-fault | error | internal | signal | quit.

    `detail` carries what a user does not see by default (an internal error's traceback).
    """

    kind: str
    status: int
    message: str
    detail: str = ""

    @staticmethod
    def debug_exit(value: int) -> Outcome:
        """The guest wrote `value` to the debug-exit port: status (value << 1) | 1, in 8 bits."""
        return Outcome("debug-exit", ((value << 1) | 1) & 0xFF, f"guest wrote {value:#x} to the debug-exit port")


POWEROFF = Outcome("poweroff", STATUS_POWEROFF, "guest powered off")
RESET = Outcome("reset", STATUS_RESET, "guest asked for a reset (reboot)")
QUIT = Outcome("quit", STATUS_POWEROFF, "stopped from the console (Ctrl-A x)")


def triple_fault(vcpu: int, rip: int) -> Outcome:
    return Outcome("triple-fault", STATUS_TRIPLE_FAULT, f"vCPU {vcpu} triple-faulted (shutdown) at RIP {rip:#x}")


def error(message: str) -> Outcome:
    """The VM cannot go on for a reason of the guest's or KVM's (not a vmkit bug)."""
    return Outcome("error", STATUS_VM_ERROR, message)


def internal(message: str, traceback_text: str = "") -> Outcome:
    """vmkit itself failed: an exception it did not expect, while the VM ran."""
    return Outcome("internal", STATUS_INTERNAL_ERROR, f"internal error: {message}", traceback_text)


def signalled(name: str, status: int) -> Outcome:
    return Outcome("signal", status, f"stopped by {name}")
