"""Serial console input reaches the guest through the 16550A's receive interrupt."""

import subprocess
import time


def test_input_arrives_by_interrupt_and_is_echoed(spawn):
    proc = spawn("run", "--guest", "serial_echo", stdin=subprocess.PIPE)
    assert proc.stdout.readline() == b"READY\n"       # the guest is waiting with IRQ 4 routed
    time.sleep(0.5)                                   # let it reach its halt before input arrives
    out, err = proc.communicate(b"hello from the host\n", timeout=60)
    assert proc.returncode == 1, err
    assert b"ECHO hello from the host\n" in out
    irqs = int(out.split(b"RESULT irqs=")[1].split()[0])
    assert irqs >= 1                                   # woken by the UART interrupt, not polling
