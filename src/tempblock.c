/* tempblock.c - Temporarily Blocked / UnBlockable IP Addresses (see tempblock.h).
 *
 * Layout: a pool of entries (indices stay valid when the pool grows), an
 * open-addressing index (linear probing, backward-shift deletion, so no
 * tombstones) mapping keyed-SipHash(key) to pool indices, and one
 * doubly-linked list of all live entries, most recently active first. The
 * list gives O(1) lazy expiry of idle entries and O(1) eviction when full.
 *
 * Counting scheme: per address and event kind, up to TB_SLOTS buckets
 * (second, number of events in that second), oldest first. Events in the
 * same second share a bucket. When all buckets are in use and a new second
 * needs one:
 *   - if the newer buckets alone hold at least R = max(block count, debug
 *     count) + 1 events, the oldest bucket is dropped: no query can need it,
 *     since any window that reaches it also holds all the newer ones, which
 *     already exceed every threshold;
 *   - otherwise the two adjacent buckets closest in time are merged under
 *     the older second (only possible when R > TB_SLOTS - 1, i.e. counts of
 *     16 and more spread over more than 16 seconds). The total is kept; the
 *     merged events may leave the window early, never late.
 * So memory per address is fixed (about 100 bytes per kind) whatever the
 * configured counts, and counts up to 15 are exact. A fixed window (count
 * since window start) would be smaller but lets 2*count events through
 * across a window boundary; a ring of the last count+1 timestamps would be
 * exact but its size would follow the configured count. Buckets older than
 * the kind's longest window are pruned when the next event is recorded.
 * Seconds are stored as 32-bit offsets from the first clock value seen. */
#include "tempblock.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define TB_KINDS 2              /* TB_FAILED_LOGIN, TB_PROTOCOL_ERROR */
#define TB_RECLAIM_STEPS 4      /* idle entries examined per call */

struct tb_counter {
    uint32_t t[TB_SLOTS];       /* seconds since tb->base, ascending */
    uint16_t n[TB_SLOTS];       /* events in that second (saturating) */
    uint8_t used;
};

struct tb_entry {
    unsigned char key[16];
    uint32_t hash;
    int32_t prev, next;         /* activity list; next links the free list */
    int live;
    time_t blocked_until;       /* 0 = no block recorded */
    time_t unblockable_until;   /* 0 = not unblockable */
    time_t trusted_until;       /* a Relay-enabled login; only while unblockable */
    time_t last;                /* last activity (event, block, login) */
    struct tb_counter c[TB_KINDS];
    char reason[TB_REASON_MAX];
};

struct tb_rules {               /* one kind's rules; count 0 = off */
    int block_count, block_window;
    int debug_count, debug_window;
    int maxwin;                 /* longest active window of the kind */
    long need;                  /* R: max active count + 1 */
};

struct tempblock {
    struct tb_settings s;
    struct tb_rules rules[TB_KINDS];
    int maxwin;                 /* longest active window overall */
    size_t cap;                 /* most live entries */

    struct tb_entry *ents;
    size_t n_used;              /* pool slots ever handed out */
    size_t n_alloc;             /* pool slots allocated */
    int32_t free_head;
    size_t n_live;

    uint32_t *idx;              /* pool index + 1; 0 = empty */
    size_t idx_size;            /* power of two, >= 2 * live entries */

    int32_t head, tail;         /* activity list: head = most recent */

    size_t n_blocked;           /* entries with blocked_until != 0 */
    size_t n_unblockable;       /* entries with unblockable_until != 0 */
    time_t min_blocked;         /* <= earliest blocked_until (when n_blocked) */
    time_t min_unblockable;

    time_t base;                /* origin of the counters' seconds */
    int have_base;
    time_t clock;               /* latest now seen */
    int have_clock;

    uint64_t k0, k1;            /* SipHash key */
};

