"""How a VM ended, and the exit status the `vmkit run` command reports for it."""

from __future__ import annotations

from typing import NamedTuple

# Exit statuses for endings other than the debug-exit port, whose statuses are
# always odd ((v << 1) | 1). Signals follow the shell's 128 + signal number.
STATUS_POWEROFF = 0
STATUS_RESET = 2
STATUS_TRIPLE_FAULT = 4
STATUS_ERROR = 6
STATUS_SIGINT = 130
STATUS_SIGTERM = 143


class Outcome(NamedTuple):
    """kind: debug-exit | poweroff | reset | triple-fault | crash | error | signal | quit."""

    kind: str
    status: int
    message: str

    @staticmethod
    def debug_exit(status: int) -> Outcome:
        return Outcome("debug-exit", status & 0xFF, f"guest wrote {status >> 1:#x} to the debug-exit port")


POWEROFF = Outcome("poweroff", STATUS_POWEROFF, "guest powered off")
RESET = Outcome("reset", STATUS_RESET, "guest asked for a reset (reboot)")
QUIT = Outcome("quit", STATUS_POWEROFF, "stopped from the console (Ctrl-A x)")


def triple_fault(vcpu: int, rip: int) -> Outcome:
    return Outcome("triple-fault", STATUS_TRIPLE_FAULT, f"vCPU {vcpu} triple-faulted (shutdown) at RIP {rip:#x}")


def error(message: str) -> Outcome:
    return Outcome("error", STATUS_ERROR, message)


def signalled(name: str, status: int) -> Outcome:
    return Outcome("signal", status, f"stopped by {name}")
