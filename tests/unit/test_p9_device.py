"""virtio-9p over real guest memory and a real virtqueue: requests as descriptor chains (the way the
Linux driver lays them out), short reply buffers, chains it cannot answer, state, and the option."""

import errno
import os
import random
import struct

import pytest

from tests.conftest import run_vmkit
from tests.unit import p9_client as c
from tests.unit.p9_client import Reply
from vmkit.devices.virtio.p9 import wire
from vmkit.devices.virtio.p9.device import P9State, VirtioP9
from vmkit.devices.virtio.p9.spec import ShareOptionError, ShareSpec, parse_option
from vmkit.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Virtqueue, VirtqueueError
from vmkit.devices.virtio.state import StateError
from vmkit.memory import GuestMemory
from vmkit.vmm.config import ConfigError
from vmkit.vmm.links import parse_links
from vmkit.vmm.share_option import parse_option as parse_share_option

DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
OUT, IN, DATA = 0x20000, 0x40000, 0x60000


@pytest.fixture
def rig(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(bytes(range(256)) * 64)          # 16 KiB
    memory = GuestMemory.create(4 << 20)
    queue = Virtqueue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = 16, DESC, AVAIL, USED
    queue.validate_layout(memory)
    devices = []

    def device(writable=True, tag="share0"):
        made = ShareSpec(str(share), tag, writable).open()
        devices.append(made)
        return made

    yield memory, queue, device, share
    for made in devices:
        made.close()
    memory.close()


def submit(memory, queue, device, chain):
    """Post one chain of (address, length, device_writes) buffers; return the used length."""
    for i, (address, length, writes) in enumerate(chain):
        flags = (VIRTQ_DESC_F_WRITE if writes else 0) | (VIRTQ_DESC_F_NEXT if i + 1 < len(chain) else 0)
        memory.write(DESC + 16 * i, struct.pack("<QIHH", address, length, flags, i + 1))
    index = queue.last_avail
    memory.write(AVAIL + 4 + 2 * (index % queue.size), struct.pack("<H", 0))
    memory.write(AVAIL + 2, struct.pack("<H", (index + 1) & 0xFFFF))
    assert device.process(queue, memory)
    used_index = (queue.next_used - 1) % queue.size
    head, used = struct.unpack("<II", memory.read(USED + 4 + 8 * used_index, 8))
    assert head == 0
    return used


def rpc(memory, queue, device, request, room=8192):
    """One request in a readable buffer, the reply in one writable buffer of `room` bytes."""
    memory.write(OUT, request)
    used = submit(memory, queue, device, [(OUT, len(request), False), (IN, room, True)])
    reply = memory.read(IN, used)
    return Reply(reply)


def session(memory, queue, device):
    assert rpc(memory, queue, device, c.version(65536)).u32() == 65536
    rpc(memory, queue, device, c.attach(0))


def test_config_and_features_carry_the_tag():
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    device = VirtioP9(fd, "docs", writable=False)
    assert device.device_type == 9
    assert device.features & 1 and device.features & (1 << 32)           # MOUNT_TAG, VERSION_1
    assert device.config() == struct.pack("<H", 4) + b"docs"
    device.close()
    with pytest.raises(OSError):
        os.fstat(fd)                                                    # close() released the directory
    with pytest.raises(ValueError):
        VirtioP9(os.open("/", os.O_PATH), "t" * 33, writable=False)


def test_requests_as_chains_read_with_a_split_reply(rig):
    """Like Linux's zero-copy read: an 11-byte reply header buffer, then the data pages."""
    memory, queue, device, share = rig
    p9 = device()
    session(memory, queue, p9)
    assert rpc(memory, queue, p9, c.walk(0, 1, "f")).kind == wire.TWALK + 1
    assert rpc(memory, queue, p9, c.lopen(1)).kind == wire.TLOPEN + 1
    request = c.read(1, offset=100, count=6000)
    memory.write(OUT, request)
    used = submit(memory, queue, p9, [(OUT, len(request), False), (IN, 11, True), (DATA, 4096, True),
                                      (DATA + 0x2000, 4096, True)])
    assert used == 11 + 6000
    size, kind, _, count = struct.unpack("<IBHI", memory.read(IN, 11))
    assert (size, kind, count) == (11 + 6000, wire.TREAD + 1, 6000)
    data = memory.read(DATA, 4096) + memory.read(DATA + 0x2000, 6000 - 4096)
    assert data == share.joinpath("f").read_bytes()[100:6100]


def test_write_data_split_across_readable_buffers_reaches_the_file(rig):
    memory, queue, device, share = rig
    p9 = device()
    session(memory, queue, p9)
    rpc(memory, queue, p9, c.walk(0, 1))
    assert rpc(memory, queue, p9, c.lcreate(1, "out", flags=2)).kind == wire.TLCREATE + 1
    payload = os.urandom(5000)
    request = c.write(1, payload, offset=10)
    memory.write(OUT, request[:30])                                     # the header and 7 bytes of data
    memory.write(DATA, request[30:])
    used = submit(memory, queue, p9, [(OUT, 30, False), (DATA, len(request) - 30, False), (IN, 64, True)])
    reply = Reply(memory.read(IN, used))
    assert reply.kind == wire.TWRITE + 1 and reply.u32() == 5000
    assert (share / "out").read_bytes() == bytes(10) + payload


def test_short_reply_rooms(rig):
    memory, queue, device, share = rig
    p9 = device()
    session(memory, queue, p9)
    rpc(memory, queue, p9, c.walk(0, 1, "f"))
    rpc(memory, queue, p9, c.lopen(1))
    reply = rpc(memory, queue, p9, c.read(1, count=4096), room=16)      # a read clipped to the room
    assert reply.kind == wire.TREAD + 1 and reply.data() == bytes(range(5))
    reply = rpc(memory, queue, p9, c.getattr_(1), room=40)              # Rgetattr needs 160 bytes
    assert reply.errno == errno.EMSGSIZE
    reply = rpc(memory, queue, p9, c.walk(0, 2, "f"), room=11)
    assert reply.errno == errno.EMSGSIZE


def test_lying_sizes_get_rlerror(rig):
    memory, queue, device, _ = rig
    p9 = device()
    session(memory, queue, p9)
    request = bytearray(c.getattr_(0))
    request[0:4] = struct.pack("<I", len(request) + 100)                # more than the chain holds
    assert rpc(memory, queue, p9, bytes(request)).errno == errno.EPROTO
    request[0:4] = struct.pack("<I", 3)                                  # less than a header
    assert rpc(memory, queue, p9, bytes(request)).errno == errno.EPROTO
    big = c.write(0, bytes(70000))                                       # more than the msize (65536)
    memory.write(DATA, big)
    used = submit(memory, queue, p9, [(DATA, len(big), False), (IN, 64, True)])
    assert Reply(memory.read(IN, used)).errno == errno.EPROTO


@pytest.mark.parametrize("chain", [
    [(OUT, 20, False)],                                                  # nowhere to reply
    [(OUT, 20, False), (IN, 10, True)],                                  # too little room for Rlerror
    [(OUT, 6, False), (IN, 64, True)],                                   # too little for a header
    [(IN, 64, True)],                                                    # no request at all
])
def test_chains_it_cannot_answer_raise_virtqueue_error(rig, chain):
    memory, queue, device, _ = rig
    p9 = device()
    memory.write(OUT, c.version())
    with pytest.raises(VirtqueueError):
        submit(memory, queue, p9, chain)


def test_state_round_trip_and_untrusted_restore(rig):
    memory, queue, device, _ = rig
    p9 = device(writable=True, tag="share0")
    session(memory, queue, p9)
    saved = p9.save()
    assert saved == P9State("share0", True, 65536)
    fresh = device(writable=True, tag="share0")
    fresh.restore(saved)
    assert fresh.save() == saved
    assert rpc(memory, queue, fresh, c.getattr_(0)).errno == errno.EBADF   # fids are not carried over
    assert rpc(memory, queue, fresh, c.attach(0)).kind == wire.TATTACH + 1  # at the saved msize
    for bad in (P9State("other", True, 65536), P9State("share0", False, 65536), P9State("share0", True, 100),
                P9State("share0", True, 1 << 30), P9State("share0", True, True), P9State("share0", 1, 65536)):
        with pytest.raises(StateError):
            fresh.restore(bad)
    assert fresh.save() == saved
    fresh.reset()
    assert fresh.save().msize == 0


def test_fuzzed_chains_never_escape_the_device(rig):
    """Random chains of random buffers with random bytes: a reply or VirtqueueError, nothing else."""
    memory, queue, device, share = rig
    p9 = device()
    rng = random.Random(99)
    replies = refusals = 0
    for _ in range(1500):
        session_bytes = rng.choice([c.version(), c.attach(0), c.walk(0, 1, "f"), c.read(1), c.getattr_(0)])
        memory.write(OUT, bytes(rng.randrange(256) for _ in range(64)) if rng.random() < 0.3 else session_bytes)
        chain = [(OUT + rng.randrange(8), rng.randrange(80), False) for _ in range(rng.randrange(3))]
        chain += [(IN + rng.randrange(8), rng.randrange(200), True) for _ in range(rng.randrange(3))]
        if not chain:
            continue
        try:
            submit(memory, queue, p9, chain)
            replies += 1
        except VirtqueueError:
            refusals += 1                                               # the transport resets the device
    assert replies > 300 and refusals > 300
    assert (share / "f").read_bytes() == bytes(range(256)) * 64


def test_the_option_is_parsed_and_checked(tmp_path):
    spec = parse_option(str(tmp_path), 3)
    assert (spec.tag, spec.writable, str(spec)) == ("share3", False, f"--share {tmp_path}")
    spec = parse_option(f"{tmp_path},tag=docs,rw", 0)
    assert (spec.tag, spec.writable) == ("docs", True)
    for value, part in ((f"{tmp_path},tag=", "tag="), (f"{tmp_path},tag=a b", "tag='a b'"),
                        (f"{tmp_path},rw=1", "rw=1"), (f"{tmp_path},cache=loose", "cache=loose"),
                        (",rw", "missing"), (str(tmp_path / "missing"), "does not exist")):
        with pytest.raises(ShareOptionError, match="--share") as caught:
            parse_option(value, 0)
        assert part in str(caught.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"--share .*file.*is not a directory"):
        parse_share_option(str(tmp_path / "file"), 0)
    with pytest.raises(NotADirectoryError):
        ShareSpec(str(tmp_path / "file"), "t").open()                 # a race after parsing: still refused


def test_vmkit_run_names_a_bad_share_before_any_vm(tmp_path):
    done = run_vmkit("run", "--share", str(tmp_path / "nowhere"))
    assert done.returncode == 125
    assert f"--share '{tmp_path / 'nowhere'}'" in done.stderr and "does not exist" in done.stderr


def test_two_shares_with_one_tag_are_refused_before_any_vm(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert parse_links({"--share": [str(tmp_path / "a"), str(tmp_path / "b")]})[1].tag == "share1"
    with pytest.raises(ConfigError, match=r"--share .*b: tag 'share0' is already the tag of --share .*a"):
        parse_links({"--share": [str(tmp_path / "a"), f"{tmp_path / 'b'},tag=share0"]})
    done = run_vmkit("run", "--share", f"{tmp_path / 'a'},tag=src", "--share", f"{tmp_path / 'b'},tag=src")
    assert done.returncode == 125 and "tag 'src' is already the tag of" in done.stderr
