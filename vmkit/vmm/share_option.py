"""The `--share` link option: vmkit.devices.virtio.p9.spec's checks, with errors as ConfigError."""

from __future__ import annotations

from collections.abc import Sequence

from vmkit.devices.virtio.p9.spec import ShareOptionError, ShareSpec, check_together
from vmkit.devices.virtio.p9.spec import parse_option as parse_share
from vmkit.vmm.config import ConfigError


def parse_option(value: str, index: int) -> ShareSpec:
    try:
        return parse_share(value, index)
    except ShareOptionError as exc:
        raise ConfigError(str(exc)) from None


def check_all(specs: Sequence[ShareSpec]) -> None:
    try:
        check_together(specs)
    except ShareOptionError as exc:
        raise ConfigError(str(exc)) from None
