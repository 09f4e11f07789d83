"""The `vmkit-firecracker` program: the `firecracker` binary's command line, served by vmkit.

Clients of Firecracker may connect to the API socket the moment after they exec the program, so
this module listens before anything else is loaded: it finds --api-sock in the arguments by itself
and binds with the interpreter's built-in `_socket`, and only then imports argparse (which checks
every argument, and closes the socket again if they are wrong) and the server. Connections made
while the rest loads wait in the socket's backlog and are served once the server is up. Everything
else is in service.py.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import argparse

DEFAULT_API_SOCK = "/run/firecracker.socket"
DEFAULT_ID = "anonymous-instance"
DEFAULT_MAX_PAYLOAD = 51200          # Firecracker's default limit on a request body, in bytes
LISTEN_BACKLOG = 128
SUN_PATH_MAX = 107                   # a Unix socket address's path, less its terminating zero
STATUS_START_ERROR = 125             # as vmkit.vmm.outcome, without importing it before listening
PROCESS_NAME = b"firecracker"
PR_SET_NAME = 15
STOP_SIGNALS = (1, 2, 15)            # SIGHUP, SIGINT, SIGTERM (the signal module is loaded later)


class ArgumentError(Exception):
    """The command line is wrong; the message says how."""


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise ArgumentError(f"{message} (see `vmkit-firecracker --help`)")

    parser = Parser(prog="vmkit-firecracker", allow_abbrev=False,
                    description="A Firecracker-compatible VMM process: the `firecracker` command line and "
                                "HTTP API over a Unix socket, served by vmkit (docs/firecracker-api.md).")
    parser.add_argument("--api-sock", default=DEFAULT_API_SOCK, metavar="PATH",
                        help=f"the API's Unix socket (default {DEFAULT_API_SOCK}); it must not exist yet")
    parser.add_argument("--id", default=DEFAULT_ID, help=f"the instance's id (default {DEFAULT_ID})")
    parser.add_argument("--config-file", metavar="FILE",
                        help="a JSON file of the API's objects (boot-source, machine-config, drives, "
                             "network-interfaces, vsock, entropy, logger, metrics): the VM starts at once")
    parser.add_argument("--no-api", action="store_true", help="serve no API (needs --config-file)")
    parser.add_argument("--boot-timer", action="store_true",
                        help="log the time from InstanceStart to the guest's first console output")
    parser.add_argument("--level", default="Info", metavar="LEVEL",
                        help="log level: Error, Warning, Info (default), Debug, Trace or Off")
    parser.add_argument("--log-path", metavar="PATH", help="an existing file or named pipe for the log "
                                                           "(default: standard error)")
    parser.add_argument("--show-level", action="store_true", help="put the level in each log line")
    parser.add_argument("--show-log-origin", action="store_true", help="accepted; vmkit's lines name the thread")
    parser.add_argument("--metrics-path", metavar="PATH", help="an existing file or named pipe for metrics")
    parser.add_argument("--http-api-max-payload-size", type=int, default=DEFAULT_MAX_PAYLOAD, metavar="BYTES",
                        help=f"the largest request body served (default {DEFAULT_MAX_PAYLOAD})")
    parser.add_argument("--no-seccomp", action="store_true", help="accepted; vmkit installs no seccomp filter")
    parser.add_argument("--seccomp-filter", metavar="FILE", help="accepted and ignored: vmkit has no seccomp filter")
    for timing in ("--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us"):
        parser.add_argument(timing, type=int, metavar="N", help="accepted (a jailer's timing)")
    parser.add_argument("--enable-pci", action="store_true", help="accepted: vmkit's devices are always on PCI")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.no_api and args.config_file is None:
        raise ArgumentError("--no-api needs --config-file: without the API nothing could configure the VM")
    if not 1 <= args.http_api_max_payload_size <= 1 << 20:
        raise ArgumentError("--http-api-max-payload-size: give 1..1048576 bytes")
    return args


def early_socket_path(argv: list[str]) -> str | None:
    """The API socket's path as argparse will read it, found without argparse; None when there is
    to be no socket (--no-api) or the program only prints (--help, --version)."""
    path = DEFAULT_API_SOCK
    for index, word in enumerate(argv):
        if word in ("--no-api", "--help", "-h", "--version"):
            return None
        if word == "--api-sock" and index + 1 < len(argv):
            path = argv[index + 1]
        elif word.startswith("--api-sock="):
            path = word.partition("=")[2]
    return path


def listen(path: str, bound: list[str] | None = None) -> _socket.socket:
    """A new Unix socket listening at `path`; the path goes into `bound` once it is there.

    The file appears only once the socket listens (so a client that polls for it and connects at
    once is never refused): the socket is bound and listens under a name of its own beside `path`,
    then hard-linked to `path`, which fails if anything is there already, as Firecracker's bind
    does (a socket left by a process that is gone is the caller's to remove). Where no such name
    fits a socket address or the file system has no hard links, it binds `path` itself.
    """
    import signal

    staging = f"{path}.{os.getpid()}.listening"
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)   # the file and `bound` agree
    try:
        sock = _bind_staged(path, staging) if len(os.fsencode(staging)) <= SUN_PATH_MAX else None
        if sock is None:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                sock.bind(path)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
        if bound is not None:
            bound.append(path)
        return sock
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _bind_staged(path: str, staging: str) -> _socket.socket | None:
    """A socket listening at `staging`, linked to `path`; None when the file system cannot link it."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            os.unlink(staging)                # left by an earlier process with this pid
        except FileNotFoundError:
            pass
        sock.bind(staging)
        try:
            sock.listen(LISTEN_BACKLOG)
            os.link(staging, path)
        finally:
            os.unlink(staging)
    except FileExistsError:
        sock.close()
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)) from None
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            return None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_or_say(path: str, bound: list[str]) -> _socket.socket | None:
    """listen(path), or None once the reason it cannot is on standard error."""
    try:
        return listen(path, bound)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"vmkit-firecracker: error: --api-sock {path!r}: cannot listen there: {reason}", file=sys.stderr)
        return None


