/*
 * net_bench: virtio-net packet rate and throughput against a UDP echo peer on the host side.
 * Command line: ip=GUEST_IP peer=PEER_IP port=N (host-order numbers, as net_check), size=N payload
 * bytes (default 1472), seconds=N per phase (default 2), window=N datagrams in flight (32).
 *   rtt:  one 64-byte datagram at a time: round-trip latency (median of the phase's rounds)
 *   tx:   datagrams sent as fast as the queue takes them, notified in batches of 32 (pps, Mbit/s)
 *   echo: `window` datagrams in flight, each echo answered by a new one: what came back (pps, Mbit/s)
 * Payload bits only. RESULT lines, exit(0); exit(3) when the peer does not answer.
 */
#include "net_frames.h"
#include "virtio_net.h"

#define LOCAL_PORT 40001
#define TX_BATCH 32
#define RTT_SAMPLES 4096

static struct vnet net;
static u8 frame[VNET_BUF], out[VNET_BUF], payload[UDP_PAYLOAD_MAX];
static u32 my_ip, peer_ip;
static u16 port;
static u8 peer_mac[6];
static u64 rtt_ns[RTT_SAMPLES];

static __attribute__((noreturn)) void fail(const char *what) {
    RESULT("net_fail", "%s", what);
    exit(3);
}

/* Handle one received frame: answer ARP for us; 1 when it is an echo from the peer. */
static int take(const u8 *f, u32 length) {
    if (length >= ETH_HLEN + ARP_LEN && get16(f + 12) == ETHERTYPE_ARP) {
        const u8 *a = f + ETH_HLEN;
        if (get16(a + 6) == 1 && get32(a + 24) == my_ip) {
            u8 reply[64];
            vnet_send(&net, reply, arp_frame(reply, 2, net.mac, my_ip, a + 8, get32(a + 14)));
        } else if (get16(a + 6) == 2 && get32(a + 14) == peer_ip) {
            memcpy(peer_mac, a + 8, 6);
        }
        return 0;
    }
    u32 back = 0, from = 0;
    return udp_payload(f, length, LOCAL_PORT, &back, &from) != 0 && from == peer_ip;
}

static u32 datagram(u32 size) { return udp_frame(out, peer_mac, net.mac, my_ip, peer_ip, LOCAL_PORT, port, payload, size); }

static void resolve_peer(void) {
    for (int attempt = 0; attempt < 4 && !peer_mac[0] && !peer_mac[1] && !peer_mac[2]; attempt++) {
        vnet_send(&net, out, arp_frame(out, 1, net.mac, my_ip, 0, peer_ip));
        u64 until = now_ns() + 2000000000UL;
        while (now_ns() < until && !(peer_mac[0] | peer_mac[1] | peer_mac[2])) {
            u32 length = vnet_wait(&net, frame, sizeof(frame), 100000000UL);
            if (length) take(frame, length);
        }
    }
    if (!(peer_mac[0] | peer_mac[1] | peer_mac[2] | peer_mac[3] | peer_mac[4] | peer_mac[5])) fail("arp_no_reply");
}

static u32 drain(void) {
    u32 echoes = 0, length;
    while ((length = vnet_poll(&net, frame, sizeof(frame)))) echoes += (u32)take(frame, length);
    return echoes;
}

static void sort(u64 *v, u32 n) {
    for (u32 i = 1; i < n; i++)
        for (u32 j = i; j > 0 && v[j - 1] > v[j]; j--) { u64 t = v[j]; v[j] = v[j - 1]; v[j - 1] = t; }
}

static void rtt_phase(u64 seconds) {
    u32 n = 0;
    u64 end = now_ns() + seconds * 1000000000UL;
    while (n < RTT_SAMPLES && now_ns() < end) {
        u64 start = now_ns();
        vnet_send(&net, out, datagram(64));
        int back = 0;
        while (!back && now_ns() - start < 1000000000UL) {
            u32 length = vnet_poll(&net, frame, sizeof(frame));
            if (length) back = take(frame, length);
        }
        if (!back) fail("rtt_no_echo");
        rtt_ns[n++] = now_ns() - start;
        vnet_reclaim_tx(&net);
    }
    sort(rtt_ns, n);
    RESULT("rtt_rounds", "%u", n);
    RESULT("rtt_us_median", "%lu", rtt_ns[n / 2] / 1000);
    RESULT("rtt_us_p99", "%lu", rtt_ns[n * 99 / 100] / 1000);
}

static void tx_phase(u32 size, u64 seconds) {
    u32 length = datagram(size);
    u64 sent = 0, start = now_ns(), end = start + seconds * 1000000000UL, now;
    while ((now = now_ns()) < end) {
        u32 queued = 0;
        while (queued < TX_BATCH && vnet_queue_frame(&net, out, length) > 0) queued++;
        if (queued) vnet_flush(&net);
        sent += queued;
        drain();
        vnet_reclaim_tx(&net);
    }
    u64 ns = now - start;
    RESULT("tx_pps", "%lu", sent * 1000000000UL / ns);
    RESULT("tx_mbps", "%lu", sent * size * 8 * 1000UL / ns);
    u64 quiet = now_ns() + 300000000UL;                     /* let the echoes of the blast drain */
    while (now_ns() < quiet) { drain(); vnet_reclaim_tx(&net); }
}

static void echo_phase(u32 size, u32 window, u64 seconds) {
    u32 length = datagram(size);
    u64 echoed = 0, start = now_ns(), end = start + seconds * 1000000000UL, last = start, now;
    u32 in_flight = 0;
    while ((now = now_ns()) < end) {
        while (in_flight < window && vnet_queue_frame(&net, out, length) > 0) in_flight++;
        vnet_flush(&net);
        u32 back = drain();
        if (back) { echoed += back; in_flight = back > in_flight ? 0 : in_flight - back; last = now; }
        else if (now - last > 200000000UL) { in_flight = 0; last = now; }    /* lost ones: send anew */
        vnet_reclaim_tx(&net);
    }
    u64 ns = now - start;
    RESULT("echo_pps", "%lu", echoed * 1000000000UL / ns);
    RESULT("echo_mbps", "%lu", echoed * size * 8 * 1000UL / ns);
}

void main(void) {
    my_ip = (u32)cmdline_u64("ip", 0x0a000002);
    peer_ip = (u32)cmdline_u64("peer", 0x0a000001);
    port = (u16)cmdline_u64("port", 7);
    u32 size = (u32)cmdline_u64("size", UDP_PAYLOAD_MAX);
    u64 seconds = cmdline_u64("seconds", 2);
    u32 window = (u32)cmdline_u64("window", 32);
    if (size > UDP_PAYLOAD_MAX) size = UDP_PAYLOAD_MAX;
    if (window > VNET_TX_SLOTS / 2) window = VNET_TX_SLOTS / 2;
    for (u32 i = 0; i < size; i++) payload[i] = (u8)i;
    if (!vnet_open(&net, VNET_FEATURES)) fail("no_device");
    resolve_peer();
    RESULT("size", "%u", size);
    rtt_phase(seconds);
    tx_phase(size, seconds);
    echo_phase(size, window, seconds);
    RESULT("rx_frames", "%lu", net.rx_frames);
    RESULT("tx_frames", "%lu", net.tx_frames);
    RESULT("net_bench", "%s", "done");
    exit(0);
}
