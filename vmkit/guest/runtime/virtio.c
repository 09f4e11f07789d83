#include "virtio.h"

#define COMMON_DEVICE_FEATURE_SELECT 0x00
#define COMMON_DEVICE_FEATURE 0x04
#define COMMON_DRIVER_FEATURE_SELECT 0x08
#define COMMON_DRIVER_FEATURE 0x0C
#define COMMON_STATUS 0x14
#define COMMON_QUEUE_SELECT 0x16
#define COMMON_QUEUE_SIZE 0x18
#define COMMON_QUEUE_MSIX_VECTOR 0x1A
#define COMMON_QUEUE_ENABLE 0x1C
#define COMMON_QUEUE_NOTIFY_OFF 0x1E
#define COMMON_QUEUE_DESC 0x20
#define COMMON_QUEUE_DRIVER 0x28
#define COMMON_QUEUE_DEVICE 0x30

static inline void w8(volatile u8 *base, u32 off, u8 v) { *(volatile u8 *)(base + off) = v; }
static inline void w16(volatile u8 *base, u32 off, u16 v) { *(volatile u16 *)(base + off) = v; }
static inline void w32(volatile u8 *base, u32 off, u32 v) { *(volatile u32 *)(base + off) = v; }
static inline u8 r8(volatile u8 *base, u32 off) { return *(volatile u8 *)(base + off); }
static inline u16 r16(volatile u8 *base, u32 off) { return *(volatile u16 *)(base + off); }
static inline u32 r32(volatile u8 *base, u32 off) { return *(volatile u32 *)(base + off); }
static inline void w64(volatile u8 *base, u32 off, u64 v) { w32(base, off, (u32)v); w32(base, off + 4, (u32)(v >> 32)); }

int virtio_find(struct virtio_dev *dev, u16 device_type) {
    memset(dev, 0, sizeof(*dev));
    if (!pci_find(0x1AF4, (u16)(0x1040 + device_type), &dev->bdf)) return 0;
    pci_enable(dev->bdf);
    for (int cap = pci_next_cap(dev->bdf, 0x09, 0); cap; cap = pci_next_cap(dev->bdf, 0x09, cap)) {
        u8 type = pci_read8(dev->bdf, (u32)cap + 3), bar = pci_read8(dev->bdf, (u32)cap + 4);
        u32 offset = pci_read32(dev->bdf, (u32)cap + 8);
        volatile u8 *at = (volatile u8 *)(pci_bar_address(dev->bdf, bar) + offset);
        if (type == 1 && !dev->common) dev->common = at;
        else if (type == 2 && !dev->notify_base) {
            dev->notify_base = at;
            dev->notify_multiplier = pci_read32(dev->bdf, (u32)cap + 16);
        } else if (type == 3 && !dev->isr) dev->isr = at;
        else if (type == 4 && !dev->device) dev->device = at;
    }
    dev->msix_cap = pci_next_cap(dev->bdf, 0x11, 0);
    if (dev->msix_cap) {
        u32 table = pci_read32(dev->bdf, (u32)dev->msix_cap + 4);
        dev->msix_table = (volatile u32 *)(pci_bar_address(dev->bdf, (int)(table & 7)) + (table & ~7U));
    }
    return dev->common && dev->notify_base && dev->isr;
}

u8 virtio_status(struct virtio_dev *dev) { return r8(dev->common, COMMON_STATUS); }

void virtio_reset(struct virtio_dev *dev) {
    w8(dev->common, COMMON_STATUS, 0);
    while (r8(dev->common, COMMON_STATUS)) cpu_relax();
}

u64 virtio_negotiate(struct virtio_dev *dev, u64 wanted) {
    virtio_reset(dev);
    w8(dev->common, COMMON_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    w8(dev->common, COMMON_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    u64 offered = 0;
    for (u32 half = 0; half < 2; half++) {
        w32(dev->common, COMMON_DEVICE_FEATURE_SELECT, half);
        offered |= (u64)r32(dev->common, COMMON_DEVICE_FEATURE) << (32 * half);
    }
    u64 accepted = offered & wanted;
    for (u32 half = 0; half < 2; half++) {
        w32(dev->common, COMMON_DRIVER_FEATURE_SELECT, half);
        w32(dev->common, COMMON_DRIVER_FEATURE, (u32)(accepted >> (32 * half)));
    }
    w8(dev->common, COMMON_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_status(dev) & VIRTIO_STATUS_FEATURES_OK)) return 0;
    return accepted;
}

int virtq_setup(struct virtio_dev *dev, struct virtq *q, u16 index, u16 size, u16 msix_vector) {
    w16(dev->common, COMMON_QUEUE_SELECT, index);
    u16 max = r16(dev->common, COMMON_QUEUE_SIZE);
    if (!max) return 0;
    if (size > max) size = max;
    if (size > VIRTQ_MAX) size = VIRTQ_MAX;
    memset(q, 0, sizeof(*q));
    q->size = size;
    q->index = index;
    w16(dev->common, COMMON_QUEUE_SIZE, size);
    w16(dev->common, COMMON_QUEUE_MSIX_VECTOR, msix_vector);
    w64(dev->common, COMMON_QUEUE_DESC, (u64)q->desc);
    w64(dev->common, COMMON_QUEUE_DRIVER, (u64)&q->avail);
    w64(dev->common, COMMON_QUEUE_DEVICE, (u64)&q->used);
    u16 notify_off = r16(dev->common, COMMON_QUEUE_NOTIFY_OFF);
    q->notify = (volatile u16 *)(dev->notify_base + notify_off * dev->notify_multiplier);
    w16(dev->common, COMMON_QUEUE_ENABLE, 1);
    return r16(dev->common, COMMON_QUEUE_ENABLE) == 1;
}

void virtio_driver_ok(struct virtio_dev *dev) {
    w8(dev->common, COMMON_STATUS, r8(dev->common, COMMON_STATUS) | VIRTIO_STATUS_DRIVER_OK);
}

u16 virtq_post(struct virtq *q, void *buffer, u32 length, int device_writes) {
    u16 head = q->next_avail % q->size;
    q->desc[head].addr = (u64)buffer;
    q->desc[head].len = length;
    q->desc[head].flags = device_writes ? VIRTQ_DESC_F_WRITE : 0;
    q->desc[head].next = 0;
    q->avail.ring[q->next_avail % q->size] = head;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);      /* descriptor and ring entry before the index */
    q->avail.idx = ++q->next_avail;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *q->notify = q->index;
    return head;
}

