"""A Linux tap as virtio-net's backend: /dev/net/tun with the virtio_net_hdr on every frame.

The tap is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte header (TUNSETVNETHDRSZ),
the virtio 1.x form, so a frame moves between the tap and guest memory in one readv or writev of
views of the guest's buffers, header included: no copies. An existing tap is attached by name; a
name that does not exist creates a tap (which needs CAP_NET_ADMIN) that lasts as long as vmkit
holds it. Offloads the driver accepted are passed on with TUNSETOFFLOAD.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from vmkit.devices.virtio.net.header import (
    F_GUEST_CSUM,
    F_GUEST_TSO4,
    F_GUEST_TSO6,
    HEADER_SIZE,
    MAX_FRAME,
    TAP_OFFLOADS,
)

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
IFNAMSIZ = 16
IFREQ = struct.Struct("16sH22x")


def check_tap_name(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name, or None when it can."""
    raw = name.encode(errors="replace")
    if not raw or len(raw) >= IFNAMSIZ:
        return f"an interface name is 1 to {IFNAMSIZ - 1} bytes"
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        return "an interface name has no '/', ':' or spaces and is not '.' or '..'"
    return None


def tun_offloads(features: int) -> int:
    """TUNSETOFFLOAD's flags for the guest offloads a driver accepted (TSO needs the checksum)."""
    if not features & F_GUEST_CSUM:
        return 0
    flags = TUN_F_CSUM
    if features & F_GUEST_TSO4:
        flags |= TUN_F_TSO4
    if features & F_GUEST_TSO6:
        flags |= TUN_F_TSO6
    return flags


class TapError(OSError):
    """A tap that could not be opened; strerror says why and what to do."""


class TapBackend:
    """One queue of a tap interface."""

    offloads = TAP_OFFLOADS

    def __init__(self, fd: int, name: str, *, is_tap: bool = True) -> None:
        self.name = name
        self._fd = fd
        self._is_tap = is_tap             # False: a datagram socket standing in for one (tests)
        self._scratch = bytearray(HEADER_SIZE + MAX_FRAME + 64)   # catches what the guest's buffers cannot
        self._spill = memoryview(self._scratch)[:0]
        self._closed = False

    @classmethod
    def open(cls, name: str) -> TapBackend:
        """Attach to the tap `name`, or create it; TapError says why it cannot."""
        return cls(_open_tap(name), name)

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def alive(self) -> bool:
        return not self._closed

    def receive(self, views: list[memoryview]) -> int | None:
        room = sum(len(v) for v in views)
        try:
            length = os.readv(self._fd, [*views, self._scratch])
        except BlockingIOError:
            return None
        self._spill = memoryview(self._scratch)[: max(0, length - room)]
        return length

    @property
    def spill(self) -> memoryview:
        return self._spill

    def send(self, views: list[memoryview]) -> None:
        os.writev(self._fd, views)

    def set_offloads(self, features: int) -> None:
        if self._is_tap:
            fcntl.ioctl(self._fd, TUNSETOFFLOAD, tun_offloads(features))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


def _open_tap(name: str) -> int:
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TapError(exc.errno, f"cannot open {TUN_DEVICE}: {exc.strerror} (is the tun module loaded?)") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", HEADER_SIZE))
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as exc:
        os.close(fd)
        raise TapError(exc.errno, _why(name, exc)) from None
    return fd


def _why(name: str, exc: OSError) -> str:
    if exc.errno == errno.EPERM:
        return (f"tap {name!r}: permission denied (creating a tap needs CAP_NET_ADMIN; an existing one must "
                "belong to this user: ip tuntap add NAME mode tap user USER)")
    if exc.errno == errno.EBUSY:
        return f"tap {name!r} is in use by another process (or is not a tap)"
    if exc.errno == errno.EINVAL:
        return f"tap {name!r}: the interface exists and is not a single-queue tap"
    return f"tap {name!r}: {exc.strerror}"