def _end_on_stop_signals(bound: list[str]) -> None:
    """Until the service installs its own handlers: a stop signal removes the sockets in `bound`
    and ends the process (128 + n), so none is left behind by a client that gives up while the
    server loads."""
    import signal

    def stop(signum: int, frame: object) -> None:
        for path in bound:
            try:
                os.unlink(path)
            except OSError:
                pass
        os._exit(128 + signum)

    for signum in STOP_SIGNALS:
        if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, stop)


def _close(sock: _socket.socket, path: str, bound: list[str]) -> None:
    """Undo listen(): the socket closed and its file removed."""
    bound.remove(path)
    sock.close()
    try:
        os.unlink(path)
    except OSError:
        pass


def set_process_name() -> None:
    """Name the process (its main thread) `firecracker`, as tools that look for Firecracker expect."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    early_path = early_socket_path(arguments)
    bound: list[str] = []                      # the socket files this process made
    _end_on_stop_signals(bound)
    listener = None
    if early_path is not None:
        listener = _listen_or_say(early_path, bound)
        if listener is None:
            return STATUS_START_ERROR
    try:
        args = parse_arguments(arguments)
    except ArgumentError as exc:
        if listener is not None and early_path is not None:
            _close(listener, early_path, bound)
        print(f"vmkit-firecracker: error: {exc}", file=sys.stderr)
        return STATUS_START_ERROR
    if args.version:
        from vmkit.api.firecracker.service import version_line

        print(version_line())
        return 0
    if listener is not None and early_path is not None and (args.no_api or args.api_sock != early_path):
        _close(listener, early_path, bound)   # argparse read the line otherwise: it decides
        listener = None
        if not args.no_api:
            listener = _listen_or_say(args.api_sock, bound)
            if listener is None:
                return STATUS_START_ERROR
    set_process_name()
    import socket

    from vmkit.api.firecracker.service import serve

    return serve(args, None if listener is None else socket.socket(fileno=listener.detach()))


def entry() -> NoReturn:
    """The `vmkit-firecracker` program."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
