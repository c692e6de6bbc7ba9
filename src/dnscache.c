/* dnscache.c - see dnscache.h.
 *
 * A chained hash table (power-of-two buckets, about one per entry) plus an
 * intrusive doubly-linked LRU list; every operation is O(1) expected, so a
 * full cache costs nothing more per lookup than an empty one.  Expired
 * entries are dropped when met (lookup) or when they reach the LRU tail. */
#include "dnscache.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct entry {
    struct entry *hnext;         /* bucket chain */
    struct entry *prev, *next;   /* LRU: head = most recent */
    uint32_t hash;
    enum dns_type type;
    int status;
    dns_answer *ans;
    int64_t expires;             /* monotonic ms */
    char name[];
};

struct dnscache {
    struct entry **buckets;
    size_t nbuckets, n, max;
    unsigned max_ttl;
    struct entry *head, *tail;
    atomic_uint flush_req;       /* bumped by dnscache_request_flush */
    unsigned flush_seen;
    struct dnscache_stats st;
};

/* Milliseconds: with whole seconds a 1 s TTL could end at once. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* FNV-1a over the lower-cased name and the type. */
uint32_t dnscache_key_hash(const char *name, enum dns_type type)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        unsigned char ch = (*p >= 'A' && *p <= 'Z') ? (unsigned char)(*p + 32) : *p;
        h = (h ^ ch) * 16777619u;
    }
    return (h ^ (uint32_t)type) * 16777619u;
}

void dnscache_answer_free(dns_answer *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n; i++)
        free(a->rr[i].text);
    free(a->rr);
    free(a);
}

dns_answer *dnscache_copy_answer(const dns_answer *a)
{
    dns_answer *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->rr = calloc(a->n > 0 ? (size_t)a->n : 1, sizeof *c->rr);
    if (!c->rr) {
        free(c);
        return NULL;
    }
    for (int i = 0; i < a->n; i++) {
        c->rr[i].text = strdup(a->rr[i].text);
        c->rr[i].pref = a->rr[i].pref;
        if (!c->rr[i].text) {
            dnscache_answer_free(c);
            return NULL;
        }
        c->n = i + 1;
    }
    return c;
}

