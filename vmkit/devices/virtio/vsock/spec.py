"""`--vsock PATH[,cid=N]`: a virtio-vsock device whose host side is a Unix socket at PATH.

parse_option raises VsockOptionError (vmkit/vmm/vsock_option.py makes it a ConfigError: devices do
not import the VMM layer); open raises VsockOpenError, an OSError the builder reports with the
option's text.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import NamedTuple

from vmkit.devices.virtio.vsock.device import VirtioVsock
from vmkit.devices.virtio.vsock.muxer import Muxer
from vmkit.devices.virtio.vsock.packet import MAX_GUEST_CID, MIN_GUEST_CID

DEFAULT_CID = MIN_GUEST_CID
SUN_PATH_MAX = 107                       # sun_path less its terminating zero
PORT_SUFFIX = len("_4294967295")         # PATH_<port> for connections the guest starts


class VsockOptionError(ValueError):
    """A `--vsock` value that is wrong; the message names the part."""


class VsockOpenError(OSError):
    """PATH cannot be listened on."""


class VsockSpec(NamedTuple):
    path: str
    cid: int = DEFAULT_CID
    number: int = 0

    def __str__(self) -> str:
        return f"--vsock {self.path},cid={self.cid}"

    def open(self) -> VirtioVsock:
        """Listen at PATH: a socket left there by a VM that is gone is replaced, one somebody
        listens on or any other file is a VsockOpenError."""
        _clear_stale_socket(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(self.path)
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise VsockOpenError(exc.errno, f"cannot listen there ({exc.strerror or exc})") from None
        label = "virtio-vsock" if self.number == 0 else f"virtio-vsock{self.number}"
        return VirtioVsock(Muxer(listener, self.path, self.cid), label)


def _clear_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise VsockOpenError(errno.EEXIST, "a file that is not a socket is there already")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)                   # nobody listens: left by a VM that is gone
        return
    except OSError as exc:
        raise VsockOpenError(exc.errno, f"cannot tell whether the socket there is in use "
                                        f"({exc.strerror or exc})") from None
    finally:
        probe.close()
    raise VsockOpenError(errno.EADDRINUSE, "another program listens on that socket")


def parse_option(value: str, index: int) -> VsockSpec:
    """Check `--vsock PATH[,cid=N]` before any VM exists."""
    path, *options = value.split(",")
    if not path:
        raise VsockOptionError(f"--vsock {value!r}: the path is missing (--vsock PATH[,cid=N])")
    if len(os.fsencode(path)) + PORT_SUFFIX > SUN_PATH_MAX:
        raise VsockOptionError(f"--vsock {value!r}: the path is longer than a Unix socket address allows "
                          f"({SUN_PATH_MAX - PORT_SUFFIX} bytes, leaving room for _PORT)")
    if index:
        raise VsockOptionError(f"--vsock {value!r}: a VM has one vsock device")
    cid = DEFAULT_CID
    for option in options:
        key, eq, text = option.partition("=")
        if key != "cid" or not eq:
            raise VsockOptionError(f"--vsock {value!r}: unknown option {option!r} (--vsock PATH[,cid=N])")
        if not text.isdigit() or not MIN_GUEST_CID <= int(text) <= MAX_GUEST_CID:
            raise VsockOptionError(f"--vsock {value!r}: cid={text!r} is not a whole number from {MIN_GUEST_CID} to {MAX_GUEST_CID}")
        cid = int(text)
    return VsockSpec(path, cid, index)
