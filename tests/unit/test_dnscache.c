/* test_dnscache.c - src/dnscache.c: TTLs read from raw replies (hostile
 * ones included), expiry, the LRU bound, flush. */
#include "../../src/dnscache.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

/* Header + question "a.ex" A + records appended by the tests. */
static int build(unsigned char *b, int an, int ns)
{
    static const unsigned char head[] = { 0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0,
                                          1, 'a', 2, 'e', 'x', 0, 0, 1, 0, 1 };
    memcpy(b, head, sizeof head);
    b[7] = (unsigned char)an;
    b[9] = (unsigned char)ns;
    return (int)sizeof head;
}

static int put32(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
    return 4;
}

/* An A record for the question's name (compression pointer to offset 12). */
static int add_a(unsigned char *b, int off, unsigned ttl)
{
    static const unsigned char rr[] = { 0xc0, 12, 0, 1, 0, 1 };
    memcpy(b + off, rr, sizeof rr);
    off += (int)sizeof rr;
    off += put32(b + off, ttl);
    b[off++] = 0; b[off++] = 4;
    memcpy(b + off, "\xc0\x00\x02\x01", 4);
    return off + 4;
}

static int add_soa(unsigned char *b, int off, unsigned ttl, unsigned minimum)
{
    static const unsigned char rr[] = { 0xc0, 12, 0, 6, 0, 1 };
    memcpy(b + off, rr, sizeof rr);
    off += (int)sizeof rr;
    off += put32(b + off, ttl);
    b[off++] = 0; b[off++] = 2 + 2 + 20;
    b[off++] = 0xc0; b[off++] = 12; /* mname */
    b[off++] = 0xc0; b[off++] = 12; /* rname */
    for (int i = 0; i < 4; i++)
        off += put32(b + off, 100);
    return off + put32(b + off, minimum);
}

int main(void)
{
    unsigned char b[512];
    int n = build(b, 2, 0);
    n = add_a(b, n, 300);
    n = add_a(b, n, 120);
    CHECK(dnscache_reply_ttl(b, n, 0) == 120, "positive TTL is the smallest of the answer's records");
    int cut = 0;
    for (int len = 0; len < n; len++)
        cut += dnscache_reply_ttl(b, len, 0) != 0;
    CHECK(cut == 0, "every truncation of the reply gives 0 (not cached)");

    n = build(b, 0, 1);
    n = add_soa(b, n, 900, 30);
    CHECK(dnscache_reply_ttl(b, n, 1) == 30, "negative TTL = min(SOA TTL, minimum) (minimum smaller)");
    n = build(b, 0, 1);
    n = add_soa(b, n, 20, 3600);
    CHECK(dnscache_reply_ttl(b, n, 1) == 20, "negative TTL = min(SOA TTL, minimum) (TTL smaller)");
    n = build(b, 0, 0);
    CHECK(dnscache_reply_ttl(b, n, 1) == 0, "no SOA: a negative answer is not cached");
    b[12] = 0xc0; b[13] = 12; /* a question name that points at itself */
    CHECK(dnscache_reply_ttl(b, n, 1) == 0, "a self-pointing name is skipped, never followed");

    CHECK(dnscache_new(0, 60) == NULL, "size 0: no cache");
    dnscache *c = dnscache_new(2, 1);
    dns_answer a = { 1, (struct dns_rr[]){ { (char *)"192.0.2.1", 0 } } }, *got;
    int st = -1;
    dnscache_put(c, "A.ex", DNS_A, DNS_OK, &a, 3600);
    CHECK(dnscache_get(c, "a.EX", DNS_A, &st, &got) == 1 && st == DNS_OK && got && got->n == 1 &&
              strcmp(got->rr[0].text, "192.0.2.1") == 0, "hit, case-blind, a copy of the answer");
    dnscache_answer_free(got);
    CHECK(dnscache_get(c, "a.ex", DNS_MX, &st, &got) == 0, "the type is part of the key");
    dnscache_put(c, "b.ex", DNS_A, DNS_SERVFAIL, NULL, 60);
    dnscache_put(c, "c.ex", DNS_A, DNS_TIMEOUT, NULL, 60);
    struct dnscache_stats s;
    dnscache_get_stats(c, &s);
    CHECK(s.entries == 1, "servfail and timeout are not stored");
    dnscache_put(c, "n.ex", DNS_A, DNS_NXDOMAIN, NULL, 60);
    dnscache_put(c, "m.ex", DNS_A, DNS_NODATA, NULL, 60);
    CHECK(dnscache_get(c, "a.ex", DNS_A, &st, &got) == 0, "LRU: the oldest went at size 2");
    CHECK(dnscache_get(c, "n.ex", DNS_A, &st, &got) == 1 && st == DNS_NXDOMAIN && !got, "NXDOMAIN cached");
    usleep(1100 * 1000);
    CHECK(dnscache_get(c, "n.ex", DNS_A, &st, &got) == 0, "expired after the capped TTL (1 s)");
    dnscache_put(c, "m.ex", DNS_A, DNS_NODATA, NULL, 60);
    dnscache_request_flush(c);
    CHECK(dnscache_get(c, "m.ex", DNS_A, &st, &got) == 0, "a requested flush happens before the next get");
    dnscache_get_stats(c, &s);
    CHECK(s.entries == 0 && s.hits == 2, "stats: entries and hits");
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    dns_answer huge = { 1, (struct dns_rr[]){ { big, 0 } } };
    dnscache_put(c, "big.ex", DNS_TXT, DNS_OK, &huge, 60);
    CHECK(dnscache_get(c, "big.ex", DNS_TXT, &st, &got) == 0, "an answer over %d bytes is not kept",
          DNSCACHE_MAX_ENTRY_BYTES);
    dnscache_free(c);
    return check_done();
}
