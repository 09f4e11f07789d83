"""The life of a `vmkit-firecracker` process, once its API socket listens.

It serves the API on one thread until the VM ends, then exits with the VM's status, the same
contract as `vmkit run` (vmkit/vmm/outcome.py): the guest's own outcome, 125 when the VM could not
be started from --config-file, 128 + n for signal n, 70 for a bug in vmkit. Guest console output goes
to standard output and standard input to the guest, as Firecracker's serial console does; the log
goes to standard error until PUT /logger or --log-path names a file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import vmkit
from vmkit.api.firecracker import models
from vmkit.api.firecracker.microvm import ApiError, MicroVm, check_id
from vmkit.api.firecracker.routes import Routes, fault
from vmkit.api.firecracker.telemetry import Log, Metrics, TelemetryError
from vmkit.api.http_server import UnixHttpServer
from vmkit.cli import SIGNAL_POLL_SECONDS, STOP_SIGNALS, Stopped, StopSignals, _stdin_usable, report_bug, say
from vmkit.vmm import outcome
from vmkit.vmm.console import ConsoleInput, ConsoleOutput

if TYPE_CHECKING:
    from vmkit.vmm.machine import Machine

FIRECRACKER_API_VERSION = "1.7.0"    # the Firecracker API (swagger) version this API follows
MAX_CONFIG_FILE = 1 << 20
UNSUPPORTED_OBJECTS = ("balloon", "mmds-config", "cpu-config", "pmem", "serial", "memory-hotplug")


class StartError(Exception):
    """The VM cannot be started from the command line or --config-file; the message says why."""


def version_line() -> str:
    return f"vmkit-firecracker {vmkit.__version__} (Firecracker API {FIRECRACKER_API_VERSION})"


def serve(args: argparse.Namespace, listener: socket.socket | None) -> int:
    """Configure, serve and run until the VM ends; the process's exit status."""
    stops = StopSignals()
    socket_identity = _identity(args.api_sock) if listener is not None else None
    service: Service | None = None
    try:
        try:
            stops.install()
            service = Service(args, listener, stops)
            return service.run()
        except StartError as exc:
            stops.decided()
            say(f"vmkit-firecracker: error: {exc}")
            return outcome.STATUS_START_ERROR
        except Exception as exc:
            stops.decided()
            import traceback

            return report_bug(f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc(), False)
    except Stopped as exc:
        stops.decided()
        say(f"vmkit-firecracker: stopped by {STOP_SIGNALS[exc.signum]} before the VM ran")
        return outcome.SIGNAL_STATUS_BASE + exc.signum
    finally:
        stops.decided()
        if service is not None:
            service.close()
        elif listener is not None:
            listener.close()
        if socket_identity is not None and _identity(args.api_sock) == socket_identity:
            os.unlink(args.api_sock)              # ours still: leave no stale socket behind


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Service:
    """One VM, its API server (unless --no-api), its console and its log."""

    def __init__(self, args: argparse.Namespace, listener: socket.socket | None, stops: StopSignals) -> None:
        self.args = args
        self.stops = stops
        try:
            check_id(args.id, "--id")
            self.log = Log(args.id, args.level, args.log_path, args.show_level, args.show_log_origin)
        except (ApiError, TelemetryError) as exc:
            raise StartError(str(exc)) from None
        self.metrics = Metrics(time.monotonic_ns())
        if args.metrics_path:
            try:
                self.metrics.configure(args.metrics_path)
            except TelemetryError as exc:
                raise StartError(f"--metrics-path: {exc}") from None
        self.output = ConsoleOutput.for_target("stdio", on_error=self.log.warning)
        self.vm = MicroVm(args.id, self.log, self.metrics, self.output.write, boot_timer=args.boot_timer)
        self.vm.on_start(self._started)
        self.console_input: ConsoleInput | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.server: UnixHttpServer | None = None
        if listener is not None:
            self.server = UnixHttpServer(listener, Routes(self.vm, vmkit.__version__, FIRECRACKER_API_VERSION),
                                         fault, max_body=args.http_api_max_payload_size,
                                         server_name="vmkit-firecracker")
            self.server.watch(self._wake_r, self._drain_wake)

    def run(self) -> int:
        if self.args.config_file is not None:
            apply_config_file(self.vm, self.args.config_file)
            try:
                self.vm.start()
            except ApiError as exc:
                raise StartError(f"--config-file {self.args.config_file}: {exc}") from None
        if self.server is not None:
            self.log.info(f"API server listening on {self.args.api_sock}")
        warmed = self.vm.machine is not None
        while True:
            machine = self.vm.machine
            if machine is not None:
                stopped = self.stops.stop_outcome()
                if stopped is not None:
                    machine.stop(stopped)
                if machine.ending.is_set():
                    return self._finish(machine)
            if self.server is not None:
                if not self.server.poll(SIGNAL_POLL_SECONDS) and not warmed:
                    warmed = True            # idle: load the builder now, not while answering the first requests
                    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
            elif machine is not None:
                machine.wait(SIGNAL_POLL_SECONDS)
            if self.metrics.due():
                self.vm.flush_metrics()

    def _started(self, machine: Machine) -> None:
        """InstanceStart built the machine and is about to start it."""
        self.stops.running()              # a stop signal that came before: start nothing
        machine.ending.on_end(self._wake)
        console_input = ConsoleInput(machine.console.receive, lambda: machine.stop(outcome.QUIT))
        self.console_input = console_input
        if _stdin_usable():
            console_input.start()

    def _finish(self, machine: Machine) -> int:
        result = machine.wait()
        assert result is not None
        self.stops.decided()
        self._close_vm()
        if self.metrics.configured:
            self.vm.flush_metrics()
        if result.kind == "internal":
            return report_bug(result.message, result.detail, False)
        self.log.info(f"vmkit: {result.message} (exit status {result.status})")
        return result.status

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 64)
        except OSError:
            pass

    def _close_vm(self) -> None:
        if self.console_input is not None:
            self.console_input.stop()
            self.console_input = None
        if self.vm.machine is not None:
            self.vm.machine.close()

    def close(self) -> None:
        self._close_vm()
        if self.server is not None:
            self.server.close()
        self.output.close()
        self.metrics.close()
        self.log.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


