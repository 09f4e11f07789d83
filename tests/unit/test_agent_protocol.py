"""The agent protocol's host side: frame codec, request encoders and answer decoders with every
length checked, the C agent's constants against Python's, and a fuzz test of what the host client
reads from a hostile agent (only AgentError escapes, nothing hangs)."""

from __future__ import annotations

import random
import re
import socket
import struct
from pathlib import Path

import pytest

from tests.agent_rig import FakeVsockSocket
from vmkit.agent import (
    AgentClient,
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    RemoteFileError,
    protocol,
)
from vmkit.agent.protocol import MAX_PAYLOAD, Frame, FrameReader, FrameType, encode_frame
from vmkit.images.initramfs import AGENT_SOURCE


def test_frames_round_trip_fed_byte_by_byte():
    frames = [Frame(FrameType.STDOUT, b"hello"), Frame(FrameType.END, b""), Frame(FrameType.DATA, bytes(70000))]
    stream = b"".join(encode_frame(f.type, f.payload) for f in frames)
    assert stream[:5] == b"o\x00\x00\x00\x05"
    reader, got = FrameReader(), []
    for byte in stream:
        reader.feed(bytes([byte]))
        while (frame := reader.next()) is not None:
            got.append(frame)
    assert got == frames and not reader.partial


def test_a_length_over_the_limit_or_an_unknown_type_fails_at_the_header():
    reader = FrameReader()
    reader.feed(struct.pack(">BI", FrameType.STDOUT, MAX_PAYLOAD + 1))
    with pytest.raises(AgentProtocolError, match="over the limit"):
        reader.next()
    reader = FrameReader()
    reader.feed(b"E\0\0\0\0")                     # a request type: never from the agent
    with pytest.raises(AgentProtocolError, match="unexpected frame type"):
        reader.next()
    reader = FrameReader()
    reader.feed(struct.pack(">BI", FrameType.DATA, MAX_PAYLOAD))
    assert reader.next() is None and reader.partial    # the largest legal frame waits for its payload
    with pytest.raises(ValueError):
        encode_frame(FrameType.DATA, bytes(MAX_PAYLOAD + 1))


def test_exec_payload_layout():
    payload = protocol.encode_exec(["ls", ""], {"A": "b"}, "/tmp", stdin_pipe=True)
    assert payload == (b"\0\0\0\x01" + b"\0\0\0\x02" + b"\0\0\0\x02ls" + b"\0\0\0\0"
                       + b"\0\0\0\x01" + b"\0\0\0\x03A=b" + b"\0\0\0\x04/tmp")
    assert protocol.encode_exec([b"\xff"], replace_env=True) == (b"\0\0\0\x02\0\0\0\x01\0\0\0\x01\xff"
                                                                  + b"\0\0\0\0" + b"\0\0\0\0")


@pytest.mark.parametrize("argv, env, cwd, error", [
    ([], None, None, ValueError),
    ([""], None, None, ValueError),
    (["a\0b"], None, None, ValueError),
    ("ls -l", None, None, TypeError),
    (["ls"], {"A=B": "c"}, None, ValueError),
    (["ls"], {"": "c"}, None, ValueError),
    (["ls"], {"A": "c\0"}, None, ValueError),
    (["ls"], None, "/t\0mp", ValueError),
    (["x" * MAX_PAYLOAD], None, None, ValueError),
])
def test_exec_requests_the_agent_would_refuse_are_refused_here(argv, env, cwd, error):
    with pytest.raises(error):
        protocol.encode_exec(argv, env, cwd)


def test_file_request_checks():
    assert protocol.encode_write_file("/a", 0o4755) == b"\0\0\x09\xed/a"
    for mode in (-1, 0o10000):
        with pytest.raises(ValueError):
            protocol.encode_write_file("/a", mode)
    for path in ("", "x" * (protocol.MAX_PATH + 1), "/a\0"):
        with pytest.raises(ValueError):
            protocol.encode_path(path)
    for signum in (0, 65):
        with pytest.raises(ValueError):
            protocol.encode_signal(signum)


def test_answer_decoders_check_every_length_and_value():
    assert protocol.decode_exit(Frame(FrameType.EXIT, b"\0\0\0\0\x07")) == 7
    assert protocol.decode_exit(Frame(FrameType.EXIT, b"\x01\0\0\0\x09")) == -9
    for bad in (b"\0\0\0\x01\0", b"\x01\0\0\0\0", b"\x02\0\0\0\x01", b"\0\0\0\0", b"\0\0\0\0\x07\0"):
        with pytest.raises(AgentProtocolError):
            protocol.decode_exit(Frame(FrameType.EXIT, bad))
    assert protocol.decode_error(Frame(FrameType.ERROR, b"\0\0\0\x02open /x")) == (2, "open /x")
    for bad in (b"\0\0\0", b"\0\0\0\0", b"\0\0\x10\0"):
        with pytest.raises(AgentProtocolError):
            protocol.decode_error(Frame(FrameType.ERROR, bad))
    assert protocol.decode_info(Frame(FrameType.INFO, bytes(8) + b"\0\0\x81\xa4")) == (0, 0o100644)
    assert protocol.decode_started(Frame(FrameType.STARTED, b"\0\0\0\x2a")) == 42
    assert protocol.decode_done(Frame(FrameType.DONE, bytes(7) + b"\x05")) == 5
    for decode in (protocol.decode_info, protocol.decode_started, protocol.decode_done):
        with pytest.raises(AgentProtocolError):
            decode(Frame(FrameType.INFO, bytes(3)))


