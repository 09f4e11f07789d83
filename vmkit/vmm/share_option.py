"""The `--share` link option: vmkit.devices.virtio.p9.spec's checks, with errors as ConfigError."""

from __future__ import annotations

from vmkit.devices.virtio.p9.spec import ShareOptionError, ShareSpec
from vmkit.devices.virtio.p9.spec import parse_option as parse_share
from vmkit.vmm.config import ConfigError


def parse_option(value: str, index: int) -> ShareSpec:
    try:
        return parse_share(value, index)
    except ShareOptionError as exc:
        raise ConfigError(str(exc)) from None