def _warm_up() -> None:
    """Load the machine builder while the API waits for its first requests, so InstanceStart does
    not pay for the imports."""
    import vmkit.vmm.builder  # noqa: F401


def apply_config_file(vm: MicroVm, path: str) -> None:
    """Put each object of a --config-file, as the API would (StartError names the object)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_FILE + 1)
    except OSError as exc:
        raise StartError(f"--config-file {path!r}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_FILE:
        raise StartError(f"--config-file {path!r}: larger than {MAX_CONFIG_FILE} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StartError(f"--config-file {path!r}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise StartError(f"--config-file {path!r}: expected a JSON object of the API's objects")
    for key, value in document.items():
        if key in UNSUPPORTED_OBJECTS and value is not None:
            raise StartError(f"--config-file {path!r}: {key!r} is not supported by vmkit")
        if key not in _PUTS and key not in UNSUPPORTED_OBJECTS:
            raise StartError(f"--config-file {path!r}: {key!r}: unknown object (expected "
                             f"{', '.join(_PUTS)})")
    for key in _PUTS:
        value = document.get(key)
        if value is None:
            continue
        try:
            _put(vm, key, value)
        except (models.BodyError, ApiError) as exc:
            raise StartError(f"--config-file {path!r}: {exc}") from None


# Each object of a --config-file: its definition, and the API call that puts it. The arrays
# (drives, network-interfaces) hold one such object per item.
_PUTS: dict[str, tuple[type[models.Body], Callable[[MicroVm, Any], None]]] = {
    "logger": (models.Logger, MicroVm.put_logger),
    "metrics": (models.Metrics, MicroVm.put_metrics),
    "boot-source": (models.BootSource, MicroVm.put_boot_source),
    "machine-config": (models.MachineConfig, MicroVm.put_machine_config),
    "vsock": (models.Vsock, MicroVm.put_vsock),
    "entropy": (models.Entropy, MicroVm.put_entropy),
    "drives": (models.Drive, lambda vm, drive: vm.put_drive(drive.drive_id, drive)),
    "network-interfaces": (models.NetworkInterface, lambda vm, iface: vm.put_interface(iface.iface_id, iface)),
}
_ARRAYS = ("drives", "network-interfaces")


def _put(vm: MicroVm, key: str, value: Any) -> None:
    model, put = _PUTS[key]
    if key in _ARRAYS and not isinstance(value, list):
        raise models.BodyError(f"{key}: expected an array of objects")
    items = [(f"{key}[{index}]", item) for index, item in enumerate(value)] if key in _ARRAYS else [(key, value)]
    for where, item in items:
        try:
            put(vm, models.parse_object(model, item))
        except models.BodyError as exc:
            raise models.BodyError(f"{where}: {exc}") from None
        except ApiError as exc:
            raise ApiError(f"{where}: {exc}") from None
