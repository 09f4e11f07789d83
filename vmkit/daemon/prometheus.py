"""Prometheus' text exposition format (version 0.0.4) for the daemon's and its VMs' counters.

An Exposition gathers samples family by family (`# HELP`, `# TYPE`, then every sample of the
family, whichever VM it came from) and renders them as text. `add_machine` maps one VM's snapshot
(vmm/metrics.py) onto the `vmkit_` families that docs/metrics.md lists; counters end in `_total`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from vmkit.vmm.metrics import MachineMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[tuple[str, str], ...]


class Family(NamedTuple):
    kind: str                      # counter or gauge
    help: str
    samples: list[tuple[Labels, float]]


class DeviceCounter(NamedTuple):
    """A device type's counter as a family: its name, its help, and labels that tell it apart."""

    name: str
    help: str
    labels: Labels = ()


# Each device type's own counters (the keys of DeviceMetrics.counters), by kind.
DEVICE_COUNTERS: dict[str, dict[str, DeviceCounter]] = {
    "blk": {
        "reads": DeviceCounter("vmkit_blk_requests_total", "Requests the disk answered, by type.", (("op", "read"),)),
        "writes": DeviceCounter("vmkit_blk_requests_total", "", (("op", "write"),)),
        "flushes": DeviceCounter("vmkit_blk_requests_total", "", (("op", "flush"),)),
        "discards": DeviceCounter("vmkit_blk_requests_total", "", (("op", "discard"),)),
        "get_ids": DeviceCounter("vmkit_blk_requests_total", "", (("op", "get_id"),)),
        "other": DeviceCounter("vmkit_blk_requests_total", "", (("op", "other"),)),
        "read_bytes": DeviceCounter("vmkit_blk_read_bytes_total", "Bytes read from the disk by requests answered OK."),
        "write_bytes": DeviceCounter("vmkit_blk_written_bytes_total",
                                     "Bytes written to the disk by requests answered OK."),
        "ioerr": DeviceCounter("vmkit_blk_errors_total", "Requests answered with an error status, by status.",
                               (("status", "ioerr"),)),
        "unsupp": DeviceCounter("vmkit_blk_errors_total", "", (("status", "unsupp"),)),
    },
    "net": {
        "rx_frames": DeviceCounter("vmkit_net_rx_packets_total", "Frames delivered to the guest."),
        "rx_bytes": DeviceCounter("vmkit_net_rx_bytes_total", "Bytes of the frames delivered to the guest."),
        "tx_frames": DeviceCounter("vmkit_net_tx_packets_total", "Frames the guest sent that reached the backend."),
        "tx_bytes": DeviceCounter("vmkit_net_tx_bytes_total", "Bytes of the frames the guest sent."),
        "rx_too_large": DeviceCounter("vmkit_net_dropped_total", "Frames dropped, by reason.",
                                      (("reason", "rx_too_large"),)),
        "rx_errors": DeviceCounter("vmkit_net_dropped_total", "", (("reason", "rx_error"),)),
        "tx_malformed": DeviceCounter("vmkit_net_dropped_total", "", (("reason", "tx_malformed"),)),
        "tx_errors": DeviceCounter("vmkit_net_dropped_total", "", (("reason", "tx_error"),)),
    },
    "vsock": {
        "rx_packets": DeviceCounter("vmkit_vsock_rx_packets_total", "Packets delivered to the guest."),
        "rx_bytes": DeviceCounter("vmkit_vsock_rx_bytes_total", "Stream payload bytes delivered to the guest."),
        "tx_packets": DeviceCounter("vmkit_vsock_tx_packets_total", "Packets the guest sent."),
        "tx_bytes": DeviceCounter("vmkit_vsock_tx_bytes_total", "Stream payload bytes the guest sent."),
    },
    "9p": {
        "messages": DeviceCounter("vmkit_9p_messages_total", "9P requests the share answered, errors included."),
    },
}


class Exposition:
    """Samples gathered by family, rendered in the order the families were first added."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def add(self, name: str, kind: str, help: str, labels: Labels, value: float) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Family(kind, help, [])
        elif family.kind != kind:
            raise ValueError(f"{name} is a {family.kind}, not a {kind}")
        elif help and not family.help:
            self._families[name] = family = family._replace(help=help)
        family.samples.append((labels, value))

    def add_machine(self, vm: str, metrics: MachineMetrics) -> None:
        """One VM's series, each labelled vm=`vm`."""
        self.add("vmkit_vm_vcpus", "gauge", "vCPUs of the VM.", (("vm", vm),), len(metrics.vcpus))
        for vcpu in metrics.vcpus:
            at = (("vm", vm), ("vcpu", str(vcpu.vcpu)))
            for kind, count in vcpu.exits.items():
                self.add("vmkit_vcpu_exits_total", "counter", "Exits from the guest to vmkit, by kind.",
                         (*at, ("kind", kind)), count)
            self.add("vmkit_vcpu_cpu_seconds_total", "counter",
                     "CPU time of the vCPU's thread, guest time included.", at, vcpu.cpu_ns / 1e9)
        for device in metrics.devices:
            at = (("vm", vm), ("device", device.name))
            for queue, count in enumerate(device.notifications):
                self.add("vmkit_virtio_queue_notifications_total", "counter",
                         "Queue notifications (kicks) from the driver, per queue.", (*at, ("queue", str(queue))), count)
            self.add("vmkit_virtio_interrupts_total", "counter",
                     "Interrupts the device raised (queue and configuration).", at, device.interrupts)
            for limiter, count in device.throttled.items():
                self.add("vmkit_rate_limiter_throttled_total", "counter",
                         "Requests a rate limiter held back, by limiter (io: a disk's; rx, tx: a NIC's).",
                         (*at, ("limiter", limiter)), count)
            table = DEVICE_COUNTERS.get(device.kind, {})
            for key, count in device.counters.items():
                counter = table.get(key)
                if counter is not None:
                    self.add(counter.name, "counter", counter.help, (*at, *counter.labels), count)

    def render(self) -> str:
        lines = []
        for name, family in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for labels, value in family.samples:
                shown = ",".join(f'{key}="{_escape_label(text)}"' for key, text in labels)
                lines.append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")
        return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
