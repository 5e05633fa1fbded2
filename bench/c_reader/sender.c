/*
 * sender.c - a fast, bounded frame generator for PortSentinel's benchmarks.
 *
 * Why C: a Python sender tops out far below what the capture path must be tested at. This
 * one prebuilds a pool of complete Ethernet frames (valid IPv4 and TCP/UDP checksums) and
 * sends them with sendmmsg on an AF_PACKET socket with PACKET_QDISC_BYPASS, up to 256 per
 * call, paced to a target rate.
 *
 * Pools:
 *   syn    every frame a SYN probe (58-byte frame with an MSS option, like nmap's) to a
 *          watched port (1..1023 minus 113 and 139: PortSentry's advanced-mode defaults)
 *          from one of NSRC sources;
 *   mixed  per 50 frames: 45 pure ACKs to 22/80/443 (established-looking traffic), 1 UDP
 *          datagram and 4 SYN probes as above (90% / 2% / 8%).
 *
 * Sources are FIRST_SRC, FIRST_SRC+1, ... (NSRC of them). Every run is bounded three ways:
 * COUNT frames, MAX_SECONDS, and the caller's timeout. It only ever sends on the interface
 * it is given, and the harness runs it inside a closed network namespace.
 *
 * usage: sender IFNAME DST_MAC SRC_MAC DST_IP POOL COUNT PPS MAX_SECONDS FIRST_SRC NSRC
 *   PPS 0 means as fast as possible. Prints one JSON line: frames sent per kind, elapsed
 *   seconds and the achieved rate.
 *
 * Build: gcc -O2 -Wall -Wextra -o sender sender.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define POOL_SIZE 65536u
#define FRAME_MAX 64u
#define BATCH_MAX 256u
#define MAX_COUNT 50000000ull
#define MAX_SECONDS 120.0

enum kind { SYN, ACK, UDP, KINDS };
static const char *KIND_NAMES[KINDS] = {"syn", "ack", "udp"};

struct frame {
    uint8_t bytes[FRAME_MAX];
    uint16_t len;
    uint8_t kind;
};

static void die(const char *what) {
    fprintf(stderr, "sender: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void parse_mac(const char *text, uint8_t *mac) {
    unsigned v[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
        fprintf(stderr, "sender: bad MAC address %s\n", text);
        exit(2);
    }
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
}

static uint32_t sum16(const uint8_t *data, size_t len, uint32_t sum) {
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(data[i] << 8 | data[i + 1]);
    if (len & 1)
        sum += (uint32_t)(data[len - 1] << 8);
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v) {
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

/* Ethernet + IPv4 header; returns the IPv4 header's offset. */
static size_t put_headers(uint8_t *f, const uint8_t *dst_mac, const uint8_t *src_mac,
                          uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len,
                          uint16_t ip_id) {
    memcpy(f, dst_mac, 6);
    memcpy(f + 6, src_mac, 6);
    put16(f + 12, ETH_P_IP);
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(20 + l4_len));
    put16(ip + 4, ip_id);
    put16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, 0);
    put32(ip + 12, src);
    put32(ip + 16, dst);
    put16(ip + 10, fold(sum16(ip, 20, 0)));
    return 14;
}

/* TCP/UDP checksum over the pseudo-header and the segment at f + 34. */
static void l4_checksum(uint8_t *f, uint8_t proto, uint16_t l4_len, size_t csum_at) {
    uint8_t *ip = f + 14, *l4 = f + 34;
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = proto;
    put16(pseudo + 10, l4_len);
    put16(l4 + csum_at, 0);
    uint16_t c = fold(sum16(l4, l4_len, sum16(pseudo, 12, 0)));
    if (proto == IPPROTO_UDP && c == 0)
        c = 0xffff;
    put16(l4 + csum_at, c);
}

static void build_tcp(struct frame *fr, const uint8_t *dm, const uint8_t *sm, uint32_t src,
                      uint32_t dst, uint16_t sport, uint16_t dport, uint8_t flags,
                      uint32_t seq, uint16_t id) {
    uint16_t l4_len = flags == 0x02 ? 24 : 20; /* a SYN carries an MSS option */
    uint8_t *f = fr->bytes;
    memset(f, 0, FRAME_MAX);
    put_headers(f, dm, sm, src, dst, IPPROTO_TCP, l4_len, id);
    uint8_t *t = f + 34;
    put16(t, sport);
    put16(t + 2, dport);
    put32(t + 4, seq);
    put32(t + 8, flags & 0x10 ? seq ^ 0x5a5a5a5au : 0);
    t[12] = (uint8_t)((l4_len / 4) << 4);
    t[13] = flags;
    put16(t + 14, flags == 0x02 ? 1024 : 501);
    if (l4_len == 24) {
        t[20] = 2; /* MSS 1460 */
        t[21] = 4;
        put16(t + 22, 1460);
    }
    l4_checksum(f, IPPROTO_TCP, l4_len, 16);
    fr->len = (uint16_t)(34 + l4_len);
    fr->kind = flags == 0x02 ? SYN : ACK;
}

static void build_udp(struct frame *fr, const uint8_t *dm, const uint8_t *sm, uint32_t src,
                      uint32_t dst, uint16_t sport, uint16_t dport, uint16_t id) {
    uint16_t l4_len = 8 + 16;
    uint8_t *f = fr->bytes;
    memset(f, 0, FRAME_MAX);
    put_headers(f, dm, sm, src, dst, IPPROTO_UDP, l4_len, id);
    uint8_t *u = f + 34;
    put16(u, sport);
    put16(u + 2, dport);
    put16(u + 4, l4_len);
    memcpy(u + 8, "portsentinel-ld", 16);
    l4_checksum(f, IPPROTO_UDP, l4_len, 6);
    fr->len = (uint16_t)(34 + l4_len);
    fr->kind = UDP;
}

