"""A machine's counters as the device and vCPU groups of Firecracker's metrics file.

Firecracker writes counters as the change since the previous flush; `FlushedCounters` keeps what
each counter stood at when it was last written and gives the difference. A counter that went back
(a rate limiter replaced by PATCH starts again from 0) counts from 0.

Groups: `vcpu`, `block` (every drive together) and `block_<drive_id>`, `net` and
`net_<iface_id>`, `vsock`, `entropy`, `interrupts`. Each holds every scalar field Firecracker's group
has; fields vmkit does not count are 0 (docs/firecracker-api.md says which).
"""

from __future__ import annotations

from vmkit.vmm.metrics import DeviceMetrics, MachineMetrics

Groups = dict[str, dict[str, int]]

BLOCK_FIELDS = ("activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails",
                "invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count",
                "update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count",
                "rate_limiter_throttled_events", "io_engine_throttled_events", "remaining_reqs_count")
NET_FIELDS = ("activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer", "no_tx_avail_buffer",
              "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_partial_writes",
              "rx_rate_limiter_throttled", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails",
              "rx_count", "tap_read_fails", "tap_write_fails", "tx_bytes_count", "tx_malformed_frames", "tx_fails",
              "tx_count", "tx_packets_count", "tx_partial_reads", "tx_queue_event_count",
              "tx_rate_limiter_event_count", "tx_rate_limiter_throttled", "tx_spoofed_mac_count")
VSOCK_FIELDS = ("activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails", "ev_queue_event_fails",
                "muxer_event_fails", "conn_event_fails", "rx_queue_event_count", "tx_queue_event_count",
                "rx_bytes_count", "tx_bytes_count", "rx_packets_count", "tx_packets_count", "conns_added",
                "conns_killed", "conns_removed", "killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails")
ENTROPY_FIELDS = ("activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes", "host_rng_fails",
                  "entropy_rate_limiter_throttled", "rate_limiter_event_count")
VCPU_FIELDS = ("exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails")
INTERRUPT_FIELDS = ("triggers", "config_updates")


def _queue(device: DeviceMetrics, index: int) -> int:
    return device.notifications[index] if index < len(device.notifications) else 0


def _block(device: DeviceMetrics) -> dict[str, int]:
    c = device.counters
    return {"execute_fails": c.get("ioerr", 0), "invalid_reqs_count": c.get("unsupp", 0),
            "flush_count": c.get("flushes", 0), "queue_event_count": _queue(device, 0),
            "read_bytes": c.get("read_bytes", 0), "write_bytes": c.get("write_bytes", 0),
            "read_count": c.get("reads", 0), "write_count": c.get("writes", 0),
            "rate_limiter_throttled_events": device.throttled.get("io", 0)}


def _net(device: DeviceMetrics) -> dict[str, int]:
    c = device.counters
    return {"rx_queue_event_count": _queue(device, 0), "tx_queue_event_count": _queue(device, 1),
            "rx_bytes_count": c.get("rx_bytes", 0), "rx_packets_count": c.get("rx_frames", 0),
            "rx_count": c.get("rx_frames", 0), "rx_fails": c.get("rx_errors", 0) + c.get("rx_too_large", 0),
            "tap_read_fails": c.get("rx_errors", 0), "tap_write_fails": c.get("tx_errors", 0),
            "tx_bytes_count": c.get("tx_bytes", 0), "tx_packets_count": c.get("tx_frames", 0),
            "tx_count": c.get("tx_frames", 0), "tx_fails": c.get("tx_errors", 0),
            "tx_malformed_frames": c.get("tx_malformed", 0),
            "rx_rate_limiter_throttled": device.throttled.get("rx", 0),
            "tx_rate_limiter_throttled": device.throttled.get("tx", 0)}


def _vsock(device: DeviceMetrics) -> dict[str, int]:
    c = device.counters
    return {"rx_queue_event_count": _queue(device, 0), "tx_queue_event_count": _queue(device, 1),
            "rx_bytes_count": c.get("rx_bytes", 0), "tx_bytes_count": c.get("tx_bytes", 0),
            "rx_packets_count": c.get("rx_packets", 0), "tx_packets_count": c.get("tx_packets", 0)}


def _entropy(device: DeviceMetrics) -> dict[str, int]:
    return {"entropy_event_count": _queue(device, 0)}


def _zeros(fields: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(fields, 0)


def _add(into: dict[str, int], values: dict[str, int]) -> None:
    for key, value in values.items():
        into[key] += value


def totals(metrics: MachineMetrics | None, drives: dict[str, str], interfaces: dict[str, str]) -> Groups:
    """Every group's counters as they stand (not since a flush). `drives` and `interfaces` map
    Firecracker's ids to the devices' names in `metrics` (vmm/metrics.py's device_name)."""
    groups: Groups = {"vcpu": _zeros(VCPU_FIELDS), "block": _zeros(BLOCK_FIELDS), "net": _zeros(NET_FIELDS),
                      "vsock": _zeros(VSOCK_FIELDS), "entropy": _zeros(ENTROPY_FIELDS),
                      "interrupts": _zeros(INTERRUPT_FIELDS)}
    if metrics is None:
        return groups
    for vcpu in metrics.vcpus:
        exits = vcpu.exits
        _add(groups["vcpu"], {"exit_io_in": exits.get("io_in", 0), "exit_io_out": exits.get("io_out", 0),
                              "exit_mmio_read": exits.get("mmio_read", 0),
                              "exit_mmio_write": exits.get("mmio_write", 0), "failures": exits.get("other", 0)})
    by_name = {device.name: device for device in metrics.devices}
    for group, fields, ids, fill in (("block", BLOCK_FIELDS, drives, _block), ("net", NET_FIELDS, interfaces, _net)):
        for device_id, name in ids.items():
            device = by_name.get(name)
            values = fill(device) if device is not None else {}
            groups[f"{group}_{device_id}"] = own = _zeros(fields)
            _add(own, values)
            _add(groups[group], values)
    for device in metrics.devices:
        groups["interrupts"]["triggers"] += device.interrupts
        if device.kind == "vsock":
            _add(groups["vsock"], _vsock(device))
        elif device.kind == "rng":
            _add(groups["entropy"], _entropy(device))
    return groups


class FlushedCounters:
    """What each counter stood at when it was last flushed."""

    def __init__(self) -> None:
        self._flushed: dict[tuple[str, str], int] = {}

    def since_last(self, groups: Groups) -> Groups:
        """`groups` as changes since the last call; this call's values become the new base."""
        changed: Groups = {}
        for group, fields in groups.items():
            changed[group] = out = {}
            for key, value in fields.items():
                last = self._flushed.get((group, key), 0)
                out[key] = value - last if value >= last else value
                self._flushed[(group, key)] = value
        return changed
