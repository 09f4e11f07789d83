"""The guest test kit: a freestanding runtime and small test programs, built with gcc into PVH ELF images."""

from vmkit.guest.build import GuestBuildError, build_guest, program_names

__all__ = ["GuestBuildError", "build_guest", "program_names"]
