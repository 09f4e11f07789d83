/* virtio-vsock: see virtio_vsock.h. */
#include "virtio_vsock.h"

#define HDR ((u32)sizeof(struct vsock_hdr))

static void post_rx(struct vsock *v, int index) {
    struct virtq_seg seg = { (u64)v->rx_buf[index], HDR + VSOCK_RX_PAYLOAD, VIRTQ_DESC_F_WRITE };
    int head = virtqc_add(&v->rx, &seg, 1);
    if (head >= 0) v->rx_of_head[head] = index;
}

static void reap_tx(struct vsock *v) {
    u16 head;
    while (virtqc_take(&v->tx, &head, 0))
        if (head < VIRTQC_MAX && v->tx_of_head[head] >= 0) {
            v->tx_busy[v->tx_of_head[head]] = 0;
            v->tx_of_head[head] = -1;
        }
}

static int free_tx_slot(struct vsock *v) {
    reap_tx(v);
    for (int i = 0; i < VSOCK_TX_SLOTS; i++)
        if (!v->tx_busy[i]) return i;
    return -1;
}

/* Send one packet (waiting for a tx buffer if all are in flight); 0 if none came back in 5 s. */
static int transmit(struct vsock *v, u32 src_port, u32 dst_port, u16 op, u32 flags, u32 buf_alloc, u32 fwd_cnt,
                    const void *payload, u32 len) {
    int slot = free_tx_slot(v);
    for (u64 end = now_ns() + 5000000000UL; slot < 0; slot = free_tx_slot(v))
        if (now_ns() > end) return 0;
    struct vsock_hdr *h = (struct vsock_hdr *)v->tx_buf[slot];
    *h = (struct vsock_hdr){ v->cid, VSOCK_HOST_CID, src_port, dst_port, len, VSOCK_TYPE_STREAM, op, flags,
                             buf_alloc, fwd_cnt };
    if (len) memcpy(v->tx_buf[slot] + HDR, payload, len);
    struct virtq_seg seg = { (u64)v->tx_buf[slot], HDR + len, 0 };
    int head = virtqc_add(&v->tx, &seg, 1);
    if (head < 0) return 0;
    v->tx_busy[slot] = 1;
    v->tx_of_head[head] = slot;
    virtqc_kick(&v->tx);
    v->packets_out++;
    return 1;
}

static int stream_send(struct vsock *v, struct vsock_stream *s, u16 op, u32 flags, const void *data, u32 len) {
    s->fwd_told = s->fwd_cnt;
    if (op == VSOCK_OP_RW) s->tx_cnt += len;
    return transmit(v, s->local_port, s->peer_port, op, flags, VSOCK_STREAM_BUF, s->fwd_cnt, data, len);
}

static void reply_rst(struct vsock *v, const struct vsock_hdr *h) {
    if (h->op != VSOCK_OP_RST) transmit(v, h->dst_port, h->src_port, VSOCK_OP_RST, 0, 0, 0, 0, 0);
}

int vsock_open(struct vsock *v) {
    memset(v, 0, sizeof(*v));
    if (!virtio_find(&v->dev, VIRTIO_ID_VSOCK) || !v->dev.device) return 0;
    if (!(virtio_negotiate(&v->dev, VIRTIO_F_VERSION_1) & VIRTIO_F_VERSION_1)) return 0;
    v->cid = *(volatile u32 *)v->dev.device | (u64)*(volatile u32 *)(v->dev.device + 4) << 32;
    if (!virtqc_setup(&v->dev, &v->rx, 0, 64, 0xFFFF) || !virtqc_setup(&v->dev, &v->tx, 1, 64, 0xFFFF) ||
        !virtqc_setup(&v->dev, &v->ev, 2, 4, 0xFFFF))
        return 0;
    for (int i = 0; i < VIRTQC_MAX; i++) v->rx_of_head[i] = v->tx_of_head[i] = -1;
    virtio_driver_ok(&v->dev);
    if (!(virtio_status(&v->dev) & VIRTIO_STATUS_DRIVER_OK)) return 0;
    for (int i = 0; i < VSOCK_RX_BUFS && i < v->rx.size; i++) post_rx(v, i);
    for (int i = 0; i < 4 && i < v->ev.size; i++) {
        struct virtq_seg seg = { (u64)v->ev_buf[i], 8, VIRTQ_DESC_F_WRITE };
        virtqc_add(&v->ev, &seg, 1);
    }
    virtqc_notify(&v->ev);
    virtqc_notify(&v->rx);
    v->next_port = 49152;
    return 1;
}

