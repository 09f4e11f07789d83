"""Linux, end to end, with the exec agent: ONE boot of the image with `--vsock PATH` whose command
(`sleep 600`) keeps it up while vmkit-agent, started by init, serves AgentClient requests from
here: exact argv, environment, working directory, stdin, exit statuses and signals, stderr apart
from stdout, files copied in and out byte for byte, the guest's errors as errnos, two commands at
once; then a command of the agent's ends the VM.

Slow on PVM hosts (a minute or two per boot here), like test_linux_boot.py. Under vmkit only: QEMU's
vsock needs /dev/vhost-vsock, which this host lacks.
"""

from __future__ import annotations

import errno
import random
import signal
import subprocess
import time

import pytest

from tests.conftest import vmkit_command
from tests.integration.test_vsock import Console
from vmkit.agent import AgentClient, AgentUnavailable, RemoteExecError, RemoteFileError
from vmkit.agent.protocol import AGENT_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT_S = 900
EXEC_TIMEOUT_S = 180


def wait_for_agent(agent: AgentClient, proc: subprocess.Popen[bytes], console: Console) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        assert proc.poll() is None, "the VM ended before its agent answered:\n" + "\n".join(console.lines[-40:])
        try:
            return agent.wait_ready(5)
        except AgentUnavailable:
            if time.monotonic() > deadline:
                raise


def test_linux_agent_runs_commands_and_copies_files(image, short_dir, tmp_path):
    path = f"{short_dir}/vm.sock"
    proc = subprocess.Popen(vmkit_command("run", "--image", image, "--memory", "256", "--cmdline", "panic=-1",
                                          "--vsock", path, "--", "sleep", "600"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    console = Console(proc.stdout)
    agent = AgentClient(path)
    try:
        assert wait_for_agent(agent, proc, console) == AGENT_VERSION

        # argv arrives exactly: spaces, quotes, empty arguments, shell words left alone
        args = ["two words", "", "it's \"quoted\"", "$HOME", "*", "a\tb\nc"]
        result = agent.exec(["printf", "[%s]\\n", *args], timeout=EXEC_TIMEOUT_S)
        assert result.status == 0 and result.stderr == b""
        assert result.stdout == b"".join(b"[%s]\n" % arg.encode() for arg in args)

        # environment (added to PATH and HOME, or replacing them) and working directory
        result = agent.exec(["sh", "-c", 'echo "$GREETING|$(pwd)|$HOME"'], env={"GREETING": "hi there"},
                            cwd="/tmp", timeout=EXEC_TIMEOUT_S)
        assert result.stdout == b"hi there|/tmp|/root\n"
        result = agent.exec(["/bin/env"], env={"ONLY": "this"}, replace_env=True, timeout=EXEC_TIMEOUT_S)
        assert result.stdout == b"ONLY=this\n"

        # stdin streamed in and closed; stdout and stderr apart; exit status 7
        payload = random.Random(52).randbytes(150_000)
        result = agent.exec(["sh", "-c", "cat; echo done >&2; exit 7"], stdin=payload, timeout=EXEC_TIMEOUT_S)
        assert (result.status, result.stderr, len(result.stdout)) == (7, b"done\n", len(payload))
        assert result.stdout == payload

        # a command killed by a signal: its own, and one sent from here
        result = agent.exec(["sh", "-c", "echo before; kill -KILL $$"], timeout=EXEC_TIMEOUT_S)
        assert (result.status, result.signal, result.stdout) == (-9, 9, b"before\n")
        with agent.start(["sleep", "300"], timeout=EXEC_TIMEOUT_S) as sleeper:
            sleeper.send_signal(signal.SIGTERM)
            assert sleeper.wait() == -signal.SIGTERM

        # two commands at once: one waits for its stdin while the other runs to its end
        with agent.start(["cat"], stdin=True, timeout=EXEC_TIMEOUT_S) as waiting:
            assert agent.exec(["echo", "meanwhile"], timeout=EXEC_TIMEOUT_S).stdout == b"meanwhile\n"
            waiting.write_stdin(b"first one\n")
            waiting.close_stdin()
            assert waiting.collect().stdout == b"first one\n"

        # a file copied in (with its mode) and back out, byte for byte
        blob = random.Random(7).randbytes(300_000)
        local = tmp_path / "blob"
        local.write_bytes(blob)
        assert agent.copy_in(local, "/tmp/blob", 0o640) == len(blob)
        assert agent.exec(["busybox", "stat", "-c", "%a %s", "/tmp/blob"]).stdout == b"640 300000\n"
        back = tmp_path / "back"
        assert agent.copy_out("/tmp/blob", back) == len(blob)
        assert back.read_bytes() == blob and back.stat().st_mode & 0o777 == 0o640

        # the guest's refusals, as such
        with pytest.raises(RemoteFileError) as missing:
            agent.copy_out("/no/such/file", tmp_path / "never")
        assert missing.value.errno == errno.ENOENT and not (tmp_path / "never").exists()
        with pytest.raises(RemoteFileError) as no_dir:
            agent.copy_in(local, "/no/such/dir/blob")
        assert no_dir.value.errno == errno.ENOENT
        with pytest.raises(RemoteFileError) as directory:
            agent.read_file("/tmp")
        assert directory.value.errno == errno.EISDIR and directory.value.not_a_regular_file
        with pytest.raises(RemoteFileError) as device:
            agent.read_file("/dev/null")
        assert device.value.not_a_regular_file
        with pytest.raises(RemoteExecError) as not_found:
            agent.exec(["no-such-command"])
        assert not_found.value.errno == errno.ENOENT

        # the end: the agent's command stops init's command, and init powers the VM off
        agent.exec(["sh", "-c", "kill $(busybox pidof sleep)"], timeout=EXEC_TIMEOUT_S)
        status = proc.wait(BOOT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "\n".join(console.lines)
    assert "VMKIT_EXIT_STATUS=143" in out, out[-3000:]
    assert status == 143, proc.stderr.read().decode(errors="replace")
