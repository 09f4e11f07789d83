"""A 9P2000.L file server over one shared directory: the session, its fids, one handler a message.

`handle` takes one request and writes its reply into the room the driver gave; it never raises for
anything the guest sent. A message that does not parse gets Rlerror(EPROTO) or (EINVAL), a host
error gets Rlerror(its errno), a modifying message on a read-only share gets Rlerror(EROFS), and a
reply that does not fit the room gets Rlerror(EMSGSIZE) (the operation has then taken place).
Reads and writes move data between the file and the guest's buffers with preadv/pwritev.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections.abc import Callable, Sequence

from vmkit.devices.virtio.p9 import fs
from vmkit.devices.virtio.p9.fids import MAX_FIDS, Fid, FidTable
from vmkit.devices.virtio.p9.wire import (
    HEADER,
    HEADER_SIZE,
    QT_DIR,
    QT_FILE,
    QT_SYMLINK,
    READ_REPLY_HEADER_SIZE,
    TATTACH,
    TAUTH,
    TCLUNK,
    TFLUSH,
    TFSYNC,
    TGETATTR,
    TGETLOCK,
    TLCREATE,
    TLINK,
    TLOCK,
    TLOPEN,
    TMKDIR,
    TMKNOD,
    TREAD,
    TREADDIR,
    TREADLINK,
    TREMOVE,
    TRENAME,
    TRENAMEAT,
    TSETATTR,
    TSTATFS,
    TSYMLINK,
    TUNLINKAT,
    TVERSION,
    TWALK,
    TWRITE,
    TXATTRCREATE,
    TXATTRWALK,
    WRITE_HEADER_SIZE,
    ProtocolError,
    Qid,
    Reader,
    ReplyRoom,
    Writer,
    error_reply,
    message,
)

VERSION = b"9P2000.L"
MIN_MSIZE = 4096
MAX_MSIZE = 512 * 1024
MAX_WALK_NAMES = 16
MAX_DIRECTORY_ENTRIES = 1 << 20
V9FS_MAGIC = 0x01021997
GETATTR_BASIC = 0x7FF
AT_REMOVEDIR = 0x200
LOCK_SUCCESS, LOCK_TYPE_UNLOCKED = 0, 2

# Tlopen/Tlcreate flags (Linux open(2) bits, as the protocol fixes them) the share honours.
DOTL_ACCMODE, DOTL_EXCL, DOTL_TRUNC, DOTL_APPEND = 0o3, 0o200, 0o1000, 0o2000
DOTL_DSYNC, DOTL_DIRECTORY, DOTL_SYNC = 0o10000, 0o200000, 0o4000000

SETATTR_MODE, SETATTR_UID, SETATTR_GID, SETATTR_SIZE = 0x1, 0x2, 0x4, 0x8
SETATTR_ATIME, SETATTR_MTIME, SETATTR_CTIME, SETATTR_ATIME_SET, SETATTR_MTIME_SET = 0x10, 0x20, 0x40, 0x80, 0x100

# valid, qid, mode, uid, gid, nlink, rdev, size, blksize, blocks, a/m/c/btime (s, ns), gen, data_version
GETATTR_REPLY = struct.Struct("<Q13sIIIQQQQQ" + "QQ" * 4 + "QQ")
MODIFYING = frozenset({TLCREATE, TSYMLINK, TMKNOD, TRENAME, TSETATTR, TXATTRCREATE, TLINK, TMKDIR,
                       TRENAMEAT, TUNLINKAT, TREMOVE, TWRITE})
Handler = Callable[[Reader], bytes]


def qid_of(info: os.stat_result) -> Qid:
    """The file's identity for the guest: its inode, a version that moves with mtime and size."""
    kind = QT_DIR if stat.S_ISDIR(info.st_mode) else QT_SYMLINK if stat.S_ISLNK(info.st_mode) else QT_FILE
    return Qid(kind, (info.st_mtime_ns ^ (info.st_size << 8)) & 0xFFFFFFFF, info.st_ino)


def host_open_flags(flags: int) -> int:
    access = flags & DOTL_ACCMODE
    if access == DOTL_ACCMODE:
        raise OSError(errno.EINVAL, "no access mode")
    host = access
    for dotl, bit in ((DOTL_TRUNC, os.O_TRUNC), (DOTL_APPEND, os.O_APPEND), (DOTL_DSYNC, os.O_DSYNC),
                      (DOTL_SYNC, os.O_SYNC), (DOTL_DIRECTORY, os.O_DIRECTORY)):
        if flags & dotl:
            host |= bit
    return host


