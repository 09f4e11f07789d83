"""The guest's handles: a fid names one file beneath the share, held as an O_PATH fd."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from vmkit.devices.virtio.p9.wire import NOFID

MAX_FIDS = 4096


@dataclass
class Fid:
    """One walked-to file: `path_fd` (O_PATH) is the authority; `parts` (its names from the root)
    only serve `..` and the old-style rename/remove, resolved beneath the root again."""

    path_fd: int
    parts: tuple[bytes, ...]
    open_fd: int = -1                        # after Tlopen/Tlcreate
    readable: bool = False
    writable: bool = False
    directory: bool = False                  # opened as a directory (readdir, not read)
    entries: list[bytes] | None = None       # a directory's names, listed at readdir offset 0

    def close(self) -> None:
        if self.open_fd >= 0:
            os.close(self.open_fd)
            self.open_fd = -1
        if self.path_fd >= 0:
            os.close(self.path_fd)
            self.path_fd = -1


class FidTable:
    """The fids of one session, at most `limit` of them."""

    def __init__(self, limit: int = MAX_FIDS) -> None:
        self.limit = limit
        self._fids: dict[int, Fid] = {}

    def __len__(self) -> int:
        return len(self._fids)

    def get(self, number: int) -> Fid:
        fid = self._fids.get(number)
        if fid is None:
            raise OSError(errno.EBADF, f"fid {number} is not in use")
        return fid

    def check_free(self, number: int) -> None:
        """Raise unless `number` may name a new fid."""
        if number == NOFID or number in self._fids:
            raise OSError(errno.EBADF, f"fid {number} is in use or reserved")
        if len(self._fids) >= self.limit:
            raise OSError(errno.EMFILE, f"the session holds {self.limit} fids already")

    def add(self, number: int, fid: Fid) -> None:
        """Install a fid; the caller checked `number` with check_free (or replaces its own)."""
        old = self._fids.get(number)
        if old is not None and old is not fid:
            old.close()
        self._fids[number] = fid

    def remove(self, number: int) -> Fid:
        fid = self.get(number)
        del self._fids[number]
        return fid

    def renamed(self, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> None:
        """Follow a rename in every fid at or beneath `old`."""
        for fid in self._fids.values():
            if fid.parts[:len(old)] == old:
                fid.parts = new + fid.parts[len(old):]

    def clear(self) -> None:
        for fid in self._fids.values():
            fid.close()
        self._fids.clear()
