"""The VM lifecycle state machine accepts legal transitions and names the state on illegal ones."""

import pytest

from vmkit.vmm.state import TRANSITIONS, Command, Lifecycle, VmState, VmStateError

COMMANDS = list(Command)


def test_the_normal_life_of_a_vm():
    life = Lifecycle()
    assert life.state is VmState.CREATED
    assert life.apply(Command.START) is VmState.RUNNING
    assert life.apply(Command.PAUSE) is VmState.PAUSED
    assert life.apply(Command.RESUME) is VmState.RUNNING
    assert life.apply(Command.STOP) is VmState.STOPPED


@pytest.mark.parametrize("state", list(VmState))
@pytest.mark.parametrize("command", COMMANDS)
def test_every_illegal_transition_is_refused(state, command):
    life = Lifecycle()
    life._state = state
    if (state, command) in TRANSITIONS:
        life.apply(command)
        return
    with pytest.raises(VmStateError, match=f"cannot {command.value} a VM that is {state.value}"):
        life.apply(command)
    assert life.state is state


def test_the_first_ending_reported_wins_and_listeners_hear_it_once():
    from vmkit.vmm import outcome
    from vmkit.vmm.ending import Ending

    ending = Ending()
    heard = []
    ending.on_end(lambda: heard.append(ending.outcome))
    assert ending.wait(0) is None and not ending.is_set()
    ending.report(outcome.POWEROFF)
    ending.report(outcome.RESET)                          # too late: ignored
    assert ending.wait(0) is outcome.POWEROFF and heard == [outcome.POWEROFF]
