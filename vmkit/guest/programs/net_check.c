/*
 * net_check: drives a virtio-net device (runtime/virtio_net.h) against a peer on the host side.
 * Command line: ip=GUEST_IP peer=PEER_IP (host-order numbers, 0x0a000002 for 10.0.0.2), port=N
 * (a UDP echo service at the peer; 0: skip UDP), count=N datagrams (default 8).
 * It reports the device's MAC, MTU and link status, sends an ARP request for the peer and waits
 * for the reply (answering ARP requests for its own address meanwhile), then sends datagrams of
 * 1 .. 1472 bytes to the echo port and checks that each comes back unchanged.
 * `RESULT net_check=pass` and exit(0), or `net_fail=WHAT` and exit(3).
 */
#include "net_frames.h"
#include "virtio_net.h"

#define TIMEOUT_NS 3000000000UL
#define TRIES 4
#define LOCAL_PORT 40000

static struct vnet net;
static u8 frame[VNET_BUF], out[VNET_BUF], payload[UDP_PAYLOAD_MAX];
static u32 my_ip, peer_ip;
static u8 peer_mac[6];
static u64 arp_answered;

static __attribute__((noreturn)) void fail(const char *what) {
    RESULT("net_fail", "%s", what);
    exit(3);
}

static void print_mac(const char *key, const u8 *m) {
    printf("RESULT %s=%02x:%02x:%02x:%02x:%02x:%02x\n", key, m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* Answer an ARP request for our address; 1 if `f` was one. */
static int answer_arp(const u8 *f, u32 length) {
    if (length < ETH_HLEN + ARP_LEN || get16(f + 12) != ETHERTYPE_ARP) return 0;
    const u8 *a = f + ETH_HLEN;
    if (get16(a + 6) != 1 || get32(a + 24) != my_ip) return 0;
    u32 n = arp_frame(out, 2, net.mac, my_ip, a + 8, get32(a + 14));
    vnet_send(&net, out, n);
    arp_answered++;
    return 1;
}

static int arp_for_peer(void) {
    for (int attempt = 0; attempt < TRIES; attempt++) {
        u32 n = arp_frame(out, 1, net.mac, my_ip, 0, peer_ip);
        if (vnet_send(&net, out, n) <= 0) fail("arp_send");
        u64 until = now_ns() + TIMEOUT_NS;
        while (now_ns() < until) {
            u32 length = vnet_wait(&net, frame, sizeof(frame), until - now_ns());
            if (!length || answer_arp(frame, length)) continue;
            const u8 *a = frame + ETH_HLEN;
            if (length >= ETH_HLEN + ARP_LEN && get16(frame + 12) == ETHERTYPE_ARP && get16(a + 6) == 2 &&
                get32(a + 14) == peer_ip && get32(a + 24) == my_ip) {
                memcpy(peer_mac, a + 8, 6);
                return attempt + 1;
            }
        }
    }
    return 0;
}

/* Send `length` bytes of pattern `seed` to the echo port; 1 when they come back unchanged. */
static int echo(u16 port, u32 length, u32 seed) {
    for (u32 i = 0; i < length; i++) payload[i] = (u8)(seed * 31 + i * 7);
    for (int attempt = 0; attempt < TRIES; attempt++) {
        u32 n = udp_frame(out, peer_mac, net.mac, my_ip, peer_ip, LOCAL_PORT, port, payload, length);
        if (vnet_send(&net, out, n) <= 0) fail("udp_send");
        u64 until = now_ns() + TIMEOUT_NS;
        while (now_ns() < until) {
            u32 got = vnet_wait(&net, frame, sizeof(frame), until - now_ns()), back = 0, from = 0;
            if (!got || answer_arp(frame, got)) continue;
            const u8 *data = udp_payload(frame, got, LOCAL_PORT, &back, &from);
            if (data && from == peer_ip && back == length && !memcmp(data, payload, length)) return 1;
        }
    }
    return 0;
}

void main(void) {
    my_ip = (u32)cmdline_u64("ip", 0x0a000002);
    peer_ip = (u32)cmdline_u64("peer", 0x0a000001);
    u16 port = (u16)cmdline_u64("port", 0);
    u32 count = (u32)cmdline_u64("count", 8);
    if (!vnet_open(&net, VNET_FEATURES)) fail("no_device");
    print_mac("mac", net.mac);
    RESULT("mtu", "%u", net.mtu);
    RESULT("link_up", "%u", net.status & VIRTIO_NET_S_LINK_UP);
    RESULT("features", "0x%lx", net.features);
    int tries = arp_for_peer();
    if (!tries) fail("arp_no_reply");
    RESULT("arp_reply", "%s", "ok");
    RESULT("arp_tries", "%d", tries);
    print_mac("peer_mac", peer_mac);
    if (port) {
        static const u32 sizes[] = { 1, 18, 64, 200, 512, 1000, 1400, UDP_PAYLOAD_MAX };
        u32 echoed = 0;
        for (u32 i = 0; i < count; i++)
            echoed += (u32)echo(port, sizes[i % (sizeof(sizes) / sizeof(sizes[0]))], i);
        RESULT("udp_sent", "%u", count);
        RESULT("udp_echoed", "%u", echoed);
        if (echoed != count) fail("udp_echo");
    }
    RESULT("arp_answered", "%lu", arp_answered);
    RESULT("rx_frames", "%lu", net.rx_frames);
    RESULT("tx_frames", "%lu", net.tx_frames);
    RESULT("net_check", "%s", "pass");
    exit(0);
}