/* ---- hashing ---------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                        \
    do {                                                                \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);       \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                          \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                          \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);       \
    } while (0)

static uint64_t load64le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* SipHash-2-4 of a 16-byte message. */
static uint64_t siphash16(uint64_t k0, uint64_t k1, const unsigned char in[16])
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    for (int i = 0; i < 2; i++) {
        uint64_t m = load64le(in + 8 * i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)16 << 56;
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint32_t key_hash(const tempblock *tb, const unsigned char key[16])
{
    return (uint32_t)siphash16(tb->k0, tb->k1, key);
}

/* ---- small helpers ---------------------------------------------------- */

static int clamp_int(time_t v)
{
    if (v <= 0)
        return 0;
    return v > INT_MAX ? INT_MAX : (int)v;
}

static void note_now(tempblock *tb, time_t now)
{
    if (!tb->have_clock || now > tb->clock) {
        tb->clock = now;
        tb->have_clock = 1;
    }
}

/* Seconds since the base, as stored in the buckets. */
static uint32_t rel(tempblock *tb, time_t now)
{
    if (!tb->have_base) {
        tb->base = now;
        tb->have_base = 1;
    }
    if (now <= tb->base)
        return 0;
    time_t d = now - tb->base;
    return d >= (time_t)UINT32_MAX ? UINT32_MAX - 1 : (uint32_t)d;
}

static void copy_reason(char dst[TB_REASON_MAX], const char *src)
{
    if (!src)
        src = "";
    size_t n = strnlen(src, TB_REASON_MAX - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int parse_ip(const char *ip, unsigned char key[16])
{
    char buf[64];
    if (!ip)
        return -1;
    size_t n = strlen(ip);
    if (n >= 2 && ip[0] == '[' && ip[n - 1] == ']') {
        ip++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, ip, n);
    buf[n] = '\0';
    struct in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        memset(key, 0, 10);
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &a4, 4);
        return 0;
    }
    struct in6_addr a6;
    if (inet_pton(AF_INET6, buf, &a6) == 1) {
        memcpy(key, &a6, 16);
        return 0;
    }
    return -1;
}

static void key_to_text(const unsigned char key[16], char *buf, size_t len)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(key, mapped, 12) == 0) {
        if (inet_ntop(AF_INET, key + 12, buf, (socklen_t)len))
            return;
    } else if (inet_ntop(AF_INET6, key, buf, (socklen_t)len)) {
        return;
    }
    snprintf(buf, len, "?");
}

/* ---- entry states (lazily expired) ------------------------------------ */

static void clear_block(tempblock *tb, struct tb_entry *e)
{
    if (e->blocked_until) {
        e->blocked_until = 0;
        tb->n_blocked--;
    }
    e->reason[0] = '\0';
}

static void clear_unblockable(tempblock *tb, struct tb_entry *e)
{
    if (e->unblockable_until) {
        e->unblockable_until = 0;
        tb->n_unblockable--;
    }
}

static int block_left(tempblock *tb, struct tb_entry *e, time_t now)
{
    if (!e->blocked_until)
        return 0;
    if (e->blocked_until <= now) {
        clear_block(tb, e);
        return 0;
    }
    return clamp_int(e->blocked_until - now);
}

static int unblock_left(tempblock *tb, struct tb_entry *e, time_t now)
{
    if (!e->unblockable_until)
        return 0;
    if (e->unblockable_until <= now) {
        clear_unblockable(tb, e);
        return 0;
    }
    return clamp_int(e->unblockable_until - now);
}

static int protected_entry(tempblock *tb, struct tb_entry *e, time_t now)
{
    int b = block_left(tb, e, now) > 0;
    int u = unblock_left(tb, e, now) > 0;
    return b || u;
}

/* Clear every expired block (or unblockable mark) and recompute the
 * earliest expiry. A full pass, done only when the earliest expiry has
 * passed, so it is amortised over the blocks it removes. */
static void purge_blocks(tempblock *tb, time_t now)
{
    if (tb->n_blocked == 0 || now < tb->min_blocked)
        return;
    time_t min = 0;
    for (size_t i = 0; i < tb->n_used; i++) {
        struct tb_entry *e = &tb->ents[i];
        if (e->live && block_left(tb, e, now) && (!min || e->blocked_until < min))
            min = e->blocked_until;
    }
    tb->min_blocked = min;
}

static void purge_unblockables(tempblock *tb, time_t now)
{
    if (tb->n_unblockable == 0 || now < tb->min_unblockable)
        return;
    time_t min = 0;
    for (size_t i = 0; i < tb->n_used; i++) {
        struct tb_entry *e = &tb->ents[i];
        if (e->live && unblock_left(tb, e, now) && (!min || e->unblockable_until < min))
            min = e->unblockable_until;
    }
    tb->min_unblockable = min;
}

