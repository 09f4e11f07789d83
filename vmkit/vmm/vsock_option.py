"""The `--vsock` link option: vmkit.devices.virtio.vsock.spec's checks, with errors as ConfigError."""

from __future__ import annotations

from vmkit.devices.virtio.vsock.spec import VsockOptionError, VsockSpec
from vmkit.devices.virtio.vsock.spec import parse_option as parse_vsock
from vmkit.vmm.config import ConfigError


def parse_option(value: str, index: int) -> VsockSpec:
    try:
        return parse_vsock(value, index)
    except VsockOptionError as exc:
        raise ConfigError(str(exc)) from None
