"""MSI-X: the vector table and pending-bit array a function exposes in a BAR."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

ENTRY_SIZE = 16
CONTROL_ENABLE = 1 << 15
CONTROL_FUNCTION_MASK = 1 << 14
ENTRY_MASKED = 1

SignalMsi = Callable[[int, int], None]   # (address, data)


class MsixTable:
    """Vectors are delivered with `signal(address, data)`; masked ones are left pending."""

    def __init__(self, vectors: int, control: Callable[[], int], signal: SignalMsi) -> None:
        self.vectors = vectors
        self._control = control
        self._signal = signal
        self._lock = threading.Lock()
        self.table = bytearray(ENTRY_SIZE * vectors)
        for vector in range(vectors):
            struct.pack_into("<I", self.table, ENTRY_SIZE * vector + 12, ENTRY_MASKED)
        self.pending = [False] * vectors

    def _entry(self, vector: int) -> tuple[int, int, int]:
        lo, hi, data, ctrl = struct.unpack_from("<IIII", self.table, ENTRY_SIZE * vector)
        return (hi << 32) | lo, data, ctrl

    def _deliverable(self, vector: int) -> bool:
        control = self._control()
        return bool(control & CONTROL_ENABLE) and not control & CONTROL_FUNCTION_MASK \
            and not self._entry(vector)[2] & ENTRY_MASKED

    def notify(self, vector: int) -> bool:
        """Raise `vector`; False when it does not exist (the caller falls back to polling)."""
        if not 0 <= vector < self.vectors:
            return False
        with self._lock:
            if not self._deliverable(vector):
                self.pending[vector] = True
                return True
            address, data, _ = self._entry(vector)
        self._signal(address, data)
        return True

    @staticmethod
    def _dword_or_qword(offset: int, size: int, limit: int) -> bool:
        """The only accesses the PCI spec defines for the table and the PBA: aligned 4 or 8 bytes."""
        return size in (4, 8) and offset % size == 0 and 0 <= offset and offset + size <= limit

    def read_table(self, offset: int, size: int) -> bytes:
        if not self._dword_or_qword(offset, size, len(self.table)):
            return b"\xff" * size
        with self._lock:
            return bytes(self.table[offset : offset + size])

    def write_table(self, offset: int, data: bytes) -> None:
        if not self._dword_or_qword(offset, len(data), len(self.table)):
            return
        with self._lock:
            self.table[offset : offset + len(data)] = data
        self.deliver_pending()

    def deliver_pending(self) -> None:
        """Send every pending vector that is no longer masked (after an entry or the function is
        unmasked, or MSI-X is enabled), clearing its pending bit."""
        with self._lock:
            deliver = []
            for vector, pending in enumerate(self.pending):
                if pending and self._deliverable(vector):
                    self.pending[vector] = False
                    deliver.append(self._entry(vector))
        for address, value, _ in deliver:
            self._signal(address, value)

    @property
    def pba_size(self) -> int:
        return 8 * ((self.vectors + 63) // 64)

    def read_pba(self, offset: int, size: int) -> bytes:
        if not self._dword_or_qword(offset, size, self.pba_size):
            return b"\xff" * size
        bits = sum(1 << i for i, p in enumerate(self.pending) if p)
        return bits.to_bytes(self.pba_size, "little")[offset : offset + size]