void vsock_listen(struct vsock *v, u32 port) {
    if (v->listeners < VSOCK_LISTEN_MAX) v->listening[v->listeners++] = port;
}

static struct vsock_stream *find(struct vsock *v, u32 local_port, u32 peer_port) {
    for (int i = 0; i < VSOCK_STREAMS; i++) {
        struct vsock_stream *s = &v->s[i];
        if (s->state != VS_FREE && s->local_port == local_port && s->peer_port == peer_port) return s;
    }
    return 0;
}

static struct vsock_stream *new_stream(struct vsock *v, u32 local_port, u32 peer_port, u8 state) {
    for (int i = 0; i < VSOCK_STREAMS; i++) {
        struct vsock_stream *s = &v->s[i];
        if (s->state == VS_FREE) {
            memset(s, 0, sizeof(*s) - VSOCK_STREAM_BUF);
            s->state = state;
            s->local_port = local_port;
            s->peer_port = peer_port;
            return s;
        }
    }
    return 0;
}

static int listening_on(struct vsock *v, u32 port) {
    for (int i = 0; i < v->listeners; i++)
        if (v->listening[i] == port) return 1;
    return 0;
}

static void handle(struct vsock *v, const struct vsock_hdr *h, const u8 *payload) {
    v->packets_in++;
    if (h->src_cid != VSOCK_HOST_CID || h->dst_cid != v->cid) { v->odd_packets++; return; }
    if (h->type != VSOCK_TYPE_STREAM) { v->odd_packets++; reply_rst(v, h); return; }
    struct vsock_stream *s = find(v, h->dst_port, h->src_port);
    if (!s) {
        if (h->op == VSOCK_OP_REQUEST && listening_on(v, h->dst_port) &&
            (s = new_stream(v, h->dst_port, h->src_port, VS_ESTABLISHED))) {
            s->peer_buf_alloc = h->buf_alloc;
            s->peer_fwd_cnt = h->fwd_cnt;
            stream_send(v, s, VSOCK_OP_RESPONSE, 0, 0, 0);
        } else {
            reply_rst(v, h);
        }
        return;
    }
    s->peer_buf_alloc = h->buf_alloc;
    s->peer_fwd_cnt = h->fwd_cnt;
    if (h->op == VSOCK_OP_RST) { s->reset = 1; s->state = VS_CLOSED; return; }
    if (s->state == VS_CONNECTING) {
        if (h->op == VSOCK_OP_RESPONSE) { s->state = VS_ESTABLISHED; return; }
        v->odd_packets++;
        reply_rst(v, h);
        s->state = VS_CLOSED;
        return;
    }
    if (s->state != VS_ESTABLISHED) return;
    switch (h->op) {
    case VSOCK_OP_RW: {
        u32 room = VSOCK_STREAM_BUF - (s->rx_cnt - s->fwd_told);     /* what the peer was told it may send */
        if (h->len > room || h->len > VSOCK_RX_PAYLOAD) { v->credit_violations++; return; }
        u32 at = s->rx_cnt & (VSOCK_STREAM_BUF - 1), first = h->len < VSOCK_STREAM_BUF - at ? h->len : VSOCK_STREAM_BUF - at;
        memcpy(s->data + at, payload, first);
        memcpy(s->data, payload + first, h->len - first);
        s->rx_cnt += h->len;
        break;
    }
    case VSOCK_OP_SHUTDOWN: s->peer_shutdown |= h->flags & 3; break;
    case VSOCK_OP_CREDIT_REQUEST: stream_send(v, s, VSOCK_OP_CREDIT_UPDATE, 0, 0, 0); break;
    case VSOCK_OP_CREDIT_UPDATE: break;
    default: v->odd_packets++; reply_rst(v, h); s->state = VS_CLOSED; break;
    }
}

