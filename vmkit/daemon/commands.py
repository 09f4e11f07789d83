"""The CLI's commands over the daemon: `vmkit run -d`, ps, logs, pause, resume, stop, rm, inspect,
events, stats, and `vmkit daemon` itself. Each error is one line and exit status 125, as `vmkit run`'s."""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from vmkit.cli import StartError, output, say
from vmkit.daemon.client import Client, DaemonError
from vmkit.daemon.control import MAX_INPUT

COLUMNS = ("NAME", "STATE", "STATUS", "PID", "CREATED", "KERNEL", "MEMORY")
STATE_STYLES = {"running": "green", "paused": "yellow", "starting": "cyan", "exited": "dim"}


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "daemon":
            return _daemon(args)
        if args.command in ("exec", "cp"):
            from vmkit.daemon import guest_commands
            return (guest_commands.exec_command if args.command == "exec" else guest_commands.cp_command)(args)
        return _command(args, Client())
    except DaemonError as exc:
        raise StartError(str(exc)) from None


def run_detached(args: argparse.Namespace, run_arguments: Sequence[str]) -> int:
    """`vmkit run -d`: the daemon starts the VM from the same arguments; its name is printed."""
    if args.console != "stdio":
        raise StartError("--console: a detached VM's console goes to its log (`vmkit logs NAME`)")
    try:
        vm = Client().request("POST", "/vms", {"name": args.name, "args": list(run_arguments),
                                                "cwd": os.getcwd()})
    except DaemonError as exc:
        raise StartError(str(exc)) from None
    output(str(vm["name"]))
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vmkit.daemon.client import socket_path
    from vmkit.daemon.server import DaemonError as ServeError
    from vmkit.daemon.server import serve

    try:
        return serve(Path(args.socket) if args.socket else socket_path())
    except ServeError as exc:
        raise StartError(str(exc)) from None


def _command(args: argparse.Namespace, client: Client) -> int:
    command = args.command
    if command == "ps":
        _print_table(client.request("GET", "/vms?all=1" if args.all else "/vms"))
        return 0
    if command == "events":
        _copy(client.stream("/events?follow=1" if args.follow else "/events"))
        return 0
    if command == "stats":
        _copy(client.stream("/metrics" if args.name is None else f"/vms/{quote(args.name, safe='')}/metrics"))
        return 0
    target = f"/vms/{quote(args.name, safe='')}"
    if command == "logs":
        _copy(client.stream(target + "/logs" + ("?follow=1" if args.follow else "")))
    elif command == "attach":
        return _attach(client, target)
    elif command == "inspect":
        output(json.dumps(client.request("GET", target), indent=2))
    elif command in ("pause", "resume"):
        client.request("POST", f"{target}/{command}", {})
        output(args.name)
    elif command == "stop":
        client.request("POST", f"{target}/stop", {"timeout": args.time})
        output(args.name)
    elif command == "rm":
        client.request("DELETE", target + ("?force=1" if args.force else ""))
        output(args.name)
    return 0


def _attach(client: Client, target: str) -> int:
    """Follow the console on a thread; send what stdin gives until its end; return when the VM ended
    (or at Ctrl-C, which detaches and leaves the VM running)."""
    from vmkit.cli import Stopped

    chunks = client.stream(target + "/logs?follow=1")     # a missing VM is an error before anything
    follower = threading.Thread(target=_copy_until_broken, args=(chunks,), daemon=True)
    follower.start()
    try:
        try:
            stdin = sys.stdin.fileno() if sys.stdin is not None else -1
            while stdin >= 0 and follower.is_alive():
                if not select.select([stdin], [], [], 0.2)[0]:
                    continue
                data = os.read(stdin, MAX_INPUT // 4)
                if not data:
                    break
                client.request("POST", target + "/console", {"data": data.decode(errors="replace")})
        except (OSError, ValueError):
            pass                                          # no usable stdin: output only
        while follower.is_alive():
            follower.join(0.2)
    except Stopped:
        pass
    return 0


def _copy_until_broken(chunks: Any) -> None:
    try:
        _copy(chunks)
    except DaemonError as exc:
        say(f"vmkit: error: {exc}")


def _copy(chunks: Any) -> None:
    out = sys.stdout.buffer
    try:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
    except BrokenPipeError:
        pass


def status_text(vm: dict[str, Any]) -> str:
    ended = vm.get("exit")
    if vm.get("state") != "exited" or not isinstance(ended, dict):
        return ""
    status = ended.get("status")
    word = "killed" if ended.get("kind") == "killed" else "lost" if ended.get("kind") == "lost" else "exited"
    return f"{word} ({'?' if status is None else status})"


def _ago(created: Any) -> str:
    if not isinstance(created, (int, float)):
        return "?"
    seconds = max(0, int(time.time() - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _row(vm: dict[str, Any]) -> list[str]:
    machine = vm.get("machine") or {}
    return [str(vm.get("name")), str(vm.get("state")), status_text(vm),
            "" if vm.get("pid") is None else str(vm.get("pid")), _ago(vm.get("created")),
            str(machine.get("kernel", "")), f"{machine['memory_mib']} MiB" if "memory_mib" in machine else ""]


def _print_table(vms: list[dict[str, Any]]) -> None:
    rows = [_row(vm) for vm in vms]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for column in COLUMNS:
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        for row in rows:
            style = STATE_STYLES.get(row[1], "")
            table.add_row(*row[:1], f"[{style}]{row[1]}[/]" if style else row[1], *row[2:])
        Console().print(table)
        return
    widths = [max(len(text) for text in column) for column in zip(COLUMNS, *rows, strict=False)]
    for row in (list(COLUMNS), *rows):
        output("  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip())
