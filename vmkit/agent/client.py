"""The host side of the guest exec agent: run commands in a Linux guest and copy files in and
out, over the VM's vsock Unix socket (`vmkit run --vsock PATH`). Each request is a connection of
its own, so requests from several threads run at once."""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from vmkit.agent import protocol
from vmkit.agent.channel import Channel, ChannelTimeout, Deadline
from vmkit.agent.errors import (
    AgentProtocolError,
    AgentUnavailable,
    ExecTimeout,
    RemoteExecError,
    RemoteFileError,
)
from vmkit.agent.protocol import Frame, FrameType

StrPath = str | os.PathLike[str]
Stdin = bytes | BinaryIO | Iterable[bytes]


@dataclass(frozen=True)
class ExecResult:
    """A finished command: `status` is its exit code, or -N when signal N killed it."""

    status: int
    stdout: bytes
    stderr: bytes

    @property
    def signal(self) -> int | None:
        return -self.status if self.status < 0 else None


@dataclass(frozen=True)
class OutputChunk:
    """Bytes a command wrote: `fd` is 1 for stdout, 2 for stderr."""

    fd: int
    data: bytes


class ExecProcess:
    """A command running in the guest. Iterate for its output as it comes; write_stdin and
    close_stdin when it was started with stdin=True; wait() for its status. Closing it before the
    command ended kills the command (and its process group). One thread at a time."""

    def __init__(self, channel: Channel, argv: list[str | bytes], *, stdin: bool, deadline: Deadline) -> None:
        self._channel = channel
        self._deadline = deadline
        self._stdin_open = stdin
        self.status: int | None = None
        frame = self._next_frame()
        if frame.type == FrameType.ERROR:
            channel.close()
            error, message = protocol.decode_error(frame)
            raise RemoteExecError(error, message)
        if frame.type != FrameType.STARTED:
            channel.close()
            raise AgentProtocolError(f"{frame.type.name} frame where STARTED or ERROR belongs")
        self.pid = protocol.decode_started(frame)
        self.argv = argv

    def __enter__(self) -> ExecProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[OutputChunk]:
        while self.status is None:
            chunk = self._take(self._next_frame())
            if chunk is not None:
                yield chunk

    def next_output(self, timeout: float | None) -> OutputChunk | None:
        """The next piece of output, waiting at most `timeout` seconds; None when none came in that
        time or the command ended (then `status` is set). For a caller that does other work between
        pieces, such as feeding stdin from a terminal or checking for cancellation."""
        while self.status is None:
            overall = self._deadline.remaining()
            wait = overall if timeout is None else timeout if overall is None else min(timeout, overall)
            try:
                frame = self._channel.receive(Deadline(wait))
            except ChannelTimeout:
                if self._deadline.passed():
                    self._timed_out()
                return None
            except AgentProtocolError:
                self._channel.close()
                raise
            chunk = self._take(frame)
            if chunk is not None:
                return chunk
        return None

    def _take(self, frame: Frame) -> OutputChunk | None:
        """A frame of a running command: its output, or None after the EXIT that ends it."""
        if frame.type == FrameType.STDOUT:
            return OutputChunk(1, frame.payload)
        if frame.type == FrameType.STDERR:
            return OutputChunk(2, frame.payload)
        if frame.type == FrameType.EXIT:
            self.status = protocol.decode_exit(frame)
            self._channel.close()
            return None
        self.close()
        raise AgentProtocolError(f"{frame.type.name} frame while the command runs")

    def write_stdin(self, data: bytes) -> None:
        """Send bytes to the command's stdin (dropped once the command has closed it or ended)."""
        if not self._stdin_open:
            raise ValueError("the command's stdin is not open (start it with stdin=True; not closed yet)")
        for at in range(0, len(data), protocol.CHUNK):
            self._send(FrameType.STDIN, bytes(data[at:at + protocol.CHUNK]))

    def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            self._send(FrameType.STDIN_CLOSE, b"")

    def send_signal(self, signum: int) -> None:
        """Send a signal to the command's process group."""
        if self.status is None:
            self._send(FrameType.SIGNAL, protocol.encode_signal(signum))

    def wait(self) -> int:
        """Wait for the command to end, dropping output not yet read; its status."""
        for _ in self:
            pass
        assert self.status is not None
        return self.status

    def collect(self) -> ExecResult:
        """Wait for the command to end, keeping its output."""
        out, err = bytearray(), bytearray()
        try:
            for piece in self:
                (out if piece.fd == 1 else err).extend(piece.data)
        except ExecTimeout as exc:
            raise ExecTimeout(str(exc), bytes(out), bytes(err)) from None
        assert self.status is not None
        return ExecResult(self.status, bytes(out), bytes(err))

    def close(self) -> None:
        self._channel.close()

    def _send(self, frame_type: FrameType, payload: bytes) -> None:
        if self.status is not None:
            return
        try:
            self._channel.send(frame_type, payload, self._deadline)
        except ChannelTimeout:
            self._timed_out()

    def _next_frame(self) -> Frame:
        try:
            return self._channel.receive(self._deadline)
        except ChannelTimeout:
            self._timed_out()
        except AgentProtocolError:
            self._channel.close()
            raise

    def _timed_out(self) -> NoReturn:
        self._channel.close()
        raise ExecTimeout("the command did not finish in time; it was killed")


