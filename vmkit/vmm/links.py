"""The guest's links to the host (network, vsock, shared folders): one table from a `vmkit run`
option to the module that parses it.

A link is given as `--OPTION VALUE` (repeatable). Its module's `parse_option(value, index)` checks
the value before any VM exists (a ConfigError names the option and what is wrong in it) and returns
a LinkSpec; the builder calls the spec's `open()` when it builds the machine, which opens the host
side (a tap, a socket, a directory, a helper process) and returns the virtio device. The machine
closes that device after its I/O thread has stopped. Modules are imported only when their option
is used, so a run without links pays nothing for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple, Protocol

from vmkit.devices.virtio.device import VirtioDevice


class LinkDevice(VirtioDevice, Protocol):
    """A virtio device that holds host resources until the machine closes."""

    def close(self) -> None:
        """Release fds, sockets and processes; called once, after the I/O thread stopped."""
        ...


class LinkSpec(Protocol):
    """One checked link option, not yet opened."""

    def open(self) -> LinkDevice:
        """Open the host side; raise ConfigError (or OSError) naming the option when it cannot."""
        ...


class LinkOption(NamedTuple):
    option: str          # "--share"
    metavar: str
    help: str
    module: str          # the module whose parse_option(value, index) -> LinkSpec reads the value


# One line per kind of link; the CLI offers each option, in this order.
LINK_OPTIONS: tuple[LinkOption, ...] = (
    LinkOption("--vsock", "PATH[,cid=N]", "a virtio-vsock device; host programs reach the guest through "
               "the Unix socket PATH (CONNECT <port>), the guest reaches PATH_<port> (cid: 3 by default)",
               "vmkit.vmm.vsock_option"),
    LinkOption("--net", "tap=NAME[,mac=MAC] | user[,hostfwd=tcp:H:G]", "a virtio-net NIC on the host tap NAME, or user-mode networking through passt; also mac=, mtu=, rx_bps=, tx_bps=, rx_pps=, tx_pps=", "vmkit.vmm.net_option"),
    LinkOption("--share", "HOSTDIR[,tag=TAG][,rw]", "share a host directory over virtio-9p (9P2000.L), "
               "read-only unless rw; the guest mounts it by TAG (share0, share1, ... by default)",
               "vmkit.vmm.share_option"),
)


def parser_of(entry: LinkOption) -> Callable[[str, int], LinkSpec]:
    parse: Callable[[str, int], LinkSpec] = importlib.import_module(entry.module).parse_option
    return parse


def parse_links(values: dict[str, list[str]]) -> tuple[LinkSpec, ...]:
    """Parse every link option given (option -> its values in order), in LINK_OPTIONS order. A
    module may also check its values together (`check_all(specs)`: two shares with one tag, two NICs
    with one MAC)."""
    specs: list[LinkSpec] = []
    for entry in LINK_OPTIONS:
        texts = values.get(entry.option, [])
        if texts:
            module = importlib.import_module(entry.module)
            parsed = [module.parse_option(text, index) for index, text in enumerate(texts)]
            check_all: Callable[[list[LinkSpec]], None] | None = getattr(module, "check_all", None)
            if check_all is not None:
                check_all(parsed)
            specs.extend(parsed)
    return tuple(specs)
