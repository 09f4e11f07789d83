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


class VmStateError(RuntimeError):
    """A command does not apply to the VM's current state."""

    def __init__(self, command: str, state: VmState) -> None:
        self.command = command
        self.state = state
        super().__init__(f"cannot {command} a VM that is {state.value}")


TRANSITIONS: dict[tuple[VmState, str], VmState] = {
    (VmState.CREATED, "start"): VmState.RUNNING,
    (VmState.RUNNING, "pause"): VmState.PAUSED,
    (VmState.PAUSED, "resume"): VmState.RUNNING,
    (VmState.CREATED, "stop"): VmState.STOPPED,
    (VmState.RUNNING, "stop"): VmState.STOPPED,
    (VmState.PAUSED, "stop"): VmState.STOPPED,
}


class Lifecycle:
    """Thread-safe holder of the current VmState."""

    def __init__(self) -> None:
        self._state = VmState.CREATED
        self._lock = threading.Lock()

    @property
    def state(self) -> VmState:
        return self._state

    def apply(self, command: str) -> VmState:
        """Move to the state `command` leads to, or raise VmStateError."""
        with self._lock:
            target = TRANSITIONS.get((self._state, command))
            if target is None:
                raise VmStateError(command, self._state)
            self._state = target
            return target
