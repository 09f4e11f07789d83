"""MAC addresses for vmkit's NICs: parsed and checked when given, derived stably when not."""

from __future__ import annotations

import hashlib
import re

MAC_PATTERN = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
LOCAL_PREFIX = 0x02          # locally administered, unicast


def parse_mac(text: str) -> bytes:
    """Six hex pairs separated by ':' naming a unicast address; ValueError says what is wrong."""
    if not MAC_PATTERN.fullmatch(text):
        raise ValueError(f"{text!r} is not a MAC address (six hex pairs: 02:00:00:00:00:01)")
    mac = bytes.fromhex(text.replace(":", ""))
    if mac[0] & 1:
        raise ValueError(f"{text} is a multicast address; a NIC needs a unicast one (first byte even)")
    if mac == bytes(6):
        raise ValueError("00:00:00:00:00:00 is not an address a NIC may have")
    return mac


def derived_mac(index: int, backend: str) -> bytes:
    """A locally administered address, the same for the same NIC index and backend (a tap's name,
    or "user"), so a command line gives the guest the same MAC every time."""
    digest = hashlib.sha256(f"vmkit-net:{index}:{backend}".encode()).digest()
    return bytes([LOCAL_PREFIX]) + digest[:5]


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
