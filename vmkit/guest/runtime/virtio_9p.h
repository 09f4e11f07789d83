/*
 * virtio-9p (virtio 1.x over PCI, device type 9, PCI device 0x1049) and a small 9P2000.L client:
 * one request queue, one request at a time, completions polled.
 *
 * A request is a chain: the T-message (device-readable), then room for the R-message
 * (device-writable). Tread and Twrite carry their data in a buffer of their own, as Linux's
 * zero-copy path does: Tread's chain is [T-message][11-byte reply header][data], Twrite's is
 * [23-byte T header][data][reply]. Every call returns 0 (or a count) on success, or -errno from
 * Rlerror; P9_TIMEOUT when the device did not answer, P9_BAD_REPLY for a reply that does not parse.
 */
#ifndef VMKIT_VIRTIO_9P_H
#define VMKIT_VIRTIO_9P_H
#include "virtio.h"

#define VIRTIO_ID_9P 9
#define VIRTIO_9P_F_MOUNT_TAG (1UL << 0)
#define P9_MSG_ROOM 8192               /* T-message and R-message buffers (data goes apart) */
#define P9_TIMEOUT (-100000)
#define P9_BAD_REPLY (-100001)
#define P9_NOFID 0xFFFFFFFFU

struct p9_qid { u8 type; u32 version; u64 path; };

struct v9p {
    struct virtio_dev dev;
    u64 features;
    char tag[64];
    u32 msize;                          /* negotiated by p9_version */
    u16 next_tag;
    u64 requests, timeout_ns;
    struct virtqc q;
    u8 tx[P9_MSG_ROOM] __attribute__((aligned(64)));
    u8 rx[P9_MSG_ROOM] __attribute__((aligned(64)));
    u32 tx_len;
};

/* Find the first virtio-9p device on bus 0, negotiate VERSION_1 and MOUNT_TAG, read the tag,
   set up queue 0, DRIVER_OK. 1, or 0 when there is no such device or it refused. */
int v9p_open(struct v9p *p);

int p9_version(struct v9p *p, u32 msize);                                  /* sets p->msize */
int p9_attach(struct v9p *p, u32 fid, struct p9_qid *qid);
/* Walk one name (or none: a clone, name 0) from fid to newfid. */
int p9_walk(struct v9p *p, u32 fid, u32 newfid, const char *name, struct p9_qid *qid);
int p9_lopen(struct v9p *p, u32 fid, u32 flags);
int p9_lcreate(struct v9p *p, u32 fid, const char *name, u32 flags, u32 mode);
/* Returns the bytes read (0 at the end of the file) or -errno. */
i64 p9_read(struct v9p *p, u32 fid, u64 offset, void *data, u32 count);
i64 p9_write(struct v9p *p, u32 fid, u64 offset, const void *data, u32 count);
/* Tgetattr: the file's size in *size. */
int p9_getattr(struct v9p *p, u32 fid, u64 *size);
int p9_clunk(struct v9p *p, u32 fid);
#endif
