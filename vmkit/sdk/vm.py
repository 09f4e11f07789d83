"""vmkit.VM: one VM held by the vmkit daemon (started on demand), steered from Python, with commands
and files going through the exec agent of a Linux image."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from vmkit import agent as agent_errors
from vmkit.agent import AgentClient, ExecResult
from vmkit.agent.client import Stdin
from vmkit.daemon.client import Client, DaemonError
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
from vmkit.sdk.options import StrPath, keyword_named, run_arguments

DEFAULT_READY_TIMEOUT = 300.0    # a Linux boot; minutes where the host runs guest kernels in emulation
DEFAULT_STOP_TIMEOUT = 10.0
CONSOLE_CHARACTERS = 1024        # per console request: at most 4096 bytes in UTF-8
PING_SECONDS = 5.0
CONSOLE_TAIL = 2000              # console bytes a failed start's error shows


def daemon_error(exc: DaemonError) -> VMError:
    """The SDK's error for a daemon's refusal (the daemon's error becomes its cause)."""
    message = str(exc)
    if exc.status == 0:
        return DaemonUnavailable(message)
    if exc.status == 404:
        return VMNotFound(message)
    if exc.status == 409:
        if " is exited" in message or " is starting" in message:
            return VMNotRunning(message, "exited" if " is exited" in message else "starting")
        return VMStateError(message)
    return VMError(message)


class VM:
    """A VM in the vmkit daemon, made from `vmkit run` options given as keywords.

    Nothing starts until start() or `with`; leaving the `with` block stops the VM (its power button,
    then a hard stop after stop_timeout seconds) and removes it, whatever happened inside. A VM made from an `image`
    gets a vsock device for its exec agent, and start() returns once the agent answers (at most
    ready_timeout seconds), so exec() and the copies work at once.
    """

    def __init__(self, image: str | None = None, *, kernel: StrPath | None = None, guest: str | None = None,
                 command: Sequence[str] | None = None, initrd: StrPath | None = None, cmdline: str | None = None,
                 vcpus: int | None = None, memory_mib: int | None = None, devices: Sequence[str] = (),
                 disks: Sequence[str] = (), networks: Sequence[str] = (), shares: Sequence[str] = (),
                 vsock: str | None = None, boot_protocol: str | None = None, pvm_workarounds: bool = True,
                 name: str | None = None, daemon_socket: StrPath | None = None, cwd: StrPath | None = None,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.arguments = run_arguments(image=image, kernel=kernel, guest=guest, initrd=initrd, cmdline=cmdline,
                                       vcpus=vcpus, memory_mib=memory_mib, devices=devices, disks=disks,
                                       networks=networks, shares=shares, vsock=vsock, boot_protocol=boot_protocol,
                                       pvm_workarounds=pvm_workarounds, command=command)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.waits_for_agent = image is not None
        self._requested_name = name
        self._name: str | None = None
        self._removed = False
        self._cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        self._client = Client(Path(daemon_socket) if daemon_socket is not None else None)
        self._agent: AgentClient | None = None

    @classmethod
    def attach(cls, name: str, *, daemon_socket: StrPath | None = None) -> VM:
        """The daemon's VM `name`, made elsewhere (`vmkit run -d`); VMNotFound if there is none.
        Leaving a `with` block of it stops and removes it too."""
        vm = cls(daemon_socket=daemon_socket)
        vm._name = name
        vm.inspect()
        return vm

    def __repr__(self) -> str:
        return f"<vmkit.VM {self._name or self._requested_name or '(not started)'}>"

    def __enter__(self) -> VM:
        if self._name is None:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # ---- life

    @property
    def name(self) -> str:
        if self._name is None:
            raise VMNotRunning("the VM has not been started (start() or `with`)", "new")
        return self._name

    def start(self) -> VM:
        """Create the VM in the daemon and, for an image, wait until its agent answers. A start that
        fails leaves no VM behind: VMStartError (its `keyword` names the bad argument) or VMTimeout."""
        self.create()
        if self.waits_for_agent and self.ready_timeout > 0:
            try:
                self.wait_ready(self.ready_timeout)
            except VMNotRunning as exc:
                ended = self._last_words(f"VM {self.name!r} ended before its agent answered ({exc})")
                self.discard_quietly()
                raise VMStartError(ended) from exc
            except VMTimeout as exc:
                late = self._last_words(str(exc))
                self.discard_quietly()
                raise VMTimeout(late) from exc
            except BaseException:
                self.discard_quietly()
                raise
        return self

    def discard_quietly(self) -> None:
        """discard(), for a start that failed: its own error would hide the one that matters."""
        try:
            self.discard()
        except VMError:
            pass

    def _last_words(self, message: str) -> str:
        """`message` and the end of the VM's console, for a start that failed (the VM is removed)."""
        try:
            tail = self.logs()[-CONSOLE_TAIL:].decode(errors="replace").strip()
        except VMError:
            return message
        return f"{message}; the end of its console:\n{tail}" if tail else message

    def create(self) -> dict[str, Any]:
        """Ask the daemon for the VM (start() without waiting for the agent); its record."""
        if self._name is not None:
            raise VMStateError(f"VM {self._name!r} has been started already")
        body = {"name": self._requested_name, "args": self.arguments, "cwd": self._cwd}
        try:
            record: dict[str, Any] = self._daemon("POST", "/vms", body)
        except VMError as exc:
            cause = exc.__cause__
            if isinstance(cause, DaemonError) and cause.status == 400:
                raise VMStartError(str(exc), keyword_named(str(exc))) from cause
            if isinstance(cause, DaemonError) and cause.status == 409:   # the name is taken
                raise VMStartError(str(exc), "name") from cause
            raise
        self._name = str(record["name"])
        return record

    def wait_ready(self, timeout: float, cancelled: threading.Event | None = None) -> str:
        """Wait until the guest's agent answers; its version. VMNotRunning when the VM ends first,
        VMTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            version = self.agent_answers(min(PING_SECONDS, max(0.1, deadline - time.monotonic())))
            if version is not None:
                return version
            if cancelled is not None and cancelled.is_set():
                raise VMError("cancelled while waiting for the agent")
            if time.monotonic() >= deadline:
                raise VMTimeout(f"VM {self.name!r}: its agent did not answer within {timeout:g} s")
            time.sleep(0.25)

    def agent_answers(self, timeout: float) -> str | None:
        """The agent's version if it answers within `timeout` seconds, else None; VMNotRunning when the
        VM has ended (or is paused: it cannot answer then)."""
        agent = self.agent
        self._expect_running()
        try:
            return agent.ping(timeout)
        except agent_errors.AgentError:
            self._expect_running()
            return None

    def pause(self) -> None:
        self._request("POST", "/pause", {})

    def resume(self) -> None:
        self._request("POST", "/resume", {})

    def stop(self, timeout: float | None = None) -> int | None:
        """End the VM: its ACPI power button is pressed, the guest has `timeout` seconds (default
        stop_timeout) to power off, then the VM is stopped hard. Its exit status: the guest's own (0
        for a power-off), 143 when it was stopped hard, 137 when its process had to be killed."""
        record = self._request("POST", "/stop", {"timeout": self.stop_timeout if timeout is None else timeout})
        status = record.get("status") if isinstance(record, dict) else None
        return status if isinstance(status, int) else None

    def remove(self, force: bool = False) -> None:
        """Remove an exited VM and its state (force: kill it first if it runs)."""
        self._request("DELETE", "?force=1" if force else "")
        self._removed = True
        self._agent = None

    def close(self) -> None:
        """Stop the VM and remove it; nothing to do for one never started or removed already."""
        if self._name is None or self._removed:
            return
        try:
            if self.state() != "exited":
                self.stop()
        except VMError:
            pass                                       # removed with force below
        self.discard()

    def discard(self) -> None:
        """Remove the VM, killing it if it runs; one already gone is no error."""
        if self._name is None or self._removed:
            return
        try:
            self.remove(force=True)
        except VMNotFound:
            self._removed = True

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the VM ends; its exit status (None when unknown). VMTimeout after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while True:
            record = self.inspect()
            if record.get("state") == "exited" and record.get("exit") is not None:
                status = record.get("status")
                return status if isinstance(status, int) else None
            if deadline is not None and time.monotonic() >= deadline:
                raise VMTimeout(f"VM {self.name!r} is still {record.get('state')} after {timeout:g} s")
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    # ---- what it is

    def inspect(self) -> dict[str, Any]:
        """The daemon's record of the VM (as `vmkit inspect`): state, pid, status, exit, machine, ..."""
        record: dict[str, Any] = self._request("GET", "")
        return record

    def state(self) -> str:
        """starting, running, paused or exited."""
        return str(self.inspect().get("state"))

    def status(self) -> int | None:
        """The exit status once the VM has ended, else None."""
        status = self.inspect().get("status")
        return status if isinstance(status, int) else None

    def logs(self) -> bytes:
        """The guest's console output so far."""
        return b"".join(self._stream("/logs"))

    def follow_logs(self) -> Iterator[bytes]:
        """The guest's console output as it comes, from the start until the VM ends."""
        return self._stream("/logs?follow=1")

    def send_console(self, text: str) -> None:
        """Type `text` into the guest's serial console."""
        for at in range(0, len(text), CONSOLE_CHARACTERS):
            self._request("POST", "/console", {"data": text[at:at + CONSOLE_CHARACTERS]})

    # ---- commands and files, through the agent

    @property
    def agent(self) -> AgentClient:
        """The guest agent's client (vmkit.agent.AgentClient: start, exec_stream, signals) for what
        exec and the copies do not cover. AgentUnavailable when the VM has no vsock device."""
        if self._agent is None:
            path = (self.inspect().get("machine") or {}).get("vsock")
            if not isinstance(path, str) or not path:
                raise AgentUnavailable(f"VM {self.name!r} has no vsock device, so no exec agent (VMs made "
                                       "from a Linux image have one)")
            self._agent = AgentClient(path)
        return self._agent

    def exec(self, argv: Iterable[str | bytes], *, env: Mapping[str, str] | None = None,
             cwd: str | None = None, stdin: Stdin | None = None, timeout: float | None = None,
             replace_env: bool = False) -> ExecResult:
        """Run a command in the guest to its end: ExecResult(status, stdout, stderr), status -N when
        signal N killed it. argv reaches execve exactly (no shell); env is added to PATH and HOME
        (replace_env: is the whole environment). ExecError when it cannot start, ExecTimeout."""
        return self.exec_until(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, replace_env=replace_env)

    def exec_until(self, argv: Iterable[str | bytes], *, env: Mapping[str, str] | None = None,
                   cwd: str | None = None, stdin: Stdin | None = None, timeout: float | None = None,
                   replace_env: bool = False, cancelled: threading.Event | None = None) -> ExecResult:
        """exec(), ending early (the command killed, VMError raised) once `cancelled` is set."""
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv is a list of arguments, not one string (no shell splits it)")
        agent = self._running_agent()
        out, err = bytearray(), bytearray()
        try:
            with agent.exec_stream(argv, env, cwd, stdin, timeout, replace_env=replace_env) as process:
                while process.status is None:
                    if cancelled is not None and cancelled.is_set():
                        raise VMError("cancelled; the command was killed")
                    chunk = process.next_output(None if cancelled is None else 0.1)
                    if chunk is not None:
                        (out if chunk.fd == 1 else err).extend(chunk.data)
                return ExecResult(process.status, bytes(out), bytes(err))
        except agent_errors.ExecTimeout as exc:
            raise ExecTimeout(str(exc), bytes(out), bytes(err)) from exc
        except agent_errors.RemoteExecError as exc:
            raise ExecError(str(exc), exc.errno) from exc
        except agent_errors.AgentError as exc:
            raise self._agent_error(exc) from exc

    def copy_in(self, local: StrPath, remote: str, mode: int | None = None, timeout: float | None = None) -> int:
        """Copy the host file `local` to the guest path `remote` (created or replaced) with `mode`
        (default: the local file's); the byte count."""
        return self._copy(lambda agent: agent.copy_in(local, remote, mode, timeout), os.fspath(local), remote)

    def copy_out(self, remote: str, local: StrPath, timeout: float | None = None) -> int:
        """Copy the guest file `remote` to the host path `local` (replaced only once all of it came);
        the byte count."""
        return self._copy(lambda agent: agent.copy_out(remote, local, timeout), os.fspath(local), remote)

    def read_file(self, remote: str, timeout: float | None = None) -> bytes:
        """The guest file `remote`, whole."""
        return self._copy(lambda agent: agent.read_file(remote, timeout), None, remote)

    def write_file(self, remote: str, data: bytes, mode: int = 0o644, timeout: float | None = None) -> int:
        """Create or replace the guest file `remote` with `data`; the byte count."""
        return self._copy(lambda agent: agent.write_file(remote, data, mode, timeout), None, remote)

    # ---- plumbing

    def _copy(self, action: Any, local: str | None, remote: str) -> Any:
        agent = self._running_agent()
        try:
            return action(agent)
        except agent_errors.RemoteFileError as exc:
            raise CopyError(f"{self.name}:{remote}: {exc}", exc.errno, remote) from exc
        except agent_errors.AgentError as exc:
            raise self._agent_error(exc) from exc
        except OSError as exc:
            where = exc.filename if exc.filename is not None else local
            raise CopyError(f"{where}: {exc.strerror or exc}", exc.errno, str(where)) from exc

    def _running_agent(self) -> AgentClient:
        agent = self.agent
        self._expect_running()
        return agent

    def _expect_running(self) -> None:
        state = self.state()
        if state != "running":
            raise VMNotRunning(f"VM {self.name!r} is {state}, not running", state)

    def _agent_error(self, exc: agent_errors.AgentError) -> VMError:
        """An agent failure: VMNotRunning when the VM has ended meanwhile, else AgentUnavailable."""
        try:
            self._expect_running()
        except VMNotRunning as ended:
            return ended
        return AgentUnavailable(f"VM {self.name!r}: {exc}")

    def _request(self, method: str, action: str, body: Any = None) -> Any:
        return self._daemon(method, f"/vms/{quote(self.name, safe='')}{action}", body)   # action: "/pause", "?force=1", ...

    def _daemon(self, method: str, target: str, body: Any = None) -> Any:
        """The daemon's answer; its refusal as the SDK's error."""
        try:
            return self._client.request(method, target, body)
        except DaemonError as exc:
            raise daemon_error(exc) from exc
        except OSError as exc:                         # it could not be started there
            raise DaemonUnavailable(f"cannot start the vmkit daemon at {self._client.path}: {exc}") from exc

    def _stream(self, action: str) -> Iterator[bytes]:
        try:
            chunks = self._client.stream(f"/vms/{quote(self.name, safe='')}{action}")
        except DaemonError as exc:
            raise daemon_error(exc) from exc
        except OSError as exc:
            raise DaemonUnavailable(f"cannot start the vmkit daemon at {self._client.path}: {exc}") from exc

        def pieces() -> Iterator[bytes]:
            try:
                yield from chunks
            except DaemonError as exc:
                raise daemon_error(exc) from exc
        return pieces()
