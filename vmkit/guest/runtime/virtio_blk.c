#include "virtio_blk.h"

#define COMMON_CONFIG_GENERATION 0x15

static u8 cfg8(struct vblk *b, u32 off) { return *(volatile u8 *)(b->dev.device + off); }
static u16 cfg16(struct vblk *b, u32 off) { return *(volatile u16 *)(b->dev.device + off); }
static u32 cfg32(struct vblk *b, u32 off) { return *(volatile u32 *)(b->dev.device + off); }

/* The configuration space (virtio 1.x, 5.2.4), read until the generation counter holds still. */
static void read_config(struct vblk *b) {
    struct vblk_config *c = &b->cfg;
    for (int tries = 0; tries < 8; tries++) {
        u8 generation = *(volatile u8 *)(b->dev.common + COMMON_CONFIG_GENERATION);
        memset(c, 0, sizeof(*c));
        c->capacity = cfg32(b, 0) | (u64)cfg32(b, 4) << 32;
        if (vblk_has(b, VIRTIO_BLK_F_SIZE_MAX)) c->size_max = cfg32(b, 8);
        if (vblk_has(b, VIRTIO_BLK_F_SEG_MAX)) c->seg_max = cfg32(b, 12);
        if (b->offered & VIRTIO_BLK_F_GEOMETRY) {
            c->cylinders = cfg16(b, 16); c->heads = cfg8(b, 18); c->sectors = cfg8(b, 19);
        }
        if (vblk_has(b, VIRTIO_BLK_F_BLK_SIZE)) c->blk_size = cfg32(b, 20);
        if (b->offered & VIRTIO_BLK_F_TOPOLOGY) {
            c->physical_block_exp = cfg8(b, 24); c->alignment_offset = cfg8(b, 25);
            c->min_io_size = cfg16(b, 26); c->opt_io_size = cfg32(b, 28);
        }
        c->writeback = cfg8(b, 32);
        if (b->offered & VIRTIO_BLK_F_MQ) c->num_queues = cfg16(b, 34);
        if (vblk_has(b, VIRTIO_BLK_F_DISCARD)) {
            c->max_discard_sectors = cfg32(b, 36); c->max_discard_seg = cfg32(b, 40);
            c->discard_sector_alignment = cfg32(b, 44);
        }
        if (vblk_has(b, VIRTIO_BLK_F_WRITE_ZEROES)) {
            c->max_write_zeroes_sectors = cfg32(b, 48); c->max_write_zeroes_seg = cfg32(b, 52);
            c->write_zeroes_may_unmap = cfg8(b, 56);
        }
        if (*(volatile u8 *)(b->dev.common + COMMON_CONFIG_GENERATION) == generation) return;
    }
}

int vblk_has(const struct vblk *b, u64 feature) { return (b->features & feature) == feature; }

static u64 offered_features(struct virtio_dev *dev) {
    u64 offered = 0;
    for (u32 half = 0; half < 2; half++) {
        *(volatile u32 *)(dev->common + 0x00) = half;                   /* device_feature_select */
        offered |= (u64)*(volatile u32 *)(dev->common + 0x04) << (32 * half);
    }
    return offered;
}

static int set_up(struct vblk *b) {
    b->features = virtio_negotiate(&b->dev, b->wanted | VIRTIO_F_VERSION_1);
    if (!(b->features & VIRTIO_F_VERSION_1)) return 0;
    b->offered = offered_features(&b->dev);
    u16 vector = b->msix_vector && b->dev.msix_table ? 0 : 0xFFFF;
    if (!virtqc_setup(&b->dev, &b->q, 0, b->queue_size_wanted, vector)) return 0;
    if (vector == 0) virtio_msix_route(&b->dev, 0, b->msix_vector);
    memset(b->req, 0, sizeof(b->req));
    for (int i = 0; i < VIRTQC_MAX; i++) b->slot_of_head[i] = VBLK_NO_SLOT;
    b->inflight = 0;
    virtio_driver_ok(&b->dev);
    return (virtio_status(&b->dev) & VIRTIO_STATUS_DRIVER_OK) != 0;
}

int vblk_reinit(struct vblk *b) { return set_up(b); }

int vblk_open(struct vblk *b, u64 wanted, u16 queue_size, u8 msix_vector) {
    memset(b, 0, sizeof(*b));
    if (!virtio_find(&b->dev, VIRTIO_ID_BLOCK) || !b->dev.device) return 0;
    b->wanted = wanted;
    b->queue_size_wanted = queue_size ? queue_size : VIRTQC_MAX;
    b->msix_vector = msix_vector;
    b->timeout_ns = 10000000000UL;
    if (!set_up(b)) return 0;
    read_config(b);
    b->seg_bytes = b->cfg.size_max ? b->cfg.size_max : 0x80000000U;
    b->seg_bytes &= ~(u32)(VIRTIO_BLK_SECTOR - 1);                  /* whole sectors per buffer */
    if (!b->seg_bytes) b->seg_bytes = VIRTIO_BLK_SECTOR;
    u32 room = (u32)b->q.size - 2;                                  /* header and status */
    b->max_data_segs = b->cfg.seg_max && b->cfg.seg_max < room ? b->cfg.seg_max : room;
    return 1;
}