int virtq_take_used(struct virtq *q, u32 *length) {
    if (*(volatile u16 *)&q->used.idx == q->last_used) return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (length) *length = q->used.ring[q->last_used % q->size].len;
    q->last_used++;
    return 1;
}

void virtio_msix_route(struct virtio_dev *dev, u16 entry, u8 vector) {
    volatile u32 *e = dev->msix_table + 4 * entry;
    e[0] = 0xFEE00000U;           /* message address: local APIC of CPU 0 */
    e[1] = 0;
    e[2] = vector;                /* fixed delivery, edge */
    e[3] = 0;                     /* unmasked */
    u32 control = (u32)dev->msix_cap + 2;
    pci_write16(dev->bdf, control, (u16)((pci_read16(dev->bdf, control) | 0x8000) & ~0x4000));
}

/* ---------------------------------------------------------------- queues with chains */
int virtqc_setup(struct virtio_dev *dev, struct virtqc *q, u16 index, u16 size, u16 msix_vector) {
    w16(dev->common, COMMON_QUEUE_SELECT, index);
    u16 max = r16(dev->common, COMMON_QUEUE_SIZE);
    if (!max) return 0;
    if (size > max) size = max;
    if (size > VIRTQC_MAX) size = VIRTQC_MAX;
    while (size & (size - 1)) size &= (u16)(size - 1);      /* a power of two */
    if (!size) return 0;
    memset(q, 0, sizeof(*q));
    q->size = size;
    q->index = index;
    q->free_count = size;
    for (u16 i = 0; i < size; i++) q->desc[i].next = (u16)(i + 1);
    if (msix_vector == 0xFFFF) q->avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    w16(dev->common, COMMON_QUEUE_SIZE, size);
    w16(dev->common, COMMON_QUEUE_MSIX_VECTOR, msix_vector);
    w64(dev->common, COMMON_QUEUE_DESC, (u64)q->desc);
    w64(dev->common, COMMON_QUEUE_DRIVER, (u64)&q->avail);
    w64(dev->common, COMMON_QUEUE_DEVICE, (u64)&q->used);
    u16 notify_off = r16(dev->common, COMMON_QUEUE_NOTIFY_OFF);
    q->notify = (volatile u16 *)(dev->notify_base + notify_off * dev->notify_multiplier);
    w16(dev->common, COMMON_QUEUE_ENABLE, 1);
    return r16(dev->common, COMMON_QUEUE_ENABLE) == 1;
}

int virtqc_add(struct virtqc *q, const struct virtq_seg *segs, int n) {
    if (n <= 0 || n > q->free_count) return -1;
    u16 head = q->free_head, at = head;
    for (int i = 0; i < n; i++) {
        struct virtq_desc *d = &q->desc[at];
        u16 next = d->next;                                 /* the free list's link */
        d->addr = segs[i].addr;
        d->len = segs[i].len;
        d->flags = (u16)((segs[i].flags & VIRTQ_DESC_F_WRITE) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
        if (i + 1 < n) d->next = next;
        else { q->free_head = next; d->next = 0; }
        at = next;
    }
    q->free_count = (u16)(q->free_count - n);
    q->chain_len[head] = (u16)n;
    q->avail.ring[q->next_avail % q->size] = head;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);      /* descriptors and ring entry before the index */
    *(volatile u16 *)&q->avail.idx = ++q->next_avail;
    return head;
}

void virtqc_notify(struct virtqc *q) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *q->notify = q->index;
    q->notifies++;
}

void virtqc_kick(struct virtqc *q) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);      /* the avail index before reading the flag */
    if (!(*(volatile u16 *)&q->used.flags & VIRTQ_USED_F_NO_NOTIFY)) virtqc_notify(q);
}

int virtqc_take(struct virtqc *q, u16 *head, u32 *length) {
    if (*(volatile u16 *)&q->used.idx == q->last_used) return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);      /* the index before the element */
    struct virtq_used_elem e = *(volatile struct virtq_used_elem *)&q->used.ring[q->last_used % q->size];
    q->last_used++;
    if (head) *head = (u16)e.id;
    if (length) *length = e.len;
    if (e.id >= q->size || !q->chain_len[e.id]) return 1;  /* not a chain in flight: free nothing */
    u16 at = (u16)e.id, n = q->chain_len[e.id];
    q->chain_len[e.id] = 0;
    for (u16 i = 1; i < n; i++) at = q->desc[at].next;
    q->desc[at].next = q->free_head;               /* the chain goes back on the free list whole */
    q->free_head = (u16)e.id;
    q->free_count = (u16)(q->free_count + n);
    return 1;
}
