/*
 * synflood: a bounded, fast sender of forged TCP SYNs (or UDP datagrams) for the lab.
 *
 * Built by tests/e2e/synflood.py into a temporary directory and run inside the lab's scanner
 * namespace only: it writes whole Ethernet frames to one interface through AF_PACKET, so the
 * frames go exactly where that interface leads (the lab's veth) and nowhere else.
 *
 * The frames are built once, before the clock starts: a pool of N frames whose source
 * addresses are FIRST, FIRST+1, ... FIRST+N-1 (IPv4, or IPv6 counting in the last 32 bits),
 * optionally shuffled, each with its own source port, a destination port cycling through a
 * range, and valid IP and TCP/UDP checksums. The send loop then only hands batches of pool
 * entries to sendmmsg, cycling through the pool, so its rate is the kernel's, not ours.
 *
 * It stops at whichever comes first: COUNT frames, SECONDS of sending, SIGTERM or SIGINT. With
 * a RATE it paces itself per batch. It prints one JSON line: frames handed to the kernel,
 * frames refused (send errors), seconds and the achieved rate.
 *
 * usage: synflood -i IF -s SRCMAC -d DSTMAC -t DST -f FIRST -n N -c COUNT -T SECONDS
 *                 [-p LO-HI] [-k PORTS] [-r RATE] [-x SEED] [-S] [-u]
 *   -S  shuffle the pool (sources in random order)     -u  UDP instead of TCP SYN
 *   -k  distinct destination ports per source (default 1): the pool then holds N x PORTS
 *       frames, a source's ports next to each other unless shuffled
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
#define SLOT 96 /* bytes per pool entry: the largest frame (IPv6 + TCP, 74) rounded up */
#define MAX_POOL (1u << 24)

struct options {
    const char *ifname, *srcmac, *dstmac, *dst, *first;
    unsigned long pool, count, rate;
    double seconds;
    unsigned lo_port, hi_port;
    unsigned long per_source; /* distinct ports per source; the pool holds pool x per_source */
    unsigned long long seed;
    int shuffle, udp;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int signum) {
    (void)signum;
    stop_requested = 1;
}

