"""vmkit-agent itself (vmkit/images/vmkit_agent.c, built as it is for the initramfs) run on this
host behind a Unix socket that answers CONNECT as a VM's vsock socket does (tests/agent_rig.py):
AgentClient against the real agent, every request and its errors, hostile frames from the host
side, in seconds and without a boot. tests/e2e/test_linux_agent.py runs the same agent in Linux."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import socket
import struct
import tempfile
import time
from pathlib import Path

import pytest

from tests.agent_rig import HostAgent, agent_binary
from vmkit.agent import AgentClient, ExecTimeout, RemoteExecError, RemoteFileError
from vmkit.agent.protocol import AGENT_PORT, MAX_PAYLOAD, FrameType, encode_exec, encode_frame


@pytest.fixture(scope="module")
def binary():
    directory = Path(tempfile.mkdtemp(prefix="vmkit-agent-"))
    directory.chmod(0o755)                         # the unprivileged agent below runs it too
    yield agent_binary(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rig(tmp_path, binary):
    host = HostAgent(tmp_path, binary)
    yield host
    host.close()


@pytest.fixture
def agent(rig):
    return AgentClient(rig.path)


def test_exec_argv_env_cwd_stdin_status_and_streams(agent, rig, tmp_path):
    args = ["two words", "", "it's \"quoted\"", "$HOME", "*", "a\tb\nc"]
    result = agent.exec(["printf", "[%s]\\n", *args])
    assert result.stdout == b"".join(b"[%s]\n" % arg.encode() for arg in args) and result.status == 0
    assert agent.exec([b"printf", b"%s", b"\xff\xfe"]).stdout == b"\xff\xfe"        # bytes, not text
    result = agent.exec(["sh", "-c", 'echo "$GREETING|$(pwd)|$HOME|$PATH"'], env={"GREETING": "hi there"},
                        cwd=str(tmp_path))
    assert result.stdout == f"hi there|{tmp_path}|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:" \
                            f"/sbin:/bin\n".encode()
    assert agent.exec(["/usr/bin/env"], env={"HOME": "/x", "ONLY": "1"}, replace_env=True).stdout == b"HOME=/x\nONLY=1\n"
    assert agent.exec(["sh", "-c", "echo $HOME"], env={"HOME": "/elsewhere"}).stdout == b"/elsewhere\n"
    result = agent.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.status, result.stdout, result.stderr, result.signal) == (7, b"out\n", b"err\n", None)
    result = agent.exec(["sh", "-c", "kill -KILL $$"])
    assert (result.status, result.signal) == (-9, 9)
    assert agent.exec(["cat"]).stdout == b""                                  # no stdin: /dev/null
    assert rig.statuses() == [0] * 8


def test_stdin_and_output_both_large_do_not_deadlock(agent):
    payload = random.Random(1).randbytes(3 * MAX_PAYLOAD)       # more than every buffer on the way
    result = agent.exec(["sh", "-c", "cat; cat /proc/self/status >&2"], stdin=payload, timeout=60)
    assert result.stdout == payload and b"Name:" in result.stderr
    pieces = [b"line %d\n" % i for i in range(1000)]
    assert agent.exec(["wc", "-l"], stdin=iter(pieces), timeout=60).stdout.split() == [b"1000"]


def test_output_streams_as_it_comes_and_signals_reach_the_command(agent):
    with agent.start(["sh", "-c", "echo one; read line; echo got $line; sleep 30"], stdin=True,
                     timeout=60) as process:
        chunks = iter(process)
        assert next(chunks).data == b"one\n"              # before any stdin was sent
        process.write_stdin(b"two\n")
        assert next(chunks).data == b"got two\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait() == -signal.SIGTERM


def test_a_command_that_ignores_its_stdin_and_one_left_in_the_background(agent):
    result = agent.exec(["true"], stdin=random.Random(2).randbytes(MAX_PAYLOAD), timeout=60)
    assert result.status == 0                             # what it never read is dropped
    started = time.monotonic()
    result = agent.exec(["sh", "-c", "sleep 5 & echo started"], timeout=60)
    assert result.stdout == b"started\n" and time.monotonic() - started < 4     # the pipe's holder is not waited for


def test_timeout_kills_the_command_and_keeps_its_output(agent):
    with pytest.raises(ExecTimeout) as timed_out:
        agent.exec(["sh", "-c", "echo $$; exec sleep 30"], timeout=1.5)
    pid = int(timed_out.value.stdout)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_exec_errors_carry_the_errno(agent, tmp_path):
    with pytest.raises(RemoteExecError) as missing:
        agent.exec(["no-such-command-here"])
    assert missing.value.errno == errno.ENOENT and "no-such-command-here" in str(missing.value)
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(RemoteExecError) as denied:
        agent.exec([str(script)])
    assert denied.value.errno == errno.EACCES
    with pytest.raises(RemoteExecError) as no_dir:
        agent.exec(["true"], cwd=str(tmp_path / "none"))
    assert no_dir.value.errno == errno.ENOENT and "chdir" in str(no_dir.value)


def test_commands_get_no_descriptors_of_the_agent(agent):
    listed = agent.exec(["ls", "/proc/self/fd"]).stdout.split()
    assert set(listed) <= {b"0", b"1", b"2", b"3"}           # 3: ls's own listing of the directory


def test_two_commands_at_once(agent):
    with agent.start(["cat"], stdin=True, timeout=30) as waiting:
        assert agent.exec(["echo", "meanwhile"]).stdout == b"meanwhile\n"
        waiting.write_stdin(b"first\n")
        waiting.close_stdin()
        assert waiting.collect().stdout == b"first\n"


def test_files_in_and_out_byte_for_byte_with_modes(agent, tmp_path):
    blob = random.Random(3).randbytes(MAX_PAYLOAD + 12345)
    local = tmp_path / "blob"
    local.write_bytes(blob)
    local.chmod(0o751)
    remote = tmp_path / "remote"
    remote.write_bytes(b"old contents that are longer than nothing")
    remote.chmod(0o600)
    assert agent.copy_in(local, str(remote)) == len(blob)              # the local mode by default
    assert remote.read_bytes() == blob and remote.stat().st_mode & 0o7777 == 0o751
    assert agent.write_file(str(remote), b"short", 0o4640) == 5         # replaced, the mode exact
    assert remote.read_bytes() == b"short" and remote.stat().st_mode & 0o7777 == 0o4640
    assert agent.write_file(str(tmp_path / "empty"), b"") == 0 and (tmp_path / "empty").read_bytes() == b""
    back = tmp_path / "back"
    assert agent.copy_out(str(local), back) == len(blob)
    assert back.read_bytes() == blob and back.stat().st_mode & 0o777 == 0o751
    assert agent.read_file("/proc/self/cmdline").startswith(b"/")      # size 0 in stat, read to its end


def test_file_errors_as_such(agent, tmp_path):
    cases = [
        (lambda: agent.read_file(str(tmp_path / "none")), errno.ENOENT),
        (lambda: agent.write_file(str(tmp_path / "no" / "dir"), b"x"), errno.ENOENT),
        (lambda: agent.read_file(str(tmp_path)), errno.EISDIR),
        (lambda: agent.write_file(str(tmp_path), b"x"), errno.EISDIR),
        (lambda: agent.read_file("/dev/null"), errno.EINVAL),
        (lambda: agent.write_file("/dev/null", b"x"), errno.EINVAL),
    ]
    for request, expected in cases:
        with pytest.raises(RemoteFileError) as refused:
            request()
        assert refused.value.errno == expected, refused.value
        if expected != errno.ENOENT:
            assert refused.value.not_a_regular_file
    old = tmp_path / "kept"
    old.write_bytes(b"kept")
    with pytest.raises(RemoteFileError):
        agent.copy_out(str(tmp_path / "none"), old)
    assert old.read_bytes() == b"kept" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the agent as another user")
def test_permission_errors_from_an_unprivileged_agent(tmp_path, binary):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_bytes(b"s")
    host = HostAgent(tmp_path, binary, user=65534)
    try:
        agent = AgentClient(host.path)
        for request in (lambda: agent.read_file(str(private / "secret")),
                        lambda: agent.write_file(str(private / "new"), b"x")):
            with pytest.raises(RemoteFileError) as denied:
                request()
            assert denied.value.errno == errno.EACCES
        assert agent.exec(["id", "-u"]).stdout == b"65534\n"
    finally:
        host.close()


def _raw(rig: HostAgent, data: bytes) -> bytes:
    """Send `data` as a connection's bytes after CONNECT; what comes back until the agent closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(rig.path)
        sock.sendall(b"CONNECT %d\n" % AGENT_PORT)
        line = b""
        while not line.endswith(b"\n"):
            line += sock.recv(1)
        answer = b""
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while piece := sock.recv(1 << 16):
                answer += piece
        except (BrokenPipeError, ConnectionResetError):     # the agent closed with bytes unread
            pass
        return answer


