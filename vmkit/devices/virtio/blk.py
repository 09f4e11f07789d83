"""virtio-blk (block device, type 2; virtio 1.x section 5.2): a disk image served to the guest.

A request is a descriptor chain: a 16-byte header the device reads (type, reserved, sector), the
data (read by the device for OUT, written by it for IN), and one status byte the device writes
last. Data moves between the disk file and views of guest memory (storage/: preadv/pwritev for raw
files, no copies).

Hostile requests get a status, never a crash: a sector past the end, a write to a read-only disk,
data that is not whole sectors, bad discard segments get IOERR; an unknown type gets UNSUPP. A
chain the device cannot even answer (no status byte it may write, a header shorter than 16 bytes or
in device-writable memory) raises VirtqueueError, and the transport puts the device in
DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from vmkit.devices.rate_limiter import RateLimiter, RateLimiterError, RateLimiterState
from vmkit.devices.state import StateError, check, check_type
from vmkit.devices.virtio.device import DeviceHost
from vmkit.devices.virtio.pci_transport import VIRTIO_F_VERSION_1
from vmkit.devices.virtio.queue import Buffer, DescriptorChain, Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory
from vmkit.storage.disk import Disk
from vmkit.storage.errors import DiskIOError, DiskRequestError

DEVICE_TYPE = 2
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
WRITE_ZEROES_FLAG_UNMAP = 1

SECTOR = 512
HEADER = struct.Struct("<IIQ")           # type, reserved, sector
SEGMENT = struct.Struct("<QII")          # sector, num_sectors, flags (discard and write-zeroes)
QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2                 # data buffers in one request: the chain less header and status
MAX_SEGMENTS = 32                        # discard / write-zeroes ranges in one request
MAX_SECTORS = 0x400000                   # 2 GiB per discard / write-zeroes range
ID_BYTES = 20


def disk_serial(path: str) -> str:
    """A serial that names the file the disk is (device and inode), stable while the file is."""
    info = os.stat(path)
    return f"{info.st_dev:x}{info.st_ino:x}"[:ID_BYTES]


@dataclass
class BlkCounters:
    """The requests the device answered, by type, and the data they moved (metrics). Bytes count
    only requests answered OK; `ioerr` and `unsupp` count the requests answered so."""

    reads: int = 0
    writes: int = 0
    flushes: int = 0
    discards: int = 0              # DISCARD and WRITE_ZEROES
    get_ids: int = 0
    other: int = 0                 # types the device does not know
    read_bytes: int = 0
    write_bytes: int = 0
    ioerr: int = 0
    unsupp: int = 0

    def count(self, request_type: int, status: int, data_bytes: int) -> None:
        if request_type == T_IN:
            self.reads += 1
            if status == S_OK:
                self.read_bytes += data_bytes
        elif request_type == T_OUT:
            self.writes += 1
            if status == S_OK:
                self.write_bytes += data_bytes
        elif request_type == T_FLUSH:
            self.flushes += 1
        elif request_type in (T_DISCARD, T_WRITE_ZEROES):
            self.discards += 1
        elif request_type == T_GET_ID:
            self.get_ids += 1
        else:
            self.other += 1
        if status == S_IOERR:
            self.ioerr += 1
        elif status == S_UNSUPP:
            self.unsupp += 1


@dataclass(frozen=True)
class BlkState:
    """What the guest knows of a disk beyond the transport: its size, whether it is read-only, its
    serial; and the rate limiter's buckets."""

    capacity: int
    read_only: bool
    serial: bytes
    limiter: RateLimiterState | None