class AgentClient:
    """vmkit-agent in the guest whose vsock device's Unix socket is `vsock_uds_path`."""

    def __init__(self, vsock_uds_path: StrPath, *, port: int = protocol.AGENT_PORT,
                 connect_timeout: float = 10.0) -> None:
        self.path = os.fspath(vsock_uds_path)
        self.port = port
        self.connect_timeout = connect_timeout

    def _connect(self, deadline: Deadline) -> Channel:
        remaining = deadline.remaining()
        timeout = self.connect_timeout if remaining is None else min(remaining, self.connect_timeout)
        return Channel.open(self.path, self.port, Deadline(timeout))

    def ping(self, timeout: float | None = 10.0) -> str:
        """The agent's version line."""
        deadline = Deadline(timeout)
        channel = self._connect(deadline)
        try:
            channel.send(FrameType.PING, b"", deadline)
            frame = channel.receive(deadline)
        except ChannelTimeout:
            raise AgentUnavailable(f"{self.path}: no PONG in time") from None
        finally:
            channel.close()
        if frame.type != FrameType.PONG:
            raise AgentProtocolError(f"{frame.type.name} frame where PONG belongs")
        return frame.payload.decode("ascii", "replace")

    def wait_ready(self, timeout: float) -> str:
        """Try until the agent answers (the VM may still be booting); its version line."""
        deadline = Deadline(timeout)
        while True:
            try:
                return self.ping(timeout=min(10.0, max(deadline.remaining() or 0.0, 0.1)))
            except AgentUnavailable as exc:
                if deadline.passed():
                    raise AgentUnavailable(f"the agent did not answer in {timeout:g} s: {exc}") from None
                time.sleep(min(0.25, deadline.remaining() or 0.0))

    def start(self, argv: Iterable[str | bytes], env: Mapping[str, str] | None = None,
              cwd: str | bytes | None = None, *, stdin: bool = False, replace_env: bool = False,
              timeout: float | None = None) -> ExecProcess:
        """Start a command; its output streams from the ExecProcess. `env` is added to the guest's
        base environment (PATH, HOME), or is the whole environment with replace_env. Without
        stdin the command reads /dev/null. RemoteExecError when it cannot be started."""
        args = list(argv)
        payload = protocol.encode_exec(args, env, cwd, stdin_pipe=stdin, replace_env=replace_env)
        deadline = Deadline(timeout)
        channel = self._connect(deadline)
        try:
            channel.send(FrameType.EXEC, payload, deadline)
            return ExecProcess(channel, args, stdin=stdin, deadline=deadline)
        except ChannelTimeout:
            channel.close()
            raise ExecTimeout("the command did not start in time") from None
        except BaseException:
            channel.close()
            raise

    def exec_stream(self, argv: Iterable[str | bytes], env: Mapping[str, str] | None = None,
                    cwd: str | bytes | None = None, stdin: Stdin | None = None,
                    timeout: float | None = None, *, replace_env: bool = False) -> ExecProcess:
        """Start a command and feed it `stdin` (then closed); iterate the ExecProcess for its
        output as it comes, then read its `status`. While stdin is sent, output is taken in too."""
        process = self.start(argv, env, cwd, stdin=stdin is not None, replace_env=replace_env, timeout=timeout)
        try:
            if stdin is not None:
                for piece in _stdin_pieces(stdin):
                    process.write_stdin(piece)
                process.close_stdin()
        except BaseException:
            process.close()
            raise
        return process

    def exec(self, argv: Iterable[str | bytes], env: Mapping[str, str] | None = None,
             cwd: str | bytes | None = None, stdin: Stdin | None = None, timeout: float | None = None,
             *, replace_env: bool = False) -> ExecResult:
        """Run a command to its end: its status, stdout and stderr. ExecTimeout (the command
        killed) when `timeout` seconds pass first."""
        with self.exec_stream(argv, env, cwd, stdin, timeout, replace_env=replace_env) as process:
            return process.collect()

    # ---- files ----

    def write_file(self, remote: str | bytes, data: bytes | BinaryIO, mode: int = 0o644,
                   timeout: float | None = None) -> int:
        """Create or replace the guest's regular file `remote` with `data` and exactly `mode`;
        the byte count. RemoteFileError when the guest refuses."""
        name = os.fsdecode(remote)
        payload = protocol.encode_write_file(remote, mode)
        deadline = Deadline(timeout)
        channel = self._connect(deadline)
        try:
            channel.send(FrameType.WRITE_FILE, payload, deadline)
            _expect(channel.receive(deadline), FrameType.READY, name)
            sent = 0
            for piece in _stdin_pieces(data):
                channel.send(FrameType.DATA, piece, deadline)
                sent += len(piece)
            channel.send(FrameType.END, b"", deadline)
            written = protocol.decode_done(_expect(channel.receive(deadline), FrameType.DONE, name))
        except ChannelTimeout:
            raise AgentUnavailable(f"copying to {name} did not finish in time") from None
        finally:
            channel.close()
        if written != sent:
            raise AgentProtocolError(f"the agent wrote {written} bytes of {sent} to {name}")
        return written

    def copy_in(self, local: StrPath, remote: str | bytes, mode: int | None = None,
                timeout: float | None = None) -> int:
        """Copy the host file `local` to the guest path `remote` (created or replaced), with `mode`
        (default: the local file's permission bits); the byte count."""
        with open(local, "rb") as source:
            if mode is None:
                mode = stat.S_IMODE(os.fstat(source.fileno()).st_mode)
            return self.write_file(remote, source, mode, timeout)

    def read_file(self, remote: str | bytes, timeout: float | None = None) -> bytes:
        """The guest's regular file `remote`, whole."""
        data = bytearray()
        self._read(remote, data.extend, timeout)
        return bytes(data)

    def copy_out(self, remote: str | bytes, local: StrPath, timeout: float | None = None) -> int:
        """Copy the guest's regular file `remote` to the host path `local` (written beside it and
        renamed into place, so a failed copy leaves what was there); the byte count. The local
        file takes the remote file's permission bits (set-id bits dropped)."""
        target = Path(local)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as sink:
                size, mode = self._read(remote, sink.write, timeout)
            os.chmod(temporary, stat.S_IMODE(mode) & 0o777)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
        return size

    def _read(self, remote: str | bytes, sink: Callable[[bytes], object],
              timeout: float | None) -> tuple[int, int]:
        """Stream a guest file into `sink(bytes)`: (bytes read, the file's st_mode)."""
        name = os.fsdecode(remote)
        payload = protocol.encode_path(remote)
        deadline = Deadline(timeout)
        channel = self._connect(deadline)
        total = 0
        try:
            channel.send(FrameType.READ_FILE, payload, deadline)
            _size, mode = protocol.decode_info(_expect(channel.receive(deadline), FrameType.INFO, name))
            while True:
                frame = channel.receive(deadline)
                if frame.type == FrameType.END and not frame.payload:
                    return total, mode
                frame = _expect(frame, FrameType.DATA, name)
                sink(frame.payload)
                total += len(frame.payload)
        except ChannelTimeout:
            raise AgentUnavailable(f"copying {name} out did not finish in time") from None
        finally:
            channel.close()


def _expect(frame: Frame, wanted: FrameType, path: str) -> Frame:
    """`frame` when it is of type `wanted`; an ERROR frame becomes RemoteFileError."""
    if frame.type == FrameType.ERROR:
        error, message = protocol.decode_error(frame)
        raise RemoteFileError(error, message, path)
    if frame.type != wanted:
        raise AgentProtocolError(f"{frame.type.name} frame where {wanted.name} belongs")
    return frame


def _stdin_pieces(source: Stdin) -> Iterator[bytes]:
    """Bytes, a binary file or an iterable of bytes, in pieces of at most CHUNK bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for at in range(0, len(view), protocol.CHUNK):
            yield bytes(view[at:at + protocol.CHUNK])
    elif isinstance(source, Iterable) and not hasattr(source, "read"):
        for item in source:
            for at in range(0, len(item), protocol.CHUNK):
                yield bytes(item[at:at + protocol.CHUNK])
    else:
        while piece := source.read(protocol.CHUNK):
            yield piece
