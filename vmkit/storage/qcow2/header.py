"""The qcow2 header: parsing with validation, and building one for a new image.

Layout from QEMU's docs/interop/qcow2.rst (all fields big-endian). `parse_header` checks every field
against the spec and against the file's size, so a damaged or truncated image fails here, at open,
with the field named: it raises ImageCorruptError for what is wrong and UnsupportedImageError for
what is valid but not implemented, and nothing else, whatever the bytes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field

from vmkit.storage.errors import ImageCorruptError, UnsupportedImageError
from vmkit.storage.probe import QCOW2_MAGIC

V2_FIELDS = struct.Struct(">4sIQIIQIIQQIIQ")      # through snapshots_offset: 72 bytes
V3_FIELDS = struct.Struct(">QQQII")               # incompatible .. header_length: 32 more
V2_HEADER_LENGTH = V2_FIELDS.size
V3_MIN_HEADER_LENGTH = V2_FIELDS.size + V3_FIELDS.size
V3_HEADER_LENGTH = 112                            # with the compression_type byte, padded to 8
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21        # 512 bytes .. 2 MiB (QEMU's limit)
MAX_L1_BYTES = 32 << 20                           # QEMU's limits, so QEMU can open what vmkit makes
MAX_REFCOUNT_TABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536
MAX_BACKING_NAME = 1023

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type",
                  4: "extended L2 entries"}
COMPAT_LAZY_REFCOUNTS = 1 << 0

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# offsets of fields that an open image rewrites
REFCOUNT_TABLE_FIELDS_OFFSET = 48                 # refcount_table_offset (8) + _clusters (4)
AUTOCLEAR_OFFSET = 88

L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L1_RESERVED_MASK = 0x7F00_0000_0000_01FF
COPIED = 1 << 63


@dataclass
class Header:
    """The fields of a qcow2 header, and what its extensions said."""

    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER_LENGTH
    compression_type: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // 8

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def refcount_block_entries(self) -> int:
        return self.cluster_size * 8 // self.refcount_bits

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible & INCOMPAT_CORRUPT)


def be64_array(raw: bytes | bytearray) -> array[int]:
    """Big-endian 64-bit table entries as a compact array of ints."""
    table = array("Q", bytes(raw[:len(raw) - len(raw) % 8]))
    if sys.byteorder == "little":
        table.byteswap()
    return table


def be64_bytes(table: array[int]) -> bytes:
    """The inverse of be64_array."""
    copy = array("Q", table)
    if sys.byteorder == "little":
        copy.byteswap()
    return copy.tobytes()


def l1_entries_needed(size: int, cluster_bits: int) -> int:
    """How many L1 entries a virtual disk of `size` bytes needs."""
    span = 1 << (cluster_bits + cluster_bits - 3)   # bytes one L2 table maps
    return -(-size // span)


def _feature_list(bits: int, names: dict[tuple[int, int], str]) -> str:
    described = []
    for bit in range(64):
        if bits >> bit & 1:
            name = names.get((0, bit)) or INCOMPAT_NAMES.get(bit)
            described.append(f"bit {bit} ({name})" if name else f"bit {bit}")
    return ", ".join(described)


def _check_range(path: str, what: str, offset: int, length: int, cluster_size: int, file_size: int) -> None:
    if offset % cluster_size:
        raise ImageCorruptError(f"{path}: the {what} offset {offset:#x} is not aligned to the cluster size "
                                f"({cluster_size})")
    if offset == 0:
        raise ImageCorruptError(f"{path}: the {what} is at offset 0, over the header")
    if offset + length > file_size:
        raise ImageCorruptError(f"{path}: the {what} ({length} bytes at {offset:#x}) runs past the end of the "
                                f"file ({file_size} bytes): the image is truncated or damaged")


def _parse_extensions(path: str, data: bytes, header: Header, start: int, end: int) -> None:
    seen: set[int] = set()
    pos = start
    while pos + 8 <= end:
        kind, length = struct.unpack_from(">II", data, pos)
        if kind == EXT_END:
            return
        body_end = pos + 8 + length
        if body_end > end:
            raise ImageCorruptError(f"{path}: header extension {kind:#010x} at offset {pos} has length {length}, "
                                    f"which runs past the header area (ends at {end})")
        if kind in seen and kind in (EXT_BACKING_FORMAT, EXT_FEATURE_NAMES, EXT_DATA_FILE, EXT_CRYPTO):
            raise ImageCorruptError(f"{path}: header extension {kind:#010x} appears twice")
        seen.add(kind)
        body = data[pos + 8:body_end]
        if kind == EXT_BACKING_FORMAT:
            try:
                header.backing_format = body.decode("ascii")
            except UnicodeDecodeError:
                raise ImageCorruptError(f"{path}: the backing format extension is not ASCII text") from None
        elif kind == EXT_FEATURE_NAMES:
            for entry in range(0, length - length % 48, 48):
                ftype, bit = body[entry], body[entry + 1]
                name = body[entry + 2:entry + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
                header.feature_names[(ftype, bit)] = name
        pos = body_end + (-length % 8)


def parse_header(path: str, data: bytes, file_size: int) -> Header:
    """Parse and check the header in `data` (the file's first cluster, or all of it if shorter)."""
    if len(data) < V2_HEADER_LENGTH:
        raise ImageCorruptError(f"{path}: the file is {file_size} bytes, too short for a qcow2 header "
                                f"({V2_HEADER_LENGTH} bytes at least)")
    (magic, version, backing_offset, backing_size, cluster_bits, size, crypt_method, l1_size, l1_offset,
     rt_offset, rt_clusters, nb_snapshots, snapshots_offset) = V2_FIELDS.unpack_from(data)
    if magic != QCOW2_MAGIC:
        raise ImageCorruptError(f"{path}: not a qcow2 image (magic {magic!r}, expected {QCOW2_MAGIC!r})")
    if version not in (2, 3):
        if version == 1 or version > 3:
            raise UnsupportedImageError(f"{path}: qcow version {version} is not supported (only 2 and 3)")
        raise ImageCorruptError(f"{path}: invalid qcow2 version {version}")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise ImageCorruptError(f"{path}: cluster_bits is {cluster_bits}; it must be "
                                f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS} (512 bytes to 2 MiB)")
    cluster_size = 1 << cluster_bits
    header = Header(version=version, cluster_bits=cluster_bits, size=size, l1_size=l1_size,
                    l1_table_offset=l1_offset, refcount_table_offset=rt_offset,
                    refcount_table_clusters=rt_clusters, nb_snapshots=nb_snapshots,
                    snapshots_offset=snapshots_offset, header_length=V2_HEADER_LENGTH)
    if version == 3:
        if len(data) < V3_MIN_HEADER_LENGTH:
            raise ImageCorruptError(f"{path}: the file is {file_size} bytes, too short for a version 3 header "
                                    f"({V3_MIN_HEADER_LENGTH} bytes at least)")
        (header.incompatible, header.compatible, header.autoclear, header.refcount_order,
         header.header_length) = V3_FIELDS.unpack_from(data, V2_HEADER_LENGTH)
        if (header.header_length < V3_MIN_HEADER_LENGTH or header.header_length % 8
                or header.header_length > min(cluster_size, len(data))):
            raise ImageCorruptError(f"{path}: header_length is {header.header_length}; it must be a multiple of 8 "
                                    f"from {V3_MIN_HEADER_LENGTH} to the cluster size ({cluster_size}), "
                                    f"inside the file")
        if header.header_length > V3_MIN_HEADER_LENGTH:
            header.compression_type = data[V3_MIN_HEADER_LENGTH]
        if header.refcount_order > 6:
            raise ImageCorruptError(f"{path}: refcount_order is {header.refcount_order}; at most 6 (64-bit "
                                    f"refcounts) is allowed")
    extensions_end = min(len(data), cluster_size)
    if header.header_length < backing_offset < extensions_end:
        extensions_end = backing_offset             # the backing name follows the extensions
    _parse_extensions(path, data, header, header.header_length, extensions_end)
    _check_features(path, header, crypt_method)
    _check_tables(path, header, file_size)
    if backing_offset and backing_size:
        header.backing_file = _backing_name(path, data, backing_offset, backing_size, header)
    return header


def _check_features(path: str, header: Header, crypt_method: int) -> None:
    if crypt_method:
        kind = {1: "AES", 2: "LUKS"}.get(crypt_method, f"method {crypt_method}")
        raise UnsupportedImageError(f"{path}: the image is encrypted ({kind}); vmkit does not support "
                                    f"encrypted qcow2 images")
    unknown = header.incompatible & ~((1 << len(INCOMPAT_NAMES)) - 1)
    if unknown:
        raise UnsupportedImageError(f"{path}: unknown incompatible feature(s): "
                                    f"{_feature_list(unknown, header.feature_names)}; refusing to open")
    for bit, why in ((INCOMPAT_DATA_FILE, "images with an external data file"),
                     (INCOMPAT_EXTL2, "extended L2 entries (subclusters)")):
        if header.incompatible & bit:
            raise UnsupportedImageError(f"{path}: incompatible feature {_feature_list(bit, header.feature_names)}"
                                        f" is set: vmkit does not support {why}")
    if header.incompatible & INCOMPAT_COMPRESSION:
        if header.compression_type == 0:
            raise ImageCorruptError(f"{path}: the compression type bit is set but compression_type is 0")
        kind = {1: "zstd"}.get(header.compression_type, f"type {header.compression_type}")
        raise UnsupportedImageError(f"{path}: compressed clusters use {kind}; vmkit reads only deflate (zlib)")
    if header.compression_type:
        raise ImageCorruptError(f"{path}: compression_type is {header.compression_type} but the compression "
                                f"type feature bit is clear")


def _check_tables(path: str, header: Header, file_size: int) -> None:
    cluster_size = header.cluster_size
    if header.size >= 1 << 63:
        raise ImageCorruptError(f"{path}: the virtual size {header.size} is too large")
    needed = l1_entries_needed(header.size, header.cluster_bits)
    if header.l1_size < needed:
        raise ImageCorruptError(f"{path}: the L1 table has {header.l1_size} entries; a virtual size of "
                                f"{header.size} bytes needs {needed}")
    if header.l1_size * 8 > MAX_L1_BYTES:
        raise UnsupportedImageError(f"{path}: the L1 table has {header.l1_size} entries, more than QEMU's and "
                                    f"vmkit's limit of {MAX_L1_BYTES // 8}")
    if header.l1_size:
        _check_range(path, "L1 table", header.l1_table_offset, header.l1_size * 8, cluster_size, file_size)
    if header.refcount_table_clusters == 0:
        raise ImageCorruptError(f"{path}: refcount_table_clusters is 0: the image has no refcount table")
    rt_bytes = header.refcount_table_clusters * cluster_size
    if rt_bytes > MAX_REFCOUNT_TABLE_BYTES:
        raise UnsupportedImageError(f"{path}: the refcount table is {rt_bytes} bytes, more than the limit of "
                                    f"{MAX_REFCOUNT_TABLE_BYTES}")
    _check_range(path, "refcount table", header.refcount_table_offset, rt_bytes, cluster_size, file_size)
    if header.l1_size:
        l1_start, l1_end = header.l1_table_offset, header.l1_table_offset + header.l1_size * 8
        rt_start = header.refcount_table_offset
        if l1_start < rt_start + rt_bytes and rt_start < l1_end:
            raise ImageCorruptError(f"{path}: the L1 table at {l1_start:#x} overlaps the refcount table at "
                                    f"{rt_start:#x}")
    if header.nb_snapshots > MAX_SNAPSHOTS:
        raise ImageCorruptError(f"{path}: nb_snapshots is {header.nb_snapshots}, more than {MAX_SNAPSHOTS}")
    if header.nb_snapshots:
        _check_range(path, "snapshot table", header.snapshots_offset, 1, cluster_size, file_size)


def _backing_name(path: str, data: bytes, offset: int, size: int, header: Header) -> str:
    if size > MAX_BACKING_NAME:
        raise ImageCorruptError(f"{path}: the backing file name is {size} bytes long; at most "
                                f"{MAX_BACKING_NAME} are allowed")
    if offset < header.header_length or offset + size > min(header.cluster_size, len(data)):
        raise ImageCorruptError(f"{path}: the backing file name ({size} bytes at offset {offset}) is not inside "
                                f"the header cluster after the header")
    raw = data[offset:offset + size]
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageCorruptError(f"{path}: the backing file name {raw!r} is not UTF-8 text") from None
    if "\0" in name:
        raise ImageCorruptError(f"{path}: the backing file name {raw!r} contains a NUL byte")
    return name


def build_header(header: Header) -> bytes:
    """The bytes of a version 3 header cluster: fields, a backing format extension, the backing name."""
    out = bytearray(V2_FIELDS.pack(QCOW2_MAGIC, 3, 0, 0, header.cluster_bits, header.size, 0, header.l1_size,
                                   header.l1_table_offset, header.refcount_table_offset,
                                   header.refcount_table_clusters, 0, 0))
    out += V3_FIELDS.pack(header.incompatible, header.compatible, header.autoclear, header.refcount_order,
                          V3_HEADER_LENGTH)
    out += bytes(V3_HEADER_LENGTH - len(out))
    if header.backing_format:
        fmt = header.backing_format.encode("ascii")
        out += struct.pack(">II", EXT_BACKING_FORMAT, len(fmt)) + fmt + bytes(-len(fmt) % 8)
    out += struct.pack(">II", EXT_END, 0)
    if header.backing_file:
        name = header.backing_file.encode("utf-8")
        if len(name) > MAX_BACKING_NAME:
            raise ValueError(f"the backing file name is {len(name)} bytes; at most {MAX_BACKING_NAME} are allowed")
        struct.pack_into(">QI", out, 8, len(out), len(name))
        out += name
    if len(out) > header.cluster_size:
        raise ValueError("the header does not fit in one cluster")
    return bytes(out)
