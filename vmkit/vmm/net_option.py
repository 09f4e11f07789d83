"""The `--net` link option: vmkit.devices.virtio.net.spec's checks, with errors as ConfigError."""

from __future__ import annotations

from vmkit.devices.virtio.net.spec import NetOptionError, NetSpec, parse_net
from vmkit.vmm.config import ConfigError


def parse_option(value: str, index: int) -> NetSpec:
    try:
        return parse_net(value, index)
    except NetOptionError as exc:
        raise ConfigError(str(exc)) from None
