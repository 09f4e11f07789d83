"""A writer for the cpio "newc" format, which the Linux kernel unpacks as an initramfs."""

from __future__ import annotations

import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class CpioWriter:
    """Collects entries and produces the archive bytes (uncompressed)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = [self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = MAGIC + b"".join(b"%08x" % value for value in fields)
        self._inode += 1
        chunk = header + encoded
        chunk += b"\0" * (-len(chunk) % 4)
        chunk += data + b"\0" * (-len(data) % 4)
        self._parts.append(chunk)

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def device(self, name: str, mode: int, major: int, minor: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [self._inode, stat.S_IFCHR | mode, 0, 0, 1, 0, 0, 0, 0, major, minor, len(encoded), 0]
        self._inode += 1
        chunk = MAGIC + b"".join(b"%08x" % value for value in fields) + encoded
        self._parts.append(chunk + b"\0" * (-len(chunk) % 4))

    def finish(self) -> bytes:
        self._entry(TRAILER, 0)
        archive = b"".join(self._parts)
        return archive + b"\0" * (-len(archive) % 512)
