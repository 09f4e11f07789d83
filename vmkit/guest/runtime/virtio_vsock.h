/*
 * virtio-vsock (virtio 1.x over PCI, device type 19, PCI device 0x1053): stream sockets between
 * this guest and the host (CID 2), polled. Three queues: rx (the device's packets land in buffers
 * posted here), tx (one packet per chain: header then payload), event (buffers posted, nothing
 * else). Credit both ways: a stream never sends more than the peer said it has room for, and
 * tells the peer (CREDIT_UPDATE) when its own buffer empties.
 */
#ifndef VMKIT_VIRTIO_VSOCK_H
#define VMKIT_VIRTIO_VSOCK_H
#include "virtio.h"

#define VIRTIO_ID_VSOCK 19
#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
enum vsock_op { VSOCK_OP_REQUEST = 1, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_SHUTDOWN, VSOCK_OP_RW,
                VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_CREDIT_REQUEST };
#define VSOCK_SHUTDOWN_RCV 1
#define VSOCK_SHUTDOWN_SEND 2

struct vsock_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VSOCK_RX_BUFS 32
#define VSOCK_RX_PAYLOAD 65536              /* each rx buffer: a header and this much payload */
#define VSOCK_TX_SLOTS 16
#define VSOCK_TX_PAYLOAD 65536
#define VSOCK_STREAMS 16
#define VSOCK_STREAM_BUF 262144             /* what each stream holds of the peer's bytes (a power of 2) */
#define VSOCK_LISTEN_MAX 4

enum vsock_state { VS_FREE, VS_CONNECTING, VS_ESTABLISHED, VS_CLOSED };

struct vsock_stream {
    u8 state, reset;                        /* reset: the peer sent RST */
    u32 local_port, peer_port;
    u32 rx_cnt, fwd_cnt, fwd_told;          /* bytes received; consumed; fwd_cnt last sent */
    u32 peer_buf_alloc, peer_fwd_cnt, tx_cnt;
    u32 peer_shutdown, local_shutdown;
    u8 data[VSOCK_STREAM_BUF];              /* a ring: bytes [fwd_cnt, rx_cnt) */
};

struct vsock {
    struct virtio_dev dev;
    u64 cid;
    struct virtqc rx, tx, ev;
    u8 rx_buf[VSOCK_RX_BUFS][sizeof(struct vsock_hdr) + VSOCK_RX_PAYLOAD];
    i64 rx_of_head[VIRTQC_MAX];
    u8 tx_buf[VSOCK_TX_SLOTS][sizeof(struct vsock_hdr) + VSOCK_TX_PAYLOAD];
    u8 tx_busy[VSOCK_TX_SLOTS];
    i64 tx_of_head[VIRTQC_MAX];
    u8 ev_buf[4][8];
    u32 listening[VSOCK_LISTEN_MAX];
    int listeners;
    u32 next_port;
    u64 packets_in, packets_out, credit_violations, odd_packets;
    struct vsock_stream s[VSOCK_STREAMS];
};

/* Find the device, negotiate VERSION_1, set up the queues, post rx and event buffers, DRIVER_OK.
   Returns 1, or 0 (no device, or it refused). */
int vsock_open(struct vsock *v);
/* Accept streams to `port` (as many as there are free stream slots). */
void vsock_listen(struct vsock *v, u32 port);
/* Serve what the device returned: incoming packets (answered as the protocol says), tx buffers
   freed. Returns how many rx packets were handled. */
int vsock_poll(struct vsock *v);
/* Connect to the host's `port`: the stream's index, VSOCK_REFUSED (RST) or VSOCK_NO_ANSWER (nothing
   within timeout_ns, or no free stream). */
#define VSOCK_REFUSED (-1)
#define VSOCK_NO_ANSWER (-2)
int vsock_connect(struct vsock *v, u32 port, u64 timeout_ns);
/* Bytes waiting to be read, and how many may be sent now (the peer's credit). */
u32 vsock_readable(struct vsock *v, int i);
u32 vsock_credit(struct vsock *v, int i);
/* The readable bytes as (up to two) contiguous pieces: the first one. */
const u8 *vsock_peek(struct vsock *v, int i, u32 *length);
/* Mark `n` readable bytes consumed (credit goes back to the peer when enough has freed). */
void vsock_consume(struct vsock *v, int i, u32 n);
/* Send up to `n` bytes now (credit and a free tx buffer permitting); returns how many. */
u32 vsock_send(struct vsock *v, int i, const void *data, u32 n);
void vsock_shutdown(struct vsock *v, int i, u32 flags);
/* Forget a stream (after a full shutdown or a reset). */
void vsock_release(struct vsock *v, int i);
#endif