/* ---- counters --------------------------------------------------------- */

static void counter_remove(struct tb_counter *c, int i)
{
    memmove(&c->t[i], &c->t[i + 1], (size_t)(c->used - i - 1) * sizeof c->t[0]);
    memmove(&c->n[i], &c->n[i + 1], (size_t)(c->used - i - 1) * sizeof c->n[0]);
    c->used--;
}

static uint16_t sat_add(uint16_t a, uint32_t b)
{
    uint32_t s = (uint32_t)a + b;
    return s > UINT16_MAX ? UINT16_MAX : (uint16_t)s;
}

static void counter_record(tempblock *tb, struct tb_counter *c, const struct tb_rules *r, time_t now)
{
    uint32_t t = rel(tb, now);
    int drop = 0;               /* buckets no active window can reach */
    while (drop < c->used && (int64_t)c->t[drop] + r->maxwin <= (int64_t)t)
        drop++;
    if (drop) {
        memmove(&c->t[0], &c->t[drop], (size_t)(c->used - drop) * sizeof c->t[0]);
        memmove(&c->n[0], &c->n[drop], (size_t)(c->used - drop) * sizeof c->n[0]);
        c->used = (uint8_t)(c->used - drop);
    }
    if (c->used && c->t[c->used - 1] >= t) {        /* same second (or clock went back) */
        c->n[c->used - 1] = sat_add(c->n[c->used - 1], 1);
        return;
    }
    if (c->used == TB_SLOTS) {
        long newer = 0;
        for (int i = 1; i < c->used; i++)
            newer += c->n[i];
        if (newer >= r->need) {
            counter_remove(c, 0);
        } else {
            int best = 0;
            for (int i = 1; i < c->used - 1; i++)
                if (c->t[i + 1] - c->t[i] < c->t[best + 1] - c->t[best])
                    best = i;
            c->n[best] = sat_add(c->n[best], c->n[best + 1]);
            counter_remove(c, best + 1);
        }
    }
    c->t[c->used] = t;
    c->n[c->used] = 1;
    c->used++;
}

/* Events in the window (now - t < window). */
static long counter_in_window(tempblock *tb, const struct tb_counter *c, int window, time_t now)
{
    if (!c->used || window <= 0)
        return 0;
    int64_t t = rel(tb, now);
    long sum = 0;
    for (int i = c->used - 1; i >= 0 && (int64_t)c->t[i] + window > t; i--)
        sum += c->n[i];
    return sum;
}

static int entry_debugged(tempblock *tb, struct tb_entry *e, time_t now)
{
    for (int k = 0; k < TB_KINDS; k++) {
        const struct tb_rules *r = &tb->rules[k];
        if (r->debug_count && counter_in_window(tb, &e->c[k], r->debug_window, now) > r->debug_count)
            return 1;
    }
    return 0;
}

/* ---- activity list ---------------------------------------------------- */

static void list_unlink(tempblock *tb, int32_t i)
{
    struct tb_entry *e = &tb->ents[i];
    if (e->prev >= 0)
        tb->ents[e->prev].next = e->next;
    else
        tb->head = e->next;
    if (e->next >= 0)
        tb->ents[e->next].prev = e->prev;
    else
        tb->tail = e->prev;
    e->prev = e->next = -1;
}

static void list_push_head(tempblock *tb, int32_t i)
{
    struct tb_entry *e = &tb->ents[i];
    e->prev = -1;
    e->next = tb->head;
    if (tb->head >= 0)
        tb->ents[tb->head].prev = i;
    else
        tb->tail = i;
    tb->head = i;
}

static void touch(tempblock *tb, int32_t i, time_t now)
{
    if (tb->head != i) {
        list_unlink(tb, i);
        list_push_head(tb, i);
    }
    if (now > tb->ents[i].last)
        tb->ents[i].last = now;
}

/* ---- index ------------------------------------------------------------ */

