/*
 * blk_durability: writes sector after sector of a virtio-blk disk, each holding its own number,
 * and after every `batch` sectors (default 8) sends a FLUSH; once the device acknowledges the
 * FLUSH it prints "FLUSHED n" (n sectors are now durable). It never stops by itself: the host
 * kills the VMM at a moment of its choosing, then checks that every sector up to the last n it saw
 * holds what the guest wrote. Sector i holds the 8-byte word (i + 1) * 0x9E3779B97F4A7C15 ^ tag,
 * repeated; tag=N (default 1) tells runs apart.
 */
#include "virtio_blk.h"

#define SECTOR VIRTIO_BLK_SECTOR

static struct vblk blk;
static u64 data[SECTOR / 8 * 64] __attribute__((aligned(4096)));

void main(void) {
    u64 batch = cmdline_u64("batch", 8), tag = cmdline_u64("tag", 1);
    if (batch == 0 || batch > 64) batch = 8;
    if (!vblk_open(&blk, VBLK_FEATURES, 0, 0)) { RESULT("blk", "%s", "absent"); exit(2); }
    if (!vblk_has(&blk, VIRTIO_BLK_F_FLUSH)) { RESULT("flush", "%s", "not offered"); exit(3); }
    u64 capacity = blk.cfg.capacity;
    printf("READY capacity=%lu\n", capacity);
    for (u64 first = 0; first + batch <= capacity; first += batch) {
        for (u64 s = 0; s < batch; s++)
            for (u64 w = 0; w < SECTOR / 8; w++)
                data[s * (SECTOR / 8) + w] = ((first + s + 1) * 0x9E3779B97F4A7C15UL) ^ tag;
        if (vblk_write(&blk, first, data, batch * SECTOR) != VIRTIO_BLK_S_OK) { RESULT("write", "%s", "failed"); exit(3); }
        if (vblk_flush(&blk) != VIRTIO_BLK_S_OK) { RESULT("flush", "%s", "failed"); exit(3); }
        printf("FLUSHED %lu\n", first + batch);
    }
    printf("FULL\n");
    for (;;) cpu_relax();
}
