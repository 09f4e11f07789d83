/*
 * p9_bench: measures a virtio-9p share through runtime/virtio_9p.c, one request at a time (as a
 * single Linux process sees it), completions polled. The share must hold a file `data` of at
 * least bs bytes whose byte i is i % 251 (checked on the first read); the share must be writable.
 *   read     Tread of bs bytes, sequential through `data` (wrapping at its end)
 *   write    Twrite of bs bytes, sequential into a new file `out` (wrapping at size_mib MiB)
 *   getattr  Tgetattr round trips (a metadata request)
 *   walk     Twalk of one name then Tclunk (a lookup, two requests)
 * each for seconds=N (default 2) or, with ops=N, N requests. The clock is the TSC (now_ns).
 *
 * Parameters: msize=N (131072), bs=N (65536, at most msize - 24), size_mib=N (64), seconds=N (2),
 * ops=N (0: timed).
 * RESULT lines: tag, msize, tsc_hz (just before the first phase), read_mibps, write_mibps,
 * getattr_ops_per_s, getattr_lat_us (printed last in its phase), walk_ops_per_s, each phase's
 * _ops, errors, and p9_bench=done; exit(0), or exit(3) on an error.
 */
#include "virtio_9p.h"

#define MIB (1UL << 20)
#define O_RDONLY 0
#define O_RDWR 2

static struct v9p share;
static u8 *arena;
static u64 seconds, ops_limit, errors;

struct phase { u64 ops, bytes, ns; };

static void fail(const char *what, i64 code) {
    printf("RESULT p9_fail=%s\nRESULT p9_errno=%ld\n", what, -code);
    exit(3);
}

static int more(u64 done, u64 deadline) { return ops_limit ? done < ops_limit : now_ns() < deadline; }

static struct phase run_io(int write, u32 fid, u32 bs, u64 wrap) {
    struct phase p = { 0, 0, 0 };
    u64 start = now_ns(), deadline = start + seconds * 1000000000UL, offset = 0;
    while (more(p.ops, deadline)) {
        i64 done = write ? p9_write(&share, fid, offset, arena, bs) : p9_read(&share, fid, offset, arena, bs);
        if (done < 0) fail(write ? "write" : "read", done);
        if (!write && offset == 0 && p.ops == 0)
            for (u32 i = 0; i < (u32)done; i++)
                if (arena[i] != (u8)(i % 251)) fail("read_data", 0);
        if (done == 0 || offset + (u64)done >= wrap) offset = 0;
        else offset += (u64)done;
        if (done == 0 && !write) continue;
        p.ops++;
        p.bytes += (u64)done;
    }
    p.ns = now_ns() - start;
    return p;
}

static struct phase run_getattr(u32 fid) {
    struct phase p = { 0, 0, 0 };
    u64 start = now_ns(), deadline = start + seconds * 1000000000UL, size;
    for (; more(p.ops, deadline); p.ops++)
        if (p9_getattr(&share, fid, &size)) errors++;
    p.ns = now_ns() - start;
    return p;
}

static struct phase run_walk(void) {
    struct phase p = { 0, 0, 0 };
    u64 start = now_ns(), deadline = start + seconds * 1000000000UL;
    for (; more(p.ops, deadline); p.ops++) {
        if (p9_walk(&share, 0, 9, "data", 0)) errors++;
        else if (p9_clunk(&share, 9)) errors++;
    }
    p.ns = now_ns() - start;
    return p;
}

static u64 per_second(u64 count, u64 ns) { return count * 1000000UL / (ns / 1000 ? ns / 1000 : 1); }

void main(void) {
    u32 msize = (u32)cmdline_u64("msize", 131072), bs = (u32)cmdline_u64("bs", 65536);
    u64 size_mib = cmdline_u64("size_mib", 64);
    seconds = cmdline_u64("seconds", 2);
    ops_limit = cmdline_u64("ops", 0);
    arena = (u8 *)(((u64)_end + MIB - 1) & ~(MIB - 1));
    if (!v9p_open(&share)) fail("no_device", 0);
    RESULT("tag", "%s", share.tag);
    int r = p9_version(&share, msize);
    if (r) fail("version", r);
    RESULT("msize", "%u", share.msize);
    if (bs > share.msize - 24) fail("bs_above_msize", 0);
    if ((r = p9_attach(&share, 0, 0))) fail("attach", r);
    if ((r = p9_walk(&share, 0, 1, "data", 0))) fail("walk", r);
    if ((r = p9_lopen(&share, 1, O_RDONLY))) fail("lopen", r);
    u64 size = 0;
    if ((r = p9_getattr(&share, 1, &size))) fail("getattr", r);
    if (size < bs) fail("data_smaller_than_bs", 0);
    if ((r = p9_walk(&share, 0, 2, 0, 0))) fail("clone", r);
    if ((r = p9_lcreate(&share, 2, "out", O_RDWR, 0644))) fail("lcreate", r);
    RESULT("tsc_hz", "%lu", tsc_hz());

    struct phase rd = run_io(0, 1, bs, size);
    RESULT("read_mibps", "%lu", per_second(rd.bytes, rd.ns) / MIB);
    RESULT("read_ops", "%lu", rd.ops);
    struct phase wr = run_io(1, 2, bs, size_mib * MIB);
    RESULT("write_mibps", "%lu", per_second(wr.bytes, wr.ns) / MIB);
    RESULT("write_ops", "%lu", wr.ops);
    struct phase ga = run_getattr(1);
    RESULT("getattr_ops_per_s", "%lu", per_second(ga.ops, ga.ns));
    RESULT("getattr_ops", "%lu", ga.ops);
    RESULT("getattr_lat_us", "%lu", ga.ops ? ga.ns / ga.ops / 1000 : 0);
    struct phase wk = run_walk();
    RESULT("walk_ops_per_s", "%lu", per_second(wk.ops, wk.ns));
    RESULT("walk_ops", "%lu", wk.ops);
    if (p9_clunk(&share, 1) || p9_clunk(&share, 2)) errors++;
    RESULT("errors", "%lu", errors);
    RESULT("p9_bench", "%s", errors ? "errors" : "done");
    exit(errors ? 3 : 0);
}
