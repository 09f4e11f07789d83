/*
 * virtio-net (virtio 1.x over PCI, device type 1, PCI device 0x1041): queue 0 receives, queue 1
 * transmits, completions are polled. Every frame in either queue starts with the 12-byte
 * virtio_net_hdr; this driver asks for no offloads, so it sends a zero header (num_buffers aside)
 * and takes whole, checksummed frames, each in one receive buffer.
 */
#ifndef VMKIT_VIRTIO_NET_H
#define VMKIT_VIRTIO_NET_H
#include "virtio.h"

#define VIRTIO_ID_NET 1

#define VIRTIO_NET_F_CSUM (1UL << 0)
#define VIRTIO_NET_F_GUEST_CSUM (1UL << 1)
#define VIRTIO_NET_F_MTU (1UL << 3)
#define VIRTIO_NET_F_MAC (1UL << 5)
#define VIRTIO_NET_F_MRG_RXBUF (1UL << 15)
#define VIRTIO_NET_F_STATUS (1UL << 16)
#define VIRTIO_NET_S_LINK_UP 1

/* What vnet_open asks for by default: the configuration fields, no offloads. */
#define VNET_FEATURES (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU)

struct virtio_net_hdr { u8 flags, gso_type; u16 hdr_len, gso_size, csum_start, csum_offset, num_buffers; };

#define VNET_HDR 12
#define VNET_FRAME_MAX 1518                 /* an Ethernet frame with a VLAN tag, no FCS */
#define VNET_BUF 2048                       /* one buffer: header and frame */
#define VNET_RX_SLOTS 128
#define VNET_TX_SLOTS 128
#define VNET_RX_KICK_BATCH 16               /* receive buffers given back per notify */

struct vnet {
    struct virtio_dev dev;
    u64 offered, features;
    u8 mac[6];
    u16 status, mtu;
    struct virtqc rx, tx;
    u8 rx_buf[VNET_RX_SLOTS][VNET_BUF] __attribute__((aligned(64)));
    u8 tx_buf[VNET_TX_SLOTS][VNET_BUF] __attribute__((aligned(64)));
    i64 tx_slot_of_head[VIRTQC_MAX];
    i64 rx_slot_of_head[VIRTQC_MAX];
    u16 tx_free[VNET_TX_SLOTS];
    u32 tx_free_count;
    u32 rx_unkicked;                    /* buffers given back since the last rx notify */
    u64 rx_frames, tx_frames, rx_bad;
};

/* Find the first virtio-net device on bus 0, negotiate `wanted` (VNET_FEATURES), read the MAC,
   status and MTU, fill the receive queue, DRIVER_OK. 1 on success, 0 when there is no device or
   it refused. */
int vnet_open(struct vnet *n, u64 wanted);
/* Queue one frame (copied, after a zero header) without notifying; 0 when no buffer is free even
   after collecting finished transmissions, -1 when the frame is too long. */
int vnet_queue_frame(struct vnet *n, const void *frame, u32 length);
/* Notify the device of queued frames. */
void vnet_flush(struct vnet *n);
/* Queue and notify; 1 on success, 0 when no buffer is free, -1 when too long. */
int vnet_send(struct vnet *n, const void *frame, u32 length);
/* Collect finished transmissions; returns how many. */
int vnet_reclaim_tx(struct vnet *n);
/* The next received frame (without its header), copied to `frame`: its length, 0 when none has
   arrived. The buffer goes back to the device at once (notified VNET_RX_KICK_BATCH at a time). */
u32 vnet_poll(struct vnet *n, void *frame, u32 room);
/* Notify the device of receive buffers given back (vnet_wait does before it waits). */
void vnet_kick_rx(struct vnet *n);
/* vnet_poll until a frame arrives or `timeout_ns` passes (0 then). */
u32 vnet_wait(struct vnet *n, void *frame, u32 room, u64 timeout_ns);
#endif
