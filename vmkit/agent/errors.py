"""What the agent client raises: every failure is an AgentError."""

from __future__ import annotations

import errno as errno_names
import os


class AgentError(Exception):
    """Something kept an agent request from completing."""


class AgentUnavailable(AgentError):
    """The agent cannot be reached: no VM socket, nothing listening on the agent's vsock port yet,
    or the connection broke (the VM stopped) before the answer came."""


class AgentProtocolError(AgentError):
    """The other side sent bytes that break the agent protocol."""


class RemoteError(AgentError):
    """The guest refused the request with an errno (a Linux errno, as on this host)."""

    def __init__(self, error: int, message: str) -> None:
        self.errno = error
        self.strerror = os.strerror(error) if error else "unknown error"
        self.message = message
        name = errno_names.errorcode.get(error, f"errno {error}")
        super().__init__(f"{message}: {self.strerror} ({name})")


class RemoteExecError(RemoteError):
    """The command did not start: its program was not found or could not be run (errno from
    execve, e.g. ENOENT or EACCES), or its working directory could not be entered."""


class RemoteFileError(RemoteError):
    """A file could not be copied in or out: ENOENT, EACCES, EISDIR, or EINVAL for a path that
    exists but is not a regular file (a device, a FIFO, a socket)."""

    def __init__(self, error: int, message: str, path: str) -> None:
        self.path = path
        super().__init__(error, message)

    @property
    def not_a_regular_file(self) -> bool:
        return self.errno in (errno_names.EISDIR, errno_names.EINVAL) and "not a regular file" in self.message


class ExecTimeout(AgentError, TimeoutError):
    """The command outlived the timeout; it was killed (its connection closed). Holds the output
    that came before."""

    def __init__(self, message: str, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr
