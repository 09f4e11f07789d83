"""Every error the SDK raises is a VMError; the daemon's or the agent's error it came from is its
__cause__."""

from __future__ import annotations


class VMError(Exception):
    """Something the SDK was asked to do could not be done; the message is one line."""


class DaemonUnavailable(VMError):
    """The vmkit daemon could not be reached or started."""


class VMStartError(VMError):
    """The VM could not be started. `keyword` is the VM() keyword argument the message is about
    (e.g. "memory_mib" for a bad --memory), when it names one."""

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


class VMNotFound(VMError):
    """The daemon holds no VM of that name (never created, or removed)."""


class VMStateError(VMError):
    """The VM's state does not allow the request (pausing a paused VM, removing a running one)."""


class VMNotRunning(VMStateError):
    """The request needs a running VM, and this one is paused, exited or not started yet."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class AgentUnavailable(VMError):
    """The VM has no exec agent (not a Linux image, or no vsock device), or it did not answer."""


class ExecError(VMError):
    """The command did not start in the guest: `errno` is execve's or chdir's (ENOENT, EACCES)."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class ExecTimeout(VMError, TimeoutError):
    """The command outlived its timeout and was killed; the output that came before is kept."""

    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class CopyError(VMError):
    """A file could not be copied: the guest refused (`errno` from the guest) or the host file could
    not be read or written."""

    def __init__(self, message: str, errno: int | None, path: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path


class VMTimeout(VMError, TimeoutError):
    """The VM did not reach the awaited state in time (wait, or the agent at start)."""
