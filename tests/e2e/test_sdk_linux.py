"""The SDK, `vmkit exec` and `vmkit cp` with Linux, end to end: ONE boot of the image in a daemon of
this module's own (vmkit.VM(image="linux") gives it a vsock device for its agent), then commands and
files through the SDK and through the CLI, and docs/sdk.md's Linux example, all in that VM.

Slow on PVM hosts (a minute or two for the boot, seconds per command), like test_linux_agent.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vmkit
from tests.integration.test_daemon import running_daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT_S = 900
DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


@pytest.fixture(scope="module")
def daemon(image):
    with running_daemon() as running:
        yield running


@pytest.fixture(scope="module")
def linux(daemon):
    """The one Linux VM, made as docs/sdk.md's example makes it."""
    with vmkit.VM(image="linux", memory_mib=256, name="lx", daemon_socket=daemon.socket,
                  ready_timeout=BOOT_TIMEOUT_S) as vm:
        yield vm
    assert daemon.client.request("GET", "/vms?all=1") == []


def test_the_agent_socket_is_in_the_state_directory(linux, daemon):
    record = json.loads(daemon.ok("inspect", "lx"))
    assert record["machine"]["vsock"] == str(Path(record["dir"]) / "vsock.sock")
    assert Path(record["machine"]["vsock"]).is_socket()


def test_sdk_exec_argv_env_cwd_stdin_status_and_stderr(linux):
    args = ["two words", "", "it's \"quoted\"", "$HOME", "*", "a\tb\nc"]
    result = linux.exec(["printf", "[%s]\\n", *args])
    assert result.status == 0 and result.stderr == b""
    assert result.stdout == b"".join(b"[%s]\n" % arg.encode() for arg in args)
    result = linux.exec(["sh", "-c", 'echo "$GREETING|$(pwd)|$HOME"'], env={"GREETING": "hi there"}, cwd="/tmp")
    assert result.stdout == b"hi there|/tmp|/root\n"
    payload = random.Random(3).randbytes(50_000)
    result = linux.exec(["sh", "-c", "cat; echo done >&2; exit 7"], stdin=payload)
    assert (result.status, result.stdout == payload, result.stderr) == (7, True, b"done\n")
    result = linux.exec(["sh", "-c", "kill -KILL $$"])
    assert result.status == -9 and result.signal == 9
    with pytest.raises(vmkit.ExecError) as missing:
        linux.exec(["no-such-program"])
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(vmkit.CopyError) as no_file:
        linux.read_file("/no/such/file")
    assert no_file.value.errno == errno.ENOENT


def test_vmkit_exec_streams_and_exits_as_the_command(linux, daemon):
    def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "vmkit", *args], env=daemon.env, capture_output=True,
                              input=stdin, timeout=300, stdin=None if stdin is not None else subprocess.DEVNULL)

    done = run("exec", "lx", "--", "printf", "[%s]\\n", "two words", "", "$HOME")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"[two words]\n[]\n[$HOME]\n", b"")
    done = run("exec", "-e", "A=b c", "-w", "/tmp", "lx", "--", "sh", "-c", 'echo "$A|$(pwd)"; echo err >&2; exit 7')
    assert (done.returncode, done.stdout, done.stderr) == (7, b"b c|/tmp\n", b"err\n")
    done = run("exec", "-i", "lx", "--", "tr", "a-z", "A-Z", stdin=b"through stdin\n")
    assert (done.returncode, done.stdout) == (0, b"THROUGH STDIN\n")
    done = run("exec", "lx", "--", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + signal.SIGTERM
    done = run("exec", "lx", "--", "no-such-program")
    assert done.returncode == 127 and done.stderr.count(b"\n") == 1 and b"No such file" in done.stderr


def test_vmkit_cp_both_ways(linux, daemon, tmp_path):
    blob = random.Random(9).randbytes(100_000)
    local = tmp_path / "blob.bin"
    local.write_bytes(blob)
    local.chmod(0o640)
    assert daemon.ok("cp", str(local), "lx:/tmp/") == ""                 # into a directory: its own name
    assert linux.exec(["busybox", "stat", "-c", "%a %s", "/tmp/blob.bin"]).stdout == b"640 100000\n"
    assert daemon.ok("cp", str(local), "lx:/tmp/renamed") == ""
    back = tmp_path / "back"
    back.mkdir()
    assert daemon.ok("cp", "lx:/tmp/renamed", str(back)) == ""
    assert (back / "renamed").read_bytes() == blob
    assert daemon.ok("cp", "lx:/tmp/blob.bin", str(tmp_path / "again.bin")) == ""
    assert (tmp_path / "again.bin").read_bytes() == blob
    for args, text in ((("cp", "lx:/tmp", str(tmp_path)), "directories are not supported"),
                       (("cp", "lx:/no/such", str(tmp_path)), "No such file")):
        done = daemon.cli(*args)
        assert done.returncode == 125 and text in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_the_docs_linux_example_runs_in_this_vm(linux):
    """The example as docs/sdk.md has it, with its `vmkit.VM(image="linux", memory_mib=256)` being
    this module's VM (made with those keywords), so the module boots Linux once."""
    examples = re.findall(r"<!-- example: linux -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(examples) == 1
    code = examples[0]
    assert 'vmkit.VM(image="linux", memory_mib=256)' in code

    class ThisVM:
        def __init__(self, *args: object, **keywords: object) -> None:
            assert (args, keywords) == ((), {"image": "linux", "memory_mib": 256})

        def __enter__(self) -> vmkit.VM:
            return linux

        def __exit__(self, *exc_info: object) -> None:
            pass

    shim = type(sys)("vmkit")
    shim.__dict__.update({name: getattr(vmkit, name) for name in vmkit.__all__})
    shim.VM = ThisVM
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace("import vmkit\n", ""), str(DOC), "exec"), {"vmkit": shim})
    assert printed.getvalue().splitlines() == [
        "3 b'hello from /tmp\\n' b'oops\\n'", "b'fed through stdin'", "b'from the host\\n'", "not found: 2"]
    assert linux.state() == "running"
