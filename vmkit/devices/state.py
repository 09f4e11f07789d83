"""Device state for snapshots: plain data apart from the objects that serve it, checked as
untrusted input on restore.

Every device keeps what the guest can see or has written as immutable plain data (a frozen
dataclass, or a NamedTuple for the devices every VM has: importing dataclasses costs a VM's start
about 9 ms): `save()` returns it, `restore(state)` checks all of it (a snapshot file may be damaged or hostile) before changing
anything and raises StateError naming the first field that is wrong, and `reset()` puts the device
back as it was built. Host resources (fds, threads, files) are never part of a state.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class StateError(ValueError):
    """A saved device state that this device cannot take; the message names the field."""


class Stateful(Protocol):
    """What the device manager walks for reset, snapshot and restore."""

    label: str

    def save(self) -> object:
        """The device's guest-visible state, as immutable plain data."""
        ...

    def restore(self, state: object) -> None:
        """Take a state `save` returned (here or on another host), after checking every field."""
        ...

    def reset(self) -> None:
        """Back to the state the device had when it was built."""
        ...


class NoState(NamedTuple):
    """The state of a device that keeps none (its registers are write-only or constant)."""


class Stateless:
    """Save, restore and reset for a device that keeps no state: its state is NoState."""

    label: str

    def save(self) -> NoState:
        return NoState()

    def restore(self, state: object) -> None:
        check_type(state, NoState, self.label)

    def reset(self) -> None:
        pass


def check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise StateError(f"{where}: {message}")


def check_int(value: object, where: str, limit: int) -> None:
    """`value` is a whole number in 0..limit (a bool is not)."""
    check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit, where,
          f"{value!r} is not a whole number in 0..{limit:#x}")


def check_type(state: object, kind: type, label: str) -> None:
    check(isinstance(state, kind), label, f"the state is a {type(state).__name__}, not a {kind.__name__}")