static void die(const char *what) {
    fprintf(stderr, "synflood: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(const char *why) {
    fprintf(stderr, "synflood: %s\n", why);
    exit(2);
}

/* splitmix64: a small, good-enough generator for ports, sequence numbers and the shuffle */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t sum16(const uint8_t *data, size_t len, uint32_t sum) {
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)data[i] << 8 | data[i + 1];
    if (len & 1)
        sum += (uint32_t)data[len - 1] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static void parse_mac(const char *text, uint8_t *mac) {
    unsigned v[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
        usage("bad MAC address");
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
}

/* The transport header at l4 (20 bytes), checksummed over the pseudo-header sum given. */
static size_t put_transport(uint8_t *l4, const struct options *o, uint32_t pseudo,
                            uint16_t sport, uint16_t dport, uint32_t seq) {
    size_t len = o->udp ? 8 + 12 : 20; /* UDP: 12 bytes of payload, so both are 20 bytes */
    memset(l4, 0, len);
    l4[0] = sport >> 8, l4[1] = sport & 0xFF, l4[2] = dport >> 8, l4[3] = dport & 0xFF;
    if (o->udp) {
        l4[4] = len >> 8, l4[5] = len & 0xFF;
        memcpy(l4 + 8, "synflood-udp", 12);
    } else {
        l4[4] = seq >> 24, l4[5] = seq >> 16, l4[6] = seq >> 8, l4[7] = seq & 0xFF;
        l4[12] = 5 << 4;       /* data offset: 20 bytes, no options */
        l4[13] = 0x02;         /* SYN */
        l4[14] = 0x04;         /* window 1024 */
    }
    uint16_t check = fold(sum16(l4, len, pseudo + (o->udp ? 17 : 6) + (uint32_t)len));
    if (o->udp && check == 0)
        check = 0xFFFF;
    uint8_t *at = l4 + (o->udp ? 6 : 16);
    at[0] = check >> 8, at[1] = check & 0xFF;
    return len;
}

static size_t build_ipv4(uint8_t *ip, const struct options *o, const uint8_t *src,
                         const uint8_t *dst, uint16_t sport, uint16_t dport, uint64_t *rng) {
    uint8_t *l4 = ip + 20;
    uint32_t pseudo = sum16(src, 4, sum16(dst, 4, 0));
    size_t l4len = put_transport(l4, o, pseudo, sport, dport, (uint32_t)next_random(rng));
    size_t total = 20 + l4len;
    uint16_t id = (uint16_t)next_random(rng);
    uint8_t hdr[20] = {0x45, 0, total >> 8, total & 0xFF, id >> 8, id & 0xFF, 0x40, 0,
                       64, o->udp ? 17 : 6, 0, 0};
    memcpy(hdr + 12, src, 4);
    memcpy(hdr + 16, dst, 4);
    uint16_t check = fold(sum16(hdr, 20, 0));
    hdr[10] = check >> 8, hdr[11] = check & 0xFF;
    memcpy(ip, hdr, 20);
    return total;
}

static size_t build_ipv6(uint8_t *ip, const struct options *o, const uint8_t *src,
                         const uint8_t *dst, uint16_t sport, uint16_t dport, uint64_t *rng) {
    uint8_t *l4 = ip + 40;
    uint32_t pseudo = sum16(src, 16, sum16(dst, 16, 0));
    size_t l4len = put_transport(l4, o, pseudo, sport, dport, (uint32_t)next_random(rng));
    memset(ip, 0, 40);
    ip[0] = 0x60;
    ip[4] = l4len >> 8, ip[5] = l4len & 0xFF;
    ip[6] = o->udp ? 17 : 6;
    ip[7] = 64;
    memcpy(ip + 8, src, 16);
    memcpy(ip + 24, dst, 16);
    return 40 + l4len;
}

/* The k-th source: FIRST + k, counting in the last four bytes of the address. */
static void nth_source(const uint8_t *first, int six, uint32_t k, uint8_t *out) {
    size_t len = six ? 16 : 4;
    memcpy(out, first, len);
    uint32_t low = (uint32_t)out[len - 4] << 24 | out[len - 3] << 16 | out[len - 2] << 8 |
                   out[len - 1];
    low += k;
    out[len - 4] = low >> 24, out[len - 3] = low >> 16, out[len - 2] = low >> 8;
    out[len - 1] = low & 0xFF;
}

static uint8_t *build_pool(const struct options *o, uint16_t *lengths) {
    uint8_t dst[16], first[16], src[16], smac[6], dmac[6];
    int six = strchr(o->dst, ':') != NULL;
    if (inet_pton(six ? AF_INET6 : AF_INET, o->dst, dst) != 1)
        usage("bad destination address");
    if (inet_pton(six ? AF_INET6 : AF_INET, o->first, first) != 1)
        usage("bad first source address (must be the destination's family)");
    parse_mac(o->srcmac, smac);
    parse_mac(o->dstmac, dmac);
    uint8_t *pool = calloc(o->pool, SLOT);
    uint32_t *order = malloc(o->pool * sizeof *order);
    if (pool == NULL || order == NULL)
        die("pool");
    uint64_t rng = o->seed;
    for (uint32_t k = 0; k < o->pool; k++)
        order[k] = k;
    for (uint32_t k = o->pool - 1; o->shuffle && k > 0; k--) {
        uint32_t j = (uint32_t)(next_random(&rng) % (k + 1));
        uint32_t t = order[k];
        order[k] = order[j], order[j] = t;
    }
    unsigned span = o->hi_port - o->lo_port + 1;
    for (uint32_t k = 0; k < o->pool; k++) {
        uint8_t *frame = pool + (size_t)k * SLOT;
        memcpy(frame, dmac, 6);
        memcpy(frame + 6, smac, 6);
        frame[12] = six ? 0x86 : 0x08, frame[13] = six ? 0xDD : 0x00;
        /* slot j: source j / per_source, its (j % per_source)-th port, all of them distinct */
        uint32_t j = order[k], source = j / (uint32_t)o->per_source;
        nth_source(first, six, source, src);
        uint16_t sport = (uint16_t)(1024 + next_random(&rng) % 64512);
        uint16_t dport = (uint16_t)(o->lo_port + (source + j % o->per_source) % span);
        size_t len = six ? build_ipv6(frame + 14, o, src, dst, sport, dport, &rng)
                         : build_ipv4(frame + 14, o, src, dst, sport, dport, &rng);
        lengths[k] = (uint16_t)(14 + len);
    }
    free(order);
    return pool;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int open_socket(const char *ifname) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: it receives nothing */
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one); /* best effort */
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname)};
    if (addr.sll_ifindex == 0)
        die(ifname);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    return fd;
}