def _hostile_request(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:                                    # a length past the limit, or past the bytes sent
        return struct.pack(">BI", rng.choice(b"PEWRIDZ"), rng.choice([MAX_PAYLOAD + 1, 0xFFFFFFFF, 100])) + bytes(10)
    if kind == 2:                                    # an EXEC payload cut, grown or with a byte flipped
        payload = bytearray(encode_exec(["echo", "x"], {"A": "b"}, "/"))
        if rng.random() < 0.5:
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        else:
            payload = payload[:rng.randrange(len(payload))] + rng.randbytes(rng.randrange(3))
        return encode_frame(FrameType.EXEC, bytes(payload))
    if kind == 3:                                    # a command started, then frames it does not take
        start = encode_frame(FrameType.EXEC, encode_exec(["cat"], stdin_pipe=rng.random() < 0.5))
        return start + struct.pack(">BI", rng.randrange(256), rng.randrange(8)) + rng.randbytes(rng.randrange(8))
    path = rng.randbytes(rng.randrange(0, 8))        # file requests with odd paths and modes
    request = rng.choice([FrameType.READ_FILE, FrameType.WRITE_FILE])
    return encode_frame(request, path if request == FrameType.READ_FILE else rng.randbytes(4) + path)


def test_fuzz_hostile_requests_close_the_connection_and_the_agent_survives(rig, agent):
    rng = random.Random(4242)
    for _ in range(150):
        _raw(rig, _hostile_request(rng))
    statuses = rig.statuses()
    assert len(statuses) == 150 and set(statuses) == {0}, statuses     # an exit, never a signal
    assert agent.ping() == "vmkit-agent 1"
