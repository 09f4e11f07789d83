/* virtio 1.x over PCI ("modern"): device set-up, feature negotiation and split virtqueues. */
#ifndef VMKIT_VIRTIO_H
#define VMKIT_VIRTIO_H
#include "pci.h"

#define VIRTIO_F_VERSION_1 (1UL << 32)
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_MAX 64

struct virtq_desc { u64 addr; u32 len; u16 flags, next; };
struct virtq_avail { u16 flags, idx, ring[VIRTQ_MAX], used_event; };
struct virtq_used_elem { u32 id, len; };
struct virtq_used { u16 flags, idx; struct virtq_used_elem ring[VIRTQ_MAX]; u16 avail_event; };

struct virtq {
    u16 size, index, last_used, next_avail;
    struct virtq_desc desc[VIRTQ_MAX] __attribute__((aligned(16)));
    struct virtq_avail avail __attribute__((aligned(2)));
    struct virtq_used used __attribute__((aligned(4)));
    volatile u16 *notify;
};

struct virtio_dev {
    u32 bdf;
    volatile u8 *common, *isr, *device;
    volatile u8 *notify_base;
    u32 notify_multiplier;
    int msix_cap;
    volatile u32 *msix_table;
};

int virtio_find(struct virtio_dev *dev, u16 device_type);          /* 0x1040 + type, bus 0 */
u8 virtio_status(struct virtio_dev *dev);
void virtio_reset(struct virtio_dev *dev);
/* Acknowledge, offer `wanted` & device features, FEATURES_OK; returns the accepted set or 0. */
u64 virtio_negotiate(struct virtio_dev *dev, u64 wanted);
/* Queue set-up; `msix_vector` is an MSI-X table entry or 0xffff for none. */
int virtq_setup(struct virtio_dev *dev, struct virtq *q, u16 index, u16 size, u16 msix_vector);
void virtio_driver_ok(struct virtio_dev *dev);
/* Post one buffer (writable for the device when `device_writes`), then notify. Returns its head. */
u16 virtq_post(struct virtq *q, void *buffer, u32 length, int device_writes);
/* 1 and the used length when the device has returned a buffer since the last call; 0 otherwise. */
int virtq_take_used(struct virtq *q, u32 *length);
/* MSI-X: route table entry `entry` to `vector` on CPU 0 and enable MSI-X. */
void virtio_msix_route(struct virtio_dev *dev, u16 entry, u8 vector);

/*
 * Queues with descriptor chains (added alongside `struct virtq`, which stays as it is): up to
 * VIRTQC_MAX entries, a free list of descriptors, requests made of several buffers (each
 * device-readable or device-writable), several in flight, and notifications the driver batches.
 */
#define VIRTQC_MAX 256
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

struct virtqc_avail { u16 flags, idx, ring[VIRTQC_MAX], used_event; };
struct virtqc_used { u16 flags, idx; struct virtq_used_elem ring[VIRTQC_MAX]; u16 avail_event; };

struct virtqc {
    u16 size, index, last_used, next_avail, free_head, free_count;
    u16 chain_len[VIRTQC_MAX];          /* descriptors in the chain headed by each index */
    struct virtq_desc desc[VIRTQC_MAX] __attribute__((aligned(16)));
    struct virtqc_avail avail __attribute__((aligned(2)));
    struct virtqc_used used __attribute__((aligned(4)));
    volatile u16 *notify;
    u64 notifies;                       /* notify writes made (each is an exit to the VMM) */
};

/* One buffer of a chain: a guest-physical address (any: hostile tests use bad ones), a length
   and VIRTQ_DESC_F_WRITE when the device writes it. */
struct virtq_seg { u64 addr; u32 len; u16 flags; };

/* Queue set-up: `size` is rounded down to a power of two within the device's and VIRTQC_MAX.
   `msix_vector` 0xffff means no interrupts (the avail ring then asks for none either). */
int virtqc_setup(struct virtio_dev *dev, struct virtqc *q, u16 index, u16 size, u16 msix_vector);
/* Make the `n` buffers one chain and put it in the avail ring, without notifying.
   Returns its head, or -1 when fewer than `n` descriptors are free (or n is 0). */
int virtqc_add(struct virtqc *q, const struct virtq_seg *segs, int n);
/* Notify the device of what was added, unless it set VIRTQ_USED_F_NO_NOTIFY (it is busy with
   the ring and will see them); virtqc_notify always does. */
void virtqc_kick(struct virtqc *q);
void virtqc_notify(struct virtqc *q);
/* 1 with the head and used length of the next chain the device returned (its descriptors freed),
   0 when there is none. A head the device made up (>= size) comes back as is, nothing freed. */
int virtqc_take(struct virtqc *q, u16 *head, u32 *length);
#endif
