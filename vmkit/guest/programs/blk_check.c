/*
 * blk_check: drives a virtio-blk device (PCI, modern) through runtime/virtio_blk.c and checks
 * what it does: configuration, GET_ID, writes read back at many sizes (512 B .. 1 MiB), sector
 * offsets (near 0, the middle, the last sectors) and buffer alignments, with data buffers cut
 * into chains of many descriptors, requests several in flight, scattered buffers; FLUSH;
 * DISCARD and WRITE_ZEROES (when offered); reads and writes past the end (IOERR); an unknown
 * request type (UNSUPP); a read-only disk (ro=1: VIRTIO_BLK_F_RO offered, writes IOERR); the
 * used lengths of each kind of request (reported); four requests completed by MSI-X; then
 * hostile chains, each answered by an error status or by DEVICE_NEEDS_RESET (after which a reset
 * brings the device back), never by a change on disk: RESULT hostile_<case>=returned:R
 * status:S used:L devstatus:X for each.
 *
 * Every word of the disk the checks write holds pattern(word index, tag); a disk made by the
 * host with pattern(i, HOST_TAG) (host_pattern=1) is checked where the guest never writes.
 * Zones, in 512-byte sectors of a disk of C sectors (C >= 32768, i.e. 16 MiB):
 *   0 .. ~2060, C/2 +- ~2060, the last ~2060   size and offset sweep (the last 16: GUEST_TAG)
 *   C/8 (256)         DISCARD, then expected to read as zeros (discard_zeroes=0: reported only)
 *   C/8 + 512 (256)   WRITE_ZEROES
 *   C/4 (256)         never written: HOST_TAG when host_pattern=1
 *   3C/8 (256)        GUEST_TAG at the end; the target of the hostile writes
 *   5C/8 (512)        requests in flight, scattered buffers, used lengths, scratch
 *
 * Parameters: ro=1 (the disk is read-only), host_pattern=1, discard_zeroes=0, irq=0 (no MSI-X
 * requests), hostile=0 (skip the hostile chains), strict=1 (also fail on the hostile chains that
 * QEMU 7.2 completes: an address range wrapping around 2^64, one-page buffers outside RAM, which
 * QEMU serves through its bounce buffer, and a status byte outside RAM).
 * Prints RESULT lines; RESULT blk_check=pass and exit(0) when every check passed, else
 * RESULT blk_fail=<what> and exit(3).
 */
#include "virtio_blk.h"

#define MUL 0x9E3779B97F4A7C15UL
#define HOST_TAG 0x686F73745F706174UL       /* "host_pat" */
#define GUEST_TAG 0x67756573745F7772UL      /* "guest_wr" */
#define JUNK 0xEE
#define MSIX_VECTOR 0x42
#define ZONE 256UL                          /* sectors */
#define SECTOR VIRTIO_BLK_SECTOR
#define OUTSIDE 0x7FFFFFFF0000UL            /* far above any guest RAM */

static struct vblk blk;
static u64 cap, unit;                       /* capacity; sectors per logical block */
static u8 *wbuf, *rbuf;
static int host;                            /* the disk holds the host pattern (host_pattern=1) */
static int read_only;

static u64 pattern(u64 word, u64 tag) { return word * MUL ^ tag; }

static void fill(u8 *buf, u64 sector, u64 bytes, u64 tag) {
    u64 w0 = sector * (SECTOR / 8);
    for (u64 i = 0; i < bytes / 8; i++) {
        u64 v = pattern(w0 + i, tag);
        memcpy(buf + 8 * i, &v, 8);         /* buffers may sit at any byte address */
    }
}

/* The first word that differs, or -1. */
static i64 mismatch(const u8 *buf, u64 sector, u64 bytes, u64 tag) {
    u64 w0 = sector * (SECTOR / 8);
    for (u64 i = 0; i < bytes / 8; i++) {
        u64 v;
        memcpy(&v, buf + 8 * i, 8);
        if (v != pattern(w0 + i, tag)) return (i64)i;
    }
    return -1;
}

static int all_zero(const u8 *p, u64 n) { while (n--) if (*p++) return 0; return 1; }

__attribute__((noreturn)) static void fail(const char *what) {
    RESULT("blk_fail", "%s", what);
    exit(3);
}

static void expect_status(const char *what, int got, int want) {
    if (got == want) return;
    printf("%s: status %d, expected %d\n", what, got, want);
    fail(what);
}

