"""The daemon's metrics: its own counters, and each running VM's, asked of the VM's process.

A scrape asks every running or paused VM for its snapshot over its control socket ("metrics"),
several at once and each within METRICS_TIMEOUT_SECONDS, so a VM process that is stuck (stopped,
or too busy to answer) costs the scrape that long at most and is left out of it: its
`vmkit_vm_up` is 0 and `vmkit_daemon_metrics_scrape_errors_total` counts it.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

from vmkit.daemon import control
from vmkit.daemon.forkserver import ForkServer
from vmkit.daemon.prometheus import Exposition
from vmkit.daemon.registry import Registry
from vmkit.vmm.metrics import MachineMetrics, MetricsFormatError, from_json

METRICS_TIMEOUT_SECONDS = 1.0
MAX_ASKED_AT_ONCE = 32
VM_STATES = ("starting", "running", "paused", "exited")


class MetricsUnavailable(Exception):
    """A VM process did not answer with its metrics; the message says why."""


def ask_vm(control_socket: Path, timeout: float = METRICS_TIMEOUT_SECONDS) -> MachineMetrics:
    """One VM's snapshot, from its process (MetricsUnavailable when it does not give one in time)."""
    try:
        return from_json(control.ask_data(control_socket, "metrics", timeout))
    except (control.ControlError, MetricsFormatError) as exc:
        raise MetricsUnavailable(str(exc)) from None


class DaemonMetrics:
    """The daemon's own counters, and the scrapes that gather them with every VM's."""

    def __init__(self, registry: Registry, forks: ForkServer) -> None:
        self.registry = registry
        self.forks = forks
        self._lock = threading.Lock()
        self.requests: collections.Counter[int] = collections.Counter()   # API answers by status
        self.scrape_errors = 0

    def count_request(self, status: int) -> None:
        with self._lock:
            self.requests[status] += 1

    def _ask(self, control_socket: Path) -> MachineMetrics | None:
        try:
            return ask_vm(control_socket)
        except MetricsUnavailable:
            with self._lock:
                self.scrape_errors += 1
            return None

    def scrape(self) -> str:
        """The daemon's series and every running VM's, as Prometheus text."""
        live = self.registry.live()
        if live:
            from concurrent.futures import ThreadPoolExecutor  # loaded by the first scrape only

            with ThreadPoolExecutor(max_workers=min(len(live), MAX_ASKED_AT_ONCE)) as pool:
                answers = list(pool.map(self._ask, [control_socket for _, control_socket in live]))
        else:
            answers = []
        exposition = Exposition()
        self._add_daemon(exposition)
        for (name, _), metrics in zip(live, answers, strict=True):
            self._add_vm(exposition, name, metrics)
        return exposition.render()

    def scrape_vm(self, name: str, control_socket: Path) -> str | None:
        """One VM's series as Prometheus text; None when its process did not answer."""
        metrics = self._ask(control_socket)
        if metrics is None:
            return None
        exposition = Exposition()
        self._add_vm(exposition, name, metrics)
        return exposition.render()

    def _add_vm(self, exposition: Exposition, name: str, metrics: MachineMetrics | None) -> None:
        exposition.add("vmkit_vm_up", "gauge", "1 when the VM's process answered this scrape, 0 when not.",
                       (("vm", name),), 0 if metrics is None else 1)
        if metrics is not None:
            exposition.add_machine(name, metrics)

    def _add_daemon(self, exposition: Exposition) -> None:
        counts = self.registry.counts()
        for state in VM_STATES:
            exposition.add("vmkit_daemon_vms", "gauge", "VMs the daemon holds, by state.", (("state", state),),
                           counts.get(state, 0))
        exposition.add("vmkit_daemon_vms_started_total", "counter", "VMs this daemon started.", (),
                       self.registry.started)
        exposition.add("vmkit_daemon_forkserver_restarts_total", "counter",
                       "Fork servers started again after the first (one had died).", (), max(self.forks.starts - 1, 0))
        with self._lock:
            requests = sorted(self.requests.items())
            scrape_errors = self.scrape_errors
        for status, count in requests:
            exposition.add("vmkit_daemon_api_requests_total", "counter",
                           "API requests answered, by HTTP status.", (("code", str(status)),), count)
        exposition.add("vmkit_daemon_metrics_scrape_errors_total", "counter",
                       "VMs that did not give their metrics to a scrape in time.", (), scrape_errors)