static int32_t find(const tempblock *tb, const unsigned char key[16], uint32_t h)
{
    if (!tb->idx_size)
        return -1;
    size_t mask = tb->idx_size - 1;
    for (size_t p = h & mask; tb->idx[p]; p = (p + 1) & mask) {
        const struct tb_entry *e = &tb->ents[tb->idx[p] - 1];
        if (e->hash == h && memcmp(e->key, key, 16) == 0)
            return (int32_t)(tb->idx[p] - 1);
    }
    return -1;
}

static void idx_put(tempblock *tb, int32_t i)
{
    size_t mask = tb->idx_size - 1;
    size_t p = tb->ents[i].hash & mask;
    while (tb->idx[p])
        p = (p + 1) & mask;
    tb->idx[p] = (uint32_t)i + 1;
}

static void idx_del(tempblock *tb, int32_t i)
{
    size_t mask = tb->idx_size - 1;
    size_t p = tb->ents[i].hash & mask;
    while (tb->idx[p] != (uint32_t)i + 1)
        p = (p + 1) & mask;
    /* backward-shift: pull later members of the cluster into the hole
     * when their home slot is not between the hole and them */
    for (size_t j = (p + 1) & mask; tb->idx[j]; j = (j + 1) & mask) {
        size_t home = tb->ents[tb->idx[j] - 1].hash & mask;
        if (((j - home) & mask) >= ((j - p) & mask)) {
            tb->idx[p] = tb->idx[j];
            p = j;
        }
    }
    tb->idx[p] = 0;
}

static int idx_reserve(tempblock *tb, size_t live)
{
    if (live * 2 <= tb->idx_size)
        return 0;
    size_t size = tb->idx_size ? tb->idx_size : 128;
    while (live * 2 > size)
        size *= 2;
    if (size > (size_t)UINT32_MAX)
        return -1;
    uint32_t *n = calloc(size, sizeof *n);
    if (!n)
        return -1;
    free(tb->idx);
    tb->idx = n;
    tb->idx_size = size;
    for (size_t i = 0; i < tb->n_used; i++)
        if (tb->ents[i].live)
            idx_put(tb, (int32_t)i);
    return 0;
}

/* ---- entries ---------------------------------------------------------- */

static void free_entry(tempblock *tb, int32_t i)
{
    struct tb_entry *e = &tb->ents[i];
    idx_del(tb, i);
    list_unlink(tb, i);
    clear_block(tb, e);
    clear_unblockable(tb, e);
    e->live = 0;
    e->next = tb->free_head;
    tb->free_head = i;
    tb->n_live--;
}

/* Free idle entries from the least recently active end; rotate protected
 * ones (few: bounded by the limits) to the other end. Bounded work. */
static void reclaim(tempblock *tb, time_t now)
{
    for (int step = 0; step < TB_RECLAIM_STEPS && tb->tail >= 0; step++) {
        int32_t i = tb->tail;
        struct tb_entry *e = &tb->ents[i];
        if (protected_entry(tb, e, now)) {
            if (tb->head == i)
                break;
            list_unlink(tb, i);
            list_push_head(tb, i);
            continue;
        }
        if (e->last + tb->maxwin > now)
            break;
        free_entry(tb, i);
    }
}

/* Evict the least recently active entry that is neither blocked nor
 * unblockable. 0 when there is none. */
static int evict_one(tempblock *tb, time_t now)
{
    for (size_t steps = tb->n_live; steps > 0 && tb->tail >= 0; steps--) {
        int32_t i = tb->tail;
        if (protected_entry(tb, &tb->ents[i], now)) {
            list_unlink(tb, i);
            list_push_head(tb, i);
            continue;
        }
        free_entry(tb, i);
        return 1;
    }
    return 0;
}

/* Index of the entry for key, created when missing; -1 when it cannot be
 * tracked. Pool pointers are invalid after this call. */
static int32_t find_or_add(tempblock *tb, const unsigned char key[16], time_t now)
{
    uint32_t h = key_hash(tb, key);
    int32_t i = find(tb, key, h);
    if (i >= 0)
        return i;
    while (tb->n_live >= tb->cap)
        if (!evict_one(tb, now))
            return -1;
    if (idx_reserve(tb, tb->n_live + 1) < 0)
        return -1;
    if (tb->free_head >= 0) {
        i = tb->free_head;
        tb->free_head = tb->ents[i].next;
    } else {
        if (tb->n_used == tb->n_alloc) {
            size_t n = tb->n_alloc ? tb->n_alloc * 2 : 64;
            if (n > (size_t)INT32_MAX)
                return -1;
            struct tb_entry *p = realloc(tb->ents, n * sizeof *p);
            if (!p)
                return -1;
            tb->ents = p;
            tb->n_alloc = n;
        }
        i = (int32_t)tb->n_used++;
    }
    struct tb_entry *e = &tb->ents[i];
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, 16);
    e->hash = h;
    e->live = 1;
    e->last = now;
    idx_put(tb, i);
    list_push_head(tb, i);
    tb->n_live++;
    return i;
}

