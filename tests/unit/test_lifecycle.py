"""The VM lifecycle state machine accepts legal transitions and names the state on illegal ones."""

import pytest

from vmkit.vmm.state import TRANSITIONS, Lifecycle, VmState, VmStateError

COMMANDS = ["start", "pause", "resume", "stop"]


def test_the_normal_life_of_a_vm():
    life = Lifecycle()
    assert life.state is VmState.CREATED
    assert life.apply("start") is VmState.RUNNING
    assert life.apply("pause") is VmState.PAUSED
    assert life.apply("resume") is VmState.RUNNING
    assert life.apply("stop") is VmState.STOPPED


@pytest.mark.parametrize("state", list(VmState))
@pytest.mark.parametrize("command", COMMANDS)
def test_every_illegal_transition_is_refused(state, command):
    life = Lifecycle()
    life._state = state
    if (state, command) in TRANSITIONS:
        life.apply(command)
        return
    with pytest.raises(VmStateError, match=f"cannot {command} a VM that is {state.value}"):
        life.apply(command)
    assert life.state is state
