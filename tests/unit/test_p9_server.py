"""The 9P2000.L server against a real directory: every message type, the jail's escape suite, and a
seeded fuzz run of hostile messages."""

import errno
import os
import random
import stat
import struct

import pytest

from tests.unit import p9_client as c
from tests.unit.p9_client import Reply
from vmkit.devices.virtio.p9 import wire
from vmkit.devices.virtio.p9.server import MAX_MSIZE, Server

O_RDONLY, O_WRONLY, O_RDWR, O_TRUNC, O_DIRECTORY = 0, 1, 2, 0o1000, 0o200000


@pytest.fixture
def tree(tmp_path):
    """A share with files, a subdirectory and traps, and a directory outside it with a secret."""
    share, outside = tmp_path / "share", tmp_path / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("outside-secret\n")
    (share / "f").write_text("hello, guest\n")
    (share / "sub").mkdir()
    (share / "sub" / "inner").write_text("inner\n")
    (share / "to-etc").symlink_to("/etc")
    (share / "to-outside").symlink_to("../outside")
    os.link(outside / "secret", share / "hardlink")
    os.mkfifo(share / "fifo")
    return share, outside


@pytest.fixture
def serve(tree):
    """serve(writable) -> a Server over the share, version negotiated and fid 0 attached."""
    servers, fds = [], []

    def make(writable=True):
        fd = os.open(tree[0], os.O_PATH | os.O_DIRECTORY)
        fds.append(fd)
        server = Server(fd, writable)
        servers.append(server)
        assert call(server, c.version()).kind == wire.TVERSION + 1
        assert call(server, c.attach(0)).kind == wire.TATTACH + 1
        return server

    yield make
    for server in servers:
        server.close()
    for fd in fds:
        os.close(fd)


def call(server, request):
    return Reply(server.exchange(request))


def ok(server, request):
    reply = call(server, request)
    assert reply.kind == request[4] + 1, f"Rlerror {reply.errno} ({os.strerror(reply.errno or 0)})"
    return reply


def refused(server, request, code):
    reply = call(server, request)
    assert reply.kind == wire.RLERROR, reply.kind
    assert reply.errno == code, f"{reply.errno} ({os.strerror(reply.errno)}), wanted {code} ({os.strerror(code)})"


# --- every message, as the Linux client uses it -------------------------------------------------
def test_version_negotiates_msize_and_gates_the_session(tree):
    fd = os.open(tree[0], os.O_PATH | os.O_DIRECTORY)
    try:
        server = Server(fd, False)
        refused(server, c.attach(0), errno.EPROTO)                       # nothing before Tversion
        reply = ok(server, c.version(1 << 30))
        assert reply.u32() == MAX_MSIZE and reply.body[4:] == c.s("9P2000.L")
        reply = ok(server, c.version(8192, b"9P2000.u"))
        assert reply.body[4:] == c.s("unknown") and server.msize == 0    # not a version it speaks
        refused(server, c.version(100), errno.EINVAL)                    # below 4096
        assert ok(server, c.version(8192)).u32() == 8192
        ok(server, c.attach(0))
        refused(server, c.attach(0), errno.EBADF)                        # fid 0 is in use
        ok(server, c.version(8192))                                      # a new session: fids gone
        refused(server, c.getattr_(0), errno.EBADF)
        server.close()
    finally:
        os.close(fd)