static int32_t lookup(const tempblock *tb, const unsigned char key[16])
{
    return find(tb, key, key_hash(tb, key));
}

/* Room for one more block? (purges expired ones when at the limit) */
static int can_block(tempblock *tb, time_t now)
{
    if (tb->s.block_time <= 0 || tb->s.block_limit <= 0)
        return 0;
    if (tb->n_blocked >= (size_t)tb->s.block_limit)
        purge_blocks(tb, now);
    return tb->n_blocked < (size_t)tb->s.block_limit;
}

static int can_unblock(tempblock *tb, time_t now)
{
    if (tb->s.unblock_time <= 0 || tb->s.unblock_limit <= 0)
        return 0;
    if (tb->n_unblockable >= (size_t)tb->s.unblock_limit)
        purge_unblockables(tb, now);
    return tb->n_unblockable < (size_t)tb->s.unblock_limit;
}

static void set_block(tempblock *tb, struct tb_entry *e, const char *reason, time_t now)
{
    time_t until = now + tb->s.block_time;
    if (!e->blocked_until) {
        if (tb->n_blocked == 0 || until < tb->min_blocked)
            tb->min_blocked = until;
        tb->n_blocked++;
    } else if (until < tb->min_blocked) {
        tb->min_blocked = until;
    }
    e->blocked_until = until;
    copy_reason(e->reason, reason);
}

static void set_unblockable(tempblock *tb, struct tb_entry *e, time_t now)
{
    time_t until = now + tb->s.unblock_time;
    if (!e->unblockable_until) {
        if (tb->n_unblockable == 0 || until < tb->min_unblockable)
            tb->min_unblockable = until;
        tb->n_unblockable++;
    } else if (until < tb->min_unblockable) {
        tb->min_unblockable = until;
    }
    e->unblockable_until = until;
}

/* ---- public API ------------------------------------------------------- */

void tb_default_settings(struct tb_settings *s)
{
    memset(s, 0, sizeof *s);
    s->login_block_count = 5;
    s->login_block_window = 60;
    s->proto_block_count = 10;
    s->proto_block_window = 60;
    s->login_debug_count = 3;
    s->login_debug_window = 60;
    s->proto_debug_count = 5;
    s->proto_debug_window = 60;
    s->block_time = 600;
    s->block_limit = 10000;
    s->unblock_time = 3600;
    s->unblock_limit = 10000;
}

tempblock *tb_new(void)
{
    tempblock *tb = calloc(1, sizeof *tb);
    if (!tb)
        return NULL;
    unsigned char seed[16];
    if (getrandom(seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed) {
        tb->k0 = load64le(seed);
        tb->k1 = load64le(seed + 8);
    } else {                    /* weak fallback: still unpredictable enough per process */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        tb->k0 = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)tb;
        tb->k1 = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)getpid();
    }
    tb->free_head = tb->head = tb->tail = -1;
    struct tb_settings s;
    tb_default_settings(&s);
    tb_configure(tb, &s);
    return tb;
}

void tb_free(tempblock *tb)
{
    if (!tb)
        return;
    free(tb->ents);
    free(tb->idx);
    free(tb);
}

static void set_rules(struct tb_rules *r, int bc, int bw, int dc, int dw)
{
    memset(r, 0, sizeof *r);
    if (bc > 0 && bw > 0) {
        r->block_count = bc;
        r->block_window = bw;
    }
    if (dc > 0 && dw > 0) {
        r->debug_count = dc;
        r->debug_window = dw;
    }
    r->maxwin = r->block_window > r->debug_window ? r->block_window : r->debug_window;
    r->need = (long)(r->block_count > r->debug_count ? r->block_count : r->debug_count) + 1;
}

