/* iplist_bench.c - load and lookup speed of src/iplist.c.
 *
 * Build: cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -Isrc \
 *          bench/iplist_bench.c src/iplist.c -o build/iplist_bench
 * Prints numbers; it never fails. */
#include "iplist.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum { ENTRIES = 100000, LOOKUPS = 5000000 };

/* xorshift64: repeatable runs without touching rand()'s global state. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static size_t v4(char *p, uint32_t a)
{
    return (size_t)sprintf(p, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
}

/* A mix like a real blacklist: mostly singles, some ranges and blocks,
 * one in ten IPv6. */
static char *make_text(size_t *lenp)
{
    char *text = malloc((size_t)ENTRIES * 96);
    size_t len = 0;
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < ENTRIES; i++) {
        uint32_t a = (uint32_t)rnd(&s);
        int kind = (int)(rnd(&s) % 10);
        if (kind == 0) {
            len += (size_t)sprintf(text + len, "2001:db8:%x:%x::/64\n",
                                   (unsigned)(a >> 16), (unsigned)(a & 0xffff));
        } else if (kind <= 2) {
            len += v4(text + len, a);
            text[len++] = '-';
            len += v4(text + len, a + (uint32_t)(rnd(&s) % 1000));
            text[len++] = '\n';
        } else if (kind <= 4) {
            len += v4(text + len, a);
            len += (size_t)sprintf(text + len, "/%d\n", 20 + (int)(rnd(&s) % 13));
        } else {
            len += v4(text + len, a);
            len += (size_t)sprintf(text + len, " ; spammer %d\n", i);
        }
    }
    *lenp = len;
    return text;
}

int main(void)
{
    size_t len;
    char *text = make_text(&len);
    char err[256];

    double t0 = now_ms();
    iplist *l = iplist_new();
    if (iplist_parse(l, text, len, "bench", 1, 0, err, sizeof err) != 0)
        fprintf(stderr, "iplist_bench: %s\n", err);
    iplist_finish(l);
    double load_ms = now_ms() - t0;

    struct sockaddr_in s4;
    struct sockaddr_in6 s6;
    memset(&s4, 0, sizeof s4);
    memset(&s6, 0, sizeof s6);
    s4.sin_family = AF_INET;
    s6.sin6_family = AF_INET6;
    s6.sin6_addr.s6_addr[0] = 0x20;
    s6.sin6_addr.s6_addr[1] = 0x01;
    s6.sin6_addr.s6_addr[2] = 0x0d;
    s6.sin6_addr.s6_addr[3] = 0xb8;

    uint64_t s = 12345;
    long hits = 0;
    t0 = now_ms();
    for (int i = 0; i < LOOKUPS; i++) {
        uint64_t r = rnd(&s);
        if (r % 10 == 0) {
            memcpy(&s6.sin6_addr.s6_addr[4], &r, 4);
            hits += iplist_contains_sa(l, (struct sockaddr *)&s6);
        } else {
            s4.sin_addr.s_addr = (uint32_t)(r >> 32);
            hits += iplist_contains_sa(l, (struct sockaddr *)&s4);
        }
    }
    double lookup_ms = now_ms() - t0;

    printf("iplist: entries=%d intervals=%zu load_ms=%.1f lookups_per_sec=%.0f hits=%ld\n",
           ENTRIES, iplist_count(l), load_ms, LOOKUPS / (lookup_ms / 1e3), hits);
    iplist_free(l);
    free(text);
    return 0;
}