static int take_slot(struct vblk *b) {
    for (int i = 0; i < VBLK_SLOTS; i++)
        if (!b->req[i].in_use) {
            struct vblk_request *r = &b->req[i];
            memset(r, 0, sizeof(*r));
            r->in_use = 1;
            r->status = 0xFF;
            return i;
        }
    return VBLK_NO_SLOT;
}

/* Header + data + status as one chain; the data's direction follows the request type. */
static int post(struct vblk *b, int slot, const struct virtq_seg *data, int n, int data_writable) {
    struct virtq_seg segs[VIRTQC_MAX];
    struct vblk_request *r = &b->req[slot];
    if (n < 0 || n > (int)b->max_data_segs) { r->in_use = 0; return VBLK_NO_SLOT; }
    segs[0] = (struct virtq_seg){ (u64)&r->hdr, sizeof(r->hdr), 0 };
    for (int i = 0; i < n; i++)
        segs[1 + i] = (struct virtq_seg){ data[i].addr, data[i].len, (u16)(data_writable ? VIRTQ_DESC_F_WRITE : 0) };
    segs[1 + n] = (struct virtq_seg){ (u64)&r->status, 1, VIRTQ_DESC_F_WRITE };
    int head = virtqc_add(&b->q, segs, n + 2);
    if (head < 0) { r->in_use = 0; return VBLK_NO_SLOT; }
    r->head = (u16)head;
    b->slot_of_head[head] = slot;
    b->inflight++;
    return slot;
}

int vblk_submit_sg(struct vblk *b, u32 type, u64 sector, const struct virtq_seg *data, int n) {
    int slot = take_slot(b);
    if (slot == VBLK_NO_SLOT) return slot;
    b->req[slot].hdr = (struct virtio_blk_outhdr){ type, 0, sector };
    return post(b, slot, data, n, type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID);
}

int vblk_submit(struct vblk *b, u32 type, u64 sector, void *data, u32 bytes) {
    struct virtq_seg segs[VIRTQC_MAX];
    int n = 0;
    for (u32 done = 0; done < bytes; n++) {
        if (n >= (int)b->max_data_segs) return VBLK_NO_SLOT;
        u32 len = bytes - done < b->seg_bytes ? bytes - done : b->seg_bytes;
        segs[n] = (struct virtq_seg){ (u64)data + done, len, 0 };
        done += len;
    }
    return vblk_submit_sg(b, type, sector, segs, n);
}

int vblk_submit_range(struct vblk *b, u32 type, u64 sector, u32 num_sectors, u32 flags) {
    int slot = take_slot(b);
    if (slot == VBLK_NO_SLOT) return slot;
    struct vblk_request *r = &b->req[slot];
    r->hdr = (struct virtio_blk_outhdr){ type, 0, 0 };
    r->range = (struct virtio_blk_range){ sector, num_sectors, flags };
    struct virtq_seg seg = { (u64)&r->range, sizeof(r->range), 0 };
    return post(b, slot, &seg, 1, 0);
}

int vblk_submit_raw(struct vblk *b, const struct virtq_seg *segs, int n) {
    int slot = take_slot(b);
    if (slot == VBLK_NO_SLOT) return slot;
    int head = virtqc_add(&b->q, segs, n);
    if (head < 0) { b->req[slot].in_use = 0; return VBLK_NO_SLOT; }
    b->req[slot].head = (u16)head;
    b->slot_of_head[head] = slot;
    b->inflight++;
    return slot;
}

void vblk_kick(struct vblk *b) { virtqc_kick(&b->q); }

int vblk_poll(struct vblk *b) {
    u16 head;
    u32 len;
    while (virtqc_take(&b->q, &head, &len)) {
        if (head >= VIRTQC_MAX || b->slot_of_head[head] == VBLK_NO_SLOT) continue;   /* not ours */
        int slot = (int)b->slot_of_head[head];
        b->slot_of_head[head] = VBLK_NO_SLOT;
        b->req[slot].used_len = len;
        b->req[slot].done = 1;
        b->inflight--;
        return slot;
    }
    return VBLK_NO_SLOT;
}

void vblk_release(struct vblk *b, int slot) {
    if (slot >= 0 && slot < VBLK_SLOTS) b->req[slot].in_use = 0;
}

