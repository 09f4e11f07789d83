"""The daemon's REST API: JSON over HTTP on its Unix socket (docs/daemon.md lists the endpoints).

Request bodies are strict pydantic models: a wrong type or a field the model does not have is a 400
that names it. A path the API does not have, or a method a path does not take, is a 400 too; a VM
name nobody holds is a 404; an action the VM's state does not allow is a 409.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vmkit.daemon.control import MAX_INPUT
from vmkit.daemon.forkserver import ForkServer
from vmkit.daemon.http import Reply, Request, error
from vmkit.daemon.metrics import DaemonMetrics
from vmkit.daemon.prometheus import CONTENT_TYPE
from vmkit.daemon.registry import ApiError, Registry

API_VERSION = "1"
MAX_ARGS = 4096
DEFAULT_STOP_TIMEOUT = 10.0


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CreateBody(Body):
    name: str | None = Field(default=None, max_length=64)
    args: list[str] = Field(default_factory=list, max_length=MAX_ARGS)
    cwd: str = "/"


class ConsoleBody(Body):
    data: str = Field(max_length=MAX_INPUT)


class StopBody(Body):
    timeout: float = Field(default=DEFAULT_STOP_TIMEOUT, ge=0, le=3600)


def _parse(model: type[Body], body: bytes) -> Any:
    if not body.strip():
        body = b"{}"
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item["loc"]) or "body"
            problems.append(f"{where}: {item['msg']}")
        raise ApiError(400, "; ".join(problems)) from None


def _flag(request: Request, name: str) -> bool:
    value = request.query.get(name, "0")
    if value not in ("0", "1", "true", "false"):
        raise ApiError(400, f"query parameter {name}={value!r} must be 0, 1, true or false")
    return value in ("1", "true")


class Api:
    def __init__(self, registry: Registry, forks: ForkServer) -> None:
        self.registry = registry
        self._forks = forks
        self.metrics = DaemonMetrics(registry, forks)

    def handle(self, request: Request) -> Reply:
        try:
            reply = self._route(request)
        except ApiError as exc:
            reply = error(exc.status, str(exc))
        except Exception:
            self.metrics.count_request(500)         # the server answers it
            raise
        self.metrics.count_request(reply.status)
        return reply

    def _route(self, request: Request) -> Reply:
        parts = [part for part in request.path.split("/") if part]
        method = request.method
        registry = self.registry
        if parts in ([], ["version"]) and method == "GET":
            return Reply(200, {"app": "vmkit-daemon", "api_version": API_VERSION, "pid": os.getpid(),
                               "forkserver_pid": self._forks.pid, "vms": registry.counts()})
        if parts == ["metrics"] and method == "GET":
            return Reply(200, self.metrics.scrape().encode(), content_type=CONTENT_TYPE)
        if parts == ["events"] and method == "GET":
            since = request.query.get("since", "0")
            if not since.isdigit():
                raise ApiError(400, f"query parameter since={since!r} must be a whole number")
            return Reply(200, stream=registry.events(int(since), _flag(request, "follow")),
                         content_type="application/x-ndjson")
        if parts == ["vms"]:
            if method == "GET":
                return Reply(200, registry.listing(_flag(request, "all")))
            if method == "POST":
                body = _parse(CreateBody, request.body)
                if not os.path.isabs(body.cwd):
                    raise ApiError(400, f"cwd: {body.cwd!r} is not an absolute path")
                return Reply(201, registry.create(body.name, list(body.args), body.cwd))
            raise ApiError(400, f"{method} /vms: the method is not allowed (GET, POST)")
        if len(parts) == 2 and parts[0] == "vms":
            if method == "GET":
                return Reply(200, registry.inspect(parts[1]))
            if method == "DELETE":
                registry.remove(parts[1], _flag(request, "force"))
                return Reply(204)
            raise ApiError(400, f"{method} /vms/NAME: the method is not allowed (GET, DELETE)")
        if len(parts) == 3 and parts[0] == "vms":
            name, action = parts[1], parts[2]
            if action == "metrics" and method == "GET":
                return self._vm_metrics(name)
            if action == "logs" and method == "GET":
                return Reply(200, stream=registry.logs(name, _flag(request, "follow")),
                             content_type="application/octet-stream")
            if action in ("pause", "resume") and method == "POST":
                _parse(Body, request.body)
                return Reply(200, registry.steer(name, action))
            if action == "console" and method == "POST":
                data = _parse(ConsoleBody, request.body).data.encode()
                if len(data) > MAX_INPUT:
                    raise ApiError(400, f"data: {len(data)} bytes in UTF-8; at most {MAX_INPUT} at once")
                return Reply(200, registry.send_input(name, data))
            if action == "stop" and method == "POST":
                return Reply(200, registry.stop(name, _parse(StopBody, request.body).timeout))
        raise ApiError(400, f"{method} {request.path}: the daemon's API has no such endpoint "
                            "(see docs/daemon.md)")

    def _vm_metrics(self, name: str) -> Reply:
        state, control_socket = self.registry.state_of(name)
        if state not in ("running", "paused"):
            raise ApiError(409, f"VM {name!r} is {state}: only a running or paused VM has metrics")
        text = self.metrics.scrape_vm(name, control_socket)
        if text is None:
            raise ApiError(503, f"VM {name!r}: its process did not give its metrics in time")
        return Reply(200, text.encode(), content_type=CONTENT_TYPE)
