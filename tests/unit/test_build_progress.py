"""The build's progress: a bar on a terminal, plain lines when piped."""

from __future__ import annotations

import io
import re

from vmkit.build_progress import BuildProgress

LINES = ["[1/2] kernel", "configuring: tinyconfig + [odd] markup", "  make vmlinux: 120 files compiled",
         "[2/2] initramfs", "built image linux (Linux 6.1.192) in 24 s: /cache/linux"]


def test_piped_output_is_the_lines_as_they_come():
    out = io.StringIO()
    with BuildProgress("vmkit image", out, terminal=False) as line:
        for text in LINES:
            line(text)
    assert out.getvalue().splitlines() == [f"vmkit image: {text}" for text in LINES]


def test_a_terminal_gets_a_bar_that_ends_with_every_step_done():
    out = io.StringIO()
    with BuildProgress("vmkit image", out, terminal=True) as line:
        for text in LINES:
            line(text)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "━" in plain                                               # the bar
    assert "vmkit image initramfs" in plain and "2/2" in plain.splitlines()[-1]
    assert "vmkit image: built image linux (Linux 6.1.192) in 24 s: /cache/linux" in plain
