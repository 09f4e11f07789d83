#include "virtio_9p.h"

#define TVERSION 100
#define TATTACH 104
#define TWALK 110
#define TLOPEN 12
#define TLCREATE 14
#define TREAD 116
#define TWRITE 118
#define TGETATTR 24
#define TCLUNK 120
#define RLERROR 7
#define HEADER 7

int v9p_open(struct v9p *p) {
    memset(p, 0, sizeof(*p));
    p->timeout_ns = 10000000000UL;
    if (!virtio_find(&p->dev, VIRTIO_ID_9P) || !p->dev.device) return 0;
    p->features = virtio_negotiate(&p->dev, VIRTIO_F_VERSION_1 | VIRTIO_9P_F_MOUNT_TAG);
    if (!(p->features & VIRTIO_F_VERSION_1)) return 0;
    if (p->features & VIRTIO_9P_F_MOUNT_TAG) {
        u16 length = *(volatile u16 *)p->dev.device;
        if (length >= sizeof(p->tag)) length = sizeof(p->tag) - 1;
        for (u16 i = 0; i < length; i++) p->tag[i] = (char)*(volatile u8 *)(p->dev.device + 2 + i);
    }
    if (!virtqc_setup(&p->dev, &p->q, 0, 64, 0xFFFF)) return 0;
    virtio_driver_ok(&p->dev);
    return (virtio_status(&p->dev) & VIRTIO_STATUS_DRIVER_OK) != 0;
}

/* --- building a T-message in p->tx ------------------------------------------------------------ */
static void put(struct v9p *p, u64 value, int bytes) {
    for (int i = 0; i < bytes && p->tx_len < P9_MSG_ROOM; i++) p->tx[p->tx_len++] = (u8)(value >> (8 * i));
}

static void put_str(struct v9p *p, const char *s) {
    u16 n = (u16)strlen(s);
    put(p, n, 2);
    for (u16 i = 0; i < n && p->tx_len < P9_MSG_ROOM; i++) p->tx[p->tx_len++] = (u8)s[i];
}

static void begin(struct v9p *p, u8 type) {
    p->tx_len = 0;
    put(p, 0, 4);                                   /* size: set by finish */
    put(p, type, 1);
    put(p, type == TVERSION ? 0xFFFF : p->next_tag++ % 0xFFFF, 2);
}

static void finish(struct v9p *p, u32 extra) {
    u32 size = p->tx_len + extra;
    for (int i = 0; i < 4; i++) p->tx[i] = (u8)(size >> (8 * i));
}

static u64 get(const u8 *at, int bytes) {
    u64 value = 0;
    for (int i = 0; i < bytes; i++) value |= (u64)at[i] << (8 * i);
    return value;
}

/* Post the chain, notify, poll for it; the reply's length, or P9_TIMEOUT. */
static i64 round_trip(struct v9p *p, const struct virtq_seg *segs, int n) {
    if (virtqc_add(&p->q, segs, n) < 0) return P9_BAD_REPLY;
    virtqc_notify(&p->q);
    p->requests++;
    u64 deadline = now_ns() + p->timeout_ns;
    u16 head;
    u32 length;
    while (!virtqc_take(&p->q, &head, &length)) {
        if (now_ns() > deadline) return P9_TIMEOUT;
        cpu_relax();
    }
    return length;
}

/* Check the reply in p->rx: -errno for Rlerror, P9_BAD_REPLY unless it is `type` + 1. */
static int check(struct v9p *p, i64 length, u8 type) {
    if (length < 0) return (int)length;
    if (length < HEADER || get(p->rx, 4) > (u64)length) return P9_BAD_REPLY;
    if (p->rx[4] == RLERROR) return length >= HEADER + 4 ? -(int)get(p->rx + HEADER, 4) : P9_BAD_REPLY;
    return p->rx[4] == type + 1 ? 0 : P9_BAD_REPLY;
}

static int simple(struct v9p *p, u8 type) {
    finish(p, 0);
    struct virtq_seg segs[2] = {
        { (u64)p->tx, p->tx_len, 0 }, { (u64)p->rx, P9_MSG_ROOM, VIRTQ_DESC_F_WRITE },
    };
    return check(p, round_trip(p, segs, 2), type);
}