def _writes(host_flags: int) -> bool:
    return host_flags & os.O_ACCMODE != os.O_RDONLY or bool(host_flags & os.O_TRUNC)


class Server:
    """One session over the directory `root_fd` (an O_PATH fd the server does not own)."""

    def __init__(self, root_fd: int, writable: bool, max_fids: int = MAX_FIDS, max_msize: int = MAX_MSIZE) -> None:
        self.root_fd = root_fd
        self.writable = writable
        self.max_msize = max_msize
        self.msize = 0                               # 0 until Tversion
        self.fids = FidTable(max_fids)
        self._room_limit = 0
        self._handlers: dict[int, Handler] = {
            TVERSION: self._version, TATTACH: self._attach, TWALK: self._walk, TCLUNK: self._clunk,
            TFLUSH: self._flush, TLOPEN: self._lopen, TLCREATE: self._lcreate,
            TGETATTR: self._getattr, TSETATTR: self._setattr, TREADDIR: self._readdir, TMKDIR: self._mkdir,
            TUNLINKAT: self._unlinkat, TRENAMEAT: self._renameat, TRENAME: self._rename, TREMOVE: self._remove,
            TSTATFS: self._statfs, TFSYNC: self._fsync, TREADLINK: self._readlink, TSYMLINK: self._symlink,
            TLOCK: self._lock, TGETLOCK: self._getlock, TAUTH: self._unsupported, TXATTRWALK: self._unsupported,
            TXATTRCREATE: self._unsupported, TMKNOD: self._no_special_files, TLINK: self._no_hard_links,
        }

    # --- the session ---------------------------------------------------------------------------
    @property
    def message_limit(self) -> int:
        """The largest request accepted now: the negotiated msize (before Tversion, the most it may be)."""
        return self.msize or self.max_msize

    def reset(self) -> None:
        """Forget the session (virtio reset, a new Tversion): every fid is closed."""
        self.fids.clear()
        self.msize = 0

    def handle(self, request: bytes, payload: Sequence[memoryview], room: ReplyRoom) -> int:
        """Answer one request (its bytes; for Twrite its header, with the data in `payload`) in
        `room`, which holds at least an Rlerror; return the reply's length."""
        tag = 0
        try:
            if len(request) < HEADER_SIZE:
                raise ProtocolError("a message shorter than its header")
            size, kind, tag = HEADER.unpack_from(request)
            if kind != TVERSION and not self.msize:
                raise ProtocolError("no version negotiated")
            if kind != TWRITE and size != len(request):
                raise ProtocolError(f"size {size} is not the message's {len(request)} bytes")
            if kind == TREAD:
                return self._read(Reader(request), tag, room)
            if kind == TWRITE:
                body = self._write(Reader(request), size, payload)
            else:
                handler = self._handlers.get(kind)
                if handler is None:
                    raise ProtocolError(f"message type {kind} is not a 9P2000.L request")
                if kind in MODIFYING and not self.writable:
                    raise OSError(errno.EROFS, "the share is read-only")
                self._room_limit = min(room.capacity, self.message_limit)
                body = handler(Reader(request))
            reply = message(kind + 1, tag, body)
            if len(reply) > room.capacity:
                raise OSError(errno.EMSGSIZE, f"a reply of {len(reply)} bytes; the room holds {room.capacity}")
        except ProtocolError as exc:
            reply = error_reply(tag, exc.errno)
        except OSError as exc:
            reply = error_reply(tag, exc.errno or errno.EIO)
        except (ValueError, OverflowError):
            reply = error_reply(tag, errno.EINVAL)      # a NUL in a name, an offset past 2**63
        room.write(0, reply)
        return len(reply)

    def exchange(self, request: bytes) -> bytes:
        """One request as bytes in, the reply as bytes out, with a room of the negotiated msize."""
        payload: list[memoryview] = []
        if len(request) >= WRITE_HEADER_SIZE and request[4] == TWRITE:
            payload = [memoryview(request)[WRITE_HEADER_SIZE:]]
            request = request[:WRITE_HEADER_SIZE]
        buffer = bytearray(max(self.message_limit, 64))
        length = self.handle(request, payload, ReplyRoom([memoryview(buffer)]))
        return bytes(buffer[:length])

    def close(self) -> None:
        self.fids.clear()

    # --- helpers ------------------------------------------------------------------------------
    def _opened(self, number: int) -> Fid:
        fid = self.fids.get(number)
        if fid.open_fd < 0:
            raise OSError(errno.EBADF, f"fid {number} is not open")
        return fid

    def _unopened(self, number: int) -> Fid:
        fid = self.fids.get(number)
        if fid.open_fd >= 0:
            raise OSError(errno.EBADF, f"fid {number} is open already")
        return fid

    def _qid_reply(self, info: os.stat_result, iounit: int | None = None) -> bytes:
        writer = Writer().qid(qid_of(info))
        if iounit is not None:
            writer.u32(iounit)
        return writer.bytes()

    # --- messages -----------------------------------------------------------------------------
    def _version(self, r: Reader) -> bytes:
        msize, version = r.u32(), r.string()
        self.reset()
        if msize < MIN_MSIZE:
            raise ProtocolError(f"msize {msize} is below {MIN_MSIZE}", errno.EINVAL)
        if version != VERSION:
            return Writer().u32(min(msize, self.max_msize)).string(b"unknown").bytes()
        self.msize = min(msize, self.max_msize)
        return Writer().u32(self.msize).string(VERSION).bytes()

    def _attach(self, r: Reader) -> bytes:
        number, _afid, _uname, _aname, _n_uname = r.u32(), r.u32(), r.string(), r.string(), r.u32()
        self.fids.check_free(number)
        fd = os.dup(self.root_fd)
        self.fids.add(number, Fid(fd, ()))
        return self._qid_reply(os.stat(fd))

    def _flush(self, r: Reader) -> bytes:
        r.u16()                                      # every request is answered before the next is read
        return b""

    def _clunk(self, r: Reader) -> bytes:
        self.fids.remove(r.u32()).close()
        return b""

    def _step(self, fid_fd: int, parts: tuple[bytes, ...], name: bytes) -> tuple[int, tuple[bytes, ...]]:
        """One walk element from the directory `fid_fd` (named by `parts`)."""
        if name == b"..":
            if not parts:
                return os.dup(self.root_fd), ()      # the root's parent is the root
            return fs.resolve(self.root_fd, parts[:-1]), parts[:-1]
        return fs.lookup(fid_fd, name), (*parts, name)

    def _walk(self, r: Reader) -> bytes:
        number, new_number, count = r.u32(), r.u32(), r.u16()
        if count > MAX_WALK_NAMES:
            raise ProtocolError(f"a walk of {count} names (at most {MAX_WALK_NAMES})", errno.EINVAL)
        names = [r.string() for _ in range(count)]
        fid = self.fids.get(number)
        if new_number != number:
            self.fids.check_free(new_number)
        fd, parts, owned = fid.path_fd, fid.parts, -1      # owned: an fd this walk opened
        qids: list[Qid] = []
        try:
            for index, name in enumerate(names):
                try:
                    next_fd, parts = self._step(fd, parts, name)
                except OSError:
                    if index == 0:
                        raise
                    break                            # a partial walk: newfid stays as it was
                if owned >= 0:
                    os.close(owned)
                owned = fd = next_fd
                qids.append(qid_of(os.stat(fd)))
            if len(qids) == count:
                walked = owned if owned >= 0 else os.dup(fid.path_fd)
                owned = -1
                self.fids.add(new_number, Fid(walked, parts))     # replaces `fid` when newfid == fid
        finally:
            if owned >= 0:
                os.close(owned)
        writer = Writer().u16(len(qids))
        for qid in qids:
            writer.qid(qid)
        return writer.bytes()

    def _lopen(self, r: Reader) -> bytes:
        fid, flags = self._unopened(r.u32()), host_open_flags(r.u32())
        if _writes(flags) and not self.writable:
            raise OSError(errno.EROFS, "the share is read-only")
        info = os.stat(fid.path_fd)
        if flags & os.O_DIRECTORY and not stat.S_ISDIR(info.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        fid.open_fd = fs.reopen(fid.path_fd, flags & ~os.O_DIRECTORY)
        fid.readable = flags & os.O_ACCMODE != os.O_WRONLY
        fid.writable = flags & os.O_ACCMODE != os.O_RDONLY
        fid.directory, fid.entries = stat.S_ISDIR(info.st_mode), None
        return self._qid_reply(info, 0)

    def _lcreate(self, r: Reader) -> bytes:
        number, name, flags, mode, _gid = r.u32(), r.string(), r.u32(), r.u32(), r.u32()
        parent = self._unopened(number)
        host = host_open_flags(flags) & ~os.O_DIRECTORY
        fd = fs.create(parent.path_fd, name, host, mode, exclusive=bool(flags & DOTL_EXCL))
        try:
            path_fd = fs.path_of(fd)
        except OSError:
            os.close(fd)
            raise
        access = host & os.O_ACCMODE
        self.fids.add(number, Fid(path_fd, (*parent.parts, name), fd, readable=access != os.O_WRONLY,
                                  writable=access != os.O_RDONLY))     # the fid now names the new file
        return self._qid_reply(os.stat(fd), 0)

    def _read(self, r: Reader, tag: int, room: ReplyRoom) -> int:
        fid, offset, count = self._opened(r.u32()), r.u64(), r.u32()
        if not fid.readable or fid.directory:
            raise OSError(errno.EISDIR if fid.directory else errno.EBADF, "not readable as a file")
        count = min(count, min(self.message_limit, room.capacity) - READ_REPLY_HEADER_SIZE)
        done = os.preadv(fid.open_fd, room.slices(READ_REPLY_HEADER_SIZE, count), offset) if count > 0 else 0
        room.write(0, HEADER.pack(READ_REPLY_HEADER_SIZE + done, TREAD + 1, tag) + done.to_bytes(4, "little"))
        return READ_REPLY_HEADER_SIZE + done

    def _write(self, r: Reader, size: int, payload: Sequence[memoryview]) -> bytes:
        if not self.writable:
            raise OSError(errno.EROFS, "the share is read-only")
        fid, offset, count = self._opened(r.u32()), r.u64(), r.u32()
        if count != size - WRITE_HEADER_SIZE or count != sum(len(view) for view in payload):
            raise ProtocolError(f"Twrite count {count} is not the {size - WRITE_HEADER_SIZE} bytes sent")
        if not fid.writable:
            raise OSError(errno.EBADF, "not open for writing")
        done = os.pwritev(fid.open_fd, payload, offset) if count else 0
        return Writer().u32(done).bytes()

    def _getattr(self, r: Reader) -> bytes:
        fid = self.fids.get(r.u32())
        r.u64()                                     # request_mask: the basic set is always given
        info = os.stat(fid.path_fd)
        times: list[int] = []
        for ns in (info.st_atime_ns, info.st_mtime_ns, info.st_ctime_ns):
            times += divmod(ns, 1_000_000_000)
        return GETATTR_REPLY.pack(GETATTR_BASIC, qid_of(info).pack(), info.st_mode, info.st_uid, info.st_gid,
                                  info.st_nlink, info.st_rdev, info.st_size, info.st_blksize, info.st_blocks,
                                  *times, 0, 0, 0, 0)     # btime, gen, data_version: not given

    def _setattr(self, r: Reader) -> bytes:
        fid, valid, mode, uid, gid = self.fids.get(r.u32()), r.u32(), r.u32(), r.u32(), r.u32()
        size, atime_s, atime_ns, mtime_s, mtime_ns = r.u64(), r.u64(), r.u64(), r.u64(), r.u64()
        info = os.stat(fid.path_fd)
        if valid & SETATTR_UID and uid != info.st_uid or valid & SETATTR_GID and gid != info.st_gid:
            raise OSError(errno.EPERM, "files in the share keep the owner running vmkit")
        if valid & SETATTR_MODE:
            fs.change_mode(fid.path_fd, mode)
        if valid & SETATTR_SIZE:
            if size >= 1 << 63:
                raise OSError(errno.EFBIG, "size past 2**63")
            fs.truncate(fid.path_fd, size)
        if valid & (SETATTR_ATIME | SETATTR_MTIME):
            now = time.time_ns()

            def pick(flag: int, given: int, seconds: int, nanoseconds: int, current: int) -> int:
                if not valid & flag:
                    return current
                if not valid & given:
                    return now
                if nanoseconds >= 1_000_000_000 or seconds >= 1 << 62:
                    raise OSError(errno.EINVAL, "not a time")
                return seconds * 1_000_000_000 + nanoseconds

            fs.set_times(fid.path_fd, (pick(SETATTR_ATIME, SETATTR_ATIME_SET, atime_s, atime_ns, info.st_atime_ns),
                                       pick(SETATTR_MTIME, SETATTR_MTIME_SET, mtime_s, mtime_ns, info.st_mtime_ns)))
        return b""

    def _readdir(self, r: Reader) -> bytes:
        fid, offset, count = self._opened(r.u32()), r.u64(), r.u32()
        if not fid.directory:
            raise OSError(errno.ENOTDIR, "not a directory")
        if offset == 0 or fid.entries is None:
            names = os.listdir(fid.open_fd)
            if len(names) > MAX_DIRECTORY_ENTRIES:
                raise OSError(errno.EOVERFLOW, "too many entries to list")
            fid.entries = [b".", b"..", *sorted(os.fsencode(n) for n in names)]
        count = min(count, self._room_limit - READ_REPLY_HEADER_SIZE)
        data = bytearray()
        index = offset
        while index < len(fid.entries):
            name = fid.entries[index]
            try:
                info = os.stat(fid.path_fd) if name in (b".", b"..") else fs.stat_at(fid.open_fd, name)
            except OSError:
                index += 1                          # gone since the listing
                continue
            entry = Writer().qid(qid_of(info)).u64(index + 1).u8(stat.S_IFMT(info.st_mode) >> 12).string(name)
            if len(data) + len(entry.data) > count:
                break
            data += entry.data
            index += 1
        return Writer().u32(len(data)).bytes() + bytes(data)

    def _mkdir(self, r: Reader) -> bytes:
        parent, name, mode, _gid = self.fids.get(r.u32()), r.string(), r.u32(), r.u32()
        return self._qid_reply(fs.make_directory(parent.path_fd, name, mode))

    def _symlink(self, r: Reader) -> bytes:
        parent, name, target, _gid = self.fids.get(r.u32()), r.string(), r.string(), r.u32()
        return self._qid_reply(fs.make_symlink(parent.path_fd, name, target))

    def _unlinkat(self, r: Reader) -> bytes:
        parent, name, flags = self.fids.get(r.u32()), r.string(), r.u32()
        if flags & ~AT_REMOVEDIR:
            raise OSError(errno.EINVAL, f"unlinkat flags {flags:#x}")
        fs.remove(parent.path_fd, name, directory=bool(flags & AT_REMOVEDIR))
        return b""

    def _renameat(self, r: Reader) -> bytes:
        old_parent, old_name = self.fids.get(r.u32()), r.string()
        new_parent, new_name = self.fids.get(r.u32()), r.string()
        fs.rename(old_parent.path_fd, old_name, new_parent.path_fd, new_name)
        self.fids.renamed((*old_parent.parts, old_name), (*new_parent.parts, new_name))
        return b""

    def _rename(self, r: Reader) -> bytes:
        fid, new_parent, new_name = self.fids.get(r.u32()), self.fids.get(r.u32()), r.string()
        if not fid.parts:
            raise OSError(errno.EBUSY, "the share's root is not renamed")
        old_parent = fs.resolve(self.root_fd, fid.parts[:-1])
        try:
            fs.rename(old_parent, fid.parts[-1], new_parent.path_fd, new_name)
        finally:
            os.close(old_parent)
        self.fids.renamed(fid.parts, (*new_parent.parts, new_name))
        return b""

    def _remove(self, r: Reader) -> bytes:
        number = r.u32()
        fid = self.fids.remove(number)            # clunked whether or not the removal works
        try:
            if not fid.parts:
                raise OSError(errno.EBUSY, "the share's root is not removed")
            info = os.stat(fid.path_fd)
            parent = fs.resolve(self.root_fd, fid.parts[:-1])
            try:
                now = fs.stat_at(parent, fid.parts[-1])
                if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                    raise OSError(errno.ENOENT, "the name now holds another file")
                fs.remove(parent, fid.parts[-1], directory=stat.S_ISDIR(info.st_mode))
            finally:
                os.close(parent)
        finally:
            fid.close()
        return b""

    def _statfs(self, r: Reader) -> bytes:
        info = os.fstatvfs(self.fids.get(r.u32()).path_fd)
        writer = Writer().u32(V9FS_MAGIC).u32(info.f_bsize).u64(info.f_blocks).u64(info.f_bfree).u64(info.f_bavail)
        return writer.u64(info.f_files).u64(info.f_ffree).u64(info.f_fsid).u32(info.f_namemax).bytes()

    def _fsync(self, r: Reader) -> bytes:
        os.fsync(self._opened(r.u32()).open_fd)
        return b""

    def _readlink(self, r: Reader) -> bytes:
        return Writer().string(fs.read_link(self.fids.get(r.u32()).path_fd)).bytes()

    def _lock(self, r: Reader) -> bytes:
        self.fids.get(r.u32())                      # locks are the guest's own business: always granted
        return Writer().u8(LOCK_SUCCESS).bytes()

    def _getlock(self, r: Reader) -> bytes:
        self.fids.get(r.u32())
        r.u8()
        start, length, proc_id, client = r.u64(), r.u64(), r.u32(), r.string()
        return Writer().u8(LOCK_TYPE_UNLOCKED).u64(start).u64(length).u32(proc_id).string(client).bytes()

    def _unsupported(self, r: Reader) -> bytes:
        raise OSError(errno.EOPNOTSUPP, "not offered by this share")

    def _no_special_files(self, r: Reader) -> bytes:
        raise OSError(errno.EPERM, "the share makes no device nodes, FIFOs or sockets")

    def _no_hard_links(self, r: Reader) -> bytes:
        raise OSError(errno.EPERM, "the share makes no hard links")

