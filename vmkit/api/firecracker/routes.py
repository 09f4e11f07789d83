"""Firecracker's endpoints: which method and path do what to a MicroVm, and how each answer looks.

Every successful PUT and PATCH is a 204 with no body; a GET is a 200 with a JSON body; every
failure is a 400 with `{"fault_message": "..."}` naming the request and what is wrong in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from vmkit.api.firecracker import models
from vmkit.api.firecracker.microvm import ApiError, MicroVm
from vmkit.api.http_server import Request, Response

NO_CONTENT = Response(204)
COUNTED = {"root", "version", "machine-config", "boot-source", "drives", "network-interfaces", "vsock", "actions",
           "vm", "logger", "metrics", "entropy", "balloon"}
BALLOON_PREFIXES = ("/balloon",)
UNSUPPORTED = {
    "/snapshot/create": "snapshots through the API are not supported by vmkit",
    "/snapshot/load": "snapshots through the API are not supported by vmkit",
    "/mmds": "MMDS (the metadata service) is not supported by vmkit",
    "/mmds/config": "MMDS (the metadata service) is not supported by vmkit",
    "/cpu-config": "custom CPU templates are not supported by vmkit",
    "/serial": "the serial device's configuration is not supported: guest output goes to standard output",
    "/hotplug/memory": "memory hot-plug is not supported by vmkit",
}


def fault(message: str) -> Response:
    return Response(400, json.dumps({"fault_message": message}).encode())


def ok(body: dict[str, Any]) -> Response:
    return Response(200, json.dumps(body).encode())


class Routes:
    """The request handler for one MicroVm (a callable for UnixHttpServer)."""

    def __init__(self, vm: MicroVm, vmm_version: str, firecracker_version: str) -> None:
        self.vm = vm
        self.vmm_version = vmm_version
        self.firecracker_version = firecracker_version

    def __call__(self, request: Request) -> Response:
        endpoint = request.target.strip("/").split("/")[0] or "root"
        endpoint = endpoint if endpoint in COUNTED else "other"     # the client names no metric
        try:
            response = self._dispatch(request)
        except models.BodyError as exc:
            response = fault(f"{request.method} {request.target}: {exc}")
        except ApiError as exc:
            response = fault(f"{request.method} {request.target}: {exc}")
        except Exception as exc:             # a bug in vmkit: said and logged, and the server goes on
            import traceback

            self.vm.log.error(f"{request.method} {request.target}: internal error: {traceback.format_exc()}")
            response = Response(500, json.dumps({"fault_message": f"internal error in vmkit: "
                                                                  f"{type(exc).__name__}: {exc}"}).encode())
        self.vm.metrics.count(request.method, endpoint.replace("-", "_"), response.status >= 400)
        level = "debug" if response.status < 400 else "warning"
        self.vm.log.log(level, f"{request.method} {request.target}: {response.status}"
                               + (f" {response.body.decode(errors='replace')}" if response.status >= 400 else ""))
        return response

    def _dispatch(self, request: Request) -> Response:
        method, path, body = request.method, request.target, request.body
        if path != "/" and path.endswith("/"):
            path = path.rstrip("/")
        parts = path.split("/")[1:]
        if path.startswith(BALLOON_PREFIXES):
            raise ApiError("vmkit has no balloon device (virtio-balloon is not supported)")
        if path in UNSUPPORTED:
            raise ApiError(UNSUPPORTED[path])
        if method in ("PUT", "PATCH") and not body.strip():
            raise ApiError(f"the body is empty; {method} {path} takes a JSON object")
        handler = self._route(method, parts)
        if handler is None:
            raise ApiError(f"no such endpoint: {method} {request.target[:200]} (see docs/firecracker-api.md)")
        return handler(body)

    def _route(self, method: str, parts: list[str]) -> Callable[[bytes], Response] | None:
        vm = self.vm
        match method, parts:
            case "GET", [""]:
                return lambda _: ok(vm.describe(self.vmm_version))
            case "GET", ["version"]:
                return lambda _: ok({"firecracker_version": self.firecracker_version})
            case "GET", ["machine-config"]:
                return lambda _: ok(vm.machine_config_body())
            case "GET", ["vm", "config"]:
                return lambda _: ok(vm.vm_config_body())
            case "PUT", ["boot-source"]:
                return _apply(models.BootSource, vm.put_boot_source)
            case "PUT", ["machine-config"]:
                return _apply(models.MachineConfig, vm.put_machine_config)
            case "PATCH", ["machine-config"]:
                return _apply(models.MachineConfigPatch, vm.patch_machine_config)
            case "PUT", ["drives", drive_id]:
                return _apply(models.Drive, lambda b: vm.put_drive(drive_id, b))
            case "PATCH", ["drives", drive_id]:
                return _apply(models.DrivePatch, lambda b: vm.patch_drive(drive_id, b))
            case "PUT", ["network-interfaces", iface_id]:
                return _apply(models.NetworkInterface, lambda b: vm.put_interface(iface_id, b))
            case "PATCH", ["network-interfaces", iface_id]:
                return _apply(models.NetworkInterfacePatch, lambda b: vm.patch_interface(iface_id, b))
            case "PUT", ["vsock"]:
                return _apply(models.Vsock, vm.put_vsock)
            case "PUT", ["entropy"]:
                return _apply(models.Entropy, vm.put_entropy)
            case "PUT", ["logger"]:
                return _apply(models.Logger, vm.put_logger)
            case "PUT", ["metrics"]:
                return _apply(models.Metrics, vm.put_metrics)
            case "PUT", ["actions"]:
                return _apply(models.Action, vm.action)
            case "PATCH", ["vm"]:
                return _apply(models.VmState, vm.set_state)
        return None


def _apply(model: type[models.B], action: Callable[[models.B], None]) -> Callable[[bytes], Response]:
    def handle(body: bytes) -> Response:
        action(models.parse(model, body))
        return NO_CONTENT

    return handle
