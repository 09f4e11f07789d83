"""The process that runs one VM for the daemon, forked by the fork server.

It resolves the `vmkit run` arguments exactly as a foreground run does (cli.resolve_run), sends the
guest's console to console.log, serves control.sock (pause, resume, status, metrics, and stop, which
presses the ACPI power button), ends the VM on SIGTERM, says "ok PID" or "error MESSAGE" on the report pipe
once the VM runs or cannot, and writes exit.json when it ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any, NoReturn

from vmkit import cli
from vmkit.daemon.control import ControlServer
from vmkit.daemon.vmdir import VmDir
from vmkit.vmm import outcome
from vmkit.vmm.machine import Machine
from vmkit.vmm.metrics import to_json

STOP_REQUESTED = outcome.signalled("a stop request", outcome.STATUS_SIGTERM)
INPUT_WAIT_SECONDS = 5.0
_parsers: list[cli.Parser] = []          # built once in the fork server, used by every VM process


def run_parser() -> cli.Parser:
    """`vmkit`'s parser, built on first use (argparse is slow to build and reusable)."""
    if not _parsers:
        _parsers.append(cli.build_parser())
    return _parsers[0]


def set_process_name(name: str) -> None:
    """The name ps and top show (15 bytes at most)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def _redirect_stdio(vmdir: VmDir) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(vmdir.vmm_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def agent_socket(vmdir: VmDir) -> str:
    """The vsock socket a VM made from an image gets for its exec agent, in its state directory;
    a StartError when that path is too long for a Unix socket address."""
    from vmkit.devices.virtio.vsock.spec import PORT_SUFFIX, SUN_PATH_MAX

    path = str(vmdir.vsock_socket)
    if len(os.fsencode(path)) + PORT_SUFFIX > SUN_PATH_MAX:
        raise cli.StartError(f"the VM's vsock socket {path} would be {len(os.fsencode(path))} bytes, "
                             f"longer than a Unix socket address allows here ({SUN_PATH_MAX - PORT_SUFFIX}): "
                             "use a shorter --name or $XDG_RUNTIME_DIR, or give --vsock PATH")
    return path


class Report:
    """The pipe on which the daemon waits for "ok PID" or "error MESSAGE": one line, then closed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def say(self, line: str) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return                             # said already
        try:
            os.write(fd, line.encode(errors="replace") + b"\n")
        except OSError:
            pass                               # the daemon stopped listening: the VM goes on
        finally:
            os.close(fd)


class VmProcess:
    def __init__(self, vmdir: VmDir, argv: list[str], cwd: str) -> None:
        self.vmdir = vmdir
        self.argv = argv
        self.cwd = cwd
        self.stop_requested = threading.Event()
        self.machine: Machine | None = None
        self.vsock: str | None = None            # the vsock device's socket, absolute
        self.started = False

    def prepare(self) -> tuple[cli.RunPlan, list[str], object]:
        """Resolve the options (a StartError says what is wrong); the plan, notices and arguments."""
        try:
            os.chdir(self.cwd)
        except OSError as exc:
            raise cli.StartError(f"cannot enter the working directory {self.cwd!r}: {exc.strerror}") from None
        args = run_parser().parse_args(["run", *self.argv])
        if args.console != "stdio":
            raise cli.StartError("--console: a detached VM's console goes to its log (`vmkit logs`)")
        args.console = str(self.vmdir.console_log)
        if args.image is not None and not args.vsock:
            args.vsock = [agent_socket(self.vmdir)]
        if args.vsock:
            self.vsock = os.path.abspath(args.vsock[0].split(",")[0])
        notices: list[str] = []
        return cli.resolve_run(args, notices.append), notices, args

    def act(self, op: str, data: bytes) -> str | dict[str, Any]:
        machine = self.machine
        assert machine is not None
        if op == "metrics":
            return to_json(machine.metrics())
        if op == "input":
            self.feed(data)
        elif op == "pause":
            machine.pause()
        elif op == "resume":
            machine.resume()
        elif op == "stop":
            machine.press_power_button()          # the guest powers off if it handles the button
            return "stopping"
        return machine.state.value

    def request_stop(self) -> None:
        """End the VM (now if it runs, else as soon as it starts). The main thread sleeps until the
        VM ends, so an idle VM process never wakes; this is called from other threads."""
        self.stop_requested.set()
        if self.started and self.machine is not None:
            self.machine.stop(STOP_REQUESTED)

    def feed(self, data: bytes) -> None:
        """Give `data` to the guest's console as its receive FIFO takes it (ValueError when the guest
        leaves it full for INPUT_WAIT_SECONDS)."""
        machine = self.machine
        assert machine is not None
        deadline = time.monotonic() + INPUT_WAIT_SECONDS
        while data:
            data = data[machine.console.receive(data):]
            if data:
                if time.monotonic() > deadline:
                    raise ValueError(f"the guest does not read its console: {len(data)} bytes not taken")
                time.sleep(0.005)

    def run(self, report: Report) -> int:
        try:
            plan, notices, args = self.prepare()
            self.machine = machine = cli.build_planned_machine(plan)
            config = plan.config
            self.vmdir.record_machine({"kernel": config.kernel_name, "cmdline": config.cmdline,
                                       "vcpus": config.vcpus, "memory_mib": config.memory_mib,
                                       "devices": list(config.devices),
                                       "disks": [disk.path for disk in config.disks],
                                       "vsock": self.vsock})
        except cli.StartError as exc:
            report.say(f"error {exc}")
            return outcome.STATUS_START_ERROR
        control = ControlServer(self.vmdir.control_socket, self.act)
        profiler = None
        result = None
        try:
            for notice in [*notices, *machine.notes]:
                print(notice, file=sys.stderr, flush=True)
            machine.start()
            control.start()
            profile_path = getattr(args, "profile_guest", None)
            if profile_path:
                from vmkit.vmm.guest_profiler import GuestProfiler
                profiler = GuestProfiler()
                machine.attach_profiler(profiler)
            report.say(f"ok {os.getpid()}")
            self.started = True
            if self.stop_requested.is_set():      # asked before the VM ran
                machine.stop(STOP_REQUESTED)
            while result is None:
                result = machine.wait()
            ended = time.time()                   # the guest's end, before the teardown
        finally:
            control.close()
            if profiler is not None:
                profiler.stop()
                cli._write_profile(profiler, plan.kernel, str(profile_path))
            machine.close()
            plan.output.close()
        if result.kind == "internal":
            print(f"{result.message}\n{result.detail}", file=sys.stderr, flush=True)
        status, message = cli.run_exit_status(plan, result)
        self.vmdir.record_exit(status, result.kind, message, ended)
        return status


def main(vmdir: VmDir, argv: list[str], cwd: str, report_fd: int) -> NoReturn:
    """The VM process's whole life, in the grandchild of the fork server; never returns."""
    status = outcome.STATUS_INTERNAL_ERROR
    report = Report(report_fd)
    try:
        set_process_name(f"vmkit-vm {vmdir.name}")
        _redirect_stdio(vmdir)
        vmdir.write_pid(os.getpid())
        process = VmProcess(vmdir, argv, cwd)

        def stop(signum: int, frame: FrameType | None) -> None:
            # Not here: the main thread may hold the ending's locks between two bytecodes.
            threading.Thread(target=process.request_stop, name="stop", daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        status = process.run(report)
    except BaseException as exc:
        report.say(f"error internal error: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        vmdir.record_exit(status, "internal", f"internal error: {type(exc).__name__}: {exc}", time.time())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
