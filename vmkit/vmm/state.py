"""The VM lifecycle state machine.

    CREATED --start--> RUNNING --pause--> PAUSED --resume--> RUNNING
    CREATED | RUNNING | PAUSED --stop--> STOPPED

Any other transition raises VmStateError naming the state the VM is in.
"""

from __future__ import annotations

import enum
import threading


class VmState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Command(enum.Enum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


class VmStateError(RuntimeError):
    """A command does not apply to the VM's current state."""

    def __init__(self, command: Command, state: VmState) -> None:
        self.command = command
        self.state = state
        super().__init__(f"cannot {command.value} a VM that is {state.value}")


TRANSITIONS: dict[tuple[VmState, Command], VmState] = {
    (VmState.CREATED, Command.START): VmState.RUNNING,
    (VmState.RUNNING, Command.PAUSE): VmState.PAUSED,
    (VmState.PAUSED, Command.RESUME): VmState.RUNNING,
    (VmState.CREATED, Command.STOP): VmState.STOPPED,
    (VmState.RUNNING, Command.STOP): VmState.STOPPED,
    (VmState.PAUSED, Command.STOP): VmState.STOPPED,
}


class Lifecycle:
    """The one owner of the VM's state: commands move it (TRANSITIONS, under a lock), and the vCPU
    threads wait on it (parked while PAUSED, leaving once STOPPED)."""

    def __init__(self, vcpus: int = 0) -> None:
        self._state = VmState.CREATED
        self._cond = threading.Condition()
        self._parked: set[int] = set()
        self._alive = vcpus

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def parked(self) -> int:
        """vCPU threads waiting while the VM is paused."""
        return len(self._parked)

    def apply(self, command: Command) -> VmState:
        """Move to the state `command` leads to, or raise VmStateError; waiting vCPUs see it."""
        with self._cond:
            target = TRANSITIONS.get((self._state, command))
            if target is None:
                raise VmStateError(command, self._state)
            self._state = target
            self._cond.notify_all()
            return target

    # --- the vCPU threads' side ---------------------------------------------------------
    def wait_runnable(self, index: int) -> bool:
        """For vCPU `index`, before each entry: block while paused; False when it should leave."""
        if self._state is VmState.RUNNING:
            return True     # the common case, once per exit: no lock (the state changes before a kick)
        with self._cond:
            while self._state is VmState.PAUSED:
                self._parked.add(index)
                self._cond.notify_all()
                self._cond.wait()
            self._parked.discard(index)
            return self._state is VmState.RUNNING

    def wait_parked(self, timeout: float) -> None:
        """After PAUSE (and a kick): wait until every live vCPU thread is parked, or stopped."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._parked) >= self._alive or self._state is VmState.STOPPED,
                                timeout)

    def runner_exited(self, index: int) -> None:
        with self._cond:
            self._alive -= 1
            self._cond.notify_all()