static const char *status_name(int s) {
    switch (s) {
    case VIRTIO_BLK_S_OK: return "ok";
    case VIRTIO_BLK_S_IOERR: return "ioerr";
    case VIRTIO_BLK_S_UNSUPP: return "unsupp";
    case VBLK_TIMEOUT: return "timeout";
    case 0xFF: return "unwritten";
    }
    return "other";
}

/* Read `sectors` at `sector` and compare with the pattern of `tag`. */
static void verify(const char *what, u64 sector, u64 sectors, u64 tag) {
    memset(rbuf, 0xA5, sectors * SECTOR);
    expect_status(what, vblk_read(&blk, sector, rbuf, sectors * SECTOR), VIRTIO_BLK_S_OK);
    i64 at = mismatch(rbuf, sector, sectors * SECTOR, tag);
    if (at >= 0) {
        printf("%s: word %ld of sector %lu differs\n", what, at, sector);
        fail(what);
    }
}

static void write_pattern(const char *what, u64 sector, u64 sectors, u64 tag) {
    fill(wbuf, sector, sectors * SECTOR, tag);
    expect_status(what, vblk_write(&blk, sector, wbuf, sectors * SECTOR), VIRTIO_BLK_S_OK);
}

static void report_config(void) {
    struct vblk_config *c = &blk.cfg;
    RESULT("features_offered", "%lx", blk.offered);
    RESULT("features", "%lx", blk.features);
    RESULT("capacity", "%lu", c->capacity);
    RESULT("blk_size", "%u", c->blk_size);
    RESULT("size_max", "%u", c->size_max);
    RESULT("seg_max", "%u", c->seg_max);
    RESULT("queue_size", "%u", blk.q.size);
    RESULT("writeback", "%u", c->writeback);
    RESULT("max_discard_sectors", "%u", c->max_discard_sectors);
    RESULT("max_discard_seg", "%u", c->max_discard_seg);
    RESULT("discard_sector_alignment", "%u", c->discard_sector_alignment);
    RESULT("max_write_zeroes_sectors", "%u", c->max_write_zeroes_sectors);
    RESULT("max_write_zeroes_seg", "%u", c->max_write_zeroes_seg);
    RESULT("write_zeroes_may_unmap", "%u", c->write_zeroes_may_unmap);
}

/* ---------------------------------------------------------------- writes read back */
static u64 round_up_unit(u64 sectors) { return (sectors + unit - 1) / unit * unit; }

/* Write at `sector` from a buffer at byte offset `woff`, read back into one at `roff`: the data,
   and the bytes either side of the read buffer untouched. */
static void write_read(u64 sector, u64 bytes, u64 tag, u64 woff, u64 roff, u32 seg_bytes) {
    u32 saved = blk.seg_bytes;
    if (seg_bytes && seg_bytes < blk.seg_bytes) blk.seg_bytes = seg_bytes;
    fill(wbuf + woff, sector, bytes, tag);
    int ws = vblk_write(&blk, sector, wbuf + woff, bytes);
    memset(rbuf, 0xA5, bytes + roff + 64);
    int rs = vblk_read(&blk, sector, rbuf + roff, bytes);
    blk.seg_bytes = saved;
    if (ws != VIRTIO_BLK_S_OK || rs != VIRTIO_BLK_S_OK || mismatch(rbuf + roff, sector, bytes, tag) >= 0
        || (roff && rbuf[roff - 1] != 0xA5) || rbuf[roff + bytes] != 0xA5) {
        printf("sweep: sector %lu bytes %lu woff %lu roff %lu seg %u: write %s read %s word %ld\n", sector,
               bytes, woff, roff, seg_bytes, status_name(ws), status_name(rs), mismatch(rbuf + roff, sector, bytes, tag));
        fail("readback");
    }
}

