"""The metrics' plain parts without a VM: the transport's kick and interrupt counts over real guest
memory and a real virtqueue, a snapshot's JSON form checked as untrusted (seeded fuzz), the
Prometheus rendering, and Firecracker's counted-since-the-last-flush groups."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import struct

import pytest

from tests.prometheus_text import parse_exposition, value
from tests.unit.test_virtio_pci import BAR, BUFFERS, Driver
from vmkit.api.firecracker.machine_metrics import BLOCK_FIELDS, NET_FIELDS, FlushedCounters, totals
from vmkit.daemon.prometheus import DEVICE_COUNTERS, Exposition
from vmkit.devices.virtio.blk import BlkCounters
from vmkit.devices.virtio.net.device import NetCounters
from vmkit.devices.virtio.p9.device import P9Counters
from vmkit.devices.virtio.vsock.device import VsockCounters
from vmkit.vmm.metrics import (
    EXIT_KINDS,
    DeviceMetrics,
    MachineMetrics,
    MetricsFormatError,
    VcpuMetrics,
    from_json,
    to_json,
)

WRITE = 2                                       # VIRTQ_DESC_F_WRITE

SAMPLE = MachineMetrics("running", (
    VcpuMetrics(0, {**dict.fromkeys(EXIT_KINDS, 0), "io_in": 7}, 12345),
    VcpuMetrics(1, dict.fromkeys(EXIT_KINDS, 3), 0)), (
    DeviceMetrics("virtio-blk0", "blk", (5,), 4, {"io": 2},
                  {**dataclasses.asdict(BlkCounters()), "reads": 3, "read_bytes": 1536}),
    DeviceMetrics("virtio-net0", "net", (1, 2), 3, {"rx": 1, "tx": 0},
                  {**dataclasses.asdict(NetCounters()), "rx_frames": 2, "rx_bytes": 120}),
    DeviceMetrics('odd "name"\\', "rng", (9,), 9, {}, {})))


def test_the_transport_counts_each_kick_per_queue_and_each_interrupt():
    drv = Driver()
    try:
        drv.start(vector=0)
        drv.notify(0)                                   # DRIVER_OK, nothing offered: counted all the same
        drv.descriptor(0, BUFFERS, 16, flags=WRITE)
        drv.offer(0)
        drv.notify(0)                                   # served: the used buffer raises vector 0
        notify = drv.layout[2]
        for queue in (1, 2, 500, 1023):                 # queues the function does not have
            drv.bus.write(BAR + notify["offset"] + queue * notify["multiplier"], struct.pack("<H", queue))
        assert drv.dev.notifications == [2] and drv.dev.interrupts == 1
        drv.common_write(0x14, 0, 1)                    # a reset keeps the counts
        assert drv.dev.notifications == [2] and drv.dev.interrupts == 1
    finally:
        drv.close()


def test_a_snapshot_survives_its_json_form():
    assert from_json(json.loads(json.dumps(to_json(SAMPLE)))) == SAMPLE


@pytest.mark.parametrize("change, where", [
    (lambda j: j.update(extra=1), "metrics"),
    (lambda j: j["vcpus"][0]["exits"].pop("io_in"), "vcpus[0].exits"),
    (lambda j: j["vcpus"][0].update(cpu_ns=-1), "vcpus[0].cpu_ns"),
    (lambda j: j["vcpus"][0].update(cpu_ns=True), "vcpus[0].cpu_ns"),
    (lambda j: j["devices"][0].update(interrupts=1.5), "devices[0].interrupts"),
    (lambda j: j["devices"][0].update(name=""), "devices[0].name"),
    (lambda j: j["devices"][0].update(name="x" * 65), "devices[0].name"),
    (lambda j: j["devices"][0].update(kind="a\nb"), "devices[0].kind"),
    (lambda j: j["devices"][0]["notifications"].append("1"), "devices[0].notifications[1]"),
    (lambda j: j["devices"][0]["counters"].update({"": 1}), "devices[0].counters key"),
    (lambda j: j.update(devices=[{}] * 1025), "devices"),
    (lambda j: j.update(vcpus={}), "vcpus"),
])
def test_a_json_snapshot_is_checked_field_by_field(change, where):
    broken = json.loads(json.dumps(to_json(SAMPLE)))
    change(broken)
    with pytest.raises(MetricsFormatError, match=rf"^{re.escape(where)}"):
        from_json(broken)


def _mutate(node, rng: random.Random):
    """`node` with one value somewhere replaced by something of another kind."""
    junk = [None, -1, 2**70, 1.5, "", "x", [], {}, True, [1], {"a": 1}]
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        return {**node, key: _mutate(node[key], rng)}
    if isinstance(node, list) and node and rng.random() < 0.8:
        at = rng.randrange(len(node))
        return [*node[:at], _mutate(node[at], rng), *node[at + 1:]]
    return rng.choice(junk)


def test_seeded_random_damage_is_refused_or_still_a_snapshot():
    rng = random.Random(20261125)
    good = to_json(SAMPLE)
    for _ in range(3000):
        damaged = _mutate(good, rng)
        try:
            result = from_json(damaged)
        except MetricsFormatError:
            continue
        assert isinstance(result, MachineMetrics)       # a change that kept it well formed (2**70 is a count)
        Exposition().add_machine("v", result)


def test_every_device_counter_has_a_prometheus_family():
    for kind, counters in (("blk", BlkCounters), ("net", NetCounters), ("vsock", VsockCounters), ("9p", P9Counters)):
        assert set(DEVICE_COUNTERS[kind]) == {field.name for field in dataclasses.fields(counters)}, kind


def test_the_exposition_groups_families_and_escapes_labels():
    exposition = Exposition()
    exposition.add_machine("a", SAMPLE)
    exposition.add_machine('b"\n\\', SAMPLE)
    families = parse_exposition(exposition.render())
    assert value(families, "vmkit_vcpu_exits_total", vm="a", vcpu="0", kind="io_in") == 7
    assert value(families, "vmkit_vcpu_exits_total", vm='b"\n\\', vcpu="1", kind="hlt") == 3
    assert value(families, "vmkit_vcpu_cpu_seconds_total", vm="a", vcpu="0") == 12345e-9
    assert value(families, "vmkit_blk_requests_total", vm="a", device="virtio-blk0", op="read") == 3
    assert value(families, "vmkit_blk_read_bytes_total", vm="a", device="virtio-blk0") == 1536
    assert value(families, "vmkit_net_rx_bytes_total", vm="a", device="virtio-net0") == 120
    assert value(families, "vmkit_virtio_queue_notifications_total", vm="a", device="virtio-net0", queue="1") == 2
    assert value(families, "vmkit_rate_limiter_throttled_total", vm="a", device="virtio-net0", limiter="rx") == 1
    assert value(families, "vmkit_virtio_interrupts_total", vm="a", device='odd "name"\\') == 9
    assert families["vmkit_blk_requests_total"]["help"] == "Requests the disk answered, by type."
    assert Exposition().render() == ""
    with pytest.raises(ValueError, match="is a counter, not a gauge"):
        exposition.add("vmkit_vcpu_exits_total", "gauge", "", (), 1)


def test_firecracker_groups_are_counted_since_the_last_flush():
    flushed = FlushedCounters()
    first = flushed.since_last(totals(SAMPLE, {"rootfs": "virtio-blk0"}, {"eth0": "virtio-net0", "gone": "nope"}))
    assert set(first["block_rootfs"]) == set(first["block"]) == set(BLOCK_FIELDS)
    assert set(first["net_eth0"]) == set(NET_FIELDS) and not any(first["net_gone"].values())
    assert first["block_rootfs"]["read_count"] == first["block"]["read_count"] == 3
    assert first["block_rootfs"]["read_bytes"] == 1536 and first["block_rootfs"]["queue_event_count"] == 5
    assert first["block_rootfs"]["rate_limiter_throttled_events"] == 2
    assert first["net"]["rx_bytes_count"] == 120 and first["net"]["tx_queue_event_count"] == 2
    assert first["net"]["rx_rate_limiter_throttled"] == 1
    assert first["vcpu"]["exit_io_in"] == 7 + 3 and first["vcpu"]["failures"] == 3
    assert first["interrupts"]["triggers"] == 4 + 3 + 9 and first["entropy"]["entropy_event_count"] == 9
    again = flushed.since_last(totals(SAMPLE, {"rootfs": "virtio-blk0"}, {}))
    assert not any(value for group in again.values() for value in group.values())
    fewer = SAMPLE._replace(devices=(SAMPLE.devices[0]._replace(throttled={"io": 1}),))   # a new limiter
    assert flushed.since_last(totals(fewer, {"rootfs": "virtio-blk0"}, {}))["block"][
        "rate_limiter_throttled_events"] == 1
    assert totals(None, {}, {})["vcpu"] == dict.fromkeys(first["vcpu"], 0)


def test_the_strict_parser_refuses_what_prometheus_would():
    good = '# HELP vmkit_x_total An x.\n# TYPE vmkit_x_total counter\nvmkit_x_total{a="1\\"\\n",b="2"} 3\n'
    assert value(parse_exposition(good), "vmkit_x_total", a='1"\n', b="2") == 3
    for bad in [good.replace("# HELP", "# HLP"), good.replace("counter", "untyped"), good + good.split("\n", 2)[2],
                good.replace('",b', '" ,b'), good.replace("3\n", "three\n"), good.replace("} 3", "} -3"),
                good.replace("vmkit_x_total", "vmkit_x"), good[:-1], good.replace('b="2"', 'a="2"'),
                '# TYPE vmkit_x_total counter\n# HELP vmkit_x_total An x.\nvmkit_x_total 1\n']:
        with pytest.raises(AssertionError):
            parse_exposition(bad)
