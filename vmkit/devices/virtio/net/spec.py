"""The `--net` option: `tap=NAME` or `user` (passt), with a MAC, TCP port forwards and rate limits.

    --net tap=NAME[,mac=MAC][,mtu=N][,rx_bps=N][,tx_bps=N][,rx_pps=N][,tx_pps=N]
    --net user[,hostfwd=tcp:HOSTPORT:GUESTPORT]...[,mac=MAC][,mtu=N][,rx_bps=N]...

`parse_net` checks the value before any VM exists (NetOptionError names the option and the bad
part); `NetSpec.open` opens the tap or starts passt when the machine is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vmkit.devices.rate_limiter import U64_MAX, RateLimiter
from vmkit.devices.virtio.net.device import VirtioNet
from vmkit.devices.virtio.net.header import MAX_MTU, MIN_MTU
from vmkit.devices.virtio.net.mac import derived_mac, format_mac, parse_mac
from vmkit.devices.virtio.net.tap import check_tap_name

USAGE = "tap=NAME[,mac=MAC] | user[,hostfwd=tcp:HOSTPORT:GUESTPORT]"
RATES = ("rx_bps", "tx_bps", "rx_pps", "tx_pps")
HOSTFWD = re.compile(r"tcp:([0-9]{1,5}):([0-9]{1,5})")


class NetOptionError(ValueError):
    """A --net value that cannot be used; the message names the option and the part."""


@dataclass(frozen=True)
class NetSpec:
    text: str                                   # the option's value, for messages
    index: int                                  # eth0, eth1, ...
    tap: str | None                             # None: user-mode networking (passt)
    mac: bytes
    mtu: int = 1500
    forwards: tuple[tuple[int, int], ...] = ()
    rates: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        return f"--net {self.text}"

    def limiter(self, direction: str) -> RateLimiter:
        rates = dict(self.rates)
        return RateLimiter.per_second(bps=rates.get(f"{direction}_bps", 0), iops=rates.get(f"{direction}_pps", 0))

    def open(self) -> VirtioNet:
        """Open the tap or start passt (OSError whose strerror says why not) and make the device."""
        from vmkit.devices.virtio.net.backend import NetBackend
        from vmkit.devices.virtio.net.passt import PasstBackend
        from vmkit.devices.virtio.net.tap import TapBackend

        backend: NetBackend = (TapBackend.open(self.tap) if self.tap is not None
                                else PasstBackend.start(self.forwards, self.mtu))
        return VirtioNet(backend, self.mac, self.mtu, label=f"virtio-net{self.index} ({format_mac(self.mac)})",
                         rx_limiter=self.limiter("rx"), tx_limiter=self.limiter("tx"))


def parse_net(text: str, index: int) -> NetSpec:
    """Check one --net value; NetOptionError names what is wrong."""
    def fail(message: str) -> NetOptionError:
        return NetOptionError(f"--net {text}: {message} (--net {USAGE})")

    kind, *options = text.split(",")
    tap: str | None
    if kind == "user":
        tap = None
    elif kind.startswith("tap="):
        tap = kind[4:]
        if (why := check_tap_name(tap)) is not None:
            raise fail(f"tap name {tap!r}: {why}")
    else:
        raise fail(f"{kind!r}: expected tap=NAME or user")
    mac: bytes | None = None
    mtu = 1500
    forwards: list[tuple[int, int]] = []
    rates: dict[str, int] = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals:
            raise fail(f"{option!r}: expected KEY=VALUE")
        if key == "mac" and mac is None:
            try:
                mac = parse_mac(value)
            except ValueError as exc:
                raise fail(f"mac: {exc}") from None
        elif key == "mtu":
            if not re.fullmatch(r"[0-9]{1,5}", value) or not MIN_MTU <= int(value) <= MAX_MTU:
                raise fail(f"mtu: {value!r} is not a number in {MIN_MTU}..{MAX_MTU}")
            mtu = int(value)
        elif key == "hostfwd":
            if tap is not None:
                raise fail("hostfwd: only user networking forwards host ports (a tap is on the host already)")
            match = HOSTFWD.fullmatch(value)
            if match is None:
                raise fail(f"hostfwd: {value!r} is not tcp:HOSTPORT:GUESTPORT")
            host_port, guest_port = int(match[1]), int(match[2])
            if not (1 <= host_port <= 65535 and 1 <= guest_port <= 65535):
                raise fail(f"hostfwd: {value!r}: ports are 1..65535")
            if any(host_port == known for known, _ in forwards):
                raise fail(f"hostfwd: host port {host_port} is forwarded twice")
            forwards.append((host_port, guest_port))
        elif key in RATES and key not in rates:
            if not re.fullmatch(r"[0-9]{1,20}", value) or int(value) > U64_MAX:
                raise fail(f"{key}: {value!r} is not a whole number")
            rates[key] = int(value)
        else:
            raise fail(f"{key!r}: unknown or repeated (mac, mtu, hostfwd, {', '.join(RATES)})")
    if mac is None:
        mac = derived_mac(index, tap if tap is not None else "user")
    return NetSpec(text, index, tap, mac, mtu, tuple(forwards), tuple(sorted(rates.items())))


def check_together(specs: Sequence[NetSpec]) -> None:
    """NICs differ in their MAC, tap and forwarded host ports."""
    macs: dict[bytes, NetSpec] = {}
    taps: dict[str, NetSpec] = {}
    ports: dict[int, NetSpec] = {}
    for spec in specs:
        if spec.mac in macs:
            raise NetOptionError(f"{spec}: MAC {format_mac(spec.mac)} is already that of {macs[spec.mac]}")
        macs[spec.mac] = spec
        if spec.tap is not None:
            if spec.tap in taps:
                raise NetOptionError(f"{spec}: tap {spec.tap!r} is already used by {taps[spec.tap]}")
            taps[spec.tap] = spec
        for host_port, _ in spec.forwards:
            if host_port in ports:
                raise NetOptionError(f"{spec}: host port {host_port} is already forwarded by {ports[host_port]}")
            ports[host_port] = spec