static void sweep(void) {
    static const u64 sizes[] = { 512, 1024, 4096, 4608, 65536, 130560, 1UL << 20 };
    static const u64 offsets[] = { 0, 1, 8, 511, 4000, 3 };
    static const u32 segs[] = { 0, 4096, 512, 65536 };
    u64 pairs = 0, bytes_total = 0;
    for (u64 s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        u64 n = round_up_unit(sizes[s] / SECTOR), bytes = n * SECTOR;
        u64 mid = cap / 2 / unit * unit;
        u64 at[] = { 0, 1, 7, mid - 3, mid, cap - n, cap - n - 1 };
        for (u64 p = 0; p < sizeof(at) / sizeof(at[0]); p++) {
            u64 sector = at[p] / unit * unit;
            u64 i = s * 7 + p;
            write_read(sector, bytes, 0x5357000000000000UL | i, offsets[i % 6], offsets[(i + 3) % 6], segs[i % 4]);
            pairs++;
            bytes_total += bytes;
        }
    }
    RESULT("sweep_pairs", "%lu", pairs);
    RESULT("sweep_bytes", "%lu", bytes_total);
}

/* Requests in flight together: 32 writes of 4 KiB posted before one notify, then 32 reads. */
static void in_flight(void) {
    u64 base = cap / 8 * 5, n = round_up_unit(8);
    int slots[32];
    for (int i = 0; i < 32; i++) {
        u64 sector = base + (u64)i * n;
        fill(wbuf + (u64)i * n * SECTOR, sector, n * SECTOR, GUEST_TAG ^ 0x51);
        slots[i] = vblk_submit(&blk, VIRTIO_BLK_T_OUT, sector, wbuf + (u64)i * n * SECTOR, (u32)(n * SECTOR));
        if (slots[i] == VBLK_NO_SLOT) fail("inflight_submit");
    }
    u64 notifies = blk.q.notifies;
    vblk_kick(&blk);
    for (int i = 0; i < 32; i++) expect_status("inflight_write", vblk_wait(&blk, slots[i]), VIRTIO_BLK_S_OK);
    memset(rbuf, 0, 32 * n * SECTOR);
    for (int i = 31; i >= 0; i--) {     /* reads posted in the other order */
        slots[i] = vblk_submit(&blk, VIRTIO_BLK_T_IN, base + (u64)i * n, rbuf + (u64)i * n * SECTOR, (u32)(n * SECTOR));
        if (slots[i] == VBLK_NO_SLOT) fail("inflight_submit");
    }
    vblk_kick(&blk);
    for (int i = 0; i < 32; i++) expect_status("inflight_read", vblk_wait(&blk, slots[i]), VIRTIO_BLK_S_OK);
    if (mismatch(rbuf, base, 32 * n * SECTOR, GUEST_TAG ^ 0x51) >= 0) fail("inflight_data");
    RESULT("inflight", "%u", 32);
    RESULT("inflight_notifies", "%lu", blk.q.notifies - notifies);
}

/* One request whose data is four buffers scattered in memory (and of odd sizes), read back whole. */
static void scattered(void) {
    u64 sector = cap / 8 * 5 + 512;
    static const u32 lens[] = { 4096, 512, 7680, 4096 };
    static const u64 where[] = { 3 << 20, 1 << 20, (2 << 20) + 100, 12345 };   /* offsets in wbuf */
    struct virtq_seg seg[4];
    u64 total = 0;
    for (int i = 0; i < 4; i++) {
        fill(wbuf + where[i], sector + total / SECTOR, lens[i], GUEST_TAG ^ 0x5C);
        seg[i] = (struct virtq_seg){ (u64)(wbuf + where[i]), lens[i], 0 };
        total += lens[i];
    }
    int slot = vblk_submit_sg(&blk, VIRTIO_BLK_T_OUT, sector, seg, 4);
    if (slot == VBLK_NO_SLOT) fail("scatter_submit");
    vblk_kick(&blk);
    expect_status("scatter_write", vblk_wait(&blk, slot), VIRTIO_BLK_S_OK);
    verify("scatter_read", sector, total / SECTOR, GUEST_TAG ^ 0x5C);
    /* and the other way: one contiguous write read back into scattered buffers */
    write_pattern("gather_write", sector, total / SECTOR, GUEST_TAG ^ 0x6A);
    for (int i = 0; i < 4; i++) seg[i].addr = (u64)(rbuf + where[i]);
    memset(rbuf, 0, (4 << 20));
    slot = vblk_submit_sg(&blk, VIRTIO_BLK_T_IN, sector, seg, 4);
    if (slot == VBLK_NO_SLOT) fail("gather_submit");
    vblk_kick(&blk);
    expect_status("gather_read", vblk_wait(&blk, slot), VIRTIO_BLK_S_OK);
    total = 0;
    for (int i = 0; i < 4; i++) {
        if (mismatch(rbuf + where[i], sector + total / SECTOR, lens[i], GUEST_TAG ^ 0x6A) >= 0) fail("gather_data");
        total += lens[i];
    }
    RESULT("scatter_gather", "%s", "ok");
}

