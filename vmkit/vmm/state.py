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
    """Thread-safe holder of the current VmState."""

    def __init__(self) -> None:
        self._state = VmState.CREATED
        self._lock = threading.Lock()

    @property
    def state(self) -> VmState:
        return self._state

    def apply(self, command: Command) -> VmState:
        """Move to the state `command` leads to, or raise VmStateError."""
        with self._lock:
            target = TRANSITIONS.get((self._state, command))
            if target is None:
                raise VmStateError(command, self._state)
            self._state = target
            return target
