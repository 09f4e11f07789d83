"""What a snapshot keeps of a vsock device: its CID.

The queues' state is saved with the virtio-pci function (virtio/state.py). Streams are not saved:
each holds a host socket that does not outlive the process. A restore therefore ends them and
sends the driver VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (its streams are gone; it reads the CID
again), and host programs connect again.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkit.devices.virtio.state import StateError
from vmkit.devices.virtio.vsock.device import VirtioVsock
from vmkit.devices.virtio.vsock.spec import MAX_CID


@dataclass(frozen=True)
class VsockState:
    guest_cid: int


def save_vsock(device: VirtioVsock) -> VsockState:
    return VsockState(device.guest_cid)


def restore_vsock(device: VirtioVsock, state: VsockState) -> None:
    """Check `state` as untrusted, then end every stream (their sockets were not saved) and tell
    the driver so."""
    cid = state.guest_cid
    if not isinstance(cid, int) or isinstance(cid, bool) or not 3 <= cid <= MAX_CID:
        raise StateError(f"guest_cid: {cid!r} is not a whole number from 3 to {MAX_CID}")
    if cid != device.guest_cid:
        raise StateError(f"guest_cid: {cid} is not this device's ({device.guest_cid}); "
                         f"the CID is given with --vsock")
    device.transport_reset()