/* ---------------------------------------------------------------- requests with status only */
static u32 last_used;                       /* the used length of the last request one() made */

static int one(int slot) {
    if (slot == VBLK_NO_SLOT) fail("submit");
    vblk_kick(&blk);
    int status = vblk_wait(&blk, slot);
    last_used = blk.req[slot].used_len;         /* still there once the slot is released */
    return status;
}

/* What the device puts in the used ring's length for each kind of request (reported only). */
static void used_lengths(void) {
    int s = one(vblk_submit(&blk, VIRTIO_BLK_T_IN, 0, rbuf, 4096));
    expect_status("used_len_in", s, VIRTIO_BLK_S_OK);
    RESULT("used_len_in_4096", "%u", last_used);
    if (!read_only) {
        u64 sector = cap / 8 * 5;
        fill(wbuf, sector, 4096, GUEST_TAG);
        expect_status("used_len_out", one(vblk_submit(&blk, VIRTIO_BLK_T_OUT, sector, wbuf, 4096)), VIRTIO_BLK_S_OK);
        RESULT("used_len_out_4096", "%u", last_used);
    }
    if (vblk_has(&blk, VIRTIO_BLK_F_FLUSH)) {
        one(vblk_submit_sg(&blk, VIRTIO_BLK_T_FLUSH, 0, 0, 0));
        RESULT("used_len_flush", "%u", last_used);
    }
    one(vblk_submit(&blk, VIRTIO_BLK_T_IN, cap, rbuf, 4096));
    RESULT("used_len_in_past_end", "%u", last_used);
    one(vblk_submit_sg(&blk, 0x55, 0, 0, 0));
    RESULT("used_len_unsupp", "%u", last_used);
}

static void past_the_end(void) {
    int s = one(vblk_submit(&blk, VIRTIO_BLK_T_IN, cap, rbuf, SECTOR));
    RESULT("read_past_end", "%s", status_name(s));
    expect_status("read_past_end", s, VIRTIO_BLK_S_IOERR);
    s = one(vblk_submit(&blk, VIRTIO_BLK_T_IN, cap - unit, rbuf, (u32)(2 * unit * SECTOR)));
    RESULT("read_across_end", "%s", status_name(s));
    expect_status("read_across_end", s, VIRTIO_BLK_S_IOERR);
    s = one(vblk_submit(&blk, VIRTIO_BLK_T_IN, ~0UL - 1, rbuf, SECTOR));   /* sector * 512 wraps */
    RESULT("read_wrapping_sector", "%s", status_name(s));
    expect_status("read_wrapping_sector", s, VIRTIO_BLK_S_IOERR);
    fill(wbuf, cap, SECTOR, JUNK);
    s = one(vblk_submit(&blk, VIRTIO_BLK_T_OUT, cap, wbuf, SECTOR));
    RESULT("write_past_end", "%s", status_name(s));
    expect_status("write_past_end", s, VIRTIO_BLK_S_IOERR);
}

static void unknown_type(void) {
    int slot = vblk_submit_sg(&blk, 0x55, 0, 0, 0);
    int s = one(slot);
    RESULT("unknown_type", "%s", status_name(s));
    expect_status("unknown_type", s, VIRTIO_BLK_S_UNSUPP);
}

static void get_id(void) {
    char serial[VIRTIO_BLK_ID_BYTES + 1];
    memset(serial, 0, sizeof(serial));
    int slot = vblk_submit(&blk, VIRTIO_BLK_T_GET_ID, 0, serial, VIRTIO_BLK_ID_BYTES);
    if (slot == VBLK_NO_SLOT) fail("get_id_submit");
    vblk_kick(&blk);
    u32 used;
    int s;
    if ((s = vblk_wait(&blk, slot)) == VIRTIO_BLK_S_OK) used = blk.req[slot].used_len;
    else used = 0;
    expect_status("get_id", s, VIRTIO_BLK_S_OK);
    for (int i = 0; i < VIRTIO_BLK_ID_BYTES; i++)
        if (serial[i] && (serial[i] < 0x21 || serial[i] > 0x7E)) serial[i] = '?';   /* one word on the line */
    RESULT("serial", "%s", serial);
    RESULT("get_id_used_len", "%u", used);
}

