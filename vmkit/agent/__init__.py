"""The guest exec agent's host side (docs/agent.md): AgentClient runs commands in a Linux guest
and copies files in and out through vmkit-agent, over the VM's vsock Unix socket."""

from vmkit.agent.client import AgentClient, ExecProcess, ExecResult, OutputChunk
from vmkit.agent.errors import (
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    ExecTimeout,
    RemoteError,
    RemoteExecError,
    RemoteFileError,
)
from vmkit.agent.protocol import AGENT_PORT

__all__ = [
    "AGENT_PORT", "AgentClient", "AgentError", "AgentProtocolError", "AgentUnavailable", "ExecProcess",
    "ExecResult", "ExecTimeout", "OutputChunk", "RemoteError", "RemoteExecError", "RemoteFileError",
]
