/*
 * blk_bench: measures a virtio-blk device through runtime/virtio_blk.c, completions polled:
 *   seqwrite   1 MiB sequential writes, seq_qd in flight (then a FLUSH, timed with them)
 *   seqread    1 MiB sequential reads, seq_qd in flight
 *   randread   4 KiB random reads (4 KiB aligned) at queue depth 1, then at queue depth qd
 * over the first size_mib MiB of the disk (less if the disk is smaller), each for seconds=N
 * (default 2) or, with ops=N, for N requests. The clock is the TSC (now_ns).
 *
 * Parameters: size_mib=N (64), seconds=N (2), ops=N (0: timed), qd=N (32), seq_qd=N (4),
 * seed=N (1).
 * RESULT lines: seqwrite_mibps, seqread_mibps, randread_qd1_iops, randread_qd1_lat_us,
 * randread_qd32_iops (qd32 is the qd given), each with _ops and _notifies (notify writes, i.e.
 * exits, per 100 requests), errors, and blk_bench=done; exit(0), or exit(3) on an error.
 */
#include "virtio_blk.h"

#define SECTOR VIRTIO_BLK_SECTOR
#define MIB (1UL << 20)

static struct vblk blk;
static u8 *arena;
static u64 region_sectors, seconds, ops_limit, errors;
static u64 prng;

static u64 rnd(void) {                      /* xorshift64* */
    prng ^= prng >> 12;
    prng ^= prng << 25;
    prng ^= prng >> 27;
    return prng * 0x2545F4914F6CDD1DUL;
}

struct phase { u64 ops, bytes, ns, notifies; };

/* Keep `qd` requests of `bs` bytes in flight (random or sequential offsets) until the time or the
   count is up; one notify per batch of resubmissions. */
static struct phase run(u32 type, int random, u32 bs, int qd, int flush_at_end) {
    struct phase p = { 0, 0, 0, 0 };
    u64 bs_sectors = bs / SECTOR, slots_in_region = region_sectors / bs_sectors, next_seq = 0;
    u8 *buffer_of_slot[VBLK_SLOTS];
    u64 notifies = blk.q.notifies, issued = 0, done = 0;
    u64 start = now_ns(), deadline = start + seconds * 1000000000UL;
    int more = 1;

    if (ops_limit && (u64)qd > ops_limit) qd = (int)ops_limit;
    for (int i = 0; i < qd; i++) {
        u64 sector = (random ? rnd() % slots_in_region : next_seq++ % slots_in_region) * bs_sectors;
        u8 *buffer = arena + (u64)i * bs;
        int slot = vblk_submit(&blk, type, sector, buffer, bs);
        if (slot == VBLK_NO_SLOT) { RESULT("blk_bench_fail", "%s", "submit"); exit(3); }
        buffer_of_slot[slot] = buffer;
        issued++;
    }
    vblk_kick(&blk);
    while (done < issued) {
        int slot = vblk_poll(&blk), resubmitted = 0;
        if (slot == VBLK_NO_SLOT) { cpu_relax(); continue; }
        for (; slot != VBLK_NO_SLOT; slot = vblk_poll(&blk)) {
            if (blk.req[slot].status != VIRTIO_BLK_S_OK) errors++;
            u8 *buffer = buffer_of_slot[slot];
            vblk_release(&blk, slot);
            done++;
            if (more) more = ops_limit ? issued < ops_limit : now_ns() < deadline;
            if (!more) continue;
            u64 sector = (random ? rnd() % slots_in_region : next_seq++ % slots_in_region) * bs_sectors;
            int again = vblk_submit(&blk, type, sector, buffer, bs);
            if (again == VBLK_NO_SLOT) { RESULT("blk_bench_fail", "%s", "resubmit"); exit(3); }
            buffer_of_slot[again] = buffer;
            issued++;
            resubmitted = 1;
        }
        if (resubmitted) vblk_kick(&blk);
    }
    if (flush_at_end && vblk_has(&blk, VIRTIO_BLK_F_FLUSH) && vblk_flush(&blk) != VIRTIO_BLK_S_OK) errors++;
    p.ns = now_ns() - start;
    p.ops = done;
    p.bytes = done * bs;
    p.notifies = blk.q.notifies - notifies;
    return p;
}

static u64 per_second(u64 count, u64 ns) { return count * 1000000UL / (ns / 1000 ? ns / 1000 : 1); }

static void report_rate(const char *name, const char *unit, u64 value, struct phase p) {
    printf("RESULT %s_%s=%lu\n", name, unit, value);
    printf("RESULT %s_ops=%lu\n", name, p.ops);
    printf("RESULT %s_notifies_per_100=%lu\n", name, p.ops ? p.notifies * 100 / p.ops : 0);
}

void main(void) {
    u64 size_mib = cmdline_u64("size_mib", 64);
    seconds = cmdline_u64("seconds", 2);
    ops_limit = cmdline_u64("ops", 0);
    int qd = (int)cmdline_u64("qd", 32), seq_qd = (int)cmdline_u64("seq_qd", 4);
    prng = cmdline_u64("seed", 1) * 0x9E3779B97F4A7C15UL | 1;
    if (qd < 1 || qd > VBLK_SLOTS || seq_qd < 1 || seq_qd > 8) { RESULT("blk_bench_fail", "%s", "params"); exit(3); }
    arena = (u8 *)(((u64)_end + MIB - 1) & ~(MIB - 1));
    if (!vblk_open(&blk, VBLK_FEATURES, 256, 0)) { RESULT("blk_bench_fail", "%s", "no_device"); exit(3); }
    region_sectors = size_mib * (MIB / SECTOR);
    if (region_sectors > blk.cfg.capacity) region_sectors = blk.cfg.capacity;
    region_sectors &= ~(MIB / SECTOR - 1);
    if (!region_sectors) { RESULT("blk_bench_fail", "%s", "disk_smaller_than_1mib"); exit(3); }
    RESULT("region_mib", "%lu", region_sectors * SECTOR / MIB);
    RESULT("tsc_hz", "%lu", tsc_hz());

    if (!vblk_has(&blk, VIRTIO_BLK_F_RO)) {
        struct phase w = run(VIRTIO_BLK_T_OUT, 0, MIB, seq_qd, 1);
        report_rate("seqwrite", "mibps", per_second(w.bytes, w.ns) / MIB, w);
    }
    struct phase r = run(VIRTIO_BLK_T_IN, 0, MIB, seq_qd, 0);
    report_rate("seqread", "mibps", per_second(r.bytes, r.ns) / MIB, r);
    struct phase q1 = run(VIRTIO_BLK_T_IN, 1, 4096, 1, 0);
    report_rate("randread_qd1", "iops", per_second(q1.ops, q1.ns), q1);
    RESULT("randread_qd1_lat_us", "%lu", q1.ops ? q1.ns / q1.ops / 1000 : 0);
    struct phase qn = run(VIRTIO_BLK_T_IN, 1, 4096, qd, 0);
    char name[32] = "randread_qd";
    u64 len = strlen(name);
    if (qd >= 10) name[len++] = (char)('0' + qd / 10);
    name[len++] = (char)('0' + qd % 10);
    name[len] = 0;
    report_rate(name, "iops", per_second(qn.ops, qn.ns), qn);
    RESULT("errors", "%lu", errors);
    RESULT("blk_bench", "%s", errors ? "errors" : "done");
    exit(errors ? 3 : 0);
}