dnscache *dnscache_new(size_t max_entries, unsigned max_ttl)
{
    if (max_entries == 0)
        return NULL;
    dnscache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t nb = 16;
    while (nb < max_entries && nb < ((size_t)1 << 24))
        nb <<= 1;
    c->buckets = calloc(nb, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->nbuckets = nb;
    c->max = max_entries;
    c->max_ttl = max_ttl;
    atomic_init(&c->flush_req, 0);
    return c;
}

static void lru_unlink(dnscache *c, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(dnscache *c, struct entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    else
        c->tail = e;
    c->head = e;
}

static void remove_entry(dnscache *c, struct entry *e)
{
    struct entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    dnscache_answer_free(e->ans);
    free(e);
    c->n--;
}

void dnscache_flush(dnscache *c)
{
    if (!c)
        return;
    while (c->head)
        remove_entry(c, c->head);
}

void dnscache_request_flush(dnscache *c)
{
    if (c)
        atomic_fetch_add(&c->flush_req, 1);
}

static void maybe_flush(dnscache *c)
{
    unsigned req = atomic_load(&c->flush_req);
    if (req != c->flush_seen) {
        c->flush_seen = req;
        dnscache_flush(c);
    }
}

void dnscache_free(dnscache *c)
{
    if (!c)
        return;
    dnscache_flush(c);
    free(c->buckets);
    free(c);
}

static struct entry *find(dnscache *c, const char *name, enum dns_type type, uint32_t h)
{
    for (struct entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->type == type && strcasecmp(e->name, name) == 0)
            return e;
    return NULL;
}

int dnscache_get(dnscache *c, const char *name, enum dns_type type, int *status, dns_answer **ans)
{
    *ans = NULL;
    if (!c)
        return 0;
    maybe_flush(c);
    uint32_t h = dnscache_key_hash(name, type);
    struct entry *e = find(c, name, type, h);
    if (!e)
        return 0;
    if (e->expires <= now_ms()) {
        remove_entry(c, e);
        return 0;
    }
    if (e->ans) {
        *ans = dnscache_copy_answer(e->ans);
        if (!*ans)
            return 0; /* out of memory: just ask again */
    }
    *status = e->status;
    lru_unlink(c, e);
    lru_push_head(c, e);
    c->st.hits++;
    return 1;
}

static size_t answer_bytes(const dns_answer *a)
{
    size_t n = 0;
    for (int i = 0; i < a->n; i++)
        n += strlen(a->rr[i].text) + 1 + sizeof a->rr[i];
    return n;
}

void dnscache_put(dnscache *c, const char *name, enum dns_type type, int status,
                  const dns_answer *ans, unsigned ttl)
{
    if (!c || ttl == 0)
        return;
    if (!(status == DNS_OK && ans) && status != DNS_NXDOMAIN && status != DNS_NODATA)
        return;
    if (ans && answer_bytes(ans) > DNSCACHE_MAX_ENTRY_BYTES)
        return; /* whoever runs the zone chooses the size: bound the memory */
    maybe_flush(c);
    if (ttl > c->max_ttl)
        ttl = c->max_ttl;
    if (ttl == 0)
        return;
    uint32_t h = dnscache_key_hash(name, type);
    struct entry *old = find(c, name, type, h);
    if (old)
        remove_entry(c, old);
    size_t len = strlen(name);
    struct entry *e = calloc(1, sizeof *e + len + 1);
    if (!e)
        return;
    memcpy(e->name, name, len + 1);
    if (status == DNS_OK && !(e->ans = dnscache_copy_answer(ans))) {
        free(e);
        return;
    }
    e->hash = h;
    e->type = type;
    e->status = status;
    e->expires = now_ms() + (int64_t)ttl * 1000;
    /* Room first: an expired tail goes as readily as a live one. */
    while (c->n >= c->max && c->tail)
        remove_entry(c, c->tail);
    struct entry **b = &c->buckets[h & (c->nbuckets - 1)];
    e->hnext = *b;
    *b = e;
    lru_push_head(c, e);
    c->n++;
}

void dnscache_count_miss(dnscache *c)
{
    if (c)
        c->st.misses++;
}

void dnscache_count_join(dnscache *c)
{
    if (c)
        c->st.joined++;
}

void dnscache_get_stats(const dnscache *c, struct dnscache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!c)
        return;
    *out = c->st;
    out->entries = c->n;
}

/* ---- TTLs from a raw reply ------------------------------------------- */

/* Skips a (possibly compressed) name at off; returns the offset after it or
 * -1.  Only the bytes of the name itself are walked, a pointer ends it. */
static int skip_name(const unsigned char *b, int len, int off)
{
    for (int labels = 0; off < len && labels < 128; labels++) {
        unsigned l = b[off];
        if (l == 0)
            return off + 1;
        if ((l & 0xc0) == 0xc0)
            return off + 2 <= len ? off + 2 : -1;
        if (l & 0xc0)
            return -1;
        off += 1 + (int)l;
    }
    return -1;
}

static unsigned get16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

#define T_SOA 6
#define TTL_MAX_SANE 0x7fffffffu /* RFC 2181 §8: larger means 0 */

unsigned dnscache_reply_ttl(const unsigned char *buf, int len, int negative)
{
    if (!buf || len < 12)
        return 0;
    unsigned qd = get16(buf + 4), an = get16(buf + 6), ns = get16(buf + 8);
    int off = 12;
    for (unsigned i = 0; i < qd; i++) {
        if ((off = skip_name(buf, len, off)) < 0 || off + 4 > len)
            return 0;
        off += 4;
    }
    uint32_t best = UINT32_MAX;
    int found = 0;
    for (unsigned i = 0; i < an + ns; i++) {
        if ((off = skip_name(buf, len, off)) < 0 || off + 10 > len)
            return 0;
        unsigned type = get16(buf + off);
        uint32_t ttl = get32(buf + off + 4);
        unsigned rdlen = get16(buf + off + 8);
        int rd = off + 10;
        if (rd + (int)rdlen > len)
            return 0;
        if (ttl > TTL_MAX_SANE)
            ttl = 0;
        if (!negative && i < an) {
            /* Every record of the answer, CNAMEs included: the chain is
             * only as fresh as its stalest link. */
            if (ttl < best)
                best = ttl;
            found = 1;
        } else if (negative && i >= an && type == T_SOA) {
            /* RDATA: mname, rname, then serial refresh retry expire minimum. */
            int p = skip_name(buf, rd + (int)rdlen, rd);
            if (p >= 0)
                p = skip_name(buf, rd + (int)rdlen, p);
            if (p < 0 || p + 20 > rd + (int)rdlen)
                return 0;
            uint32_t minimum = get32(buf + p + 16);
            uint32_t t = ttl < minimum ? ttl : minimum;
            if (t < best)
                best = t;
            found = 1;
        }
        off = rd + (int)rdlen;
    }
    /* RFC 2308 §5: a negative answer without an SOA SHOULD NOT be cached
     * (nothing bounds how long it would bounce between caches). */
    if (!found)
        return 0;
    return best;
}