def test_walk_open_read_getattr_and_clunk(serve, tree):
    server = serve(writable=False)
    walked = ok(server, c.walk(0, 1, "sub", "inner")).walked()
    assert [q.type for q in walked] == [wire.QT_DIR, wire.QT_FILE]
    assert walked[1].path == (tree[0] / "sub" / "inner").stat().st_ino
    ok(server, c.walk(0, 2, "f"))
    assert ok(server, c.lopen(2)).qid().path == (tree[0] / "f").stat().st_ino
    assert ok(server, c.read(2)).data() == b"hello, guest\n"
    assert ok(server, c.read(2, offset=7, count=5)).data() == b"guest"
    assert ok(server, c.read(2, offset=1000)).data() == b""
    attrs = ok(server, c.getattr_(2)).body
    valid, = struct.unpack_from("<Q", attrs)
    mode, uid, gid, nlink, rdev, size = struct.unpack_from("<IIIQQQ", attrs, 8 + 13)
    info = (tree[0] / "f").stat()
    assert valid == 0x7FF and (mode, uid, gid, nlink, size) == (info.st_mode, info.st_uid, info.st_gid, 1, 13)
    mtime_s, mtime_ns = struct.unpack_from("<QQ", attrs, 8 + 13 + 36 + 16 + 16)   # after blksize, blocks, atime
    assert mtime_s * 10**9 + mtime_ns == info.st_mtime_ns
    ok(server, c.walk(0, 3))                                             # a clone of the root
    assert ok(server, c.getattr_(3)).qid(8).type == wire.QT_DIR
    ok(server, c.clunk(2))
    refused(server, c.read(2), errno.EBADF)
    refused(server, c.clunk(2), errno.EBADF)
    refused(server, c.walk(0, 1, "f"), errno.EBADF)                      # newfid 1 is in use
    refused(server, c.walk(0, 5, "missing"), errno.ENOENT)
    assert len(ok(server, c.walk(0, 5, "sub", "missing", "x")).walked()) == 1   # partial: fid 5 not made
    refused(server, c.getattr_(5), errno.EBADF)
    refused(server, c.walk(0, 5, *["sub"] * 17), errno.EINVAL)          # more than 16 names
    ok(server, c.walk(1, 1, ".."))                                       # newfid == fid: moves it
    assert ok(server, c.getattr_(1)).qid(8).path == (tree[0] / "sub").stat().st_ino


def test_readdir_pages_through_entries_by_offset(serve, tree):
    server = serve(writable=False)
    ok(server, c.walk(0, 1))
    ok(server, c.lopen(1, O_DIRECTORY))
    refused(server, c.read(1), errno.EISDIR)
    entries = ok(server, c.readdir(1)).entries()
    names = [name for name, _, _ in entries]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == sorted(os.fsencode(n) for n in os.listdir(tree[0]))
    kinds = {name: kind for name, _, kind in entries}
    assert kinds[b"sub"] == 4 and kinds[b"f"] == 8 and kinds[b"to-etc"] == 10 and kinds[b"fifo"] == 1
    paged, offset = [], 0
    while batch := ok(server, c.readdir(1, offset, count=40)).entries():  # one or two entries a reply
        paged += [name for name, _, _ in batch]
        offset = batch[-1][1]
    assert paged == names
    ok(server, c.walk(0, 2, "f"))
    ok(server, c.lopen(2))
    refused(server, c.readdir(2), errno.ENOTDIR)
    ok(server, c.walk(0, 3, "f"))
    refused(server, c.lopen(3, O_DIRECTORY), errno.ENOTDIR)


def test_create_write_mkdir_rename_unlink_and_sync_reach_the_host(serve, tree):
    share = tree[0]
    server = serve(writable=True)
    ok(server, c.walk(0, 1))
    assert ok(server, c.lcreate(1, "new", flags=O_RDWR, mode=0o640)).qid().type == wire.QT_FILE
    assert ok(server, c.write(1, b"written by the guest")).u32() == 20
    assert ok(server, c.write(1, b"GUEST", offset=11)).u32() == 5
    ok(server, c.fsync(1))
    assert ok(server, c.read(1, count=100)).data() == b"written by GUESTuest"
    assert (share / "new").read_bytes() == b"written by GUESTuest"
    assert (share / "new").stat().st_uid == os.getuid()
    assert stat.S_IMODE((share / "new").stat().st_mode) & ~0o640 == 0
    ok(server, c.walk(0, 2))
    refused(server, c.lcreate(2, "new", flags=O_RDWR | 0o200), errno.EEXIST)   # O_EXCL
    ok(server, c.walk(0, 9))
    ok(server, c.lcreate(9, "f", flags=O_WRONLY | O_TRUNC))             # an existing file, truncated
    assert (share / "f").read_bytes() == b""
    assert ok(server, c.mkdir(0, "dir", 0o750)).qid().type == wire.QT_DIR
    assert (share / "dir").is_dir()
    ok(server, c.walk(0, 3, "dir"))
    ok(server, c.renameat(0, "new", 3, "moved"))
    assert (share / "dir" / "moved").read_bytes() == b"written by GUESTuest"
    ok(server, c.walk(1, 4, ".."))                                       # fid 1 followed the rename
    assert ok(server, c.getattr_(4)).qid(8).path == (share / "dir").stat().st_ino
    ok(server, c.walk(3, 5, "moved"))
    ok(server, c.rename(5, 0, "back"))                                   # the old-style rename
    assert (share / "back").exists() and not (share / "dir" / "moved").exists()
    ok(server, c.unlinkat(0, "back"))
    refused(server, c.unlinkat(0, "dir"), errno.EISDIR)
    ok(server, c.unlinkat(0, "dir", 0x200))
    assert not (share / "back").exists() and not (share / "dir").exists()
    refused(server, c.unlinkat(0, "sub", 0x1), errno.EINVAL)             # unknown flag
    ok(server, c.walk(0, 6, "sub", "inner"))
    ok(server, c.remove(6))
    assert not (share / "sub" / "inner").exists()
    refused(server, c.getattr_(6), errno.EBADF)                          # remove clunks
    ok(server, c.walk(0, 7))
    refused(server, c.remove(7), errno.EBUSY)                            # never the root