void tb_configure(tempblock *tb, const struct tb_settings *s)
{
    tb->s = *s;
    set_rules(&tb->rules[TB_FAILED_LOGIN], s->login_block_count, s->login_block_window,
              s->login_debug_count, s->login_debug_window);
    set_rules(&tb->rules[TB_PROTOCOL_ERROR], s->proto_block_count, s->proto_block_window,
              s->proto_debug_count, s->proto_debug_window);
    tb->maxwin = tb->rules[0].maxwin > tb->rules[1].maxwin ? tb->rules[0].maxwin : tb->rules[1].maxwin;
    tb->cap = TB_TRACK_MAX + (size_t)(s->block_limit > 0 ? s->block_limit : 0)
                           + (size_t)(s->unblock_limit > 0 ? s->unblock_limit : 0);
}

enum tb_result tb_event(tempblock *tb, const unsigned char key[16], enum tb_event ev, time_t now)
{
    if (ev != TB_FAILED_LOGIN && ev != TB_PROTOCOL_ERROR)
        return TB_NONE;
    note_now(tb, now);
    const struct tb_rules *r = &tb->rules[ev];
    if (!r->block_count && !r->debug_count)     /* nothing to count for this kind */
        return tb_debugged(tb, key, now) ? TB_DEBUG : TB_NONE;
    reclaim(tb, now);
    int32_t i = find_or_add(tb, key, now);
    if (i < 0)
        return TB_NONE;
    touch(tb, i, now);
    struct tb_entry *e = &tb->ents[i];
    counter_record(tb, &e->c[ev], r, now);
    if (r->block_count && !block_left(tb, e, now) &&
        counter_in_window(tb, &e->c[ev], r->block_window, now) > r->block_count) {
        if (unblock_left(tb, e, now) || !can_block(tb, now))
            return TB_REFUSED;
        char why[TB_REASON_MAX];
        snprintf(why, sizeof why, "more than %d %s in %ds", r->block_count,
                 ev == TB_FAILED_LOGIN ? "failed logins" : "protocol errors", r->block_window);
        set_block(tb, e, why, now);
        return TB_BLOCKED;
    }
    return entry_debugged(tb, e, now) ? TB_DEBUG : TB_NONE;
}

enum tb_result tb_block(tempblock *tb, const unsigned char key[16], const char *reason, time_t now)
{
    note_now(tb, now);
    reclaim(tb, now);
    int32_t i = lookup(tb, key);
    if (i >= 0) {
        struct tb_entry *e = &tb->ents[i];
        if (unblock_left(tb, e, now))
            return TB_REFUSED;
        if (block_left(tb, e, now)) {           /* renew */
            if (tb->s.block_time <= 0)
                return TB_REFUSED;
            set_block(tb, e, reason, now);
            touch(tb, i, now);
            return TB_BLOCKED;
        }
    }
    if (!can_block(tb, now))
        return TB_REFUSED;
    i = find_or_add(tb, key, now);
    if (i < 0)
        return TB_REFUSED;
    touch(tb, i, now);
    set_block(tb, &tb->ents[i], reason, now);
    return TB_BLOCKED;
}

int tb_blocked(tempblock *tb, const unsigned char key[16], time_t now)
{
    note_now(tb, now);
    int32_t i = lookup(tb, key);
    return i < 0 ? 0 : block_left(tb, &tb->ents[i], now);
}

int tb_debugged(tempblock *tb, const unsigned char key[16], time_t now)
{
    note_now(tb, now);
    int32_t i = lookup(tb, key);
    return i < 0 ? 0 : entry_debugged(tb, &tb->ents[i], now);
}

int tb_make_unblockable(tempblock *tb, const unsigned char key[16], time_t now)
{
    note_now(tb, now);
    reclaim(tb, now);
    int32_t i = lookup(tb, key);
    if (i >= 0) {
        struct tb_entry *e = &tb->ents[i];
        clear_block(tb, e);
        if (unblock_left(tb, e, now)) {         /* renew */
            if (tb->s.unblock_time <= 0)
                return 0;
            set_unblockable(tb, e, now);
            touch(tb, i, now);
            return 1;
        }
    }
    if (!can_unblock(tb, now))
        return 0;
    i = find_or_add(tb, key, now);
    if (i < 0)
        return 0;
    touch(tb, i, now);
    set_unblockable(tb, &tb->ents[i], now);
    return 1;
}

