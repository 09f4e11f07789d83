"""GuestAddress: a guest-physical address, kept apart from plain host integers."""

from __future__ import annotations


class GuestAddress(int):
    """A guest-physical address. Arithmetic with ints gives GuestAddress back."""

    __slots__ = ()

    def __add__(self, other: int, /) -> GuestAddress:
        return GuestAddress(int(self) + int(other))

    def __sub__(self, other: int, /) -> GuestAddress:
        return GuestAddress(int(self) - int(other))

    def align_up(self, alignment: int) -> GuestAddress:
        return GuestAddress((int(self) + alignment - 1) & ~(alignment - 1))

    def __repr__(self) -> str:
        return f"GuestAddress({int(self):#x})"
