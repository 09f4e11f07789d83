/*
 * vsock_echo: a virtio-vsock guest (runtime/virtio_vsock.h). It listens on `port=N` (1234) and
 * echoes every stream back, several at once; a stream whose peer has sent its last byte (SHUTDOWN)
 * is finished once everything is echoed: the guest shuts it down both ways. With `host_port=P`
 * it first connects to the host's port P and sends `out_bytes=N` (65536) bytes of a known pattern
 * (byte i is (i * 131 + 7) & 0xff), then shuts the stream down; with `refused_port=P` it also
 * connects to a host port nobody listens on and expects RST. It stops after `streams=N` (1) echo
 * streams have finished, or `timeout_s=N` (60) seconds. `hostile=1` then sends packets vmkit must
 * survive: a header whose len runs past its chain and one from another CID (dropped: the device
 * keeps working), then a chain too short for a header (DEVICE_NEEDS_RESET); it resets the device
 * and checks that it answers again (a connect to `refused_port` gets RST).
 *
 * RESULT lines: vsock_cid, connect_out (ok / refused / no_answer / skipped), out_sent, connect_refused,
 * listening, echo_streams, echo_bytes, max_concurrent, credit_violations, odd_packets, the hostile_*
 * results, then
 * vsock_echo=pass with exit(0), or vsock_fail=WHAT with exit(3).
 */
#include "virtio_vsock.h"

static struct vsock v;
static u8 chunk[4096];

static void fail(const char *what) {
    RESULT("vsock_fail", "%s", what);
    exit(3);
}

static u32 send_pattern(int i, u32 total, u64 end) {
    u32 sent = 0;
    while (sent < total && now_ns() < end) {
        u32 n = total - sent < sizeof(chunk) ? total - sent : (u32)sizeof(chunk);
        for (u32 k = 0; k < n; k++) chunk[k] = (u8)((sent + k) * 131 + 7);
        u32 done = vsock_send(&v, i, chunk, n);
        sent += done;
        if (!done) vsock_poll(&v);
        if (v.s[i].state != VS_ESTABLISHED) break;
    }
    return sent;
}

static void connect_out(u32 port, u32 total, u64 end) {
    int i = vsock_connect(&v, port, 5000000000UL);
    RESULT("connect_out", "%s", i == VSOCK_REFUSED ? "refused" : i < 0 ? "no_answer" : "ok");
    if (i < 0) return;
    RESULT("out_sent", "%u", send_pattern(i, total, end));
    vsock_shutdown(&v, i, VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
    for (u64 wait = now_ns() + 2000000000UL; v.s[i].state == VS_ESTABLISHED && now_ns() < wait;) vsock_poll(&v);
    vsock_release(&v, i);
}

/* Echo what stream i has; finish it once the peer is done and nothing is left. 1 when finished. */
static int echo(int i, u64 *bytes) {
    struct vsock_stream *s = &v.s[i];
    u32 length;
    const u8 *data = vsock_peek(&v, i, &length);
    if (length) {
        u32 sent = vsock_send(&v, i, data, length);
        vsock_consume(&v, i, sent);
        *bytes += sent;
    }
    if (s->state == VS_CLOSED) {
        vsock_release(&v, i);
        return 1;
    }
    if (s->peer_shutdown & VSOCK_SHUTDOWN_SEND && !vsock_readable(&v, i)) {
        vsock_shutdown(&v, i, VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
        vsock_release(&v, i);                /* the host's RST that follows finds no stream */
        return 1;
    }
    return 0;
}

/* One tx chain exactly as given; wait until the device has returned it or flagged itself broken.
   Returns the device status seen. */
static u8 raw_tx(const struct virtq_seg *segs, int n) {
    int head = virtqc_add(&v.tx, segs, n);
    if (head < 0) fail("hostile_no_descriptors");
    virtqc_kick(&v.tx);
    u8 status = virtio_status(&v.dev);
    for (u64 end = now_ns() + 3000000000UL; now_ns() < end; status = virtio_status(&v.dev)) {
        if (status & VIRTIO_STATUS_NEEDS_RESET) break;
        if (*(volatile u16 *)&v.tx.used.idx == v.tx.next_avail) break;
    }
    vsock_poll(&v);
    return status;
}

static void hostile(u32 refused_port) {
    static struct vsock_hdr h;
    static u8 bytes[64];
    h = (struct vsock_hdr){ v.cid, VSOCK_HOST_CID, 40000, refused_port, 1000, VSOCK_TYPE_STREAM, VSOCK_OP_RW, 0,
                            65536, 0 };
    struct virtq_seg past_chain[2] = { { (u64)&h, sizeof(h), 0 }, { (u64)bytes, 10, 0 } };
    RESULT("hostile_len_past_chain", "%x", raw_tx(past_chain, 2));
    h.len = 0;
    h.src_cid = 77;
    struct virtq_seg other_cid = { (u64)&h, sizeof(h), 0 };
    RESULT("hostile_other_cid", "%x", raw_tx(&other_cid, 1));
    RESULT("hostile_still_answers", "%d", refused_port && vsock_connect(&v, refused_port, 5000000000UL) == VSOCK_REFUSED &&
           !(virtio_status(&v.dev) & VIRTIO_STATUS_NEEDS_RESET));
    struct virtq_seg short_header = { (u64)bytes, 20, 0 };
    RESULT("hostile_short_header", "%x", raw_tx(&short_header, 1));
    if (!vsock_open(&v)) fail("reopen");
    RESULT("hostile_after_reset", "%d", refused_port && vsock_connect(&v, refused_port, 5000000000UL) == VSOCK_REFUSED &&
           virtio_status(&v.dev) == (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
                                     VIRTIO_STATUS_DRIVER_OK));
}

void main(void) {
    u32 port = (u32)cmdline_u64("port", 1234);
    u32 host_port = (u32)cmdline_u64("host_port", 0);
    u32 refused_port = (u32)cmdline_u64("refused_port", 0);
    u64 wanted = cmdline_u64("streams", 1);
    u64 end = now_ns() + cmdline_u64("timeout_s", 60) * 1000000000UL;
    if (!vsock_open(&v)) fail("no_device");
    RESULT("vsock_cid", "%lu", v.cid);
    if (host_port) connect_out(host_port, (u32)cmdline_u64("out_bytes", 65536), end);
    else RESULT("connect_out", "%s", "skipped");
    if (refused_port) RESULT("connect_refused", "%d", vsock_connect(&v, refused_port, 5000000000UL) == VSOCK_REFUSED);
    vsock_listen(&v, port);
    RESULT("listening", "%u", port);
    flush();
    u64 finished = 0, bytes = 0;
    u32 max_concurrent = 0;
    while (finished < wanted && now_ns() < end) {
        vsock_poll(&v);
        u32 open = 0;
        for (int i = 0; i < VSOCK_STREAMS; i++) {
            if (v.s[i].state == VS_FREE || v.s[i].local_port != port) continue;
            open++;
            finished += (u64)echo(i, &bytes);
        }
        if (open > max_concurrent) max_concurrent = open;
    }
    RESULT("echo_streams", "%lu", finished);
    RESULT("echo_bytes", "%lu", bytes);
    RESULT("max_concurrent", "%u", max_concurrent);
    RESULT("credit_violations", "%lu", v.credit_violations);
    RESULT("odd_packets", "%lu", v.odd_packets);
    if (finished < wanted) fail("timeout");
    if (cmdline_u64("hostile", 0)) hostile(refused_port);
    RESULT("vsock_echo", "%s", "pass");
    exit(0);
}