/* Trusted (DESIGN §6 status "trusted"): a Relay-enabled user logged in from
 * the address.  It rides on the unblockable entry and ends with it. */
int tb_make_trusted(tempblock *tb, const unsigned char key[16], time_t now)
{
    if (!tb_make_unblockable(tb, key, now))
        return 0;
    int32_t i = lookup(tb, key);
    if (i < 0)
        return 0;
    tb->ents[i].trusted_until = tb->ents[i].unblockable_until;
    return 1;
}

int tb_trusted(tempblock *tb, const unsigned char key[16], time_t now)
{
    note_now(tb, now);
    int32_t i = lookup(tb, key);
    int u = i < 0 ? 0 : unblock_left(tb, &tb->ents[i], now);
    if (!u || tb->ents[i].trusted_until <= now)
        return 0;
    /* The trust ends with the unblockable mark, which a login after a reload
     * that shortened unblock_time can make end first. */
    int t = clamp_int(tb->ents[i].trusted_until - now);
    return t < u ? t : u;
}

int tb_trusted_str(tempblock *tb, const char *ip, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? -1 : tb_trusted(tb, k, now);
}

int tb_unblockable(tempblock *tb, const unsigned char key[16], time_t now)
{
    note_now(tb, now);
    int32_t i = lookup(tb, key);
    return i < 0 ? 0 : unblock_left(tb, &tb->ents[i], now);
}

int tb_unblock(tempblock *tb, const unsigned char key[16])
{
    int32_t i = lookup(tb, key);
    if (i < 0)
        return 0;
    struct tb_entry *e = &tb->ents[i];
    int was = e->blocked_until && (!tb->have_clock || e->blocked_until > tb->clock);
    clear_block(tb, e);
    memset(e->c, 0, sizeof e->c);
    return was;
}

void tb_foreach(tempblock *tb, time_t now,
                void (*cb)(void *arg, const char *ip, const char *kind, int left, const char *reason),
                void *arg)
{
    note_now(tb, now);
    char ip[INET6_ADDRSTRLEN];
    for (size_t i = 0; i < tb->n_used; i++) {
        struct tb_entry *e = &tb->ents[i];
        if (!e->live)
            continue;
        int b = block_left(tb, e, now), u = unblock_left(tb, e, now);
        if (!b && !u)
            continue;
        key_to_text(e->key, ip, sizeof ip);
        if (b)
            cb(arg, ip, "blocked", b, e->reason);
        if (u)
            cb(arg, ip, "unblockable", u, "");
    }
}

size_t tb_count_blocked(tempblock *tb, time_t now)
{
    note_now(tb, now);
    purge_blocks(tb, now);
    return tb->n_blocked;
}

size_t tb_count_unblockable(tempblock *tb, time_t now)
{
    note_now(tb, now);
    purge_unblockables(tb, now);
    return tb->n_unblockable;
}

size_t tb_tracked(const tempblock *tb)
{
    return tb->n_live;
}

size_t tb_capacity(const tempblock *tb)
{
    return tb->cap;
}

/* ---- textual wrappers ------------------------------------------------- */

enum tb_result tb_event_str(tempblock *tb, const char *ip, enum tb_event ev, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? TB_REFUSED : tb_event(tb, k, ev, now);
}

enum tb_result tb_block_str(tempblock *tb, const char *ip, const char *reason, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? TB_REFUSED : tb_block(tb, k, reason, now);
}

int tb_blocked_str(tempblock *tb, const char *ip, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? -1 : tb_blocked(tb, k, now);
}

int tb_debugged_str(tempblock *tb, const char *ip, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? -1 : tb_debugged(tb, k, now);
}

int tb_unblock_str(tempblock *tb, const char *ip)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? -1 : tb_unblock(tb, k);
}

int tb_make_unblockable_str(tempblock *tb, const char *ip, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? -1 : tb_make_unblockable(tb, k, now);
}

int tb_unblockable_str(tempblock *tb, const char *ip, time_t now)
{
    unsigned char k[16];
    return parse_ip(ip, k) < 0 ? -1 : tb_unblockable(tb, k, now);
}
