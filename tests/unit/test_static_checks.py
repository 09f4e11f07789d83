"""The type checker and the linter pass over the code, with no `# type: ignore` to quiet them."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_mypy_passes_over_vmkit():
    done = subprocess.run([sys.executable, "-m", "mypy", "vmkit"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_type_checker_is_silenced():
    silenced = [f"{path.relative_to(REPO)}:{number}" for path in (REPO / "vmkit").rglob("*.py")
                for number, line in enumerate(path.read_text().splitlines(), 1) if "type: ignore" in line]
    assert silenced == []


def test_ruff_passes():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "vmkit", "tests", "bench"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
