"""What virtio-net asks of the host side of a link (a tap, a passt process)."""

from __future__ import annotations

from typing import Protocol


class NetBackend(Protocol):
    """The host end of one NIC. Frames cross it with the 12-byte virtio_net_hdr in front."""

    offloads: int            # the virtio-net offload features this backend can honour

    @property
    def fd(self) -> int:
        """Readable when a frame may be waiting."""
        ...

    @property
    def alive(self) -> bool:
        """False once the host side went away (a helper process ended): no more frames."""
        ...

    def receive(self, views: list[memoryview]) -> int | None:
        """Read the next frame (header first) into `views`: its whole length, or None when none
        waits. A frame longer than `views` is still read whole: the bytes that did not fit are
        `spill` until the next call. OSError when the backend fails."""
        ...

    @property
    def spill(self) -> memoryview:
        """The part of the last frame received that did not fit the views it was given."""
        ...

    def send(self, views: list[memoryview]) -> None:
        """Send one frame given as its header and data in `views` (OSError: dropped)."""
        ...

    def set_offloads(self, features: int) -> None:
        """Deliver frames with the guest offloads the driver accepted (GUEST_CSUM, GUEST_TSO4/6)."""
        ...

    def close(self) -> None: ...