static void read_qid(const u8 *at, struct p9_qid *qid) {
    if (!qid) return;
    qid->type = at[0];
    qid->version = (u32)get(at + 1, 4);
    qid->path = get(at + 5, 8);
}

int p9_version(struct v9p *p, u32 msize) {
    begin(p, TVERSION);
    put(p, msize, 4);
    put_str(p, "9P2000.L");
    int r = simple(p, TVERSION);
    if (r == 0) p->msize = (u32)get(p->rx + HEADER, 4);
    return r;
}

int p9_attach(struct v9p *p, u32 fid, struct p9_qid *qid) {
    begin(p, TATTACH);
    put(p, fid, 4);
    put(p, P9_NOFID, 4);
    put_str(p, "root");
    put_str(p, "");
    put(p, 0, 4);
    int r = simple(p, TATTACH);
    if (r == 0) read_qid(p->rx + HEADER, qid);
    return r;
}

int p9_walk(struct v9p *p, u32 fid, u32 newfid, const char *name, struct p9_qid *qid) {
    begin(p, TWALK);
    put(p, fid, 4);
    put(p, newfid, 4);
    put(p, name ? 1 : 0, 2);
    if (name) put_str(p, name);
    int r = simple(p, TWALK);
    if (r == 0 && name) {
        if (get(p->rx + HEADER, 2) != 1) return -2;                 /* a partial walk: ENOENT */
        read_qid(p->rx + HEADER + 2, qid);
    }
    return r;
}

int p9_lopen(struct v9p *p, u32 fid, u32 flags) {
    begin(p, TLOPEN);
    put(p, fid, 4);
    put(p, flags, 4);
    return simple(p, TLOPEN);
}

int p9_lcreate(struct v9p *p, u32 fid, const char *name, u32 flags, u32 mode) {
    begin(p, TLCREATE);
    put(p, fid, 4);
    put_str(p, name);
    put(p, flags, 4);
    put(p, mode, 4);
    put(p, 0, 4);
    return simple(p, TLCREATE);
}

i64 p9_read(struct v9p *p, u32 fid, u64 offset, void *data, u32 count) {
    begin(p, TREAD);
    put(p, fid, 4);
    put(p, offset, 8);
    put(p, count, 4);
    finish(p, 0);
    struct virtq_seg segs[3] = {
        { (u64)p->tx, p->tx_len, 0 }, { (u64)p->rx, HEADER + 4, VIRTQ_DESC_F_WRITE },
        { (u64)data, count, VIRTQ_DESC_F_WRITE },
    };
    i64 length = round_trip(p, segs, 3);
    int r = check(p, length, TREAD);
    if (r) return r;
    u32 got = (u32)get(p->rx + HEADER, 4);
    return got <= count && HEADER + 4 + got == (u64)length ? got : P9_BAD_REPLY;
}

i64 p9_write(struct v9p *p, u32 fid, u64 offset, const void *data, u32 count) {
    begin(p, TWRITE);
    put(p, fid, 4);
    put(p, offset, 8);
    put(p, count, 4);
    finish(p, count);
    struct virtq_seg segs[3] = {
        { (u64)p->tx, p->tx_len, 0 }, { (u64)data, count, 0 }, { (u64)p->rx, P9_MSG_ROOM, VIRTQ_DESC_F_WRITE },
    };
    int r = check(p, round_trip(p, segs, 3), TWRITE);
    return r ? r : (i64)get(p->rx + HEADER, 4);
}

int p9_getattr(struct v9p *p, u32 fid, u64 *size) {
    begin(p, TGETATTR);
    put(p, fid, 4);
    put(p, 0x7FF, 8);
    int r = simple(p, TGETATTR);
    if (r == 0 && size) *size = get(p->rx + HEADER + 8 + 13 + 4 + 4 + 4 + 8 + 8, 8);
    return r;
}

int p9_clunk(struct v9p *p, u32 fid) {
    begin(p, TCLUNK);
    put(p, fid, 4);
    return simple(p, TCLUNK);
}