static void parse(int argc, char **argv, struct options *o) {
    *o = (struct options){.lo_port = 80, .hi_port = 80, .per_source = 1, .seed = 1};
    int c;
    while ((c = getopt(argc, argv, "i:s:d:t:f:n:c:T:p:k:r:x:Su")) != -1) {
        switch (c) {
        case 'i': o->ifname = optarg; break;
        case 's': o->srcmac = optarg; break;
        case 'd': o->dstmac = optarg; break;
        case 't': o->dst = optarg; break;
        case 'f': o->first = optarg; break;
        case 'n': o->pool = strtoul(optarg, NULL, 10); break;
        case 'c': o->count = strtoul(optarg, NULL, 10); break;
        case 'T': o->seconds = strtod(optarg, NULL); break;
        case 'r': o->rate = strtoul(optarg, NULL, 10); break;
        case 'k': o->per_source = strtoul(optarg, NULL, 10); break;
        case 'x': o->seed = strtoull(optarg, NULL, 10); break;
        case 'S': o->shuffle = 1; break;
        case 'u': o->udp = 1; break;
        case 'p':
            if (sscanf(optarg, "%u-%u", &o->lo_port, &o->hi_port) != 2)
                usage("bad port range");
            break;
        default: usage("unknown option");
        }
    }
    if (!o->ifname || !o->srcmac || !o->dstmac || !o->dst || !o->first)
        usage("-i, -s, -d, -t and -f are required");
    if (o->pool < 1 || o->pool > MAX_POOL)
        usage("-n: 1 to 16777216 sources");
    if (o->count < 1 || o->seconds <= 0 || o->seconds > 600)
        usage("-c must be positive and -T between 0 and 600 seconds");
    if (o->lo_port < 1 || o->hi_port > 65535 || o->lo_port > o->hi_port)
        usage("-p: LO-HI within 1-65535");
    if (o->per_source < 1 || o->per_source > o->hi_port - o->lo_port + 1)
        usage("-k: 1 to as many ports as -p gives");
    if (o->pool > MAX_POOL / o->per_source)
        usage("-n x -k: at most 16777216 frames");
    o->pool *= o->per_source; /* from here on, the pool counts frames */
}

int main(int argc, char **argv) {
    struct options o;
    parse(argc, argv, &o);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    uint16_t *lengths = malloc(o.pool * sizeof *lengths);
    if (lengths == NULL)
        die("lengths");
    uint8_t *pool = build_pool(&o, lengths);
    int fd = open_socket(o.ifname);

    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    unsigned long sent = 0, refused = 0, next = 0;
    double start = now_seconds(), end = start + o.seconds, elapsed = 0;
    while (sent + refused < o.count && !stop_requested) {
        unsigned want = BATCH;
        if (o.count - sent - refused < want)
            want = (unsigned)(o.count - sent - refused);
        for (unsigned i = 0; i < want; i++) {
            unsigned long k = (next + i) % o.pool;
            iovs[i] = (struct iovec){pool + k * SLOT, lengths[k]};
            msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iovs[i], .msg_iovlen = 1}};
        }
        int done = sendmmsg(fd, msgs, want, 0);
        if (done < 0) {
            if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR)
                die("sendmmsg");
            done = errno == EINTR ? 0 : 1; /* the first frame was refused: skip it */
            refused += (unsigned long)done;
        } else {
            sent += (unsigned long)done;
        }
        next = (next + (unsigned long)done) % o.pool;
        double now = now_seconds();
        elapsed = now - start;
        if (now >= end)
            break;
        if (o.rate > 0) {
            double due = start + (double)(sent + refused) / (double)o.rate;
            if (due > now) {
                double wait = due - now;
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    elapsed = now_seconds() - start;
    printf("{\"sent\": %lu, \"refused\": %lu, \"seconds\": %.6f, \"pps\": %.0f}\n", sent,
           refused, elapsed, elapsed > 0 ? (double)sent / elapsed : 0.0);
    close(fd);
    free(pool);
    free(lengths);
    return 0;
}
