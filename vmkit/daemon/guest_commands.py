"""`vmkit exec` and `vmkit cp`: commands and files in a daemon's VM, through the guest's exec agent
(vmkit.sdk.VM does the work). Exit statuses as docker's: the command's own, 128 + N when signal N
killed it, 126 when it could not be run, 127 when it was not found, 125 for every other error."""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import signal
import sys

from vmkit.agent import AgentError, ExecProcess, RemoteExecError, protocol
from vmkit.cli import StartError, Stopped, say
from vmkit.sdk import VM, CopyError, VMError
from vmkit.vmm import outcome

STATUS_CANNOT_RUN = 126
STATUS_NOT_FOUND = 127
STDIN_PIECE = 64 * 1024
OUTPUT_WAIT_SECONDS = 0.05         # while stdin is open: how long output is awaited before stdin is looked at
_REMOTE = re.compile(r"([a-zA-Z0-9][a-zA-Z0-9_.-]*):(.*)", re.S)


def exec_command(args: argparse.Namespace) -> int:
    """`vmkit exec [-i] [-e K=V]... [-w DIR] NAME -- CMD ARGS...`"""
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise StartError("exec: give the command after the VM's name (vmkit exec NAME -- CMD ARGS...)")
    environment = _environment(args.env)
    try:                                     # what the agent would refuse, refused before any VM is asked
        protocol.encode_exec(command, environment, args.workdir, stdin_pipe=args.interactive, replace_env=False)
    except ValueError as exc:
        raise StartError(f"exec: {exc}") from None
    vm = _ready_vm(args.name, args.agent_timeout)
    try:
        process = vm.agent.start(command, environment, args.workdir, stdin=args.interactive)
    except RemoteExecError as exc:
        say(f"vmkit: error: exec {command[0]!r} in {args.name}: {exc}")
        return STATUS_NOT_FOUND if exc.errno == errno.ENOENT else STATUS_CANNOT_RUN
    except (AgentError, VMError) as exc:
        raise StartError(f"exec in {args.name}: {exc}") from None
    try:
        return run_to_end(process, sys.stdin.fileno() if args.interactive else -1)
    except AgentError as exc:
        raise StartError(f"exec in {args.name}: {exc}") from None


def run_to_end(process: ExecProcess, stdin: int) -> int:
    """Relay the command's output and `stdin` (an fd, -1 for none) until it ends; the exit status
    `vmkit exec` gives for it. A stop signal, or a reader of stdout that went away, ends it early:
    the command is killed as its connection closes."""
    with process:
        try:
            status = _relay(process, stdin)
        except Stopped as stopped:
            return outcome.SIGNAL_STATUS_BASE + stopped.signum
        except BrokenPipeError:
            return outcome.SIGNAL_STATUS_BASE + signal.SIGPIPE
    return outcome.SIGNAL_STATUS_BASE - status if status < 0 else status


def _environment(entries: list[str]) -> dict[str, str]:
    """-e NAME=VALUE, or -e NAME for the value in this environment (left out when it has none)."""
    environment = {}
    for entry in entries:
        name, equals, value = entry.partition("=")
        if not name:
            raise StartError(f"exec: -e {entry!r}: the name is missing (-e NAME=VALUE)")
        if equals:
            environment[name] = value
        elif name in os.environ:
            environment[name] = os.environ[name]
    return environment


def _ready_vm(name: str, timeout: float) -> VM:
    """The VM `name` once its agent answers; StartError when it is not running, has no agent, or
    the agent does not answer within `timeout` seconds."""
    try:
        vm = VM.attach(name)
        vm.wait_ready(timeout)
    except VMError as exc:
        hint = " (still booting? --agent-timeout SECONDS waits longer)" if isinstance(exc, TimeoutError) else ""
        raise StartError(f"{exc}{hint}") from None
    return vm


def _relay(process: ExecProcess, stdin: int) -> int:
    """Copy the command's output to stdout and stderr as it comes, and `stdin` (an fd, -1 for none)
    to the command; its status."""
    sinks = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    fed = False
    while process.status is None:
        if stdin >= 0 and select.select([stdin], [], [], 0)[0]:
            data = os.read(stdin, STDIN_PIECE)
            if data:
                process.write_stdin(data)
                fed = True
            else:
                process.close_stdin()
                stdin = -1
        else:
            fed = False
        chunk = process.next_output(None if stdin < 0 else 0 if fed else OUTPUT_WAIT_SECONDS)
        if chunk is not None:
            sinks[chunk.fd].write(chunk.data)
            sinks[chunk.fd].flush()
    return process.status


def cp_command(args: argparse.Namespace) -> int:
    """`vmkit cp NAME:GUEST_PATH LOCAL` and `vmkit cp LOCAL NAME:GUEST_PATH`: one regular file."""
    source, target = _REMOTE.fullmatch(args.source), _REMOTE.fullmatch(args.target)
    if (source is None) == (target is None):
        raise StartError("cp: exactly one of SOURCE and DEST is NAME:PATH in a VM, the other a local path "
                         "(a local path with a colon: write it as ./PATH)")
    if (args.source if source is None else args.target) == "-":
        raise StartError("cp: '-' (a tar stream) is not supported: give a file path")
    remote = source or target
    assert remote is not None
    name, guest_path = remote.group(1), remote.group(2)
    if not guest_path:
        raise StartError(f"cp: {remote.group(0)!r}: the path in the VM is missing (NAME:PATH)")
    if target is not None:
        _check_local_source(args.source)
    try:
        protocol.encode_path(guest_path)
    except ValueError as exc:
        raise StartError(f"cp: {exc}") from None
    vm = _ready_vm(name, args.agent_timeout)
    try:
        if source is not None:
            _copy_out(vm, guest_path, args.target)
        else:
            _copy_in(vm, args.source, guest_path)
    except VMError as exc:
        raise StartError(f"cp: {exc}") from None
    return 0


def _copy_out(vm: VM, guest_path: str, local: str) -> None:
    if guest_path.endswith("/"):
        raise StartError(f"cp: {vm.name}:{guest_path} is a directory; vmkit cp copies files (directories "
                         "are not supported)")
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(guest_path))
    elif local.endswith("/"):
        raise StartError(f"cp: the directory {local} does not exist")
    try:
        vm.copy_out(guest_path, local)
    except CopyError as exc:
        if exc.errno == errno.EISDIR:
            raise StartError(f"cp: {vm.name}:{guest_path} is a directory; vmkit cp copies files (directories "
                             "are not supported)") from None
        raise


def _check_local_source(local: str) -> None:
    if os.path.isdir(local):
        raise StartError(f"cp: {local} is a directory; vmkit cp copies files (directories are not supported)")
    if not os.path.exists(local):
        raise StartError(f"cp: {local} does not exist")


def _copy_in(vm: VM, local: str, guest_path: str) -> None:
    if guest_path.endswith("/"):
        guest_path += os.path.basename(local)
    try:
        vm.copy_in(local, guest_path)
    except CopyError as exc:
        if exc.errno != errno.EISDIR:
            raise
        vm.copy_in(local, f"{guest_path.rstrip('/')}/{os.path.basename(local)}")   # into that directory