static void flush_check(void) {
    if (!vblk_has(&blk, VIRTIO_BLK_F_FLUSH)) { RESULT("flush", "%s", "not_offered"); return; }
    int s = vblk_flush(&blk);
    RESULT("flush", "%s", status_name(s));
    if (!read_only) expect_status("flush", s, VIRTIO_BLK_S_OK);
}

static void discard_check(void) {
    if (!vblk_has(&blk, VIRTIO_BLK_F_DISCARD)) { RESULT("discard", "%s", "not_offered"); return; }
    u64 sector = cap / 8, align = blk.cfg.discard_sector_alignment ? blk.cfg.discard_sector_alignment : 1;
    sector = sector / align * align;
    if (read_only) {
        int s = vblk_discard(&blk, sector, ZONE);
        RESULT("discard", "%s", status_name(s));
        if (s == VIRTIO_BLK_S_OK) fail("ro_discard");
        return;
    }
    write_pattern("discard_prepare", sector, ZONE, GUEST_TAG ^ 0xD1);
    int s = vblk_discard(&blk, sector, ZONE);
    RESULT("discard", "%s", status_name(s));
    expect_status("discard", s, VIRTIO_BLK_S_OK);
    memset(rbuf, 0xA5, ZONE * SECTOR);
    expect_status("discard_read", vblk_read(&blk, sector, rbuf, ZONE * SECTOR), VIRTIO_BLK_S_OK);
    int zeroed = all_zero(rbuf, ZONE * SECTOR);
    RESULT("discard_sector", "%lu", sector);
    RESULT("discard_zeroed", "%d", zeroed);
    if (!zeroed && cmdline_u64("discard_zeroes", 1)) fail("discard_zeroes");
    /* A discard with the unmap flag set is not allowed (5.2.6.2: the device MUST reply UNSUPP). */
    s = one(vblk_submit_range(&blk, VIRTIO_BLK_T_DISCARD, sector, unit, VIRTIO_BLK_WRITE_ZEROES_F_UNMAP));
    RESULT("discard_unmap_flag", "%s", status_name(s));
    if (s == VIRTIO_BLK_S_OK) fail("discard_unmap_flag");
}

static void write_zeroes_check(void) {
    if (!vblk_has(&blk, VIRTIO_BLK_F_WRITE_ZEROES)) { RESULT("write_zeroes", "%s", "not_offered"); return; }
    u64 sector = cap / 8 + 512;
    if (read_only) {
        int s = vblk_write_zeroes(&blk, sector, ZONE, 0);
        RESULT("write_zeroes", "%s", status_name(s));
        if (s == VIRTIO_BLK_S_OK) fail("ro_write_zeroes");
        return;
    }
    for (int unmap = 0; unmap < 2; unmap++) {
        write_pattern("write_zeroes_prepare", sector, ZONE, GUEST_TAG ^ 0x20);
        int s = vblk_write_zeroes(&blk, sector + unit, ZONE - 2 * unit, unmap);   /* a sector either side kept */
        if (unmap) RESULT("write_zeroes_unmap", "%s", status_name(s));
        else RESULT("write_zeroes", "%s", status_name(s));
        expect_status(unmap ? "write_zeroes_unmap" : "write_zeroes", s, VIRTIO_BLK_S_OK);
        memset(rbuf, 0xA5, ZONE * SECTOR);
        expect_status("write_zeroes_read", vblk_read(&blk, sector, rbuf, ZONE * SECTOR), VIRTIO_BLK_S_OK);
        u64 edge = unit * SECTOR;
        if (!all_zero(rbuf + edge, (ZONE - 2 * unit) * SECTOR)) fail("write_zeroes_data");
        if (mismatch(rbuf, sector, edge, GUEST_TAG ^ 0x20) >= 0
            || mismatch(rbuf + (ZONE - unit) * SECTOR, sector + ZONE - unit, edge, GUEST_TAG ^ 0x20) >= 0)
            fail("write_zeroes_bounds");
    }
    RESULT("write_zeroes_sector", "%lu", sector + unit);
}

