"""The Python SDK (docs/sdk.md): VM and AsyncVM drive VMs through the vmkit daemon and run commands
and copy files through the guest's exec agent; every error is a VMError. AsyncVM (and asyncio with
it) is imported on first use, so `vmkit exec` and synchronous scripts do not pay for asyncio."""

from vmkit.agent import ExecResult
from vmkit.sdk.errors import (
    AgentUnavailable,
    CopyError,
    DaemonUnavailable,
    ExecError,
    ExecTimeout,
    VMError,
    VMNotFound,
    VMNotRunning,
    VMStartError,
    VMStateError,
    VMTimeout,
)
from vmkit.sdk.vm import VM

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmkit.sdk.aio import AsyncVM

__all__ = [
    "AgentUnavailable", "AsyncVM", "CopyError", "DaemonUnavailable", "ExecError", "ExecResult", "ExecTimeout",
    "VM", "VMError", "VMNotFound", "VMNotRunning", "VMStartError", "VMStateError", "VMTimeout",
]


def __getattr__(name: str) -> object:
    if name == "AsyncVM":
        from vmkit.sdk.aio import AsyncVM

        return AsyncVM
    raise AttributeError(f"module 'vmkit.sdk' has no attribute {name!r}")
