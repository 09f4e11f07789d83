"""The `--net` link option: vmkit.devices.virtio.net.spec's checks, with errors as ConfigError."""

from __future__ import annotations

from collections.abc import Sequence

from vmkit.devices.virtio.net.spec import NetOptionError, NetSpec, check_together, parse_net
from vmkit.vmm.config import ConfigError


def parse_option(value: str, index: int) -> NetSpec:
    try:
        return parse_net(value, index)
    except NetOptionError as exc:
        raise ConfigError(str(exc)) from None


def check_all(specs: Sequence[NetSpec]) -> None:
    try:
        check_together(specs)
    except NetOptionError as exc:
        raise ConfigError(str(exc)) from None
