"""Errors raised by the KVM layer."""

from __future__ import annotations


class KvmError(Exception):
    """An ioctl on a KVM file descriptor failed."""

    def __init__(self, what: str, errno: int = 0, detail: str = "") -> None:
        import os

        self.what = what
        self.errno = errno
        message = f"{what} failed"
        if errno:
            message += f": {os.strerror(errno)} (errno {errno})"
        if detail:
            message += f"; {detail}"
        super().__init__(message)


class KvmUnavailable(KvmError):
    """/dev/kvm cannot be used: missing, not permitted, wrong version or capability."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.what = "open /dev/kvm"
        self.errno = 0