def test_setattr_changes_mode_size_and_times_but_not_owners(serve, tree):
    share = tree[0]
    server = serve(writable=True)
    ok(server, c.walk(0, 1, "f"))
    ok(server, c.setattr_(1, 0x1, mode=0o100600))
    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o600
    ok(server, c.setattr_(1, 0x8, size=5))
    assert (share / "f").read_bytes() == b"hello"
    ok(server, c.setattr_(1, 0x10 | 0x20 | 0x80 | 0x100, atime=(1000, 5), mtime=(2000, 7)))
    info = (share / "f").stat()
    assert (info.st_atime_ns, info.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    ok(server, c.setattr_(1, 0x20))                                      # MTIME without MTIME_SET: now
    assert (share / "f").stat().st_mtime_ns > 2000 * 10**9 + 7
    ok(server, c.setattr_(1, 0x2 | 0x4, uid=info.st_uid, gid=info.st_gid))   # the same owner: allowed
    refused(server, c.setattr_(1, 0x2, uid=info.st_uid + 1), errno.EPERM)
    refused(server, c.setattr_(1, 0x10 | 0x80, atime=(1, 10**9)), errno.EINVAL)


def test_statfs_readlink_symlink_locks_flush_and_refusals(serve, tree):
    share = tree[0]
    server = serve(writable=True)
    body = ok(server, c.statfs(0)).body
    kind, bsize, blocks = struct.unpack_from("<IIQ", body)
    assert kind == 0x01021997 and bsize == os.statvfs(share).f_bsize and blocks == os.statvfs(share).f_blocks
    ok(server, c.walk(0, 1, "to-etc"))
    assert ok(server, c.readlink(1)).body == c.s("/etc")
    refused(server, c.readlink(0), errno.EINVAL)                         # not a symlink
    assert ok(server, c.symlink(0, "made", "../anywhere")).qid().type == wire.QT_SYMLINK
    assert os.readlink(share / "made") == "../anywhere"
    ok(server, c.walk(0, 2, "f"))
    ok(server, c.lopen(2))
    assert ok(server, c.lock(2)).body == b"\x00"
    assert ok(server, c.getlock(2)).body[:1] == b"\x02"
    assert ok(server, c.flush(3)).body == b""
    refused(server, c.xattrwalk(0, 5), errno.EOPNOTSUPP)
    refused(server, c.msg(wire.TAUTH, struct.pack("<I", 5) + c.s("u") + c.s("") + b"\0" * 4), errno.EOPNOTSUPP)
    refused(server, c.mknod(0, "null", stat.S_IFCHR | 0o666), errno.EPERM)
    refused(server, c.mknod(0, "pipe", stat.S_IFIFO | 0o666), errno.EPERM)
    refused(server, c.link(0, 2, "second-name"), errno.EPERM)
    refused(server, c.msg(112, b"\0" * 5), errno.EPROTO)                # 9P2000's Topen: not .L
    refused(server, c.msg(wire.TGETATTR + 1, b"\0" * 12), errno.EPROTO)  # a reply type as a request
    assert not (share / "null").exists() and not (share / "second-name").exists()


# --- the jail ----------------------------------------------------------------------------------
def test_dotdot_never_leaves_the_root(serve, tree):
    server = serve(writable=False)
    root_ino = tree[0].stat().st_ino
    walked = ok(server, c.walk(0, 1, "..", "..", "..")).walked()
    assert [q.path for q in walked] == [root_ino] * 3
    assert len(ok(server, c.walk(0, 2, "..", "..", "outside")).walked()) == 2   # no "outside" at the root
    refused(server, c.walk(0, 2, "../outside"), errno.EINVAL)           # a name is one component
    refused(server, c.walk(0, 2, "/etc"), errno.EINVAL)
    refused(server, c.walk(0, 2, "."), errno.EINVAL)
    refused(server, c.walk(0, 2, ""), errno.EINVAL)
    refused(server, c.walk(0, 2, "f\0x"), errno.EINVAL)
    assert ok(server, c.walk(0, 3, "sub", "..", "f")).walked()[2].path == (tree[0] / "f").stat().st_ino


def test_symlinks_are_never_followed_on_the_host(serve, tree):
    server = serve(writable=True)
    for link in ("to-etc", "to-outside"):
        walked = ok(server, c.walk(0, 1, link, "passwd" if link == "to-etc" else "secret")).walked()
        assert [q.type for q in walked] == [wire.QT_SYMLINK]             # stops at the link itself
        ok(server, c.walk(0, 1, link))
        refused(server, c.lopen(1), errno.ELOOP)
        refused(server, c.lcreate(1, "x"), errno.ENOTDIR)
        refused(server, c.mkdir(1, "x"), errno.ENOTDIR)
        refused(server, c.setattr_(1, 0x8, size=0), errno.ELOOP)
        ok(server, c.clunk(1))
    assert (tree[1] / "secret").read_text() == "outside-secret\n"
    assert not (tree[1] / "x").exists()


def test_a_symlink_swapped_in_after_a_walk_does_not_lead_out(serve, tree):
    share, outside = tree
    (share / "d").mkdir()
    server = serve(writable=True)
    ok(server, c.walk(0, 1, "d"))                                        # fid 1 holds the real directory
    os.rename(share / "d", share / "d-real")
    os.symlink(outside, share / "d")                                     # the host (or a race) swaps it
    refused(server, c.walk(1, 2, "secret"), errno.ENOENT)                # still the real directory
    assert len(ok(server, c.walk(0, 2, "d", "secret")).walked()) == 1    # a fresh walk stops at the link
    ok(server, c.lcreate(1, "made-here", flags=O_RDWR))
    assert (share / "d-real" / "made-here").exists() and not (outside / "made-here").exists()
    ok(server, c.walk(0, 3, "f"))
    os.rename(share / "f", share / "f-real")
    os.symlink(outside / "secret", share / "f")
    ok(server, c.lopen(3))                                               # the fid's own inode
    assert ok(server, c.read(3)).data() == b"hello, guest\n"


def test_a_hard_link_to_a_file_outside_is_refused(serve, tree):
    server = serve(writable=True)
    ok(server, c.walk(0, 1, "hardlink"))
    refused(server, c.lopen(1), errno.EACCES)
    refused(server, c.lopen(1, O_WRONLY), errno.EACCES)
    refused(server, c.setattr_(1, 0x8, size=0), errno.EACCES)
    refused(server, c.setattr_(1, 0x1, mode=0o777), errno.EACCES)
    ok(server, c.walk(0, 2))
    refused(server, c.lcreate(2, "hardlink", flags=O_WRONLY | O_TRUNC), errno.EACCES)
    assert (tree[1] / "secret").read_text() == "outside-secret\n"
    assert stat.S_IMODE((tree[1] / "secret").stat().st_mode) != 0o777


def test_fifos_and_device_nodes_are_never_opened(serve, tree):
    share = tree[0]
    try:
        os.mknod(share / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        nodes = ["fifo", "null"]
    except PermissionError:
        nodes = ["fifo"]
    server = serve(writable=True)
    for node in nodes:
        ok(server, c.walk(0, 1, node))
        for flags in (O_RDONLY, O_WRONLY, O_RDWR):
            refused(server, c.lopen(1, flags), errno.EACCES)             # answered at once, never blocks
        ok(server, c.walk(0, 2))
        refused(server, c.lcreate(2, node, flags=O_RDONLY), errno.EACCES)
        ok(server, c.clunk(1))
        ok(server, c.clunk(2))


def test_created_modes_lose_set_id_and_sticky_bits(serve, tree):
    share = tree[0]
    server = serve(writable=True)
    ok(server, c.walk(0, 1))
    ok(server, c.lcreate(1, "suid", flags=O_RDWR, mode=0o4777))
    ok(server, c.mkdir(0, "sticky", 0o7777))
    for name in ("suid", "sticky"):
        assert not (share / name).stat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
        assert (share / name).stat().st_uid == os.getuid()
    ok(server, c.setattr_(1, 0x1, mode=0o6755))
    assert stat.S_IMODE((share / "suid").stat().st_mode) == 0o755


@pytest.mark.parametrize("request_of", [
    lambda: c.lcreate(1, "x"), lambda: c.mkdir(0, "x"), lambda: c.symlink(0, "x", "f"),
    lambda: c.unlinkat(0, "f"), lambda: c.renameat(0, "f", 0, "g"), lambda: c.rename(2, 0, "g"),
    lambda: c.remove(2), lambda: c.setattr_(2, 0x1, mode=0o777), lambda: c.setattr_(2, 0x8),
    lambda: c.mknod(0, "x", stat.S_IFIFO | 0o600), lambda: c.link(0, 2, "x"), lambda: c.write(3, b"x"),
    lambda: c.lopen(2, O_WRONLY), lambda: c.lopen(2, O_RDWR), lambda: c.lopen(2, O_RDONLY | O_TRUNC),
    lambda: c.msg(wire.TXATTRCREATE, struct.pack("<I", 2) + c.s("user.x") + struct.pack("<QI", 1, 0)),
])
def test_a_read_only_share_refuses_every_change(serve, tree, request_of):
    share = tree[0]
    before = {p: (p.stat(follow_symlinks=False).st_mode, p.stat(follow_symlinks=False).st_mtime_ns)
              for p in share.rglob("*")}
    content = (share / "f").read_bytes()
    server = serve(writable=False)
    ok(server, c.walk(0, 1))
    ok(server, c.walk(0, 2, "f"))
    ok(server, c.walk(0, 3, "f"))
    ok(server, c.lopen(3))
    refused(server, request_of(), errno.EROFS)
    after = {p: (p.stat(follow_symlinks=False).st_mode, p.stat(follow_symlinks=False).st_mtime_ns)
             for p in share.rglob("*")}
    assert after == before and (share / "f").read_bytes() == content


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "x\0y", "n" * 256])
def test_bad_names_are_refused_by_every_creating_message(serve, tree, name):
    server = serve(writable=True)
    code = errno.ENAMETOOLONG if len(name) > 255 else errno.EINVAL
    ok(server, c.walk(0, 1))
    for request in (c.lcreate(1, name), c.mkdir(0, name), c.symlink(0, name, "t"), c.unlinkat(0, name),
                    c.renameat(0, "f", 0, name), c.renameat(0, name, 0, "g")):
        refused(server, request, code)
    assert sorted(os.listdir(tree[0])) == sorted(["f", "sub", "to-etc", "to-outside", "hardlink", "fifo"])


