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
#endif