int vsock_poll(struct vsock *v) {
    int handled = 0;
    u16 head;
    u32 length;
    reap_tx(v);
    while (virtqc_take(&v->rx, &head, &length)) {
        if (head >= VIRTQC_MAX || v->rx_of_head[head] < 0) continue;
        int index = (int)v->rx_of_head[head];
        v->rx_of_head[head] = -1;
        const struct vsock_hdr *h = (const struct vsock_hdr *)v->rx_buf[index];
        if (length >= HDR && h->len <= length - HDR) handle(v, h, v->rx_buf[index] + HDR);
        else v->odd_packets++;
        post_rx(v, index);
        handled++;
    }
    if (handled) virtqc_kick(&v->rx);
    return handled;
}

int vsock_connect(struct vsock *v, u32 port, u64 timeout_ns) {
    struct vsock_stream *s = new_stream(v, v->next_port++, port, VS_CONNECTING);
    if (!s) return VSOCK_NO_ANSWER;
    stream_send(v, s, VSOCK_OP_REQUEST, 0, 0, 0);
    for (u64 end = now_ns() + timeout_ns; s->state == VS_CONNECTING && now_ns() < end;) vsock_poll(v);
    if (s->state != VS_ESTABLISHED) {
        int refused = s->state == VS_CLOSED && s->reset;
        s->state = VS_FREE;
        return refused ? VSOCK_REFUSED : VSOCK_NO_ANSWER;
    }
    return (int)(s - v->s);
}

u32 vsock_readable(struct vsock *v, int i) { return v->s[i].rx_cnt - v->s[i].fwd_cnt; }

u32 vsock_credit(struct vsock *v, int i) {
    struct vsock_stream *s = &v->s[i];
    u32 in_flight = s->tx_cnt - s->peer_fwd_cnt;
    return in_flight > s->peer_buf_alloc ? 0 : s->peer_buf_alloc - in_flight;
}

const u8 *vsock_peek(struct vsock *v, int i, u32 *length) {
    struct vsock_stream *s = &v->s[i];
    u32 at = s->fwd_cnt & (VSOCK_STREAM_BUF - 1), n = s->rx_cnt - s->fwd_cnt;
    *length = n < VSOCK_STREAM_BUF - at ? n : VSOCK_STREAM_BUF - at;
    return s->data + at;
}

void vsock_consume(struct vsock *v, int i, u32 n) {
    struct vsock_stream *s = &v->s[i];
    s->fwd_cnt += n;
    if (s->state == VS_ESTABLISHED && s->fwd_cnt - s->fwd_told >= VSOCK_STREAM_BUF / 4)
        stream_send(v, s, VSOCK_OP_CREDIT_UPDATE, 0, 0, 0);
}

u32 vsock_send(struct vsock *v, int i, const void *data, u32 n) {
    struct vsock_stream *s = &v->s[i];
    if (s->state != VS_ESTABLISHED || s->local_shutdown & VSOCK_SHUTDOWN_SEND) return 0;
    u32 credit = vsock_credit(v, i);
    if (n > credit) n = credit;
    if (n > VSOCK_TX_PAYLOAD) n = VSOCK_TX_PAYLOAD;
    if (!n || free_tx_slot(v) < 0) return 0;
    return stream_send(v, s, VSOCK_OP_RW, 0, data, n) ? n : 0;
}

void vsock_shutdown(struct vsock *v, int i, u32 flags) {
    struct vsock_stream *s = &v->s[i];
    s->local_shutdown |= flags;
    if (s->state == VS_ESTABLISHED) stream_send(v, s, VSOCK_OP_SHUTDOWN, s->local_shutdown, 0, 0);
}

void vsock_release(struct vsock *v, int i) { v->s[i].state = VS_FREE; }
