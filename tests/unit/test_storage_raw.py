"""vmkit.storage: raw disks, cache modes, probing and its guard, locks (also against QEMU's), create/info.

Real files in tmp_path, no mocks. qemu-img and qemu-io (Debian: qemu-utils) are the oracle for
QEMU compatibility; without them these tests fail and say what to install. The helpers here (the
random-operation model check, the qemu tool runners) are shared with test_storage_qcow2.py.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import shutil
import subprocess
import time

import pytest

from vmkit.storage import (
    DiskRangeError,
    ImageCorruptError,
    ImageLockedError,
    ImageOpenError,
    ProbeGuardError,
    ReadOnlyError,
    UnsupportedImageError,
    create,
    info,
    open_disk,
)
from vmkit.storage.locking import is_locked_by_others
from vmkit.storage.probe import QCOW2_MAGIC
from vmkit.storage.qcow2.create import qcow2_layout
from vmkit.storage.qcow2.header import build_header

# ---- shared helpers


def qemu_tool(name: str) -> str:
    """The path of a QEMU tool; the test fails (it does not skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: these tests use it as the oracle (apt-get install qemu-utils)")
    return path


def run_tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([qemu_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=60)
    if check and proc.returncode:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def assert_qemu_check_clean(path: os.PathLike[str] | str) -> None:
    proc = run_tool("qemu-img", "check", str(path), check=False)
    assert proc.returncode == 0, f"qemu-img check {path} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def assert_same_as_model(image: os.PathLike[str] | str, model: bytes, tmp_path, image_format: str = "qcow2") -> None:
    """`qemu-img compare` says the image holds exactly `model`."""
    expected = tmp_path / "model.raw"
    expected.write_bytes(model)
    proc = run_tool("qemu-img", "compare", "-f", image_format, "-F", "raw", str(image), str(expected), check=False)
    assert proc.returncode == 0, f"qemu-img compare: {proc.stdout}{proc.stderr}"


def _span(rng: random.Random, size: int, max_length: int, grain: int) -> tuple[int, int]:
    """An (offset, length) inside the disk: sector-aligned, grain-aligned or arbitrary."""
    style = rng.random()
    if style < 0.3:
        unit = 512
    elif style < 0.5:
        unit = grain
    else:
        unit = 1
    units = size // unit
    offset = rng.randrange(units) * unit if units else 0
    if rng.random() < 0.1:
        offset = max(0, size - rng.randrange(1, max_length + 1) // unit * unit)   # near the end
    length = rng.randrange(1, max(2, max_length // unit + 1)) * unit
    return offset, min(length, size - offset)


def _split(rng: random.Random, length: int) -> list[int]:
    """Lengths of 1 to 4 buffers adding up to `length`."""
    cuts = sorted(rng.randrange(length + 1) for _ in range(rng.randrange(4)))
    points = [0, *cuts, length]
    return [b - a for a, b in zip(points, points[1:], strict=False)]


def _buffers(rng: random.Random, lengths: list[int], keep: list[mmap.mmap]) -> list[memoryview]:
    """Buffers of those lengths: bytearrays, or page-aligned mmap views (O_DIRECT's fast path)."""
    views = []
    for length in lengths:
        if rng.random() < 0.5 and length:
            area = mmap.mmap(-1, length)
            keep.append(area)
            views.append(memoryview(area))
        else:
            views.append(memoryview(bytearray(length)))
    return views


def _release(views: list[memoryview], areas: list[mmap.mmap]) -> None:
    for view in views:
        view.release()
    for area in areas:
        area.close()


def exercise(disk, model: bytearray, seed: int, operations: int, max_length: int, grain: int = 4096,
             reopen=None):
    """Random writes, reads, discards, write-zeroes and flushes on `disk`, each checked against `model`
    (a bytearray of what the disk must hold). reopen() -> a new disk, called now and then."""
    rng = random.Random(seed)
    size = len(model)
    for _ in range(operations):
        op = rng.choices(("write", "read", "discard", "zero", "flush", "reopen"),
                         weights=(6, 5, 1, 1, 1, 1 if reopen else 0))[0]
        offset, length = _span(rng, size, max_length, grain)
        keep: list[mmap.mmap] = []
        views: list[memoryview] = []
        if op == "write":
            data = rng.randbytes(length)
            views = _buffers(rng, _split(rng, length), keep)
            pos = 0
            for view in views:
                view[:] = data[pos:pos + len(view)]
                pos += len(view)
            disk.writev(offset, views)
            model[offset:offset + length] = data
        elif op == "read":
            views = _buffers(rng, _split(rng, length), keep)
            disk.readv(offset, views)
            got = b"".join(bytes(v) for v in views)
            assert got == model[offset:offset + length], f"read of {length} at {offset} differs (seed {seed})"
        elif op in ("discard", "zero"):
            (disk.discard if op == "discard" else disk.write_zeroes)(offset, length)
            model[offset:offset + length] = bytes(length)
        elif op == "flush":
            disk.flush()
        else:
            disk.close()
            disk = reopen()
        _release(views, keep)
    whole = bytearray(size)
    disk.readv(0, [memoryview(whole)])
    assert whole == model, f"the disk differs from the model after the operations (seed {seed})"
    return disk


# ---- raw round trips


@pytest.mark.parametrize("cache", ["writeback", "none", "unsafe"])
@pytest.mark.parametrize("seed", [1, 2])
def test_raw_random_operations_match_a_model(tmp_path, cache, seed):
    path = tmp_path / "disk.raw"
    size = (1 << 20) + 8192
    initial = random.Random(seed).randbytes(size)
    path.write_bytes(initial)
    model = bytearray(initial)
    disk = open_disk(path, format="raw", cache=cache)
    disk = exercise(disk, model, seed, operations=250, max_length=70000,
                    reopen=lambda: open_disk(path, format="raw", cache=cache))
    disk.close()
    assert path.read_bytes() == model


@pytest.mark.parametrize("cache, read_only, syncs", [("writeback", False, 1), ("none", False, 1),
                                                      ("unsafe", False, 0), ("writeback", True, 0)])
def test_flush_is_an_fdatasync_except_in_unsafe_mode(tmp_path, cache, read_only, syncs):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(65536))
    disk = open_disk(path, format="raw", cache=cache, read_only=read_only)
    calls = []
    real_sync = disk.host.sync
    disk.host.sync = lambda: (calls.append(1), real_sync())
    if not read_only:
        disk.writev(0, [memoryview(b"x" * 512)])
    disk.flush()
    assert len(calls) == syncs
    disk.close()


def test_cache_none_opens_with_o_direct_and_bounces_unaligned_requests(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(65536))
    disk = open_disk(path, format="raw", cache="none")
    assert fcntl.fcntl(disk.host.fd, fcntl.F_GETFL) & os.O_DIRECT
    disk.writev(3, [memoryview(b"unaligned"), memoryview(b" bytes")])        # read-only buffers: bounced
    area = mmap.mmap(-1, 8192)
    area[:] = b"\x5a" * 8192
    disk.writev(8192, [memoryview(area)])                                    # aligned: straight through
    back = bytearray(20)
    disk.readv(0, [memoryview(back)])
    assert back == bytes(3) + b"unaligned bytes" + bytes(2)
    check = mmap.mmap(-1, 8192)
    disk.readv(8192, [memoryview(check)])
    assert check[:] == area[:]
    disk.flush()
    disk.close()
    area.close()
    check.close()


def test_cache_none_refuses_a_writable_size_o_direct_cannot_cover(tmp_path):
    path = tmp_path / "odd.raw"
    path.write_bytes(bytes(1000))
    with pytest.raises(UnsupportedImageError, match="multiple of"):
        open_disk(path, format="raw", cache="none")
    disk = open_disk(path, format="raw", cache="none", read_only=True)
    buf = bytearray(1000)
    disk.readv(0, [memoryview(buf)])
    assert buf == bytes(1000)
    disk.close()


def test_reads_past_the_end_of_a_shrunk_file_are_zeros(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\xff" * 8192)
    disk = open_disk(path, format="raw")
    os.truncate(path, 1000)                       # someone else shrinks it under the open disk
    buf = bytearray(8192)
    disk.readv(0, [memoryview(buf)])
    assert buf == b"\xff" * 1000 + bytes(7192)
    disk.close()


def test_requests_outside_the_disk_raise_a_typed_error(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(4096))
    disk = open_disk(path, format="raw")
    for offset, length in ((4096, 1), (4000, 97), (-1, 1), (0, 4097)):
        with pytest.raises(DiskRangeError, match="outside the disk of 4096 bytes"):
            disk.readv(offset, [memoryview(bytearray(length))])
        with pytest.raises(DiskRangeError):
            disk.writev(offset, [memoryview(bytes(length))])
    with pytest.raises(DiskRangeError):
        disk.discard(4000, 200)
    with pytest.raises(DiskRangeError):
        disk.write_zeroes(0, -5)
    disk.readv(4096, [memoryview(bytearray(0))])             # an empty request at the end is fine
    disk.close()


def test_a_read_only_disk_refuses_every_kind_of_write(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(4096))
    disk = open_disk(path, format="raw", read_only=True)
    assert disk.read_only
    for action in (lambda: disk.writev(0, [memoryview(b"x")]), lambda: disk.discard(0, 512),
                   lambda: disk.write_zeroes(0, 512)):
        with pytest.raises(ReadOnlyError, match="read-only"):
            action()
    disk.flush()
    disk.close()


def test_discard_and_write_zeroes_punch_holes(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(1 << 20))
    disk = open_disk(path, format="raw")
    before = os.stat(path).st_blocks
    disk.discard(0, 512 << 10)
    disk.write_zeroes(512 << 10, 1000)
    assert os.stat(path).st_blocks < before
    buf = bytearray((512 << 10) + 1000)
    disk.readv(0, [memoryview(buf)])
    assert buf == bytes(len(buf))
    assert disk.size == 1 << 20
    disk.close()
    assert os.path.getsize(path) == 1 << 20


def test_write_zeroes_writes_zeros_where_holes_cannot_be_punched(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\x11" * 10000)
    disk = open_disk(path, format="raw")
    disk.host._can_punch = False                  # as after an EOPNOTSUPP from fallocate
    disk.write_zeroes(100, 5000)
    disk.close()
    assert path.read_bytes() == b"\x11" * 100 + bytes(5000) + b"\x11" * 4900


# ---- opening


def test_open_errors_name_the_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    cases = {str(tmp_path / "missing.raw"): "does not exist", str(tmp_path): "is a directory",
             "/dev/null": "character device", str(tmp_path / "fifo"): "FIFO", "": "path is empty"}
    for path, words in cases.items():
        with pytest.raises(ImageOpenError, match=words) as caught:
            open_disk(path, read_only=True)
        assert path in str(caught.value)
    with pytest.raises(UnsupportedImageError, match="unknown format 'vmdk'"):
        open_disk(tmp_path / "x", format="vmdk")
    with pytest.raises(ValueError, match="cache mode"):
        open_disk(tmp_path / "x", cache="directsync")


# ---- probing and the guard


def _qcow2_header_naming(backing: str) -> bytes:
    header = qcow2_layout(1 << 20, 65536)
    header.backing_file = backing
    return build_header(header)


def test_a_probed_raw_disk_refuses_to_become_a_qcow2_naming_a_host_file(tmp_path):
    path = tmp_path / "guest.img"
    path.write_bytes(bytes(1 << 20))
    disk = open_disk(path)                        # probed: raw
    assert disk.format == "raw"
    attack = _qcow2_header_naming("/etc/passwd")
    with pytest.raises(ProbeGuardError, match="qcow2.*guessed as raw"):
        disk.writev(0, [memoryview(attack)])
    # building the magic a piece at a time is caught too
    disk.writev(0, [memoryview(b"QF")])
    with pytest.raises(ProbeGuardError):
        disk.writev(2, [memoryview(b"I\xfb")])
    with pytest.raises(ProbeGuardError, match="vmdk"):
        disk.writev(0, [memoryview(b"KDMV")])
    disk.writev(512, [memoryview(attack)])        # past the first sector: plain data
    disk.writev(0, [memoryview(b"hello, disk")])
    disk.close()
    with open_disk(path, read_only=True) as reopened:
        assert reopened.format == "raw"
    assert path.read_bytes()[:11] == b"hello, disk"


def test_stating_the_raw_format_lifts_the_guard(tmp_path):
    path = tmp_path / "guest.img"
    path.write_bytes(bytes(1 << 20))
    disk = open_disk(path, format="raw")
    disk.writev(0, [memoryview(QCOW2_MAGIC)])
    disk.close()
    with pytest.raises(ImageCorruptError, match="invalid qcow2 version 0"):
        open_disk(path, read_only=True)           # now probed as a (broken) qcow2
    with open_disk(path, format="raw", read_only=True) as reopened:
        assert reopened.format == "raw"


def test_probing_refuses_files_that_look_like_formats_vmkit_does_not_read(tmp_path):
    path = tmp_path / "disk.vmdk"
    path.write_bytes(b"KDMV" + bytes(65532))
    with pytest.raises(UnsupportedImageError, match="looks like a vmdk image.*format='raw'"):
        open_disk(path)
    with open_disk(path, format="raw", read_only=True) as reopened:
        assert reopened.format == "raw"
    with pytest.raises(ImageCorruptError, match="not a qcow2 image"):
        open_disk(path, format="qcow2", read_only=True)


# ---- locks


def test_a_second_writable_open_is_refused_and_readers_share(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(4096))
    first = open_disk(path, format="raw")
    with pytest.raises(ImageLockedError, match=str(path)):
        open_disk(path, format="raw")
    with pytest.raises(ImageLockedError):
        open_disk(path, format="raw", read_only=True)
    first.close()
    readers = [open_disk(path, format="raw", read_only=True) for _ in range(2)]
    with pytest.raises(ImageLockedError, match="does not share the \"write\""):
        open_disk(path, format="raw")
    peek = open_disk(path, format="raw", read_only=True, force_share=True)
    for disk in (*readers, peek):
        disk.close()
    open_disk(path, format="raw").close()


def test_locks_are_seen_by_qemu_and_qemus_by_vmkit(tmp_path):
    path = tmp_path / "disk.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M")
    disk = open_disk(path)
    proc = run_tool("qemu-io", "-r", "-c", "read 0 512", str(path), check=False)
    assert proc.returncode != 0 and "lock" in proc.stderr
    disk.close()
    disk = open_disk(path, read_only=True)
    assert run_tool("qemu-io", "-r", "-c", "read 0 512", str(path), check=False).returncode == 0
    proc = run_tool("qemu-io", "-c", "write 0 512", str(path), check=False)
    assert proc.returncode != 0 and "lock" in proc.stderr
    disk.close()
    # QEMU holding the image open for writing keeps vmkit out
    holder = subprocess.Popen([qemu_tool("qemu-io"), str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not is_locked_by_others(str(path), writable=True):
            assert time.monotonic() < deadline, "qemu-io never locked the image"
            time.sleep(0.02)
        with pytest.raises(ImageLockedError, match="in use"):
            open_disk(path)
        with pytest.raises(ImageLockedError):
            open_disk(path, read_only=True)
    finally:
        holder.communicate(b"quit\n", timeout=10)
    open_disk(path).close()


# ---- create and info


def test_create_raw_and_describe_it(tmp_path):
    path = tmp_path / "new.raw"
    create(path, 3 << 20)
    assert os.path.getsize(path) == 3 << 20
    described = info(path)
    assert (described.format, described.virtual_size, described.cluster_size, described.backing) == (
        "raw", 3 << 20, None, None)
    assert described.actual_size < 3 << 20            # sparse
    assert described.chain() == [described]
    with pytest.raises(ImageOpenError, match="already exists"):
        create(path, 1 << 20)
    with pytest.raises(ValueError, match="multiple of 512"):
        create(tmp_path / "odd.raw", 1000)
    with pytest.raises(UnsupportedImageError, match="only qcow2"):
        create(tmp_path / "b.raw", 1 << 20, backing="new.raw")
    assert not (tmp_path / "odd.raw").exists()
