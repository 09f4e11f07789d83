"""vmkit: a virtual machine monitor on Linux KVM, scriptable from Python.

`vmkit.VM` and `vmkit.AsyncVM` (and the SDK's errors) are imported on first use: every `vmkit run`
imports this package, and pays nothing for the SDK."""

__version__ = "0.1.0"

__all__ = [
    "AgentUnavailable", "AsyncVM", "CopyError", "DaemonUnavailable", "ExecError", "ExecResult", "ExecTimeout",
    "VM", "VMError", "VMNotFound", "VMNotRunning", "VMStartError", "VMStateError", "VMTimeout", "__version__",
]
_SDK_NAMES = frozenset(__all__) - {"__version__"}
TYPE_CHECKING = False                  # typing is not imported for this (mypy takes the name as true)

if TYPE_CHECKING:
    from vmkit.sdk import (
        VM,
        AgentUnavailable,
        AsyncVM,
        CopyError,
        DaemonUnavailable,
        ExecError,
        ExecResult,
        ExecTimeout,
        VMError,
        VMNotFound,
        VMNotRunning,
        VMStartError,
        VMStateError,
        VMTimeout,
    )


def __getattr__(name: str) -> object:
    if name in _SDK_NAMES:
        import vmkit.sdk

        return getattr(vmkit.sdk, name)
    raise AttributeError(f"module 'vmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SDK_NAMES})
