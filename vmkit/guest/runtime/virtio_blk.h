/*
 * virtio-blk (virtio 1.x over PCI, device type 2, PCI device 0x1042): one request queue,
 * requests in flight up to VBLK_SLOTS, completion by polling the used ring or by MSI-X.
 *
 * A request is a chain: the header (type, reserved, sector; device-readable), the data buffers
 * (device-writable for IN and GET_ID, device-readable for OUT; for DISCARD and WRITE_ZEROES one
 * device-readable segment {sector, num_sectors, flags}), then one device-writable status byte.
 * Sectors are 512 bytes whatever blk_size says.
 */
#ifndef VMKIT_VIRTIO_BLK_H
#define VMKIT_VIRTIO_BLK_H
#include "virtio.h"

#define VIRTIO_ID_BLOCK 2

#define VIRTIO_BLK_F_SIZE_MAX (1UL << 1)        /* size_max: largest data buffer */
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)         /* seg_max: most data buffers in a request */
#define VIRTIO_BLK_F_GEOMETRY (1UL << 4)
#define VIRTIO_BLK_F_RO (1UL << 5)              /* the disk is read-only */
#define VIRTIO_BLK_F_BLK_SIZE (1UL << 6)        /* blk_size */
#define VIRTIO_BLK_F_FLUSH (1UL << 9)           /* VIRTIO_BLK_T_FLUSH */
#define VIRTIO_BLK_F_TOPOLOGY (1UL << 10)
#define VIRTIO_BLK_F_CONFIG_WCE (1UL << 11)
#define VIRTIO_BLK_F_MQ (1UL << 12)
#define VIRTIO_BLK_F_DISCARD (1UL << 13)        /* VIRTIO_BLK_T_DISCARD, max_discard_* */
#define VIRTIO_BLK_F_WRITE_ZEROES (1UL << 14)   /* VIRTIO_BLK_T_WRITE_ZEROES, max_write_zeroes_* */

/* What vblk_open asks for by default: everything this driver uses. */
#define VBLK_FEATURES (VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | \
                       VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_GET_LIFETIME 10
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_T_SECURE_ERASE 14

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_SECTOR 512
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_WRITE_ZEROES_F_UNMAP 1

struct virtio_blk_outhdr { u32 type, reserved; u64 sector; };
struct virtio_blk_range { u64 sector; u32 num_sectors, flags; };   /* DISCARD, WRITE_ZEROES */

/* The device configuration space, read once at vblk_open (fields of features not offered are 0). */
struct vblk_config {
    u64 capacity;                       /* 512-byte sectors */
    u32 size_max, seg_max;
    u16 cylinders; u8 heads, sectors;
    u32 blk_size;
    u8 physical_block_exp, alignment_offset; u16 min_io_size; u32 opt_io_size;
    u8 writeback; u16 num_queues;
    u32 max_discard_sectors, max_discard_seg, discard_sector_alignment;
    u32 max_write_zeroes_sectors, max_write_zeroes_seg;
    u8 write_zeroes_may_unmap;
};

#define VBLK_SLOTS 64                   /* requests in flight at most */
#define VBLK_NO_SLOT (-1)
#define VBLK_TIMEOUT (-1)               /* what the waits return when the device did not answer */

struct vblk_request {
    struct virtio_blk_outhdr hdr;       /* device-readable */
    struct virtio_blk_range range;      /* device-readable (DISCARD, WRITE_ZEROES) */
    volatile u8 status;                 /* device-writable; 0xff until the device writes it */
    u8 in_use, done;
    u16 head;
    u32 used_len;                       /* what the used ring said the device wrote */
} __attribute__((aligned(32)));

struct vblk {
    struct virtio_dev dev;
    u64 offered, features;              /* the device's offer; what was accepted */
    u64 wanted;
    struct vblk_config cfg;
    u16 queue_size_wanted;
    u8 msix_vector;                     /* 0: completions are polled, no interrupts */
    u32 seg_bytes;                      /* the largest data buffer made (size_max, or smaller if set) */
    u32 max_data_segs;                  /* data buffers per request (seg_max, within the queue) */
    u64 timeout_ns;                     /* how long the waits wait (default 10 s) */
    u32 inflight;
    u64 interrupts_waited;              /* completions that came by MSI-X in vblk_wait */
    struct virtqc q;
    struct vblk_request req[VBLK_SLOTS];
    i64 slot_of_head[VIRTQC_MAX];
};

/* Find the first virtio-blk device on bus 0, negotiate `wanted` (VBLK_FEATURES; VERSION_1 is
   required), read the configuration, set up queue 0 with up to `queue_size` entries, DRIVER_OK.
   `msix_vector` (e.g. 0x42): completions raise it through MSI-X table entry 0; 0 for polling.
   Returns 1, or 0: no device, or it refused (see b->dev and virtio_status). */
int vblk_open(struct vblk *b, u64 wanted, u16 queue_size, u8 msix_vector);
/* Reset the device and set it up again as vblk_open did (after DEVICE_NEEDS_RESET, say):
   every request in flight is forgotten. */
int vblk_reinit(struct vblk *b);
int vblk_has(const struct vblk *b, u64 feature);

/* Asynchronous requests: each returns a slot, or VBLK_NO_SLOT (no free slot or descriptors, or
   more data buffers than the device takes). Nothing is notified until vblk_kick. */
int vblk_submit(struct vblk *b, u32 type, u64 sector, void *data, u32 bytes);       /* data cut by seg_bytes */
int vblk_submit_sg(struct vblk *b, u32 type, u64 sector, const struct virtq_seg *data, int n);
int vblk_submit_range(struct vblk *b, u32 type, u64 sector, u32 num_sectors, u32 flags);
/* A chain exactly as given (hostile tests): the slot's header is not used; no direction fixed. */
int vblk_submit_raw(struct vblk *b, const struct virtq_seg *segs, int n);
void vblk_kick(struct vblk *b);
/* Collect one completion from the used ring: its slot (now done: status and used_len are set),
   or VBLK_NO_SLOT when there is none. */
int vblk_poll(struct vblk *b);
/* Wait until `slot` is done (by polling, or by MSI-X when set up so), release it and return its
   status; VBLK_TIMEOUT after b->timeout_ns (the slot stays taken: the device may still own it). */
int vblk_wait(struct vblk *b, int slot);
void vblk_release(struct vblk *b, int slot);

/* Synchronous requests: the status (VIRTIO_BLK_S_*, the first that was not OK), or VBLK_TIMEOUT.
   vblk_read/vblk_write cut a transfer into as many requests as the limits need, all in flight. */
int vblk_read(struct vblk *b, u64 sector, void *data, u64 bytes);
int vblk_write(struct vblk *b, u64 sector, const void *data, u64 bytes);
int vblk_flush(struct vblk *b);
int vblk_get_id(struct vblk *b, char serial[VIRTIO_BLK_ID_BYTES + 1]);
int vblk_discard(struct vblk *b, u64 sector, u64 num_sectors);
int vblk_write_zeroes(struct vblk *b, u64 sector, u64 num_sectors, int unmap);
#endif