def test_the_fid_table_is_bounded(tree):
    fd = os.open(tree[0], os.O_PATH | os.O_DIRECTORY)
    server = Server(fd, False, max_fids=8)
    try:
        ok(server, c.version())
        ok(server, c.attach(0))
        for number in range(1, 8):
            ok(server, c.walk(0, number))
        refused(server, c.walk(0, 8), errno.EMFILE)
        refused(server, c.attach(9), errno.EMFILE)
        ok(server, c.clunk(7))
        ok(server, c.walk(0, 8))
    finally:
        server.close()
        os.close(fd)


# --- fuzz ---------------------------------------------------------------------------------------
NAMES = ["f", "sub", "inner", "..", "to-etc", "to-outside", "hardlink", "fifo", "new", "dir", "x/y", "", "."]


def _valid_requests(rng):
    """A random well-formed request of every type, over fids 0..7 and names of the tree."""
    fid = lambda: rng.randrange(6) if rng.random() < 0.97 else rng.randrange(2**32)   # noqa: E731
    name = lambda: rng.choice(NAMES[:9] * 3 + NAMES)                         # noqa: E731
    walk = lambda: c.walk(rng.choice([0, fid()]), rng.randrange(1, 6), *[name() for _ in range(rng.randrange(3))])  # noqa: E731
    clunk = lambda: c.clunk(rng.randrange(1, 6))                                                               # noqa: E731
    makers = [
        walk, walk, walk, walk, clunk, clunk,
        lambda: c.lopen(fid(), rng.choice([0, 1, 2, O_DIRECTORY, O_TRUNC | 1, 3])),
        lambda: c.lcreate(fid(), name(), rng.randrange(4), rng.randrange(0o10000)),
        lambda: c.read(fid(), rng.choice([0, 3, 2**63 + 1]), rng.choice([0, 5, 4096, 2**32 - 1])),
        lambda: c.write(fid(), rng.randbytes(rng.randrange(40)), rng.choice([0, 7, 2**63 - 1])),
        lambda: c.clunk(fid()), lambda: c.getattr_(fid()), lambda: c.statfs(fid()), lambda: c.fsync(fid()),
        lambda: c.setattr_(fid(), rng.randrange(0x200), rng.randrange(2**32), size=rng.choice([0, 3, 2**64 - 1]),
                           atime=(rng.randrange(2**64), rng.randrange(2**64)), mtime=(5, 6)),
        lambda: c.readdir(fid(), rng.choice([0, 1, 3, 2**64 - 1]), rng.choice([0, 30, 8192])),
        lambda: c.mkdir(fid(), name(), rng.randrange(0o10000)), lambda: c.unlinkat(fid(), name(), rng.choice([0, 0x200, 7])),
        lambda: c.renameat(fid(), name(), fid(), name()), lambda: c.rename(fid(), fid(), name()),
        lambda: c.remove(fid()), lambda: c.readlink(fid()), lambda: c.symlink(fid(), name(), name()),
        lambda: c.mknod(fid(), name(), rng.randrange(2**16)), lambda: c.link(fid(), fid(), name()),
        lambda: c.xattrwalk(fid(), fid(), name()), lambda: c.flush(rng.randrange(2**16)),
        lambda: c.lock(fid()), lambda: c.getlock(fid()), lambda: c.attach(fid()),
    ]
    if rng.random() < 0.005:
        return c.version(rng.choice([0, 4096, 2**32 - 1]))
    return rng.choice(makers)()


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        choice = rng.randrange(5)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1:
            del data[rng.randrange(len(data) + 1):]
        elif choice == 2:
            data += rng.randbytes(rng.randrange(1, 20))
        elif choice == 3 and len(data) >= 4:
            data[0:4] = struct.pack("<I", rng.choice([0, 6, 7, len(data), len(data) + 1, 2**32 - 1]))
        elif choice == 4 and len(data) >= 5:
            data[4] = rng.randrange(256)
    return bytes(data)


