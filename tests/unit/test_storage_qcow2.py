"""vmkit.storage qcow2: round trips against a model and QEMU's tools, QEMU-made images, refcount
growth, internal snapshots, crash points, damaged headers and files, backing chains, create/info.

qemu-img and qemu-io are the oracle: after vmkit writes, `qemu-img check` must find nothing wrong
and `qemu-img compare` must find the image equal to the model.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import threading

import pytest

from tests.unit.test_storage_raw import assert_qemu_check_clean, assert_same_as_model, exercise, run_tool
from vmkit.storage import (
    MAX_BACKING_DEPTH,
    BackingChainError,
    ImageCorruptError,
    ImageError,
    ImageLockedError,
    StorageError,
    UnsupportedImageError,
    create,
    info,
    open_disk,
)
from vmkit.storage.qcow2.create import qcow2_layout, write_new_qcow2
from vmkit.storage.qcow2.header import parse_header

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:       # the property test below is skipped without it
    given = None


def qemu_view(path, tmp_path) -> bytes:
    """The virtual disk as QEMU reads it."""
    out = tmp_path / f"qemu-view-{random.randrange(1 << 30)}.raw"
    run_tool("qemu-img", "convert", "-O", "raw", str(path), str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def vmkit_view(path, **options) -> bytes:
    disk = open_disk(path, read_only=True, **options)
    try:
        data = bytearray(disk.size)
        disk.readv(0, [memoryview(data)])
        return bytes(data)
    finally:
        disk.close()


def qemu_io(path, *commands: str, fmt: str = "qcow2") -> None:
    args = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    run_tool(*args, str(path))


def patch(path, offset: int, fmt: str, value) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value) if not isinstance(value, bytes) else value)


def header_field(path, offset: int, fmt: str) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


# ---- round trips


SIZE = (1536 << 10) + 3 * 512          # not a whole number of clusters
BACKING_SIZE = 1 << 20                 # smaller than the image: its tail reads zeros


def _make_backing(tmp_path, kind: str) -> tuple[str, bytes]:
    if kind == "raw":
        data = random.Random(7).randbytes(BACKING_SIZE)
        (tmp_path / "base.raw").write_bytes(data)
        return "base.raw", data
    base = tmp_path / "base.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(base), str(BACKING_SIZE))
    qemu_io(base, "write -P 0x5a 0 200k", "write -P 0xc3 300k 10000", "write -z 64k 8k", "write -P 7 1020k 4k")
    return "base.qcow2", qemu_view(base, tmp_path)


@pytest.mark.parametrize("cluster_size, backing, cache, seed", [
    (65536, None, "writeback", 1),
    (512, None, "writeback", 2),
    (4096, "raw", "writeback", 3),
    (65536, "qcow2", "none", 4),
    (2048, "qcow2", "unsafe", 5),
    (512, "raw", "none", 6),
    (1024, "raw", "writeback", 339),
])
def test_random_operations_match_a_model_and_qemu_agrees(tmp_path, cluster_size, backing, cache, seed):
    path = tmp_path / "disk.qcow2"
    model = bytearray(SIZE)
    backing_format = None
    if backing:
        name, content = _make_backing(tmp_path, backing)
        model[:len(content)] = content
        backing_format = backing
        create(path, SIZE, format="qcow2", backing=name, backing_format=backing_format, cluster_size=cluster_size)
    else:
        create(path, SIZE, format="qcow2", cluster_size=cluster_size)
    assert_qemu_check_clean(path)
    disk = open_disk(path, cache=cache)
    disk = exercise(disk, model, seed, operations=160, max_length=max(3 * cluster_size, 20000),
                    grain=cluster_size, reopen=lambda: open_disk(path, cache=cache))
    disk.close()
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(model), tmp_path)


OFFSETS = (0, 1, 511, 512, 4095, 4096, 65535, 65536, 65537)
LENGTHS = (1, 511, 512, 513, 4096, 65536, 65537, 2 * 65536 + 7)


@pytest.mark.parametrize("kind", ["raw", "raw-o-direct", "qcow2", "qcow2-512-over-raw"])
def test_every_offset_and_length_alignment_round_trips(tmp_path, kind):
    size = 1 << 20
    model = bytearray(size)
    if kind.startswith("raw"):
        path = tmp_path / "disk.raw"
        path.write_bytes(bytes(size))
        disk = open_disk(path, format="raw", cache="none" if kind == "raw-o-direct" else "writeback")
    elif kind == "qcow2":
        path = tmp_path / "disk.qcow2"
        create(path, size, format="qcow2")
        disk = open_disk(path)
    else:
        path = tmp_path / "disk.qcow2"
        model[:] = random.Random(1).randbytes(size)
        (tmp_path / "base.raw").write_bytes(model)
        create(path, size, format="qcow2", backing="base.raw", backing_format="raw", cluster_size=512)
        disk = open_disk(path)
    rng = random.Random(2)
    for offset in OFFSETS:
        for length in LENGTHS:
            data = rng.randbytes(length)
            cut = rng.randrange(length + 1)
            disk.writev(offset, [memoryview(data)[:cut], memoryview(data)[cut:]])
            model[offset:offset + length] = data
            start, end = max(0, offset - 1), min(size, offset + length + 1)
            back = bytearray(end - start)
            disk.readv(start, [memoryview(back)])
            assert back == model[start:end], f"offset {offset}, length {length}"
    disk.close()
    if kind.startswith("qcow2"):
        assert_qemu_check_clean(path)
        assert_same_as_model(path, bytes(model), tmp_path)
    else:
        assert path.read_bytes() == model


def test_one_write_over_in_place_and_new_clusters_puts_every_piece_in_its_place(tmp_path):
    """Guest clusters 0 and 2 sit in adjacent host clusters; 1 is new: a write over all three must
    not take 0 and 2 for one contiguous run."""
    path = tmp_path / "disk.qcow2"
    create(path, 65536, format="qcow2", cluster_size=4096)
    disk = open_disk(path)
    disk.writev(0, [memoryview(b"a" * 4096)])
    disk.writev(8192, [memoryview(b"c" * 4096)])
    assert disk.tables.entry(2) - disk.tables.entry(0) == 4096
    data = b"x" * 100 + b"y" * 4096 + b"z" * 100
    disk.writev(4096 - 100, [memoryview(data)])
    back = bytearray(3 * 4096)
    disk.readv(0, [memoryview(back)])
    assert back == b"a" * (4096 - 100) + data + b"c" * (4096 - 100)
    disk.close()
    assert_qemu_check_clean(path)


def test_concurrent_requests_on_one_qcow2_disk(tmp_path):
    path = tmp_path / "disk.qcow2"
    create(path, 4 << 20, format="qcow2", cluster_size=4096)
    model = bytearray(4 << 20)
    disk = open_disk(path)
    failures = []

    def worker(number: int) -> None:
        rng = random.Random(number)
        base = number << 20
        try:
            for _ in range(60):
                offset = base + rng.randrange((1 << 20) - 20000)
                data = rng.randbytes(rng.randrange(1, 20000))
                disk.writev(offset, [memoryview(data)])
                model[offset:offset + len(data)] = data
                back = bytearray(len(data))
                disk.readv(offset, [memoryview(back)])
                assert back == data
        except Exception as exc:       # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    disk.close()
    assert not failures
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(model), tmp_path)


def test_a_tiny_metadata_cache_writes_back_and_evicts_correctly(tmp_path):
    path = tmp_path / "disk.qcow2"
    create(path, SIZE, format="qcow2", cluster_size=512)
    model = bytearray(SIZE)
    disk = open_disk(path, metadata_cache_bytes=2048)
    disk = exercise(disk, model, 11, operations=120, max_length=8192, grain=512)
    disk.close()
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(model), tmp_path)


@pytest.mark.parametrize("refcount_bits", [1, 8, 64])
def test_other_refcount_widths(tmp_path, refcount_bits):
    path = tmp_path / "disk.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size=4096,refcount_bits={refcount_bits}",
             str(path), str(SIZE))
    model = bytearray(SIZE)
    disk = exercise(open_disk(path), model, refcount_bits, operations=80, max_length=20000, grain=4096)
    disk.close()
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(model), tmp_path)


@pytest.mark.parametrize("refcount_bits, size", [(16, 9 << 20), (64, 3 << 20)])
def test_the_refcount_table_grows_when_the_file_outgrows_it(tmp_path, refcount_bits, size):
    path = tmp_path / "small-clusters.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size=512,refcount_bits={refcount_bits}",
             str(path), str(size))
    table_before = header_field(path, 48, ">Q")
    model = bytearray(size)
    rng = random.Random(refcount_bits)
    disk = open_disk(path)
    for offset in range(0, size, 64 << 10):
        data = rng.randbytes(64 << 10)
        disk.writev(offset, [memoryview(data)])
        model[offset:offset + len(data)] = data
        if offset % (1 << 20) == 0:
            disk.flush()
    disk.discard(100 << 10, 50 << 10)
    model[100 << 10:150 << 10] = bytes(50 << 10)
    disk.close()
    assert header_field(path, 48, ">Q") != table_before, "the refcount table did not move"
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(model), tmp_path)


# ---- images QEMU made


def test_qemu_written_images_read_back(tmp_path):
    path = tmp_path / "q.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M")
    qemu_io(path, "write -P 0xab 0 64k")
    data = vmkit_view(path)
    assert data == b"\xab" * 65536 + bytes((1 << 20) - 65536)
    qemu_io(path, "write -P 0x11 200k 70000", "write -z 0 4k", "write -z 128k 64k", "discard 256k 64k",
            "write -P 0x22 1000 100")
    assert vmkit_view(path) == qemu_view(path, tmp_path)


@pytest.mark.parametrize("base_format", ["raw", "qcow2"])
def test_qemu_made_overlays_read_through_their_backing_file(tmp_path, base_format):
    base = tmp_path / f"base.{base_format}"
    run_tool("qemu-img", "create", "-q", "-f", base_format, str(base), "768k")
    qemu_io(base, "write -P 0x33 0 768k", fmt=base_format)
    top = tmp_path / "top.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", base_format, str(top), "1M")
    qemu_io(top, "write -P 0xab 0 64k", "write -P 0xcd 70000 1000", "write -z 200k 64k")
    expected = qemu_view(top, tmp_path)
    assert expected[70000:71000] == b"\xcd" * 1000 and expected[66000:67000] == b"\x33" * 1000
    assert vmkit_view(top) == expected
    described = info(top)
    assert [(i.format, i.virtual_size) for i in described.chain()] == [("qcow2", 1 << 20), (base_format, 768 << 10)]
    assert described.backing_file == base.name and described.backing_format == base_format


def test_compressed_images_read_back_and_take_writes(tmp_path):
    source = tmp_path / "source.raw"
    rng = random.Random(5)
    content = bytearray(rng.randbytes(3 * 65536) + bytes(65536) + b"compressible" * 30000)
    content += bytes(-len(content) % 512)
    source.write_bytes(content)
    path = tmp_path / "compressed.qcow2"
    run_tool("qemu-img", "convert", "-q", "-c", "-O", "qcow2", str(source), str(path))
    assert vmkit_view(path) == content
    disk = open_disk(path)
    disk.writev(5 * 65536 + 100, [memoryview(b"patched into a compressed cluster")])
    content[5 * 65536 + 100:5 * 65536 + 133] = b"patched into a compressed cluster"
    disk.write_zeroes(6 * 65536, 65536)                    # a whole compressed cluster
    content[6 * 65536:7 * 65536] = bytes(65536)
    disk.discard(4 * 65536 + 512, 1024)
    content[4 * 65536 + 512:4 * 65536 + 1536] = bytes(1024)
    disk.close()
    assert vmkit_view(path) == content
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(content), tmp_path)


def test_a_corrupt_compressed_cluster_is_an_error_not_garbage(tmp_path):
    source = tmp_path / "source.raw"
    source.write_bytes(b"abc" * 65536)
    path = tmp_path / "compressed.qcow2"
    run_tool("qemu-img", "convert", "-q", "-c", "-O", "qcow2", str(source), str(path))
    mapping = run_tool("qemu-img", "map", "--output=json", str(path)).stdout
    assert '"data": true' in mapping
    disk = open_disk(path, read_only=True)
    entry = disk.tables.entry(0)
    host, _ = disk.tables.compressed_range(entry)
    disk.close()
    patch(path, host, ">8s", b"\xff" * 8)
    disk = open_disk(path, read_only=True)
    with pytest.raises(ImageCorruptError, match="cannot be inflated|inflates to"):
        disk.readv(0, [memoryview(bytearray(512))])
    disk.close()


def test_version_2_images_are_read_but_not_written(tmp_path):
    path = tmp_path / "v2.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(path), "1M")
    qemu_io(path, "write -P 0x42 4096 8192")
    assert vmkit_view(path) == qemu_view(path, tmp_path)
    with pytest.raises(UnsupportedImageError, match="version 3.*amend"):
        open_disk(path)


def test_writes_under_an_internal_snapshot_copy_on_write(tmp_path):
    path = tmp_path / "snap.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M")
    qemu_io(path, "write -P 0x61 0 320k", "write -z 320k 64k")
    original = qemu_view(path, tmp_path)
    run_tool("qemu-img", "snapshot", "-c", "before", str(path))
    model = bytearray(original)
    disk = open_disk(path)
    disk = exercise(disk, model, 21, operations=60, max_length=150000, grain=65536)
    disk.close()
    assert_qemu_check_clean(path)
    assert_same_as_model(path, bytes(model), tmp_path)
    saved = tmp_path / "saved.raw"
    run_tool("qemu-img", "convert", "-l", "snapshot.name=before", "-O", "raw", str(path), str(saved))
    assert saved.read_bytes() == original


# ---- crash points


def test_every_flush_barrier_leaves_an_image_that_leaks_at_worst(tmp_path):
    """Copy the file at every fdatasync (the state a crash right after it leaves): QEMU must find no
    corruption in any copy (exit 0, or 3 for leaked clusters)."""
    path = tmp_path / "disk.qcow2"
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(3).randbytes(BACKING_SIZE))
    create(path, SIZE, format="qcow2", backing="base.raw", backing_format="raw", cluster_size=512)
    disk = open_disk(path, metadata_cache_bytes=16384)
    copies = []
    real_sync = disk.host.sync

    def sync_and_copy() -> None:
        real_sync()
        if len(copies) < 24:
            copy = tmp_path / f"crash-{len(copies)}.qcow2"
            shutil.copyfile(path, copy)
            copies.append(copy)

    disk.host.sync = sync_and_copy
    rng = random.Random(8)
    for step in range(60):
        offset = rng.randrange(SIZE // 512) * 512
        length = min(rng.randrange(1, 9000), SIZE - offset)
        if step % 7 == 3:
            disk.discard(offset, length)
        else:
            disk.writev(offset, [memoryview(rng.randbytes(length))])
        if step % 10 == 9:
            disk.flush()
    shutil.copyfile(path, tmp_path / "crash-unflushed.qcow2")
    copies.append(tmp_path / "crash-unflushed.qcow2")
    disk.close()
    assert len(copies) > 10
    for copy in copies:
        proc = run_tool("qemu-img", "check", str(copy), check=False)
        assert proc.returncode in (0, 3), f"{copy.name}: qemu-img check exited {proc.returncode}:\n{proc.stdout}"
    assert_qemu_check_clean(path)


# ---- damaged headers and files


@pytest.fixture(scope="module")
def qemu_template(tmp_path_factory):
    """A small image QEMU made and wrote: header, refcount table, refcount block, L1, L2, two data clusters."""
    path = tmp_path_factory.mktemp("template") / "template.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M")
    qemu_io(path, "write -P 0xab 0 64k", "write -P 0xcd 512k 64k")
    return path


@pytest.fixture
def qemu_image(tmp_path, qemu_template):
    """qemu_image(name) -> the path of a fresh copy of the template."""
    def copy(name: str = "img.qcow2") -> str:
        path = tmp_path / name
        shutil.copyfile(qemu_template, path)
        return str(path)
    return copy


# (field description, offset, struct format, value, error class, message pattern)
HEADER_DAMAGE = [
    ("magic", 0, ">4s", b"QFI\xfa", ImageCorruptError, "not a qcow2"),
    ("version 0", 4, ">I", 0, ImageCorruptError, "version 0"),
    ("version 1", 4, ">I", 1, UnsupportedImageError, "version 1"),
    ("version 4", 4, ">I", 4, UnsupportedImageError, "version 4"),
    ("cluster_bits 8", 20, ">I", 8, ImageCorruptError, "cluster_bits is 8"),
    ("cluster_bits 22", 20, ">I", 22, ImageCorruptError, "cluster_bits is 22"),
    ("size past L1", 24, ">Q", 1 << 40, ImageCorruptError, "L1 table has 1 entries"),
    ("size 2^63", 24, ">Q", 1 << 63, ImageCorruptError, "virtual size"),
    ("AES", 32, ">I", 1, UnsupportedImageError, "encrypted \\(AES\\)"),
    ("LUKS", 32, ">I", 2, UnsupportedImageError, "encrypted \\(LUKS\\)"),
    ("l1_size 0", 36, ">I", 0, ImageCorruptError, "L1 table has 0 entries"),
    ("l1_size huge", 36, ">I", 1 << 31, UnsupportedImageError, "L1 table has"),
    ("l1 unaligned", 40, ">Q", 0x30008, ImageCorruptError, "L1 table offset 0x30008 is not aligned"),
    ("l1 at 0", 40, ">Q", 0, ImageCorruptError, "L1 table is at offset 0"),
    ("l1 past the end", 40, ">Q", 1 << 40, ImageCorruptError, "L1 table .* runs past the end"),
    ("l1 over refcount table", 40, ">Q", 0x10000, ImageCorruptError, "overlaps the refcount table"),
    ("refcount table unaligned", 48, ">Q", 0x10200, ImageCorruptError, "refcount table offset"),
    ("refcount table past the end", 48, ">Q", 1 << 30, ImageCorruptError, "refcount table .* runs past"),
    ("refcount_table_clusters 0", 56, ">I", 0, ImageCorruptError, "refcount_table_clusters is 0"),
    ("refcount_table_clusters huge", 56, ">I", 1 << 20, UnsupportedImageError, "refcount table is"),
    ("nb_snapshots", 60, ">I", 1 << 20, ImageCorruptError, "nb_snapshots"),
    ("unknown incompatible bit", 72, ">Q", 1 << 40, UnsupportedImageError, "unknown incompatible.*bit 40"),
    ("external data file", 72, ">Q", 1 << 2, UnsupportedImageError, "external data file"),
    ("extended L2", 72, ">Q", 1 << 4, UnsupportedImageError, "extended L2"),
    ("compression bit, type 0", 72, ">Q", 1 << 3, ImageCorruptError, "compression_type is 0"),
    ("corrupt bit", 72, ">Q", 1 << 1, ImageCorruptError, "marked corrupt.*qemu-img check"),
    ("refcount_order 7", 96, ">I", 7, ImageCorruptError, "refcount_order is 7"),
    ("header_length 100", 100, ">I", 100, ImageCorruptError, "header_length is 100"),
    ("header_length 108", 100, ">I", 108, ImageCorruptError, "header_length is 108"),
    ("header_length past the cluster", 100, ">I", 1 << 20, ImageCorruptError, "header_length"),
    ("compression type 1 without its bit", 104, ">B", 1, ImageCorruptError, "feature bit is clear"),
    ("extension length", 0x74, ">I", 0xFFFF, ImageCorruptError, "runs past the header area"),
    ("L1 entry past the end", 0x30000, ">Q", (1 << 63) | (1 << 36), ImageCorruptError,
     "L1 entry 0: the L2 table .* past the end"),
    ("L1 entry unaligned", 0x30000, ">Q", (1 << 63) | 0x40100, ImageCorruptError, "L1 entry 0"),
    ("refcount block past the end", 0x10000, ">Q", 1 << 36, ImageCorruptError, "refcount block 0"),
    ("refcount block over the L1 table", 0x10000, ">Q", 0x30000, ImageCorruptError,
     "refcount block 0 at 0x30000 overlaps the L1 table"),
]


@pytest.mark.parametrize("what, offset, fmt, value, error, message", HEADER_DAMAGE,
                         ids=[case[0] for case in HEADER_DAMAGE])
def test_a_damaged_header_is_refused_at_open_naming_the_field(qemu_image, what, offset, fmt, value, error, message):
    path = qemu_image()
    patch(path, offset, fmt, value)
    for read_only in (True, False):
        with pytest.raises(error, match=message) as caught:
            open_disk(path, format="qcow2", read_only=read_only)
        assert path in str(caught.value)


def test_zstd_and_named_unknown_features_are_refused(qemu_image):
    path = qemu_image()
    patch(path, 72, ">Q", 1 << 3)
    patch(path, 104, ">B", 1)
    with pytest.raises(UnsupportedImageError, match="zstd"):
        open_disk(path, read_only=True)
    path = qemu_image("named.qcow2")
    # QEMU's feature name table starts at 0x78: turn its first entry into (incompatible, bit 9, a name)
    patch(path, 0x79, ">B", 9)
    patch(path, 0x7A, ">14s", b"fancy feature\0")
    patch(path, 72, ">Q", 1 << 9)
    with pytest.raises(UnsupportedImageError, match=r"bit 9 \(fancy feature\)"):
        open_disk(path, read_only=True)


def test_the_dirty_bit_allows_reading_but_not_writing(qemu_image):
    path = qemu_image()
    expected = vmkit_view(path)
    patch(path, 72, ">Q", 1)
    with pytest.raises(UnsupportedImageError, match="dirty bit.*qemu-img check -r all"):
        open_disk(path)
    assert vmkit_view(path) == expected
    assert info(path).dirty


def test_a_writer_clears_the_autoclear_bits_it_does_not_maintain(qemu_image):
    path = qemu_image()
    patch(path, 88, ">Q", 0b11)
    open_disk(path, read_only=True).close()
    assert header_field(path, 88, ">Q") == 0b11
    open_disk(path).close()
    assert header_field(path, 88, ">Q") == 0
    assert_qemu_check_clean(path)


def test_the_corrupt_bit_is_described_by_info(qemu_image):
    path = qemu_image()
    patch(path, 72, ">Q", 2)
    assert info(path).corrupt


def test_a_bad_backing_name_is_refused(qemu_image):
    path = qemu_image()
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">QI", 512, 2000))
    with pytest.raises(ImageCorruptError, match="backing file name is 2000 bytes"):
        open_disk(path, read_only=True)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">QI", 65530, 10))
    with pytest.raises(ImageCorruptError, match="not inside the header cluster"):
        open_disk(path, read_only=True)


@pytest.mark.parametrize("keep, message", [
    (50, "too short for a qcow2 header"),
    (100, "too short for a version 3 header"),
    (0x10100, "(L1|refcount) table .* runs past the end"),
    (0x30004, "L1 table .* runs past the end"),
    (0x50000, "L2 table .* past the end|truncated"),
    (0x60000, "truncated"),
])
def test_a_truncated_file_is_refused_at_open(qemu_image, keep, message):
    path = qemu_image()        # clusters: header, refcounts, L1, L2, data, data
    assert os.path.getsize(path) == 0x70000
    os.truncate(path, keep)
    with pytest.raises(ImageCorruptError, match=message):
        open_disk(path, format="qcow2", read_only=True)


def test_a_bad_l2_entry_is_an_error_when_its_table_is_read(qemu_image):
    path = qemu_image()
    for entry, message in (((1 << 63) | (1 << 40), "L2 table at 0x40000, entry 0: the data cluster .* past the end"),
                           ((1 << 63) | 0x50002, "L2 table at 0x40000, entry 0 .* reserved bits"),
                           ((1 << 63) | 0x30000, "overlaps the L1 table")):
        patch(path, 0x40000, ">Q", entry)
        disk = open_disk(path, read_only=True)
        with pytest.raises(ImageCorruptError, match=message):
            disk.readv(0, [memoryview(bytearray(512))])
        disk.close()


# ---- backing chains


def test_relative_backing_names_resolve_against_the_image_directory(tmp_path, monkeypatch):
    (tmp_path / "images" / "overlays").mkdir(parents=True)
    base = tmp_path / "images" / "base.raw"
    base.write_bytes(b"\x77" * 65536)
    top = tmp_path / "images" / "overlays" / "top.qcow2"
    create(top, 131072, format="qcow2", backing="../base.raw")
    monkeypatch.chdir(tmp_path)
    assert vmkit_view("images/overlays/top.qcow2") == b"\x77" * 65536 + bytes(65536)
    assert info(top).backing.path == str(top.parent / "../base.raw")
    assert info(top).backing_format == "raw"


def test_a_backing_chain_loop_is_refused(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", str(a), "1M")
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", str(b), "1M")
    with pytest.raises(BackingChainError, match="loop: .*a.qcow2 -> .*b.qcow2 -> .*a.qcow2"):
        open_disk(a)
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "self.qcow2", "-F", "qcow2",
             str(tmp_path / "self.qcow2"), "1M")
    with pytest.raises(BackingChainError, match="loop"):
        open_disk(tmp_path / "self.qcow2", read_only=True)


def test_an_over_deep_chain_is_refused_and_the_limit_is_allowed(tmp_path):
    (tmp_path / "img0.raw").write_bytes(b"\x01" * 4096)
    previous = "img0.raw"
    for number in range(1, MAX_BACKING_DEPTH + 2):
        name = f"img{number}.qcow2"
        create(tmp_path / name, 4096, format="qcow2", backing=previous, cluster_size=4096)
        previous = name
    top_ok = tmp_path / f"img{MAX_BACKING_DEPTH}.qcow2"          # 16 backing files below it
    assert vmkit_view(top_ok) == b"\x01" * 4096
    assert len(info(top_ok).chain()) == MAX_BACKING_DEPTH + 1
    with pytest.raises(BackingChainError, match=f"deeper than {MAX_BACKING_DEPTH}"):
        open_disk(tmp_path / previous)


def test_missing_refused_and_unsupported_backing_files(tmp_path):
    path = tmp_path / "top.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "gone.raw", "-F", "raw", str(path), "1M")
    with pytest.raises(BackingChainError, match="'gone.raw' cannot be opened.*does not exist"):
        open_disk(path)
    (tmp_path / "gone.raw").write_bytes(bytes(4096))
    with pytest.raises(BackingChainError, match="not followed"):
        open_disk(path, follow_backing=False)
    odd = tmp_path / "odd.qcow2"
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "gone.raw", "-F", "vmdk", str(odd), "1M")
    with pytest.raises(UnsupportedImageError, match="'vmdk'"):
        open_disk(odd)
    with pytest.raises(BackingChainError):
        create(tmp_path / "new.qcow2", None, format="qcow2", backing="nothing-here.raw")


def test_a_backing_format_missing_from_the_header_is_probed(tmp_path):
    base = tmp_path / "base.qcow2"
    create(base, 65536, format="qcow2")
    with open_disk(base) as disk:
        disk.writev(0, [memoryview(b"from the base")])
    header = qcow2_layout(65536, 65536)
    header.backing_file = "base.qcow2"          # no backing format extension
    fd = os.open(tmp_path / "top.qcow2", os.O_RDWR | os.O_CREAT | os.O_EXCL)
    write_new_qcow2(fd, header)
    os.close(fd)
    assert vmkit_view(tmp_path / "top.qcow2")[:13] == b"from the base"
    described = info(tmp_path / "top.qcow2")
    assert described.backing_format is None and described.backing.format == "qcow2"


def test_backing_files_are_shared_read_only_and_kept_from_writers(tmp_path):
    create(tmp_path / "base.raw", 65536)
    tops = [tmp_path / f"top{n}.qcow2" for n in range(2)]
    for top in tops:
        create(top, 65536, format="qcow2", backing="base.raw", backing_format="raw")
    disks = [open_disk(top) for top in tops]           # two VMs on one base
    with pytest.raises(ImageLockedError, match="base.raw"):
        open_disk(tmp_path / "base.raw")
    with pytest.raises(ImageLockedError, match="top0.qcow2"):
        open_disk(tops[0])
    for disk in disks:
        disk.close()
    open_disk(tmp_path / "base.raw").close()


# ---- create and info


@pytest.mark.parametrize("size, cluster_size", [(0, 65536), (512, 512), (10 << 20, 512), (1 << 40, 65536),
                                                (3 << 30, 2 << 20), ((1 << 30) + 512, 4096)])
def test_created_images_pass_qemu_img_check(tmp_path, size, cluster_size):
    path = tmp_path / "new.qcow2"
    create(path, size, format="qcow2", cluster_size=cluster_size)
    assert_qemu_check_clean(path)
    qemu = run_tool("qemu-img", "info", "--output=json", str(path)).stdout
    assert f'"virtual-size": {size},' in qemu and f'"cluster-size": {cluster_size},' in qemu
    described = info(path)
    assert (described.format, described.virtual_size, described.cluster_size, described.version,
            described.refcount_bits) == ("qcow2", size, cluster_size, 3, 16)


def test_create_with_a_backing_file_takes_its_size_and_format(tmp_path):
    base = tmp_path / "base.qcow2"
    create(base, 3 << 20, format="qcow2")
    top = tmp_path / "top.qcow2"
    create(top, None, format="qcow2", backing="base.qcow2")
    qemu = run_tool("qemu-img", "info", "--output=json", str(top)).stdout
    assert '"backing-filename-format": "qcow2"' in qemu and '"backing-filename": "base.qcow2"' in qemu
    described = info(top)
    assert described.virtual_size == 3 << 20
    assert [(i.path, i.format) for i in described.chain()] == [(str(top), "qcow2"), (str(base), "qcow2")]
    with pytest.raises(ValueError, match="power of two"):
        create(tmp_path / "bad.qcow2", 1 << 20, format="qcow2", cluster_size=1000)


# ---- the header parser takes any bytes


if given is not None:
    def _seed_image() -> bytes:
        header = qcow2_layout(1 << 20, 4096)
        header.backing_file = "backing.raw"
        header.backing_format = "raw"
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "seed.qcow2")
            fd = os.open(path, os.O_RDWR | os.O_CREAT)
            write_new_qcow2(fd, header)
            os.close(fd)
            with open(path, "rb") as f:
                return f.read()

    SEED_IMAGE = _seed_image()

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits=st.lists(st.tuples(st.one_of(st.integers(0, 255), st.integers(0, len(SEED_IMAGE) - 1)),
                                    st.binary(min_size=1, max_size=8)), max_size=8),
           cut=st.one_of(st.none(), st.integers(0, len(SEED_IMAGE))),
           noise=st.binary(max_size=200))
    def test_any_header_bytes_give_an_image_or_an_image_error(tmp_path, edits, cut, noise):
        data = bytearray(SEED_IMAGE)
        for position, replacement in edits:
            data[position:position + len(replacement)] = replacement
        if noise and noise[0] & 1:
            data[:len(noise)] = noise                     # sometimes: arbitrary bytes from the start
        if cut is not None:
            del data[cut:]
        try:
            parse_header("fuzz", bytes(data[:4096]), len(data))
        except ImageError:
            pass
        path = tmp_path / "fuzz.qcow2"
        path.write_bytes(bytes(data))
        try:
            disk = open_disk(path, format="qcow2", read_only=True, follow_backing=False, force_share=True)
        except ImageError:
            return
        try:
            for offset in (0, disk.size // 2, max(0, disk.size - 8192)):
                length = min(8192, disk.size - offset)
                try:
                    disk.readv(offset, [memoryview(bytearray(length))])
                except StorageError:
                    pass
        finally:
            disk.close()
else:
    def test_any_header_bytes_give_an_image_or_an_image_error():
        pytest.skip("hypothesis is not installed (pip install hypothesis==6.170.15)")
