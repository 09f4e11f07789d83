"""The Python SDK (docs/sdk.md): VM and AsyncVM drive VMs through the vmkit daemon and run commands
and copy files through the guest's exec agent; every error is a VMError."""

from vmkit.agent import ExecResult
from vmkit.sdk.aio import AsyncVM
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

__all__ = [
    "AgentUnavailable", "AsyncVM", "CopyError", "DaemonUnavailable", "ExecError", "ExecResult", "ExecTimeout",
    "VM", "VMError", "VMNotFound", "VMNotRunning", "VMStartError", "VMStateError", "VMTimeout",
]