int vblk_wait(struct vblk *b, int slot) {
    u64 deadline = rdtsc() + b->timeout_ns / 1000 * (tsc_hz() / 1000000);
    int by_irq = b->msix_vector && b->q.avail.flags == 0;
    while (!b->req[slot].done) {
        u64 seen = by_irq ? irq_count[b->msix_vector] : 0;
        if (vblk_poll(b) != VBLK_NO_SLOT) continue;
        u64 now = rdtsc();
        if (now > deadline) return VBLK_TIMEOUT;
        if (by_irq) {
            if (wait_irq_since(b->msix_vector, seen, deadline - now)) b->interrupts_waited++;
        } else {
            cpu_relax();
        }
    }
    int status = b->req[slot].status;
    vblk_release(b, slot);
    return status;
}

/* Wait for every slot in `slots`; the first status that is not OK, else OK. */
static int wait_all(struct vblk *b, const int *slots, int n) {
    int result = VIRTIO_BLK_S_OK;
    for (int i = 0; i < n; i++) {
        int status = vblk_wait(b, slots[i]);
        if (status == VBLK_TIMEOUT) return VBLK_TIMEOUT;
        if (status != VIRTIO_BLK_S_OK && result == VIRTIO_BLK_S_OK) result = status;
    }
    return result;
}

static int transfer(struct vblk *b, u32 type, u64 sector, u8 *data, u64 bytes) {
    u64 per_request = (u64)b->max_data_segs * b->seg_bytes;
    if (per_request > (4UL << 20)) per_request = 4UL << 20;
    int result = VIRTIO_BLK_S_OK;
    while (bytes) {
        int slots[VBLK_SLOTS], n = 0;
        while (bytes && n < VBLK_SLOTS) {
            u32 chunk = (u32)(bytes < per_request ? bytes : per_request);
            int slot = vblk_submit(b, type, sector, data, chunk);
            if (slot == VBLK_NO_SLOT) break;                           /* the queue is full */
            slots[n++] = slot;
            sector += chunk / VIRTIO_BLK_SECTOR; data += chunk; bytes -= chunk;
        }
        if (!n) return VBLK_TIMEOUT;                                   /* nothing could be posted */
        vblk_kick(b);
        int status = wait_all(b, slots, n);
        if (status == VBLK_TIMEOUT) return status;
        if (status != VIRTIO_BLK_S_OK && result == VIRTIO_BLK_S_OK) result = status;
    }
    return result;
}

int vblk_read(struct vblk *b, u64 sector, void *data, u64 bytes) {
    return transfer(b, VIRTIO_BLK_T_IN, sector, data, bytes);
}

int vblk_write(struct vblk *b, u64 sector, const void *data, u64 bytes) {
    return transfer(b, VIRTIO_BLK_T_OUT, sector, (u8 *)data, bytes);
}

static int one(struct vblk *b, int slot) {
    if (slot == VBLK_NO_SLOT) return VBLK_TIMEOUT;
    vblk_kick(b);
    return vblk_wait(b, slot);
}

int vblk_flush(struct vblk *b) { return one(b, vblk_submit_sg(b, VIRTIO_BLK_T_FLUSH, 0, 0, 0)); }

int vblk_get_id(struct vblk *b, char serial[VIRTIO_BLK_ID_BYTES + 1]) {
    memset(serial, 0, VIRTIO_BLK_ID_BYTES + 1);
    return one(b, vblk_submit(b, VIRTIO_BLK_T_GET_ID, 0, serial, VIRTIO_BLK_ID_BYTES));
}

static int ranges(struct vblk *b, u32 type, u64 sector, u64 num_sectors, u32 flags, u32 max) {
    if (!max) max = 0xFFFFFFFFU;
    int result = VIRTIO_BLK_S_OK;
    while (num_sectors) {
        u32 n = (u32)(num_sectors < max ? num_sectors : max);
        int status = one(b, vblk_submit_range(b, type, sector, n, flags));
        if (status == VBLK_TIMEOUT) return status;
        if (status != VIRTIO_BLK_S_OK && result == VIRTIO_BLK_S_OK) result = status;
        sector += n; num_sectors -= n;
    }
    return result;
}

int vblk_discard(struct vblk *b, u64 sector, u64 num_sectors) {
    return ranges(b, VIRTIO_BLK_T_DISCARD, sector, num_sectors, 0, b->cfg.max_discard_sectors);
}

int vblk_write_zeroes(struct vblk *b, u64 sector, u64 num_sectors, int unmap) {
    return ranges(b, VIRTIO_BLK_T_WRITE_ZEROES, sector, num_sectors,
                  unmap ? VIRTIO_BLK_WRITE_ZEROES_F_UNMAP : 0, b->cfg.max_write_zeroes_sectors);
}
