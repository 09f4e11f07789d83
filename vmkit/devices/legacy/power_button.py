"""The ACPI power button: a press is one edge on the Generic Event Device's interrupt line.

The DSDT (arch/x86/acpi.py) describes a Generic Event Device (ACPI0013) with one edge-triggered,
active-high interrupt, whose _EVT method notifies the control-method power button (PNP0C0C) with
0x80. Pressing the button raises that line and lowers it again; the guest's ACPI interpreter runs
_EVT, and Linux's button driver reports KEY_POWER on an input device. The button keeps no state
the guest can see or change (it has no registers), so there is nothing to save or restore.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

IrqLine = Callable[[bool], None]


class PowerButton:
    """`press()` sends one press to the guest, from any thread."""

    def __init__(self, irq: IrqLine, label: str = "power-button") -> None:
        self.label = label
        self._irq = irq
        self._lock = threading.Lock()
        self.presses = 0

    def press(self) -> None:
        """One edge on the interrupt line: high, then low again (an edge-triggered IOAPIC pin
        latches the rising edge, so the guest sees one interrupt per press)."""
        with self._lock:
            self._irq(True)
            self._irq(False)
            self.presses += 1
