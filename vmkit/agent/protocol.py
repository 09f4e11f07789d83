"""The agent's wire protocol (docs/agent.md): frames and their payloads, every length checked.

A frame is a 1-byte type, a 4-byte big-endian payload length (at most MAX_PAYLOAD) and the
payload. vmkit/images/vmkit_agent.c has the same constants; tests/unit/test_agent_protocol.py
checks that the two tables agree."""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmkit.agent.errors import AgentProtocolError

AGENT_PORT = 52                 # the agent's vsock port in the guest
MAX_PAYLOAD = 1 << 20
MAX_ITEMS = 65536               # arguments, and environment entries, in one EXEC
MAX_PATH = 4096
CHUNK = 65536                   # stdin and file data per frame sent
AGENT_VERSION = "vmkit-agent 1"

HEADER = struct.Struct(">BI")
_U32 = struct.Struct(">I")
_EXIT = struct.Struct(">BI")
_INFO = struct.Struct(">QI")
_DONE = struct.Struct(">Q")

EXEC_STDIN_PIPE = 1
EXEC_REPLACE_ENV = 2
EXIT_CODE, EXIT_SIGNAL = 0, 1


class FrameType(enum.IntEnum):
    # host -> agent: the request that opens a connection
    PING = ord("P")
    EXEC = ord("E")
    WRITE_FILE = ord("W")
    READ_FILE = ord("R")
    # host -> agent during an EXEC
    STDIN = ord("I")
    STDIN_CLOSE = ord("C")
    SIGNAL = ord("K")
    # file data, both ways
    DATA = ord("D")
    END = ord("Z")
    # agent -> host
    PONG = ord("p")
    STARTED = ord("s")
    STDOUT = ord("o")
    STDERR = ord("e")
    EXIT = ord("x")
    ERROR = ord("f")
    READY = ord("k")
    DONE = ord("d")
    INFO = ord("i")


FROM_AGENT = frozenset({FrameType.PONG, FrameType.STARTED, FrameType.STDOUT, FrameType.STDERR, FrameType.EXIT,
                        FrameType.ERROR, FrameType.READY, FrameType.DONE, FrameType.INFO, FrameType.DATA,
                        FrameType.END})


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes


def encode_frame(frame_type: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a frame's payload is at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    return HEADER.pack(frame_type, len(payload)) + payload


class FrameReader:
    """Frames from a byte stream fed in pieces. A length over MAX_PAYLOAD or a type outside
    `allowed` is an AgentProtocolError as soon as its header is in."""

    def __init__(self, allowed: frozenset[FrameType] = FROM_AGENT) -> None:
        self._allowed = allowed
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def partial(self) -> bool:
        """Bytes of a frame not yet complete are waiting."""
        return bool(self._buffer)

    def next(self) -> Frame | None:
        if len(self._buffer) < HEADER.size:
            return None
        raw_type, length = HEADER.unpack_from(self._buffer)
        if raw_type not in self._allowed:
            raise AgentProtocolError(f"unexpected frame type {raw_type:#04x}")
        if length > MAX_PAYLOAD:
            raise AgentProtocolError(f"frame payload of {length} bytes is over the limit of {MAX_PAYLOAD}")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER.size:end])
        del self._buffer[:end]
        return Frame(FrameType(raw_type), payload)


# ---- requests (host -> agent) ----

def _word(value: str | bytes, what: str) -> bytes:
    raw = os.fsencode(value) if isinstance(value, str) else bytes(value)
    if b"\0" in raw:
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    return raw


def _strings(items: list[bytes]) -> bytes:
    return _U32.pack(len(items)) + b"".join(_U32.pack(len(item)) + item for item in items)


def encode_exec(argv: Iterable[str | bytes], env: Mapping[str, str] | None = None, cwd: str | bytes | None = None,
                *, stdin_pipe: bool = False, replace_env: bool = False) -> bytes:
    """An EXEC payload: flags, argc and the arguments, the environment entries (added to the
    agent's base environment, or the whole environment with replace_env), the working directory."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv is a sequence of arguments, not one string")
    args = [_word(arg, "an argument") for arg in argv]
    if not args or not args[0]:
        raise ValueError("argv needs a program name as its first item")
    entries = []
    for name, value in (env or {}).items():
        raw_name = _word(name, "an environment name")
        if not raw_name or b"=" in raw_name:
            raise ValueError(f"bad environment variable name {name!r}")
        entries.append(raw_name + b"=" + _word(value, "an environment value"))
    if len(args) > MAX_ITEMS or len(entries) > MAX_ITEMS:
        raise ValueError(f"at most {MAX_ITEMS} arguments and {MAX_ITEMS} environment entries")
    flags = (EXEC_STDIN_PIPE if stdin_pipe else 0) | (EXEC_REPLACE_ENV if replace_env else 0)
    directory = _word(cwd, "the working directory") if cwd is not None else b""
    payload = _U32.pack(flags) + _strings(args) + _strings(entries) + _U32.pack(len(directory)) + directory
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"the command, environment and directory take {len(payload)} bytes; "
                         f"the limit is {MAX_PAYLOAD}")
    return payload


def encode_path(path: str | bytes) -> bytes:
    raw = _word(path, "the path")
    if not 0 < len(raw) <= MAX_PATH:
        raise ValueError(f"a guest path is 1 to {MAX_PATH} bytes long")
    return raw


def encode_write_file(path: str | bytes, mode: int) -> bytes:
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode:#o} is not a file mode (0 to 0o7777)")
    return _U32.pack(mode) + encode_path(path)


def encode_signal(signum: int) -> bytes:
    if not 1 <= signum <= 64:
        raise ValueError(f"signal {signum} is not 1 to 64")
    return _U32.pack(signum)


# ---- answers (agent -> host) ----

def _exact(frame: Frame, size: int) -> bytes:
    if len(frame.payload) != size:
        raise AgentProtocolError(f"{frame.type.name} frame of {len(frame.payload)} bytes, not {size}")
    return frame.payload


def decode_started(frame: Frame) -> int:
    return int(_U32.unpack(_exact(frame, _U32.size))[0])


def decode_exit(frame: Frame) -> int:
    """The exit status as subprocess gives it: the code, or -N for a command killed by signal N."""
    kind, value = _EXIT.unpack(_exact(frame, _EXIT.size))
    if kind == EXIT_CODE and value <= 255:
        return int(value)
    if kind == EXIT_SIGNAL and 1 <= value <= 127:
        return -int(value)
    raise AgentProtocolError(f"EXIT frame with kind {kind} and value {value}")


def decode_error(frame: Frame) -> tuple[int, str]:
    if len(frame.payload) < _U32.size:
        raise AgentProtocolError("ERROR frame without an errno")
    (error,) = _U32.unpack_from(frame.payload)
    if not 0 < error < 4096:
        raise AgentProtocolError(f"ERROR frame with errno {error}")
    return int(error), frame.payload[_U32.size:].decode("utf-8", "replace")


def decode_info(frame: Frame) -> tuple[int, int]:
    """(size, st_mode) of a file about to be read."""
    size, mode = _INFO.unpack(_exact(frame, _INFO.size))
    return int(size), int(mode)


def decode_done(frame: Frame) -> int:
    return int(_DONE.unpack(_exact(frame, _DONE.size))[0])
