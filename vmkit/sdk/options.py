"""The SDK's keyword arguments as `vmkit run` options, and back: which keyword a start error names.

The daemon's own parser checks the values (the same checks as a foreground `vmkit run`); this module
only spells them as arguments, so the SDK never disagrees with the command line about what is valid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TypedDict

StrPath = str | os.PathLike[str]

# keyword -> the `vmkit run` option it becomes
OPTION_OF_KEYWORD: dict[str, str] = {
    "image": "--image", "kernel": "--kernel", "guest": "--guest", "initrd": "--initrd",
    "cmdline": "--cmdline", "vcpus": "--cpus", "memory_mib": "--memory", "devices": "--device",
    "disks": "--disk", "networks": "--net", "shares": "--share", "vsock": "--vsock",
    "boot_protocol": "--boot-protocol", "pvm_workarounds": "--no-pvm-workarounds",
    "name": "--name",                # given to the daemon beside the arguments, as `vmkit run -d --name`
}
# the words that start the run checks' messages when they name no option (vmm/config.py, host_files.py)
_KEYWORD_OF_WORD = {"kernel": "kernel", "initrd": "initrd", "vcpus": "vcpus", "memory": "memory_mib",
                    "device": "devices", "cmdline": "cmdline", "protocol": "boot_protocol",
                    "image": "image", "built-in guest": "guest", "no guest program": "guest",
                    "name": "name"}
_SHORT_OPTIONS = {"-k": "--kernel", "-g": "--guest", "-i": "--initrd", "-c": "--cmdline", "-n": "--cpus",
                  "-m": "--memory"}
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[kgicnm])(?![\w-])")


def run_arguments(*, image: str | None = None, kernel: StrPath | None = None, guest: str | None = None,
                  initrd: StrPath | None = None, cmdline: str | None = None, vcpus: int | None = None,
                  memory_mib: int | None = None, devices: Sequence[str] = (), disks: Sequence[str] = (),
                  networks: Sequence[str] = (), shares: Sequence[str] = (), vsock: str | None = None,
                  boot_protocol: str | None = None, pvm_workarounds: bool = True,
                  command: Sequence[str] | None = None) -> list[str]:
    """The arguments of `vmkit run` (after `run`) for these keywords; None and empty leave an option out."""
    args: list[str] = []
    for option, value in (("--image", image), ("--kernel", kernel), ("--guest", guest), ("--initrd", initrd),
                          ("--cmdline", cmdline), ("--cpus", vcpus), ("--memory", memory_mib),
                          ("--vsock", vsock), ("--boot-protocol", boot_protocol)):
        if value is not None:
            args.append(f"{option}={os.fspath(value) if isinstance(value, os.PathLike) else value}")
    for option, values in (("--device", devices), ("--disk", disks), ("--net", networks), ("--share", shares)):
        if isinstance(values, str):
            raise TypeError(f"{option}: give a list of strings, not one string ({values!r})")
        args.extend(f"{option}={value}" for value in values)
    if not pvm_workarounds:
        args.append("--no-pvm-workarounds")
    if command is not None:
        if isinstance(command, str):
            raise TypeError(f"command: give the argv as a list, not one string ({command!r})")
        args.extend(["--", *command])
    return args


def keyword_named(message: str) -> str | None:
    """The keyword argument a start error's message is about, or None when it names none."""
    for match in _OPTION.finditer(message):
        option = _SHORT_OPTIONS.get(match.group(1), match.group(1))
        for keyword, known in OPTION_OF_KEYWORD.items():
            if known == option:
                return keyword
    lowered = message.lower()
    for word, keyword in _KEYWORD_OF_WORD.items():
        if lowered.startswith(word):
            return keyword
    return None


class VMOptions(TypedDict, total=False):
    """VM()'s keyword arguments after `image` (AsyncVM takes the same)."""

    kernel: StrPath | None
    guest: str | None
    command: Sequence[str] | None
    initrd: StrPath | None
    cmdline: str | None
    vcpus: int | None
    memory_mib: int | None
    devices: Sequence[str]
    disks: Sequence[str]
    networks: Sequence[str]
    shares: Sequence[str]
    vsock: str | None
    boot_protocol: str | None
    pvm_workarounds: bool
    name: str | None
    daemon_socket: StrPath | None
    cwd: StrPath | None
    ready_timeout: float
    stop_timeout: float
