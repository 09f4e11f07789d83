"""Format probing, and the guard that keeps a guest from turning its raw disk into another format.

`probe_format` says "qcow2" for a file that starts with the qcow2 magic, "raw" for anything else.
Probing is what QEMU does when no format is given, and it has a known danger: on a raw disk the
guest writes the first sector, so a guest could write a qcow2 header there naming a host file
(/etc/shadow) as its backing file; the next probed open would read that host file into the guest.
QEMU's answer, copied here: when the format was *guessed* as raw, a write that would make the
first 512 bytes look like an image format is refused (`ProbeGuardError`). Opening with
format="raw" states the format and lifts the guard.

The guard recognises the formats QEMU probes that carry a header at the start of the file (qcow
and qcow2, QED, VMDK, VDI, VHDX, VHD, LUKS), not only the one vmkit reads: the same disk may later
be opened by QEMU. For the same reason a probed file that already looks like one of the formats
vmkit does not read is refused at open rather than served to a guest as raw bytes.
"""

from __future__ import annotations

PROBE_BYTES = 512
QCOW2_MAGIC = b"QFI\xfb"

# (format, offset of the signature, signature)
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("qcow2", 0, QCOW2_MAGIC),
    ("qed", 0, b"QED\x00"),
    ("vmdk", 0, b"KDMV"),
    ("vmdk", 0, b"# Disk DescriptorFile"),
    ("vmdk", 0, b"COWD"),
    ("vdi", 64, b"\x7f\x10\xda\xbe"),
    ("vhdx", 0, b"vhdxfile"),
    ("vpc", 0, b"conectix"),
    ("luks", 0, b"LUKS\xba\xbe"),
)


def probe_format(head: bytes) -> str:
    """The format of an image whose first bytes are `head`: "qcow2" or "raw"."""
    return "qcow2" if head[:4] == QCOW2_MAGIC else "raw"


def looks_like_image(head: bytes) -> str | None:
    """The format the first sector `head` would be taken for, or None if it looks like plain data."""
    for name, offset, signature in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return name
    return None
