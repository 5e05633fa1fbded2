/*
 * ring_reader.c - the C yardstick for PortSentinel's capture: an AF_PACKET TPACKET_V3 ring
 * behind the same classic BPF prefilter, counting what reaches user space.
 *
 * Why: a reader that spends ~0.02 us per packet shows what the kernel can deliver on this
 * machine, so the daemon's figures can be read as a share of that ceiling.
 *
 * The socket is built like the daemon's (capture/afpacket.py): SOCK_DGRAM (offsets in the
 * filter are relative to the network header), protocol 0 until the filter and ring are in
 * place, PACKET_IGNORE_OUTGOING, then bound to every interface for ETH_P_ALL. The filter is
 * read from a file of struct sock_filter records (8 bytes each, native byte order), written
 * by bench/throughput.py from portsentinel.capture.bpf.build_filter, so both readers run the
 * very same program.
 *
 * usage: ring_reader FILTER_FILE MAX_SECONDS [RING_MIB]
 *   Prints "ready" once bound, reads until SIGTERM/SIGINT or MAX_SECONDS, then prints one
 *   JSON line: packets walked, the kernel's tp_packets/tp_drops/tp_freeze_q_cnt, the
 *   process CPU time (CLOCK_PROCESS_CPUTIME_ID, ns precision) and the span from the first
 *   to the last packet's kernel timestamp.
 *
 * Build: gcc -O2 -Wall -Wextra -o ring_reader ring_reader.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_SIZE (64u * 1024u) /* the daemon's RING_BLOCK */
#define FRAME_SIZE 2048u
#define RETIRE_MS 4u              /* the daemon's retire timeout */
#define MAX_INSNS 4096

static volatile sig_atomic_t stop_now;

static void on_signal(int sig) {
    (void)sig;
    stop_now = 1;
}

static void die(const char *what) {
    fprintf(stderr, "ring_reader: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Read the filter file: whole struct sock_filter records, 1..MAX_INSNS of them. */
static int load_filter(const char *path, struct sock_filter *prog) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die("open filter file");
    size_t n = fread(prog, sizeof(*prog), MAX_INSNS + 1, f);
    int partial = fgetc(f) != EOF;
    fclose(f);
    if (n == 0 || n > MAX_INSNS || partial) {
        fprintf(stderr, "ring_reader: %s: not 1..%d sock_filter records\n", path, MAX_INSNS);
        exit(1);
    }
    return (int)n;
}

static void setopt(int fd, int level, int name, const void *val, socklen_t len, const char *what) {
    if (setsockopt(fd, level, name, val, len) != 0)
        die(what);
}

/* Where the reader stands in the ring and what it has counted. */
struct walk {
    uint8_t *ring;
    unsigned blocks, block;
    uint64_t packets, first_ns, last_ns;
};

/* Count every packet of every ready block from the current one on, handing each block back
 * to the kernel; returns how many blocks were read (0: the current block is not ready). */
static unsigned walk_ready(struct walk *w) {
    unsigned done = 0;
    for (; done < w->blocks; done++) {
        struct tpacket_block_desc *desc = (void *)(w->ring + (size_t)w->block * BLOCK_SIZE);
        if (!(__atomic_load_n(&desc->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
            break;
        uint32_t n = desc->hdr.bh1.num_pkts;
        struct tpacket3_hdr *pkt = (void *)((uint8_t *)desc + desc->hdr.bh1.offset_to_first_pkt);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t ns = (uint64_t)pkt->tp_sec * 1000000000ull + pkt->tp_nsec;
            if (!w->first_ns)
                w->first_ns = ns;
            w->last_ns = ns;
            w->packets++;
            pkt = (void *)((uint8_t *)pkt + pkt->tp_next_offset);
        }
        __atomic_store_n(&desc->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        w->block = (w->block + 1) % w->blocks;
    }
    return done;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ring_reader FILTER_FILE MAX_SECONDS [RING_MIB]\n");
        return 2;
    }
    static struct sock_filter prog[MAX_INSNS + 1];
    int insns = load_filter(argv[1], prog);
    double max_seconds = atof(argv[2]);
    unsigned ring_mib = argc > 3 ? (unsigned)atoi(argv[3]) : 16;
    if (max_seconds <= 0 || max_seconds > 3600 || ring_mib < 1 || ring_mib > 1024) {
        fprintf(stderr, "ring_reader: MAX_SECONDS in (0, 3600], RING_MIB in 1..1024\n");
        return 2;
    }

    int fd = socket(AF_PACKET, SOCK_DGRAM, 0); /* protocol 0: nothing queues before bind */
    if (fd < 0)
        die("socket(AF_PACKET)");
    int version = TPACKET_V3, one = 1;
    setopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version), "PACKET_VERSION");
    setopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one), "PACKET_IGNORE_OUTGOING");
    struct sock_fprog fprog = {.len = (unsigned short)insns, .filter = prog};
    setopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog), "SO_ATTACH_FILTER");

    unsigned blocks = ring_mib * 1024u * 1024u / BLOCK_SIZE;
    struct tpacket_req3 req = {
        .tp_block_size = BLOCK_SIZE,
        .tp_block_nr = blocks,
        .tp_frame_size = FRAME_SIZE,
        .tp_frame_nr = blocks * (BLOCK_SIZE / FRAME_SIZE),
        .tp_retire_blk_tov = RETIRE_MS,
    };
    setopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req), "PACKET_RX_RING");
    size_t ring_bytes = (size_t)blocks * BLOCK_SIZE;
    uint8_t *ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED)
        die("mmap ring");

    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        die("bind");

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready\n");
    fflush(stdout);

    double started = now_mono(), cpu0 = now_cpu();
    struct walk w = {.ring = ring, .blocks = blocks};
    struct pollfd pfd = {.fd = fd, .events = POLLIN | POLLERR};
    while (!stop_now && now_mono() - started < max_seconds) {
        if (!walk_ready(&w))
            poll(&pfd, 1, 100);
    }
    walk_ready(&w); /* what the kernel retired before the stop */
    double cpu = now_cpu() - cpu0;

    struct tpacket_stats_v3 st;
    socklen_t len = sizeof(st);
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) != 0)
        die("PACKET_STATISTICS");
    printf("{\"packets\": %llu, \"tp_packets\": %u, \"tp_drops\": %u, \"tp_freeze_q_cnt\": %u, "
           "\"cpu_seconds\": %.6f, \"span_seconds\": %.6f}\n",
           (unsigned long long)w.packets, st.tp_packets, st.tp_drops, st.tp_freeze_q_cnt, cpu,
           w.last_ns > w.first_ns ? (double)(w.last_ns - w.first_ns) * 1e-9 : 0.0);
    munmap(ring, ring_bytes);
    close(fd);
    return 0;
}
