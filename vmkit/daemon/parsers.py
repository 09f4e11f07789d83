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
    stop = commands.add_parser("stop", help="end a VM: its VMM ends it, and kills it after a timeout",
                               parents=[common])
    stop.add_argument("--time", "-t", type=float, default=10.0, metavar="SECONDS",
                      help="seconds to wait before killing it (default 10)")
    stop.add_argument("name")
    rm = commands.add_parser("rm", help="remove an exited VM and its state", parents=[common])
    rm.add_argument("--force", "-f", action="store_true", help="kill it first if it runs")
    rm.add_argument("name")
    events = commands.add_parser("events", help="the daemon's events (start, pause, die, ...) as JSON lines",
                                 parents=[common])
    events.add_argument("--follow", "-f", action="store_true", help="go on printing new events")

COMMANDS = ("daemon", "ps", "logs", "attach", "pause", "resume", "inspect", "stop", "rm", "events")
