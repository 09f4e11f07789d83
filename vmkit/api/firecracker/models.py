"""The request bodies of Firecracker's API (its swagger 1.x definitions), as strict pydantic models.

Strict: a number is not a string, a boolean is not a number, and a field the definition does not
have is refused. `parse` turns pydantic's errors into one line that names the field and the problem.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

U64_MAX = 2**64 - 1
MAX_VCPUS = 32                      # Firecracker's own limit; the host's is checked at start

U64 = Annotated[int, Field(ge=0, le=U64_MAX)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class TokenBucket(Body):
    size: U64
    refill_time: U64                 # milliseconds from empty to full
    one_time_burst: U64 | None = None


class RateLimiter(Body):
    bandwidth: TokenBucket | None = None
    ops: TokenBucket | None = None


class BootSource(Body):
    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None


CpuTemplate = Literal["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]
HugePages = Literal["None", "Transparent", "2M"]


class MachineConfig(Body):
    vcpu_count: Annotated[int, Field(ge=1, le=MAX_VCPUS)]
    mem_size_mib: Annotated[int, Field(ge=1)]
    smt: bool = False
    track_dirty_pages: bool = False
    cpu_template: CpuTemplate | None = None
    huge_pages: HugePages | None = None


class MachineConfigPatch(Body):
    vcpu_count: Annotated[int, Field(ge=1, le=MAX_VCPUS)] | None = None
    mem_size_mib: Annotated[int, Field(ge=1)] | None = None
    smt: bool | None = None
    track_dirty_pages: bool | None = None
    cpu_template: CpuTemplate | None = None
    huge_pages: HugePages | None = None


class Drive(Body):
    drive_id: str
    is_root_device: bool
    path_on_host: str | None = None
    is_read_only: bool | None = None
    partuuid: str | None = None
    cache_type: Literal["Unsafe", "Writeback"] = "Unsafe"
    rate_limiter: RateLimiter | None = None
    io_engine: Literal["Sync", "Async"] = "Sync"
    socket: str | None = None


class DrivePatch(Body):
    drive_id: str
    path_on_host: str | None = None
    rate_limiter: RateLimiter | None = None


class NetworkInterface(Body):
    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    mtu: Annotated[int, Field(ge=68, le=65535)] | None = None
    rx_rate_limiter: RateLimiter | None = None
    tx_rate_limiter: RateLimiter | None = None


class NetworkInterfacePatch(Body):
    iface_id: str
    rx_rate_limiter: RateLimiter | None = None
    tx_rate_limiter: RateLimiter | None = None


class Vsock(Body):
    guest_cid: Annotated[int, Field(ge=3, le=2**32 - 2)]
    uds_path: str
    vsock_id: str | None = None


class Action(Body):
    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


class VmState(Body):
    state: Literal["Paused", "Resumed"]


class Logger(Body):
    log_path: str | None = None
    level: str | None = None           # case-insensitive: checked by the logger
    show_level: bool | None = None
    show_log_origin: bool | None = None
    module: str | None = None


class Metrics(Body):
    metrics_path: str


class Entropy(Body):
    rate_limiter: RateLimiter | None = None


B = TypeVar("B", bound=Body)


class BodyError(ValueError):
    """A request body that does not fit its definition; the message names the field."""


def parse(model: type[B], body: bytes | str) -> B:
    """Validate a JSON body against `model`; BodyError says what is wrong and where."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise BodyError(describe(exc)) from None


def parse_object(model: type[B], value: Any) -> B:
    """Validate an already-decoded JSON value (one object of a --config-file)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise BodyError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """pydantic's errors in one line: `field.path: problem (got VALUE)`, the first few of them."""
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            problem = "unknown field"
        elif kind == "missing":
            problem = "missing (it is required)"
        elif kind.startswith("json_"):
            problem = f"the body is not valid JSON: {error['msg']}"
        else:
            problem = f"{error['msg']} (got {_shown(error.get('input'))})"
        parts.append(f"{where}: {problem}" if where else problem)
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _shown(value: object) -> str:
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
