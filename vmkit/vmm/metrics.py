"""A snapshot of a machine's counters, as plain data (docs/metrics.md lists each one).

The counters are ints that their owners bump in place, each on one thread: a vCPU's exits on its
own thread (vmm/vcpu_runner.py), a virtio function's notifications and interrupts under its lock,
a device's own counters (its `counters` dataclass) on the I/O thread. A snapshot reads them from
any thread without locks: an int attribute is read whole, so each value is one the counter held,
and the values of one snapshot may be a few events apart from each other.

`to_json` and `from_json` carry a snapshot between processes (a VM process answers its daemon);
`from_json` checks every field, since whatever sent it may be broken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from vmkit.vmm.machine import Machine
    from vmkit.vmm.vcpu_runner import VcpuRunner

# Exit kinds, each the VcpuRunner attribute f"{kind}_exits".
EXIT_KINDS = ("io_in", "io_out", "mmio_read", "mmio_write", "hlt", "shutdown", "system_event",
              "emulation_failure", "interrupted", "other")
# Virtio device types by number (virtio 1.x section 5), as they are named in metrics.
DEVICE_KINDS = {1: "net", 2: "blk", 4: "rng", 9: "9p", 19: "vsock"}
# The rate limiters a device may hold, by attribute, and the name each has in metrics.
LIMITERS = {"limiter": "io", "rx_limiter": "rx", "tx_limiter": "tx"}
MAX_NAME = 64
MAX_ITEMS = 1024


class VcpuMetrics(NamedTuple):
    vcpu: int                      # its index
    exits: dict[str, int]          # by kind (EXIT_KINDS)
    cpu_ns: int                    # CPU time of the vCPU's thread, guest time included


class DeviceMetrics(NamedTuple):
    name: str                      # the device's label up to its first space: "virtio-blk0"
    kind: str                      # DEVICE_KINDS, or "type<N>"
    notifications: tuple[int, ...]  # the driver's kicks, per queue
    interrupts: int                # queue and configuration interrupts raised
    throttled: dict[str, int]      # requests a rate limiter held back, by limiter (LIMITERS' names)
    counters: dict[str, int]       # the device type's own (its `counters` dataclass)


class MachineMetrics(NamedTuple):
    state: str                     # the lifecycle's: created, running, paused, stopped
    vcpus: tuple[VcpuMetrics, ...]
    devices: tuple[DeviceMetrics, ...]


def snapshot(machine: Machine) -> MachineMetrics:
    """Every counter of `machine` now."""
    vcpus = tuple(VcpuMetrics(runner.vcpu.index, {kind: getattr(runner, f"{kind}_exits") for kind in EXIT_KINDS},
                              vcpu_cpu_ns(runner))
                  for runner in machine.runners)
    devices = []
    seen: set[str] = set()
    for entry in machine.devices.virtio:
        function, device = entry.function, entry.function.device
        name = device_name(device.label)
        if name in seen:
            name = f"{name}-slot{entry.slot}"
        seen.add(name)
        throttled = {label: limiter.throttled for attribute, label in LIMITERS.items()
                     if (limiter := getattr(device, attribute, None)) is not None}
        counters = getattr(device, "counters", None)
        values = {key: value for key, value in vars(counters).items() if type(value) is int} \
            if counters is not None else {}
        devices.append(DeviceMetrics(name, DEVICE_KINDS.get(device.device_type, f"type{device.device_type}"),
                                     tuple(function.notifications), function.interrupts, throttled, values))
    return MachineMetrics(machine.state.value, vcpus, tuple(devices))


def device_name(label: str) -> str:
    """The name a device has in metrics: its label up to the first space ("virtio-net0")."""
    return label.split(" ")[0]


def vcpu_cpu_ns(runner: VcpuRunner) -> int:
    """The CPU time of a vCPU's thread: the kernel's count while it runs, its own at its end."""
    final = runner.cpu_ns_at_exit
    tid = runner.thread.native_id
    if final is not None or tid is None:
        return final or 0
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as stat:
            running = int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        running = 0
    final = runner.cpu_ns_at_exit               # ended while we read: its id may be another's now
    return final if final is not None else running


# ---- between processes ---------------------------------------------------------------------------

def to_json(metrics: MachineMetrics) -> dict[str, Any]:
    return {"state": metrics.state,
            "vcpus": [{"vcpu": v.vcpu, "exits": v.exits, "cpu_ns": v.cpu_ns} for v in metrics.vcpus],
            "devices": [{"name": d.name, "kind": d.kind, "notifications": list(d.notifications),
                         "interrupts": d.interrupts, "throttled": d.throttled, "counters": d.counters}
                        for d in metrics.devices]}


class MetricsFormatError(ValueError):
    """A snapshot in JSON that is not one to_json made; the message names the field."""


def from_json(obj: object) -> MachineMetrics:
    """The snapshot `to_json` made, every field checked (MetricsFormatError names the first wrong)."""
    top = _object(obj, "metrics", ("state", "vcpus", "devices"))
    vcpus = []
    for i, item in enumerate(_list(top["vcpus"], "vcpus")):
        where = f"vcpus[{i}]"
        vcpu = _object(item, where, ("vcpu", "exits", "cpu_ns"))
        exits = _counts(vcpu["exits"], f"{where}.exits")
        if set(exits) != set(EXIT_KINDS):
            raise MetricsFormatError(f"{where}.exits: the kinds are {sorted(exits)}, not {list(EXIT_KINDS)}")
        vcpus.append(VcpuMetrics(_count(vcpu["vcpu"], f"{where}.vcpu"), exits,
                                 _count(vcpu["cpu_ns"], f"{where}.cpu_ns")))
    devices = []
    for i, item in enumerate(_list(top["devices"], "devices")):
        where = f"devices[{i}]"
        device = _object(item, where, ("name", "kind", "notifications", "interrupts", "throttled", "counters"))
        notifications = tuple(_count(value, f"{where}.notifications[{n}]")
                              for n, value in enumerate(_list(device["notifications"], f"{where}.notifications")))
        devices.append(DeviceMetrics(_name(device["name"], f"{where}.name"), _name(device["kind"], f"{where}.kind"),
                                     notifications, _count(device["interrupts"], f"{where}.interrupts"),
                                     _counts(device["throttled"], f"{where}.throttled"),
                                     _counts(device["counters"], f"{where}.counters")))
    return MachineMetrics(_name(top["state"], "state"), tuple(vcpus), tuple(devices))


def _object(value: object, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(keys):
        shown = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise MetricsFormatError(f"{where}: expected an object of {list(keys)}, got {shown}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise MetricsFormatError(f"{where}: expected a list of at most {MAX_ITEMS} items")
    return value


def _count(value: object, where: str) -> int:
    if type(value) is not int or value < 0:
        raise MetricsFormatError(f"{where}: {value!r} is not a count (a whole number, 0 or more)")
    return value


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise MetricsFormatError(f"{where}: {value!r} is not a name (1 to {MAX_NAME} printable characters)")
    return value


def _counts(value: object, where: str) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise MetricsFormatError(f"{where}: expected an object of at most {MAX_ITEMS} counts")
    return {_name(key, f"{where} key"): _count(count, f"{where}.{key}") for key, count in value.items()}