static void read_only_check(void) {
    int offered = (blk.offered & VIRTIO_BLK_F_RO) != 0;
    RESULT("ro_offered", "%d", offered);
    if (offered != read_only) fail(read_only ? "ro_not_offered" : "ro_offered");
    if (!read_only) return;
    fill(wbuf, cap / 4, 8 * SECTOR, GUEST_TAG);
    int s = vblk_write(&blk, cap / 4, wbuf, 8 * SECTOR);
    RESULT("ro_write", "%s", status_name(s));
    expect_status("ro_write", s, VIRTIO_BLK_S_IOERR);
}

static u64 sig_sector(void) { return cap / 8 * 3; }

/* Read back what is known to be on the disk: GUEST_TAG in the signature zone (written), else
   the host pattern (host_pattern=1), else just a read that must succeed. */
static void known_data(const char *what) {
    if (!read_only) verify(what, sig_sector(), ZONE, GUEST_TAG);
    else if (host) verify(what, cap / 4, ZONE, HOST_TAG);
    else expect_status(what, vblk_read(&blk, 0, rbuf, 8 * unit * SECTOR), VIRTIO_BLK_S_OK);
}

/* Requests completed by MSI-X. On PVM hosts an interrupt reaches the guest only while it waits
   in ring 0 (wait_irq's `sti; hlt`), not while ring 3 runs: so each request here is followed by a
   wait for its interrupt, and only then is the used ring read (the device writes the used entry
   before it sends the message). Then a read through the driver's own interrupt-driven wait. */
static void msix_check(void) {
    if (!blk.dev.msix_table) { RESULT("msix", "%s", "absent"); return; }
    blk.msix_vector = MSIX_VECTOR;
    if (!vblk_reinit(&blk)) fail("msix_setup");
    u64 before = irq_count[MSIX_VECTOR];
    for (int i = 0; i < 4; i++) {
        u64 seen = irq_count[MSIX_VECTOR];
        int slot = vblk_submit(&blk, VIRTIO_BLK_T_IN, 0, rbuf, 8 * unit * SECTOR);
        if (slot == VBLK_NO_SLOT) fail("msix_submit");
        vblk_kick(&blk);
        if (!wait_irq_since(MSIX_VECTOR, seen, tsc_hz())) fail("msix_no_interrupt");
        if (vblk_poll(&blk) != slot) fail("msix_interrupt_before_used");
        expect_status("msix_read", vblk_wait(&blk, slot), VIRTIO_BLK_S_OK);
    }
    RESULT("msix_interrupts", "%lu", irq_count[MSIX_VECTOR] - before);
    if (irq_count[MSIX_VECTOR] - before != 4) fail("msix_interrupts");
    known_data("msix_driver_read");
    blk.msix_vector = 0;
    if (!vblk_reinit(&blk)) fail("polled_setup");
}

/* ---------------------------------------------------------------- hostile chains */
/* Post a chain as given, notify, and watch for up to a second: the used ring, the status
   register. Reports "<case>=status:S used:L devstatus:X" and resets the device if it needs it.
   `may_answer`: the chain has a device-writable last byte where an error status can go. */
static int strict;                          /* strict=1: the cases QEMU lets through are judged too */

static void hostile(const char *name, struct virtq_seg *segs, int n, volatile u8 *status_byte, int may_answer,
                    int judged) {
    if (status_byte) *status_byte = 0xFF;
    int slot = vblk_submit_raw(&blk, segs, n);
    if (slot == VBLK_NO_SLOT) fail("hostile_submit");
    virtqc_notify(&blk.q);
    u64 deadline = now_ns() + 1000000000UL;
    u8 dev = 0;
    int returned = 0;
    while (now_ns() < deadline) {
        if (vblk_poll(&blk) == slot) { returned = 1; break; }
        dev = virtio_status(&blk.dev);
        if (dev & VIRTIO_STATUS_NEEDS_RESET) {
            for (int i = 0; i < 1000 && !returned; i++) returned = vblk_poll(&blk) == slot;
            break;
        }
    }
    dev = virtio_status(&blk.dev);
    int status = status_byte ? *status_byte : -1;
    u32 used = returned ? blk.req[slot].used_len : 0;
    printf("RESULT hostile_%s=returned:%d status:%s used:%u devstatus:%x\n", name, returned,
           status_byte ? status_name(status) : "none", used, dev);
    int needs_reset = (dev & VIRTIO_STATUS_NEEDS_RESET) != 0;
    int error_answer = returned && may_answer && (status == VIRTIO_BLK_S_IOERR || status == VIRTIO_BLK_S_UNSUPP);
    int dropped = returned && !may_answer && used == 0;     /* nowhere to put a status: nothing written */
    if (!needs_reset && !error_answer && !dropped && (judged || strict)) fail(name);
    if (needs_reset || !returned) {
        if (!vblk_reinit(&blk)) fail("hostile_reset");
    } else {
        vblk_release(&blk, slot);
    }
    known_data("hostile_after");     /* the device serves requests again; the hostile write did not land */
}

