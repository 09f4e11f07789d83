"""virtio-blk requests against a real raw image, each type and each hostile shape (virtio 1.x, 5.2)."""

import struct

import pytest

from vmkit.devices.virtio.blk import VirtioBlk
from vmkit.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Virtqueue, VirtqueueError
from vmkit.memory import GuestMemory
from vmkit.storage import open_disk

DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
HEADER, DATA, STATUS = 0x20000, 0x30000, 0x40000
IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES = 0, 1, 4, 8, 11, 13      # request types (5.2.6)
OK, IOERR, UNSUPP = 0, 1, 2                                            # status values
DISK_BYTES = 1 << 20


@pytest.fixture
def rig(tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(range(256)) * (DISK_BYTES // 256))
    memory = GuestMemory.create(4 << 20)
    queue = Virtqueue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = 16, DESC, AVAIL, USED
    queue.validate_layout(memory)
    disks = []

    def device(read_only=False):
        disk = open_disk(str(image), "raw", read_only=read_only)
        disks.append(disk)
        return VirtioBlk(disk, serial="vmkit-serial-0001")

    yield memory, queue, device, image
    for disk in disks:
        disk.close()
    memory.close()


def submit(memory, queue, device, chain):
    """Post one chain of (address, length, device_writes) buffers; return (status byte, used length)."""
    for i, (address, length, writes) in enumerate(chain):
        flags = (VIRTQ_DESC_F_WRITE if writes else 0) | (VIRTQ_DESC_F_NEXT if i + 1 < len(chain) else 0)
        memory.write(DESC + 16 * i, struct.pack("<QIHH", address, length, flags, i + 1))
    index = queue.last_avail
    memory.write(AVAIL + 4 + 2 * (index % queue.size), struct.pack("<H", 0))
    memory.write(AVAIL + 2, struct.pack("<H", (index + 1) & 0xFFFF))
    memory.write(STATUS, b"\xee")
    device.process(queue, memory)
    used_index = (queue.next_used - 1) % queue.size
    _, used_length = struct.unpack("<II", memory.read(USED + 4 + 8 * used_index, 8))
    return memory.read(STATUS, 1)[0], used_length


def request(memory, kind, sector):
    memory.write(HEADER, struct.pack("<IIQ", kind, 0, sector))
    return (HEADER, 16, False)


def test_read_write_flush_and_get_id(rig):
    memory, queue, device, image = rig
    blk = device()
    assert struct.unpack_from("<Q", blk.config(), 0)[0] == DISK_BYTES // 512     # capacity in sectors
    assert struct.unpack_from("<I", blk.config(), 20)[0] == 512                  # blk_size
    status, used = submit(memory, queue, blk, [request(memory, IN, 2), (DATA, 1024, True), (STATUS, 1, True)])
    assert (status, used) == (OK, 1025) and memory.read(DATA, 1024) == bytes(range(256)) * 4
    memory.write(DATA, b"\xab" * 4096)
    assert submit(memory, queue, blk, [request(memory, OUT, 8), (DATA, 4096, False), (STATUS, 1, True)]) == (OK, 1)
    assert submit(memory, queue, blk, [request(memory, FLUSH, 0), (STATUS, 1, True)]) == (OK, 1)
    assert image.read_bytes()[8 * 512 : 16 * 512] == b"\xab" * 4096
    status, used = submit(memory, queue, blk, [request(memory, GET_ID, 0), (DATA, 20, True), (STATUS, 1, True)])
    assert (status, used) == (OK, 21) and memory.read(DATA, 20) == b"vmkit-serial-0001\0\0\0"


def test_scatter_gather_across_uneven_buffers(rig):
    memory, queue, device, _ = rig
    blk = device()
    chain = [request(memory, IN, 0), (DATA, 100, True), (DATA + 0x1000, 412, True), (STATUS, 1, True)]
    assert submit(memory, queue, blk, chain) == (OK, 513)
    assert memory.read(DATA, 100) + memory.read(DATA + 0x1000, 412) == bytes(range(256)) * 2


@pytest.mark.parametrize("chain_of,status", [
    (lambda m: [request(m, IN, DISK_BYTES // 512), (DATA, 512, True), (STATUS, 1, True)], IOERR),   # past the end
    (lambda m: [request(m, IN, DISK_BYTES // 512 - 1), (DATA, 1024, True), (STATUS, 1, True)], IOERR),  # across it
    (lambda m: [request(m, IN, 2**63), (DATA, 512, True), (STATUS, 1, True)], IOERR),    # offset overflows 64 bits
    (lambda m: [request(m, IN, 0), (DATA, 100, True), (STATUS, 1, True)], IOERR),        # not whole sectors
    (lambda m: [request(m, OUT, 0), (DATA, 512, True), (STATUS, 1, True)], IOERR),       # OUT data device-writable
    (lambda m: [request(m, 99, 0), (STATUS, 1, True)], UNSUPP),                          # unknown type
    (lambda m: [request(m, DISCARD, 0), (DATA, 10, False), (STATUS, 1, True)], IOERR),   # not whole segments
])
def test_bad_requests_get_a_status(rig, chain_of, status):
    memory, queue, device, image = rig
    before = image.read_bytes()
    assert submit(memory, queue, device(), chain_of(memory))[0] == status
    assert image.read_bytes() == before


def test_a_read_only_disk_refuses_writes_and_offers_ro(rig):
    memory, queue, device, image = rig
    blk = device(read_only=True)
    assert blk.features & (1 << 5) and not blk.features & (1 << 13)          # RO; no DISCARD
    before = image.read_bytes()
    memory.write(DATA, b"\x55" * 512)
    assert submit(memory, queue, blk, [request(memory, OUT, 0), (DATA, 512, False), (STATUS, 1, True)])[0] == IOERR
    memory.write(DATA, struct.pack("<QII", 0, 1, 0))
    assert submit(memory, queue, blk, [request(memory, DISCARD, 0), (DATA, 16, False), (STATUS, 1, True)])[0] == UNSUPP
    assert image.read_bytes() == before


def test_discard_and_write_zeroes_leave_zeros(rig):
    memory, queue, device, image = rig
    blk = device()
    memory.write(DATA, struct.pack("<QII", 4, 2, 0))
    assert submit(memory, queue, blk, [request(memory, DISCARD, 0), (DATA, 16, False), (STATUS, 1, True)])[0] == OK
    memory.write(DATA, struct.pack("<QII", 10, 1, 1) + struct.pack("<QII", 20, 1, 0))     # UNMAP allowed here
    assert submit(memory, queue, blk, [request(memory, WRITE_ZEROES, 0), (DATA, 32, False), (STATUS, 1, True)])[0] == OK
    data = image.read_bytes()
    assert data[4 * 512 : 6 * 512] == bytes(1024) and data[10 * 512 : 11 * 512] == bytes(512)
    assert data[20 * 512 : 21 * 512] == bytes(512) and data[6 * 512 : 7 * 512] != bytes(512)
    memory.write(DATA, struct.pack("<QII", 0, 1, 1))                                     # UNMAP on a discard
    assert submit(memory, queue, blk, [request(memory, DISCARD, 0), (DATA, 16, False), (STATUS, 1, True)])[0] == IOERR


@pytest.mark.parametrize("chain,message", [
    ([(HEADER, 16, False)], "no device-writable status byte"),                    # status missing
    ([(HEADER, 16, False), (STATUS, 1, False)], "no device-writable status byte"),  # status device-readable
    ([(HEADER, 8, False), (STATUS, 1, True)], "header is 8 device-readable bytes"),  # header too short
    ([(HEADER, 16, True), (STATUS, 1, True)], "header is 0 device-readable bytes"),  # header device-writable
])
def test_chains_the_device_cannot_answer_raise_for_a_device_reset(rig, chain, message):
    memory, queue, device, image = rig
    memory.write(HEADER, struct.pack("<IIQ", OUT, 0, 0))
    before = image.read_bytes()
    with pytest.raises(VirtqueueError, match=message):
        submit(memory, queue, device(), chain)
    assert image.read_bytes() == before


def test_a_request_over_the_rate_limit_waits_in_the_queue(rig):
    from vmkit.devices.rate_limiter import RateLimiter

    memory, queue, device, _ = rig
    now = [0]
    disk = device().disk
    blk = VirtioBlk(disk, serial="s", limiter=RateLimiter.per_second(iops=2, clock=lambda: now[0]))
    waits: list[int] = []
    retries: list = []
    served_again: list[int] = []

    class Host:
        def watch(self, fd, handler): raise AssertionError("blk watches no fd")
        def unwatch(self, fd): raise AssertionError("blk watches no fd")
        def call_later(self, delay_ns, handler):
            waits.append(delay_ns)
            retries.append(handler)
        def serve(self, queue_index):
            served_again.append(queue_index)

    blk.attach(Host())
    for _ in range(2):                                   # the bucket starts full: 2 requests pass
        assert submit(memory, queue, blk, [request(memory, FLUSH, 0), (STATUS, 1, True)]) == (OK, 1)
    served = queue.next_used
    submit(memory, queue, blk, [request(memory, FLUSH, 0), (STATUS, 1, True)])
    assert queue.next_used == served and waits == [500_000_000]   # one token comes back in 0.5 s
    assert queue.last_avail == served                    # the request is still offered
    assert blk.process(queue, memory) is False and len(waits) == 1   # no second timer while one waits
    now[0] = 500_000_000
    retries[0]()                                         # the timer fires: the queue is served again
    assert served_again == [0]
    assert blk.process(queue, memory) is True and queue.next_used == served + 1
