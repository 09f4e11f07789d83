/* Ethernet, ARP, IPv4 and UDP frames for the network test programs (header-only, big-endian
   fields written byte by byte). Addresses are host-order u32 (0x0a000002 is 10.0.0.2). */
#ifndef VMKIT_NET_FRAMES_H
#define VMKIT_NET_FRAMES_H
#include "runtime.h"

#define ETH_HLEN 14
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ARP_LEN 28
#define IP_HLEN 20
#define UDP_HLEN 8
#define IPPROTO_UDP 17
#define UDP_PAYLOAD_MAX (1500 - IP_HLEN - UDP_HLEN)

static inline u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline u32 get32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static inline void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline void put32(u8 *p, u32 v) { put16(p, (u16)(v >> 16)); put16(p + 2, (u16)v); }

static inline void eth_header(u8 *f, const u8 dst[6], const u8 src[6], u16 type) {
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    put16(f + 12, type);
}

/* An ARP request (op 1) or reply (op 2); returns the frame's length. */
static inline u32 arp_frame(u8 *f, u16 op, const u8 src_mac[6], u32 src_ip, const u8 dst_mac[6], u32 dst_ip) {
    static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    eth_header(f, op == 1 ? broadcast : dst_mac, src_mac, ETHERTYPE_ARP);
    u8 *a = f + ETH_HLEN;
    put16(a, 1); put16(a + 2, ETHERTYPE_IPV4); a[4] = 6; a[5] = 4; put16(a + 6, op);
    memcpy(a + 8, src_mac, 6); put32(a + 14, src_ip);
    if (op == 1) memset(a + 18, 0, 6); else memcpy(a + 18, dst_mac, 6);
    put32(a + 24, dst_ip);
    return ETH_HLEN + ARP_LEN;
}

static inline u16 ip_checksum(const u8 *p, u32 length) {
    u32 sum = 0;
    for (u32 i = 0; i + 1 < length; i += 2) sum += get16(p + i);
    if (length & 1) sum += (u32)p[length - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

/* An IPv4 UDP datagram (no UDP checksum, which IPv4 allows); returns the frame's length. */
static inline u32 udp_frame(u8 *f, const u8 dst_mac[6], const u8 src_mac[6], u32 src_ip, u32 dst_ip,
                            u16 src_port, u16 dst_port, const void *payload, u32 length) {
    eth_header(f, dst_mac, src_mac, ETHERTYPE_IPV4);
    u8 *ip = f + ETH_HLEN;
    memset(ip, 0, IP_HLEN);
    ip[0] = 0x45; put16(ip + 2, (u16)(IP_HLEN + UDP_HLEN + length)); ip[8] = 64; ip[9] = IPPROTO_UDP;
    put32(ip + 12, src_ip); put32(ip + 16, dst_ip);
    put16(ip + 10, ip_checksum(ip, IP_HLEN));
    u8 *udp = ip + IP_HLEN;
    put16(udp, src_port); put16(udp + 2, dst_port); put16(udp + 4, (u16)(UDP_HLEN + length)); put16(udp + 6, 0);
    memcpy(udp + UDP_HLEN, payload, length);
    return ETH_HLEN + IP_HLEN + UDP_HLEN + length;
}

/* If `f` is a UDP datagram to `port` with a sound IPv4 header: its payload and length; else 0. */
static inline const u8 *udp_payload(const u8 *f, u32 length, u16 port, u32 *payload_length, u32 *src_ip) {
    if (length < ETH_HLEN + IP_HLEN + UDP_HLEN || get16(f + 12) != ETHERTYPE_IPV4) return 0;
    const u8 *ip = f + ETH_HLEN;
    u32 ihl = (u32)(ip[0] & 15) * 4;
    if ((ip[0] >> 4) != 4 || ihl < IP_HLEN || ip[9] != IPPROTO_UDP || ip_checksum(ip, ihl) != 0) return 0;
    u32 total = get16(ip + 2);
    if (total > length - ETH_HLEN || total < ihl + UDP_HLEN) return 0;
    const u8 *udp = ip + ihl;
    if (get16(udp + 2) != port || get16(udp + 4) > total - ihl || get16(udp + 4) < UDP_HLEN) return 0;
    *payload_length = get16(udp + 4) - UDP_HLEN;
    if (src_ip) *src_ip = get32(ip + 12);
    return udp + UDP_HLEN;
}
#endif
