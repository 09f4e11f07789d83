"""What a snapshot keeps of a vsock device: its CID.

The queues' state is saved with the virtio-pci function (virtio/state.py). Streams are not saved:
each holds a host socket that does not outlive the process. A restore therefore ends them and
sends the driver VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (its streams are gone; it reads the CID
again), and host programs connect again.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkit.devices.state import check, check_type
from vmkit.devices.virtio.vsock.packet import MAX_GUEST_CID, MIN_GUEST_CID


@dataclass(frozen=True)
class VsockState:
    guest_cid: int


def check_state(state: object, guest_cid: int, label: str) -> None:
    """Raise StateError unless `state` is a VsockState this device (CID `guest_cid`) could have saved."""
    check_type(state, VsockState, label)
    assert isinstance(state, VsockState)
    cid = state.guest_cid
    check(isinstance(cid, int) and not isinstance(cid, bool) and MIN_GUEST_CID <= cid <= MAX_GUEST_CID,
          "guest_cid", f"{cid!r} is not a whole number from {MIN_GUEST_CID} to {MAX_GUEST_CID}")
    check(cid == guest_cid, "guest_cid", f"{cid} is not this device's ({guest_cid}); the CID is given with --vsock")