def _snapshot(path):
    """Content, mode and times (not the link count: removing the share's hard link lowers it)."""
    return {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else None, p.lstat().st_mode,
                p.lstat().st_mtime_ns, p.lstat().st_uid) for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("writable", [False, True])
def test_fuzzed_messages_get_replies_and_stay_inside(tree, writable):
    """Thousands of random and mutated requests: every one gets Rlerror or the reply of its type
    with its tag, nothing raises, no file outside the share changes, and no fd is leaked."""
    share, outside = tree
    outside_before = _snapshot(outside)
    fds_before = len(os.listdir("/proc/self/fd"))
    rng = random.Random(9000 + writable)
    root_fd = os.open(share, os.O_PATH | os.O_DIRECTORY)
    server = Server(root_fd, writable, max_fids=64)
    server.exchange(c.version(8192))
    server.exchange(c.attach(0))
    kinds = {wire.RLERROR: 0}
    for round_ in range(4000):
        if round_ % 500 == 0:
            server.exchange(c.version(8192))
            server.exchange(c.attach(0))
        roll = rng.random()
        if roll < 0.05:
            request = rng.randbytes(rng.randrange(40))
        elif roll < 0.7:
            request = _valid_requests(rng)
        else:
            request = _mutate(rng, _valid_requests(rng))
        payload = []
        if len(request) >= wire.WRITE_HEADER_SIZE and request[4] == wire.TWRITE:
            payload = [memoryview(request)[wire.WRITE_HEADER_SIZE:]]
            request = request[:wire.WRITE_HEADER_SIZE]
        room_bytes = bytearray(8192 if rng.random() < 0.85 else rng.choice([wire.ERROR_SIZE, 20, 64]))
        length = server.handle(request, payload, wire.ReplyRoom([memoryview(room_bytes)]))
        size, kind, tag = wire.HEADER.unpack_from(room_bytes)
        assert size == length <= len(room_bytes)
        if len(request) >= wire.HEADER_SIZE:
            assert tag == struct.unpack_from("<H", request, 5)[0]
            assert kind in (wire.RLERROR, request[4] + 1)
        else:
            assert kind == wire.RLERROR
        if kind == wire.RLERROR:
            assert size == wire.ERROR_SIZE and struct.unpack_from("<I", room_bytes, 7)[0] > 0
        kinds[kind] = kinds.get(kind, 0) + 1
    server.close()
    os.close(root_fd)
    assert _snapshot(outside) == outside_before
    assert sorted(os.listdir(share.parent)) == ["outside", "share"]
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert len(kinds) > 12 and sum(kinds.values()) - kinds[wire.RLERROR] > 250   # deep, not only errors