static u64 ram_top(void) {
    u64 top = 0;
    for (int r = 0; r < machine.nr_ranges; r++) {
        u64 end = machine.ranges[r].base + machine.ranges[r].size;
        if (machine.ranges[r].type == 1 && end <= (4UL << 30) && end > top) top = end;
    }
    return top;
}

static void hostile_chains(void) {
    static struct virtio_blk_outhdr hdr __attribute__((aligned(16)));
    static volatile u8 status;
    u64 target = sig_sector();
    u8 *junk = wbuf;
    memset(junk, JUNK, 1 << 20);
    hdr = (struct virtio_blk_outhdr){ VIRTIO_BLK_T_OUT, 0, target };
    struct virtq_seg h = { (u64)&hdr, sizeof(hdr), 0 };
    struct virtq_seg st = { (u64)&status, 1, VIRTQ_DESC_F_WRITE };

    /* (a) no status buffer at all: an OUT whose chain has no device-writable byte */
    struct virtq_seg a[] = { h, { (u64)junk, 4096, 0 } };
    hostile("status_missing", a, 2, 0, 0, 1);

    /* (b) the status byte device-readable: an OUT, everything readable */
    struct virtq_seg b[] = { h, { (u64)junk, 4096, 0 }, { (u64)&status, 1, 0 } };
    hostile("status_readable", b, 3, &status, 0, 1);

    /* (b') an IN whose readable status comes after its writable data (out of order) */
    hdr.type = VIRTIO_BLK_T_IN;
    struct virtq_seg b2[] = { h, { (u64)rbuf, 4096, VIRTQ_DESC_F_WRITE }, { (u64)&status, 1, 0 } };
    hostile("status_readable_in", b2, 3, &status, 0, 1);

    /* (c) the header device-writable: an OUT of junk over the target if taken as a header */
    hdr.type = VIRTIO_BLK_T_OUT;
    struct virtq_seg c[] = { { (u64)&hdr, sizeof(hdr), VIRTQ_DESC_F_WRITE }, { (u64)junk, 4096, VIRTQ_DESC_F_WRITE }, st };
    hostile("header_writable", c, 3, &status, 1, 1);

    /* (c') a header shorter than 16 bytes */
    struct virtq_seg c2[] = { { (u64)&hdr, 8, 0 }, st };
    hostile("header_short", c2, 2, &status, 1, 1);

    /* (d) data outside guest memory: an IN (the device would write there), then an OUT (it
       would read there and write that on the disk) */
    hdr.type = VIRTIO_BLK_T_IN;
    struct virtq_seg d[] = { h, { OUTSIDE, 65536, VIRTQ_DESC_F_WRITE }, st };
    hostile("data_outside_in", d, 3, &status, 1, 1);
    hdr.type = VIRTIO_BLK_T_OUT;
    struct virtq_seg d2[] = { h, { OUTSIDE, 65536, 0 }, st };
    hostile("data_outside_out", d2, 3, &status, 1, 1);

    /* (d') a buffer that starts in the last page of RAM and runs past its end */
    u64 top = ram_top();
    RESULT("ram_top", "%lx", top);
    hdr.type = VIRTIO_BLK_T_IN;
    struct virtq_seg d3[] = { h, { top - 4096, 65536, VIRTQ_DESC_F_WRITE }, st };
    hostile("data_straddling_ram_end", d3, 3, &status, 1, 1);

    /* Judged only with strict=1 (QEMU 7.2 lets them through):
       (d'') an address and length that wrap around 2^64: the part past the wrap is guest page 0 */
    u64 page0 = 0;
    __asm__("" : "+r"(page0));                  /* an address the compiler cannot see is null */
    int page0_ram = 0;
    for (int r = 0; r < machine.nr_ranges; r++)
        page0_ram |= machine.ranges[r].type == 1 && machine.ranges[r].base == 0 && machine.ranges[r].size >= 4096;
    if (page0_ram) memset((void *)page0, 0, 4096);
    struct virtq_seg d4[] = { h, { ~0UL - 4095, 8192, VIRTQ_DESC_F_WRITE }, st };
    hostile("data_wrapping", d4, 3, &status, 1, 0);
    if (page0_ram) RESULT("data_wrapping_wrote_page0", "%d", !all_zero((u8 *)page0, 4096));
    /* (d''') data outside guest memory, one page long */
    struct virtq_seg d5[] = { h, { OUTSIDE, 4096, VIRTQ_DESC_F_WRITE }, st };
    hostile("data_outside_in_page", d5, 3, &status, 1, 0);
    u64 scratch = cap / 8 * 5;                  /* not the signature zone: QEMU writes this one */
    hdr.sector = scratch;
    hdr.type = VIRTIO_BLK_T_OUT;
    fill(wbuf, scratch, 4096, GUEST_TAG ^ 0x77);
    if (!read_only) expect_status("scratch_write", vblk_write(&blk, scratch, wbuf, 4096), VIRTIO_BLK_S_OK);
    struct virtq_seg d6[] = { h, { OUTSIDE, 4096, 0 }, st };
    hostile("data_outside_out_page", d6, 3, &status, 1, 0);
    if (!read_only) {
        expect_status("scratch_read", vblk_read(&blk, scratch, rbuf, 4096), VIRTIO_BLK_S_OK);
        RESULT("data_outside_out_page_disk", "%s", mismatch(rbuf, scratch, 4096, GUEST_TAG ^ 0x77) < 0 ? "unchanged"
               : all_zero(rbuf, 4096) ? "zeros" : rbuf[0] == 0xFF && rbuf[4095] == 0xFF ? "ones" : "changed");
    }
    hdr.sector = target;
    /* (e) the status byte itself outside guest memory */
    hdr.type = VIRTIO_BLK_T_IN;
    struct virtq_seg e[] = { h, { (u64)rbuf, 4096, VIRTQ_DESC_F_WRITE }, { OUTSIDE, 1, VIRTQ_DESC_F_WRITE } };
    hostile("status_outside", e, 3, 0, 0, 0);

}