class VirtioBlk:
    """The device side of one disk."""

    device_type = DEVICE_TYPE
    queue_sizes: tuple[int, ...] = (QUEUE_SIZE,)

    def __init__(self, disk: Disk, serial: str = "", label: str = "virtio-blk",
                 limiter: RateLimiter | None = None) -> None:
        self.disk = disk
        self.label = label
        self.limiter = limiter if limiter is not None and limiter.enabled else None
        self._host: DeviceHost | None = None
        self._retry_armed = False
        self.counters = BlkCounters()
        self.serial = (serial or disk_serial(disk.path)).encode()[:ID_BYTES]
        self.features = VIRTIO_F_VERSION_1 | F_SEG_MAX | F_BLK_SIZE | F_FLUSH
        self.features |= F_RO if disk.read_only else F_DISCARD | F_WRITE_ZEROES
        self._config = struct.pack(
            "<QIIHBBIBBHIBBHIIIIIB3x",
            disk.size // SECTOR, 0, SEG_MAX, 0, 0, 0, SECTOR,   # capacity, size_max, seg_max, geometry, blk_size
            0, 0, 0, 0,                                         # topology
            1, 0, 1,                                            # writeback cache, unused, num_queues
            MAX_SECTORS, MAX_SEGMENTS, 1,                       # discard: sectors, segments, alignment
            MAX_SECTORS, MAX_SEGMENTS, 1)                       # write zeroes: sectors, segments, may unmap

    def config(self) -> bytes:
        return self._config

    def reset(self) -> None:
        pass

    def activate(self, features: int) -> None:
        pass                                            # it serves the same whatever was negotiated

    def attach(self, host: DeviceHost) -> None:
        self._host = host                        # a rate limit's wait runs on its timers

    def save(self) -> BlkState:
        return BlkState(self.disk.size, self.disk.read_only, self.serial,
                        self.limiter.save() if self.limiter is not None else None)

    def restore(self, state: object) -> None:
        """The disk must be the one saved (size, read-only) and its serial the same: the guest knows
        them. The rate limiter's buckets carry on where they were."""
        check_type(state, BlkState, self.label)
        assert isinstance(state, BlkState)
        check(state.capacity == self.disk.size, f"{self.label}.capacity",
              f"{state.capacity!r} bytes saved, the disk has {self.disk.size}")
        check(state.read_only == self.disk.read_only, f"{self.label}.read_only",
              f"{state.read_only!r} saved, the disk is {'read-only' if self.disk.read_only else 'writable'}")
        check(state.serial == self.serial, f"{self.label}.serial", f"{state.serial!r} is not {self.serial!r}")
        check((state.limiter is None) == (self.limiter is None), f"{self.label}.limiter",
              "saved with a rate limit the disk has not, or without the one it has")
        if self.limiter is not None:
            try:
                limiter = RateLimiter.restore(state.limiter)
            except RateLimiterError as exc:
                raise StateError(f"{self.label}.limiter: {exc}") from None
            self.limiter = limiter

    def process(self, queue: Virtqueue, memory: GuestMemory) -> bool:
        """Serve the available requests; with a rate limit, stop at the first the budget does not
        cover (it stays in the queue) and ask to be run again when it will."""
        served = False
        if self._retry_armed:
            return False                         # waiting out the limit: the timer will run us
        while (chain := queue.pop(memory)) is not None:
            if self.limiter is not None:
                wait_ns = self.limiter.consume(self._data_bytes(chain, memory))
                if wait_ns:
                    queue.put_back()
                    if self._host is not None:
                        self._retry_armed = True
                        self._host.call_later(wait_ns, self._retry)
                    break
            queue.push_used(memory, chain.head, self._serve(chain, memory))
            served = True
        return served

    def _retry(self) -> None:
        """The rate limit's wait is over: serve the queue again."""
        self._retry_armed = False
        if self._host is not None:
            self._host.serve(0)

    def _data_bytes(self, chain: DescriptorChain, memory: GuestMemory) -> int:
        """The data a request moves (the bandwidth it costs): IN and OUT data; 0 for the others."""
        if sum(b.length for b in chain.readable) < HEADER.size:
            return 0                             # malformed: _serve will refuse it
        request_type = HEADER.unpack(_gather(memory, chain.readable, HEADER.size))[0]
        if request_type == T_IN:
            return max(sum(b.length for b in chain.writable) - 1, 0)
        if request_type == T_OUT:
            return sum(b.length for b in chain.readable) - HEADER.size
        return 0

    # --- one request ---------------------------------------------------------------------------
    def _serve(self, chain: DescriptorChain, memory: GuestMemory) -> int:
        """Carry out one request; return how many bytes the device wrote into the chain."""
        if not chain.writable or chain.writable[-1].length == 0:
            raise VirtqueueError(f"request {chain.head} has no device-writable status byte at its end")
        readable_bytes = sum(b.length for b in chain.readable)
        if readable_bytes < HEADER.size:
            raise VirtqueueError(f"request {chain.head}: its header is {readable_bytes} device-readable bytes, "
                                 f"not {HEADER.size}")
        status_buffer = chain.writable[-1]
        status_at = status_buffer.address + status_buffer.length - 1
        first = chain.readable[0]
        if first.length == HEADER.size:            # the usual shape: the header in a buffer of its own
            request_type, _, sector = HEADER.unpack_from(memory.view(first.address, HEADER.size))
            readable = chain.readable[1:]
        else:
            request_type, _, sector = HEADER.unpack(_gather(memory, chain.readable, HEADER.size))
            readable = _skip(chain.readable, HEADER.size)
        if status_buffer.length == 1:              # and the status byte in one of its own
            writable = chain.writable[:-1]
        else:
            writable = [*chain.writable[:-1], Buffer(status_buffer.address, status_buffer.length - 1)]
        writable = [b for b in writable if b.length]
        status, written, moved = S_OK, 0, 0
        try:
            if request_type == T_IN:
                written = moved = self._read(sector, readable, writable, memory)
            elif request_type == T_OUT:
                moved = self._write(sector, readable, writable, memory)
            elif request_type == T_FLUSH:
                self.disk.flush()
            elif request_type == T_GET_ID:
                written = self._get_id(writable, memory)
            elif request_type in (T_DISCARD, T_WRITE_ZEROES) and not self.disk.read_only:
                self._ranges(request_type, readable, memory)
            else:
                status = S_UNSUPP
        except (_RequestRefused, DiskRequestError, DiskIOError):
            status, written = S_IOERR, 0
        self.counters.count(request_type, status, moved)
        memory.view(status_at, 1)[0] = status
        return written + 1

    def _range(self, sector: int, length: int) -> int:
        """The byte offset of [sector, +length) when it is whole sectors inside the disk."""
        offset = sector * SECTOR
        if length % SECTOR or offset + length > self.disk.size:
            raise _RequestRefused
        return offset

    def _read(self, sector: int, readable: list[Buffer], writable: list[Buffer], memory: GuestMemory) -> int:
        length = sum(b.length for b in writable)
        if readable:
            raise _RequestRefused                  # IN carries no data for the device
        self.disk.readv(self._range(sector, length), [memory.view(b.address, b.length) for b in writable])
        return length

    def _write(self, sector: int, readable: list[Buffer], writable: list[Buffer], memory: GuestMemory) -> int:
        length = sum(b.length for b in readable)
        if writable or self.disk.read_only:
            raise _RequestRefused
        self.disk.writev(self._range(sector, length), [memory.view(b.address, b.length) for b in readable])
        return length

    def _get_id(self, writable: list[Buffer], memory: GuestMemory) -> int:
        room = sum(b.length for b in writable)
        data = self.serial.ljust(ID_BYTES, b"\0")[: min(room, ID_BYTES)]
        _scatter(memory, writable, data)
        return len(data)

    def _ranges(self, request_type: int, readable: list[Buffer], memory: GuestMemory) -> None:
        length = sum(b.length for b in readable)
        if not length or length % SEGMENT.size or length // SEGMENT.size > MAX_SEGMENTS:
            raise _RequestRefused
        for sector, count, flags in SEGMENT.iter_unpack(_gather(memory, readable, length)):
            allowed = WRITE_ZEROES_FLAG_UNMAP if request_type == T_WRITE_ZEROES else 0
            if flags & ~allowed or count > MAX_SECTORS:
                raise _RequestRefused
            offset = self._range(sector, count * SECTOR)
            if request_type == T_DISCARD:
                self.disk.discard(offset, count * SECTOR)
            else:
                self.disk.write_zeroes(offset, count * SECTOR)


class _RequestRefused(Exception):
    """The request is well formed as a chain but not one the disk can carry out: status IOERR."""


def _gather(memory: GuestMemory, buffers: list[Buffer], length: int) -> bytes:
    """The first `length` bytes of `buffers`, in order."""
    parts, left = [], length
    for buffer in buffers:
        if left <= 0:
            break
        take = min(left, buffer.length)
        parts.append(memory.read(buffer.address, take))
        left -= take
    return b"".join(parts)


def _skip(buffers: list[Buffer], length: int) -> list[Buffer]:
    """`buffers` without their first `length` bytes."""
    rest = []
    for buffer in buffers:
        if length >= buffer.length:
            length -= buffer.length
            continue
        rest.append(Buffer(buffer.address + length, buffer.length - length))
        length = 0
    return rest


def _scatter(memory: GuestMemory, buffers: list[Buffer], data: bytes) -> None:
    """Write `data` across `buffers` in order."""
    at = 0
    for buffer in buffers:
        if at >= len(data):
            return
        take = min(buffer.length, len(data) - at)
        memory.write(buffer.address, data[at : at + take])
        at += take