/* The n-th watched port: 1..1023 without 113 and 139 (1021 ports). */
static uint16_t watched_port(uint32_t n) {
    uint16_t port = (uint16_t)(1 + n % 1021);
    if (port >= 113)
        port++;
    if (port >= 139)
        port++;
    return port;
}

static void build_pool(struct frame *pool, int mixed, const uint8_t *dm, const uint8_t *sm,
                       uint32_t dst, uint32_t first_src, uint32_t nsrc) {
    static const uint16_t services[3] = {22, 80, 443};
    uint32_t probes = 0;
    for (uint32_t i = 0; i < POOL_SIZE; i++) {
        uint32_t slot = i % 50, src = first_src + (i * 7919u) % nsrc;
        uint16_t id = (uint16_t)i, sport = (uint16_t)(32768 + (i * 40503u) % 28000);
        if (mixed && slot >= 5) {
            build_tcp(&pool[i], dm, sm, src, dst, sport, services[i % 3], 0x10, i * 2654435761u,
                      id);
        } else if (mixed && slot == 4) {
            build_udp(&pool[i], dm, sm, src, dst, sport, watched_port(i * 13u), id);
        } else {
            /* consecutive probes walk the ports; sources step with a coprime stride */
            build_tcp(&pool[i], dm, sm, src, dst, sport, watched_port(probes++), 0x02,
                      i * 2246822519u, id);
        }
    }
}

static void pace(double t0, uint64_t sent, uint64_t pps) {
    if (!pps)
        return;
    double due = t0 + (double)sent / (double)pps;
    double wait = due - now_mono();
    if (wait > 0.0002) {
        struct timespec ts = {.tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
    while (now_mono() < due)
        ;
}

int main(int argc, char **argv) {
    if (argc != 11) {
        fprintf(stderr, "usage: sender IFNAME DST_MAC SRC_MAC DST_IP syn|mixed COUNT PPS "
                        "MAX_SECONDS FIRST_SRC NSRC\n");
        return 2;
    }
    uint8_t dst_mac[6], src_mac[6];
    parse_mac(argv[2], dst_mac);
    parse_mac(argv[3], src_mac);
    struct in_addr dst_ip, first;
    if (!inet_aton(argv[4], &dst_ip) || !inet_aton(argv[9], &first)) {
        fprintf(stderr, "sender: bad IPv4 address\n");
        return 2;
    }
    int mixed = strcmp(argv[5], "mixed") == 0;
    if (!mixed && strcmp(argv[5], "syn") != 0) {
        fprintf(stderr, "sender: pool is syn or mixed\n");
        return 2;
    }
    unsigned long long count = strtoull(argv[6], NULL, 10), pps = strtoull(argv[7], NULL, 10);
    double max_seconds = atof(argv[8]);
    unsigned long nsrc = strtoul(argv[10], NULL, 10);
    if (count < 1 || count > MAX_COUNT || max_seconds <= 0 || max_seconds > MAX_SECONDS ||
        nsrc < 1 || nsrc > 65536) {
        fprintf(stderr, "sender: COUNT 1..%llu, MAX_SECONDS (0, %.0f], NSRC 1..65536\n",
                MAX_COUNT, MAX_SECONDS);
        return 2;
    }

    int ifindex = (int)if_nametoindex(argv[1]);
    if (!ifindex)
        die("if_nametoindex");
    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: this socket receives nothing */
    if (fd < 0)
        die("socket(AF_PACKET)");
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) != 0)
        die("PACKET_QDISC_BYPASS");
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_ifindex = ifindex};
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        die("bind");

    struct frame *pool = calloc(POOL_SIZE, sizeof(*pool));
    if (!pool)
        die("calloc");
    build_pool(pool, mixed, dst_mac, src_mac, ntohl(dst_ip.s_addr), ntohl(first.s_addr),
               (uint32_t)nsrc);

    /* With pacing, a batch holds about 1 ms of frames, so the load arrives smoothly. */
    unsigned batch = pps ? (unsigned)(pps / 1000) : BATCH_MAX;
    batch = batch < 1 ? 1 : batch > BATCH_MAX ? BATCH_MAX : batch;
    static struct mmsghdr msgs[BATCH_MAX];
    static struct iovec iovs[BATCH_MAX];
    uint64_t sent = 0, by_kind[KINDS] = {0}, errors = 0;
    double t0 = now_mono(), deadline = t0 + max_seconds;
    while (sent < count && now_mono() < deadline) {
        pace(t0, sent, pps);
        unsigned n = (unsigned)(count - sent < batch ? count - sent : batch);
        for (unsigned i = 0; i < n; i++) {
            struct frame *fr = &pool[(sent + i) % POOL_SIZE];
            iovs[i].iov_base = fr->bytes;
            iovs[i].iov_len = fr->len;
            memset(&msgs[i], 0, sizeof(msgs[i]));
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(fd, msgs, n, 0);
        if (done < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
                errors++;
                continue;
            }
            die("sendmmsg");
        }
        for (int i = 0; i < done; i++)
            by_kind[pool[(sent + (unsigned)i) % POOL_SIZE].kind]++;
        sent += (uint64_t)done;
    }
    double elapsed = now_mono() - t0;
    printf("{\"sent\": %llu", (unsigned long long)sent);
    for (int k = 0; k < KINDS; k++)
        printf(", \"%s\": %llu", KIND_NAMES[k], (unsigned long long)by_kind[k]);
    printf(", \"seconds\": %.6f, \"pps\": %.0f, \"send_errors\": %llu}\n", elapsed,
           elapsed > 0 ? (double)sent / elapsed : 0.0, (unsigned long long)errors);
    free(pool);
    close(fd);
    return 0;
}