void main(void) {
    read_only = (int)cmdline_u64("ro", 0);
    strict = (int)cmdline_u64("strict", 0);
    u64 arena = ((u64)_end + 0xFFFFF) & ~0xFFFFFUL;
    wbuf = (u8 *)arena;
    rbuf = (u8 *)arena + (4UL << 20);
    if (arena + (8UL << 20) > ram_top()) fail("memory");
    if (!vblk_open(&blk, VBLK_FEATURES, 256, 0)) fail("no_device");
    cap = blk.cfg.capacity;
    unit = blk.cfg.blk_size > SECTOR ? blk.cfg.blk_size / SECTOR : 1;
    report_config();
    if (cap < 32768) fail("disk_smaller_than_16mib");
    get_id();
    read_only_check();
    host = (int)cmdline_u64("host_pattern", 0);
    if (host) {
        verify("host_pattern_start", 0, 16, HOST_TAG);
        verify("host_pattern_quarter", cap / 4, ZONE, HOST_TAG);
        verify("host_pattern_end", cap - 16, 16, HOST_TAG);
    }
    if (!read_only) {
        sweep();
        in_flight();
        scattered();
        write_pattern("sig_write", sig_sector(), ZONE, GUEST_TAG);
        write_pattern("tail_write", cap - 16, 16, GUEST_TAG);
        write_pattern("head_write", 0, 8 * unit, GUEST_TAG ^ 0x1);
        RESULT("sig_sector", "%lu", sig_sector());
        RESULT("sig_sectors", "%lu", ZONE);
    }
    flush_check();
    discard_check();
    write_zeroes_check();
    past_the_end();
    unknown_type();
    used_lengths();
    if (cmdline_u64("irq", 1)) msix_check();
    if (cmdline_u64("hostile", 1)) hostile_chains();
    if (!read_only) {
        verify("sig_after", sig_sector(), ZONE, GUEST_TAG);
        verify("tail_after", cap - 16, 16, GUEST_TAG);
        flush_check();
    }
    if (host) verify("host_pattern_after", cap / 4, ZONE, HOST_TAG);
    RESULT("blk_check", "%s", "pass");
    exit(0);
}
