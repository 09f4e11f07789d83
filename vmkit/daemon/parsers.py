"""The daemon's subcommands on the `vmkit` parser (argparse only: parsing a foreground `vmkit run`
imports nothing of the daemon's)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """The daemon's subcommands, on the `vmkit` parser's subparsers."""
    daemon = commands.add_parser("daemon", help="hold VMs and serve the daemon's API (foreground)",
                                 parents=[common])
    daemon.add_argument("--socket", metavar="PATH", help="the Unix socket to serve (default: in the "
                        "user's runtime directory, $XDG_RUNTIME_DIR/vmkit/daemon.sock)")
    ps = commands.add_parser("ps", help="list the daemon's VMs", parents=[common])
    ps.add_argument("--all", "-a", action="store_true", help="exited VMs too")
    logs = commands.add_parser("logs", help="a VM's console output", parents=[common])
    logs.add_argument("--follow", "-f", action="store_true", help="go on until the VM ends")
    logs.add_argument("name")
    for verb, text in (("pause", "pause a VM's vCPUs"), ("resume", "resume a paused VM"),
                       ("inspect", "a VM's details as JSON")):
        commands.add_parser(verb, help=text, parents=[common]).add_argument("name")
    attach = commands.add_parser("attach", help="a VM's console: its output (from the start) until it ends, "
                                 "and standard input to it; Ctrl-C detaches", parents=[common])
    attach.add_argument("name")
    stop = commands.add_parser("stop", help="end a VM: press its ACPI power button, and stop it hard when "
                               "the guest has not powered off after a timeout", parents=[common])
    stop.add_argument("--time", "-t", type=float, default=10.0, metavar="SECONDS",
                      help="seconds the guest has to shut down before the VM is stopped hard (default 10)")
    stop.add_argument("name")
    rm = commands.add_parser("rm", help="remove an exited VM and its state", parents=[common])
    rm.add_argument("--force", "-f", action="store_true", help="kill it first if it runs")
    rm.add_argument("name")
    events = commands.add_parser("events", help="the daemon's events (start, pause, die, ...) as JSON lines",
                                 parents=[common])
    events.add_argument("--follow", "-f", action="store_true", help="go on printing new events")
    stats = commands.add_parser("stats", help="metrics in Prometheus' text format: the daemon's and every "
                                "running VM's, or one VM's (docs/metrics.md)", parents=[common])
    stats.add_argument("name", nargs="?")
    _add_guest_parsers(commands, common)


def _add_guest_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """`vmkit exec` and `vmkit cp`, through the exec agent of a VM made from a Linux image."""
    agent_timeout = argparse.ArgumentParser(add_help=False)
    agent_timeout.add_argument("--agent-timeout", type=float, default=30.0, metavar="SECONDS",
                               help="how long to wait for the guest's agent to answer (it starts once the "
                                    "guest has booted; default 30)")
    run = commands.add_parser("exec", help="run a command in a VM made from a Linux image, through its agent",
                              parents=[common, agent_timeout])
    run.add_argument("--interactive", "-i", action="store_true", help="send standard input to the command")
    run.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE",
                     help="set an environment variable (repeatable; NAME alone: its value here)")
    run.add_argument("--workdir", "-w", metavar="DIR", help="the command's working directory in the guest")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                     help="the program and its arguments, exactly as given (no shell)")
    copy = commands.add_parser("cp", help="copy a file between a VM (NAME:PATH) and this host, one way",
                               parents=[common, agent_timeout])
    copy.add_argument("source", metavar="SOURCE", help="NAME:PATH in the VM, or a local file")
    copy.add_argument("target", metavar="DEST", help="a local path, or NAME:PATH in the VM (an existing "
                      "directory receives the file under its own name)")


COMMANDS = ("daemon", "ps", "logs", "attach", "pause", "resume", "inspect", "stop", "rm", "events", "stats", "exec",
            "cp")
