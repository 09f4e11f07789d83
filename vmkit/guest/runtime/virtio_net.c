#include "virtio_net.h"

static u64 offered_features(struct virtio_dev *dev) {
    u64 offered = 0;
    for (u32 half = 0; half < 2; half++) {
        *(volatile u32 *)(dev->common + 0x00) = half;                   /* device_feature_select */
        offered |= (u64)*(volatile u32 *)(dev->common + 0x04) << (32 * half);
    }
    return offered;
}

static void post_rx(struct vnet *n, int slot) {
    struct virtq_seg seg = { (u64)n->rx_buf[slot], VNET_BUF, VIRTQ_DESC_F_WRITE };
    int head = virtqc_add(&n->rx, &seg, 1);
    if (head >= 0) n->rx_slot_of_head[head] = slot;
}

int vnet_open(struct vnet *n, u64 wanted) {
    memset(n, 0, sizeof(*n));
    if (!virtio_find(&n->dev, VIRTIO_ID_NET) || !n->dev.device) return 0;
    n->offered = offered_features(&n->dev);
    n->features = virtio_negotiate(&n->dev, wanted | VIRTIO_F_VERSION_1);
    if (!(n->features & VIRTIO_F_VERSION_1)) return 0;
    if (n->features & VIRTIO_NET_F_MAC)
        for (int i = 0; i < 6; i++) n->mac[i] = *(volatile u8 *)(n->dev.device + i);
    n->status = n->features & VIRTIO_NET_F_STATUS ? *(volatile u16 *)(n->dev.device + 6) : VIRTIO_NET_S_LINK_UP;
    n->mtu = n->features & VIRTIO_NET_F_MTU ? *(volatile u16 *)(n->dev.device + 10) : 1500;
    if (!virtqc_setup(&n->dev, &n->rx, 0, VNET_RX_SLOTS, 0xFFFF)) return 0;
    if (!virtqc_setup(&n->dev, &n->tx, 1, VNET_TX_SLOTS, 0xFFFF)) return 0;
    for (int i = 0; i < VIRTQC_MAX; i++) n->tx_slot_of_head[i] = n->rx_slot_of_head[i] = -1;
    for (int i = 0; i < VNET_TX_SLOTS; i++) n->tx_free[i] = (u16)i;
    n->tx_free_count = n->tx.size < VNET_TX_SLOTS ? n->tx.size : VNET_TX_SLOTS;
    int rx_slots = n->rx.size < VNET_RX_SLOTS ? n->rx.size : VNET_RX_SLOTS;
    for (int i = 0; i < rx_slots; i++) post_rx(n, i);
    virtio_driver_ok(&n->dev);
    if (!(virtio_status(&n->dev) & VIRTIO_STATUS_DRIVER_OK)) return 0;
    virtqc_notify(&n->rx);                                           /* the buffers are there */
    return 1;
}

int vnet_reclaim_tx(struct vnet *n) {
    u16 head;
    int done = 0;
    while (virtqc_take(&n->tx, &head, 0)) {
        if (head < VIRTQC_MAX && n->tx_slot_of_head[head] >= 0) {
            n->tx_free[n->tx_free_count++] = (u16)n->tx_slot_of_head[head];
            n->tx_slot_of_head[head] = -1;
            done++;
        }
    }
    return done;
}

int vnet_queue_frame(struct vnet *n, const void *frame, u32 length) {
    if (length > VNET_BUF - VNET_HDR) return -1;
    if (!n->tx_free_count && !vnet_reclaim_tx(n)) return 0;
    u16 slot = n->tx_free[--n->tx_free_count];
    u8 *buf = n->tx_buf[slot];
    memset(buf, 0, VNET_HDR);
    memcpy(buf + VNET_HDR, frame, length);
    struct virtq_seg seg = { (u64)buf, VNET_HDR + length, 0 };
    int head = virtqc_add(&n->tx, &seg, 1);
    if (head < 0) { n->tx_free[n->tx_free_count++] = slot; return 0; }
    n->tx_slot_of_head[head] = slot;
    n->tx_frames++;
    return 1;
}

void vnet_flush(struct vnet *n) { virtqc_kick(&n->tx); }

int vnet_send(struct vnet *n, const void *frame, u32 length) {
    int r = vnet_queue_frame(n, frame, length);
    if (r > 0) vnet_flush(n);
    return r;
}

u32 vnet_poll(struct vnet *n, void *frame, u32 room) {
    u16 head;
    u32 used;
    while (virtqc_take(&n->rx, &head, &used)) {
        if (head >= VIRTQC_MAX || n->rx_slot_of_head[head] < 0) { n->rx_bad++; continue; }
        int slot = (int)n->rx_slot_of_head[head];
        n->rx_slot_of_head[head] = -1;
        u32 length = 0;
        if (used >= VNET_HDR && used <= VNET_BUF) {
            length = used - VNET_HDR;
            if (length > room) length = room;
            memcpy(frame, n->rx_buf[slot] + VNET_HDR, length);
            n->rx_frames++;
        } else {
            n->rx_bad++;
        }
        post_rx(n, slot);
        if (++n->rx_unkicked >= VNET_RX_KICK_BATCH) vnet_kick_rx(n);
        if (length) return length;
    }
    return 0;
}

void vnet_kick_rx(struct vnet *n) {
    n->rx_unkicked = 0;
    virtqc_kick(&n->rx);
}

u32 vnet_wait(struct vnet *n, void *frame, u32 room, u64 timeout_ns) {
    if (n->rx_unkicked) vnet_kick_rx(n);                /* buffers the device may be waiting for */
    u64 until = now_ns() + timeout_ns;
    do {
        u32 length = vnet_poll(n, frame, room);
        if (length) return length;
        cpu_relax();
    } while (now_ns() < until);
    return 0;
}
