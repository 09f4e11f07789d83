"""What the Linux end-to-end tests share: the image, built (or found up to date) once per run, and a
short directory for Unix sockets (sun_path holds 108 bytes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.conftest import run_vmkit


@pytest.fixture(scope="session")
def image() -> str:
    built = run_vmkit("image", "build", "linux", timeout=3600)
    assert built.returncode == 0, built.stdout + built.stderr
    return "linux"


@pytest.fixture
def short_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="vke", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)