def test_the_c_agent_and_python_agree_on_every_constant():
    source = AGENT_SOURCE.read_text()
    frames = dict(re.findall(r"#define FRAME_(\w+) '(.)'", source))
    assert {name: ord(letter) for name, letter in frames.items()} == {t.name: t.value for t in FrameType}
    numbers = {name: int(value) for name, value in re.findall(r"#define ([A-Z_]+) ([1-9][0-9]*)u?\b", source)}
    assert numbers["AGENT_PORT"] == protocol.AGENT_PORT == 52
    assert numbers["MAX_ITEMS"] == protocol.MAX_ITEMS and numbers["MAX_PATH"] == protocol.MAX_PATH
    assert numbers["CHUNK"] == protocol.CHUNK and numbers["EXIT_SIGNAL"] == protocol.EXIT_SIGNAL
    assert re.search(r"#define MAX_PAYLOAD \(1u << 20\)", source) and protocol.MAX_PAYLOAD == 1 << 20
    assert re.search(r"#define EXEC_STDIN_PIPE 1u\n#define EXEC_REPLACE_ENV 2u", source)
    assert f'#define AGENT_VERSION "{protocol.AGENT_VERSION}"' in source


class FakeAgent(FakeVsockSocket):
    """Sends each connection the next scripted answer (once the request's first bytes are in)
    and closes it."""

    def __init__(self, path: Path) -> None:
        self.replies: list[bytes] = []
        super().__init__(str(path))

    def serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(2)
            conn.recv(1 << 16)
            conn.sendall(self.replies.pop(0))
        except OSError:
            pass


def _legal_answer(request: int, rng: random.Random) -> list[Frame]:
    """What an agent answers to ping (0), exec (1), read_file (2) and write_file (3 of b"data")."""
    if rng.random() < 0.2:
        return [Frame(FrameType.ERROR, struct.pack(">I", rng.randrange(1, 140)) + b"open /f")]
    return [
        [Frame(FrameType.PONG, protocol.AGENT_VERSION.encode())],
        [Frame(FrameType.STARTED, b"\0\0\0\x2a"), Frame(FrameType.STDOUT, b"out"), Frame(FrameType.STDERR, b"err"),
         Frame(FrameType.EXIT, bytes([rng.randrange(2), 0, 0, 0, rng.randrange(1, 10)]))],
        [Frame(FrameType.INFO, bytes(12)), Frame(FrameType.DATA, b"file"), Frame(FrameType.END, b"")],
        [Frame(FrameType.READY, b""), Frame(FrameType.DONE, struct.pack(">Q", 4))],
    ][request]


def _hostile_answer(request: int, rng: random.Random) -> bytes:
    """A legal answer with up to three of: a frame's type changed, a payload cut or grown, a frame
    dropped or repeated, a byte flipped, the stream cut short; or random bytes, or a length over
    the limit."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randrange(0, 40))
    frames = _legal_answer(request, rng)
    for _ in range(rng.randrange(4)):
        at = rng.randrange(len(frames))
        frame = frames[at]
        mutation = rng.randrange(4)
        if mutation == 0:
            frames[at] = Frame(rng.choice(sorted(protocol.FROM_AGENT)), frame.payload)
        elif mutation == 1:
            frames[at] = Frame(frame.type, frame.payload[:rng.randrange(len(frame.payload) + 1)]
                               + rng.randbytes(rng.randrange(3)))
        elif mutation == 2:
            del frames[at]
            if not frames:
                break
        else:
            frames.insert(at, frame)
    data = bytearray(b"".join(encode_frame(frame.type, frame.payload) for frame in frames))
    if data and rng.random() < 0.2:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    if rng.random() < 0.05:
        data += struct.pack(">BI", FrameType.STDOUT, MAX_PAYLOAD + 1 + rng.randrange(1 << 20))
    return bytes(data[:rng.randrange(len(data) + 1)] if rng.random() < 0.2 else data)


def test_fuzz_hostile_agent_answers_raise_agent_errors_only(tmp_path):
    fake = FakeAgent(tmp_path / "vm.sock")
    client = AgentClient(fake.path, connect_timeout=2)
    rng = random.Random(5252)
    outcomes: dict[str, int] = {}
    try:
        for _ in range(300):
            request = rng.randrange(4)
            fake.replies.append(_hostile_answer(request, rng))
            try:
                if request == 0:
                    client.ping(timeout=2)
                elif request == 1:
                    client.exec(["true"], stdin=b"in" if rng.random() < 0.5 else None, timeout=2)
                elif request == 2:
                    client.read_file("/f", timeout=2)
                else:
                    client.write_file("/f", b"data", timeout=2)
                outcome = "answered"
            except AgentError as exc:
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        fake.close()
    assert set(outcomes) == {"answered", "AgentProtocolError", "AgentUnavailable", "RemoteExecError",
                             "RemoteFileError"}, outcomes
    assert outcomes["answered"] >= 30 and outcomes["AgentProtocolError"] >= 100, outcomes


def test_an_error_answer_to_a_file_request_is_a_remote_file_error(tmp_path):
    fake = FakeAgent(tmp_path / "vm.sock")
    fake.replies.append(encode_frame(FrameType.ERROR, b"\0\0\0\x0dopen /root/x"))
    try:
        with pytest.raises(RemoteFileError) as refused:
            AgentClient(fake.path).read_file("/root/x", timeout=5)
    finally:
        fake.close()
    assert (refused.value.errno, refused.value.path, refused.value.message) == (13, "/root/x", "open /root/x")
    assert "EACCES" in str(refused.value)


def test_no_vm_socket_is_agent_unavailable(tmp_path):
    with pytest.raises(AgentUnavailable):
        AgentClient(tmp_path / "none.sock").ping()
    with pytest.raises(AgentUnavailable, match="did not answer in 0.3 s"):
        AgentClient(tmp_path / "none.sock").wait_ready(0.3)
