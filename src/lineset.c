/* lineset.c - a set of '*' wildcard patterns matched against whole lines,
 * fast with thousands of patterns (Banned Header / Body Lines, seed 002).
 *
 * '*' matches any run of bytes, possibly empty; every other byte is literal;
 * comparison is byte for byte (case-sensitive).  A pattern splits at its
 * stars into pieces: the first must be a prefix of the line, the last a
 * suffix, the middle ones occur in order in between.  Placing each middle
 * piece at its leftmost occurrence is optimal, so a match never backtracks.
 *
 * A line is never compared with every pattern.  Each pattern goes in one
 * index, chosen when the set is built:
 *   - no star: a hash of whole lines (one lookup a line);
 *   - a piece of WINDOW (7) or more bytes: its cheapest 7-byte window
 *     contributes its four 4-byte "grams".  Any occurrence of the window in
 *     a line covers a gram starting at an offset that is a multiple of 4, so
 *     the line is probed at offsets 0, 4, 8, ...: len/4 lookups, whatever the
 *     number of patterns (a bitmap in L1 answers most of them);
 *   - else a non-empty first (last) piece: a lookup of the line's first
 *     (last) bytes, once per distinct piece length;
 *   - else, when a piece has 3 bytes or more: its rarest 3-byte run, probed
 *     at every offset of the line (a bitmap again answers most probes);
 *   - else ("*a*b*": one- and two-byte pieces only): the full match itself.
 * Every candidate is confirmed by the full match, at most once a line.
 *
 * It replaced a Lua matcher with the same indexes less the 3-byte runs
 * (2026-12: 3-4x faster); lua/moat/banned.lua keeps the file format, the
 * escapes and the error messages.  A set's memory is malloc'd, outside the
 * Lua state's memory_mb ceiling: a few hundred bytes a pattern, plus 16 KB
 * of bitmaps. */
#include "lineset.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GRAM 4
#define STEP 4
#define WINDOW (GRAM + STEP - 1)
#define MAX_WINDOWS 48       /* windows looked at per piece: building stays linear */
#define BITMAP_BITS 16       /* 64 Kbit = 8 KB: fits in L1 */

struct pattern {
    const unsigned char *text;   /* the pattern, stars included */
    size_t len;
    int npieces;                 /* stars + 1; 1 = no star */
    uint32_t piece_at;           /* index of its first piece in set->pieces */
    uint32_t gen;                /* last line that confirmed it */
};

struct piece { uint32_t off, len; };    /* within the pattern's text */

/* A multimap from a 64-bit key to pattern ids: entries sorted by key, and an
 * open-addressing table from key to its run of entries. */
struct entry { uint64_t key; uint32_t id; };
struct slot { uint64_t key; uint32_t start, count; };
struct multimap {
    struct entry *e;
    size_t n, cap;
    struct slot *slots;
    size_t mask;                 /* slots - 1, a power of two minus one */
};

/* Keys looked up at offsets of the line: a multimap behind a bitmap of
 * BITMAP_BITS bits that says "no such key" for most offsets. */
struct probed {
    struct multimap map;
    uint64_t *bits;
    int width;                   /* key bytes: 4 (grams) or 3 */
    size_t step;                 /* offsets probed: every step-th */
};

struct lineset {
    struct pattern *pat;
    size_t npat;
    struct piece *pieces;
    size_t npieces;
    unsigned char *arena;        /* every pattern's bytes */
    struct multimap exact, prefix, suffix;
    struct probed grams, tri;    /* 4-byte keys every 4 bytes; 3-byte keys everywhere */
    uint32_t prefix_lens[64], suffix_lens[64];   /* distinct lengths, ascending */
    int nprefix_lens, nsuffix_lens;
    uint32_t *scan;              /* patterns with short pieces only */
    size_t nscan;
    uint32_t gen;
    size_t confirms;             /* full matches tried, for tests */
};

/* ---- helpers ------------------------------------------------------------ */

/* Whole lines are hashed 8 bytes at a time (a line is often 70+ bytes). */
static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

/* Bit of a 4- or 3-byte key in a probe bitmap: one multiply. */
static uint32_t bit_of(uint32_t k)
{
    return (k * 2654435761u) >> (32 - BITMAP_BITS);
}

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static uint32_t load32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint32_t load24(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

static int mm_add(struct multimap *m, uint64_t key, uint32_t id)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        struct entry *e = realloc(m->e, cap * sizeof *e);
        if (!e)
            return -1;
        m->e = e;
        m->cap = cap;
    }
    m->e[m->n++] = (struct entry){ key, id };
    return 0;
}

static int by_key(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int mm_finish(struct multimap *m)
{
    if (m->n)
        qsort(m->e, m->n, sizeof *m->e, by_key);
    size_t size = 16;
    while (size < m->n * 2)
        size *= 2;
    m->slots = calloc(size, sizeof *m->slots);
    if (!m->slots)
        return -1;
    m->mask = size - 1;
    for (size_t i = 0; i < m->n;) {
        size_t j = i;
        while (j < m->n && m->e[j].key == m->e[i].key)
            j++;
        size_t h = mix(m->e[i].key) & m->mask;
        while (m->slots[h].count)
            h = (h + 1) & m->mask;
        m->slots[h] = (struct slot){ m->e[i].key, (uint32_t)i, (uint32_t)(j - i) };
        i = j;
    }
    return 0;
}

static const struct slot *mm_find(const struct multimap *m, uint64_t key)
{
    if (!m->slots || m->n == 0)
        return NULL;
    for (size_t h = mix(key) & m->mask; m->slots[h].count; h = (h + 1) & m->mask)
        if (m->slots[h].key == key)
            return &m->slots[h];
    return NULL;
}

static void mm_free(struct multimap *m)
{
    free(m->e);
    free(m->slots);
}

/* ---- matching ----------------------------------------------------------- */

static int full_match(const struct lineset *s, const struct pattern *p, const unsigned char *line, size_t len)
{
    if (p->npieces == 1)
        return p->len == len && memcmp(p->text, line, len) == 0;
    const struct piece *pc = &s->pieces[p->piece_at];
    const struct piece *first = &pc[0], *last = &pc[p->npieces - 1];
    if (len < first->len + last->len)
        return 0;
    if (memcmp(line, p->text + first->off, first->len) != 0)
        return 0;
    if (memcmp(line + len - last->len, p->text + last->off, last->len) != 0)
        return 0;
    size_t pos = first->len, limit = len - last->len;
    for (int i = 1; i < p->npieces - 1; i++) {
        if (pc[i].len == 0)
            continue;
        if (limit - pos < pc[i].len)
            return 0;
        const unsigned char *hit = memmem(line + pos, limit - pos, p->text + pc[i].off, pc[i].len);
        if (!hit)
            return 0;
        pos = (size_t)(hit - line) + pc[i].len;
    }
    return 1;
}

/* Confirm the candidates of one slot; each pattern at most once a line. */
static int confirm(struct lineset *s, const struct multimap *m, const struct slot *sl,
                   const unsigned char *line, size_t len)
{
    for (uint32_t k = 0; k < sl->count; k++) {
        struct pattern *p = &s->pat[m->e[sl->start + k].id];
        if (p->gen == s->gen)
            continue;
        p->gen = s->gen;
        s->confirms++;
        if (full_match(s, p, line, len))
            return (int)m->e[sl->start + k].id;
    }
    return -1;
}

static int probe(struct lineset *s, const struct probed *pr, const unsigned char *line, size_t len)
{
    for (size_t p = 0; p + (size_t)pr->width <= len; p += pr->step) {
        uint32_t k = pr->width == 4 ? load32(line + p) : load24(line + p);
        uint32_t b = bit_of(k);
        if (!(pr->bits[b >> 6] >> (b & 63) & 1))
            continue;
        const struct slot *sl = mm_find(&pr->map, k);
        int hit = sl ? confirm(s, &pr->map, sl, line, len) : -1;
        if (hit >= 0)
            return hit;
    }
    return -1;
}

int lineset_match(struct lineset *s, const char *text, size_t len)
{
    const unsigned char *line = (const unsigned char *)text;
    if (s->npat == 0)
        return -1;
    if (++s->gen == 0) {            /* wrapped: forget every stamp */
        for (size_t i = 0; i < s->npat; i++)
            s->pat[i].gen = 0;
        s->gen = 1;
    }
    const struct slot *sl = mm_find(&s->exact, hash_bytes(line, len));
    int hit = sl ? confirm(s, &s->exact, sl, line, len) : -1;
    if (hit < 0 && s->grams.map.n)
        hit = probe(s, &s->grams, line, len);
    if (hit < 0 && s->tri.map.n)   /* only short pieces, one of 3+ bytes */
        hit = probe(s, &s->tri, line, len);
    for (int i = 0; hit < 0 && i < s->nprefix_lens && s->prefix_lens[i] <= len; i++) {
        sl = mm_find(&s->prefix, hash_bytes(line, s->prefix_lens[i]));
        hit = sl ? confirm(s, &s->prefix, sl, line, len) : -1;
    }
    for (int i = 0; hit < 0 && i < s->nsuffix_lens && s->suffix_lens[i] <= len; i++) {
        uint32_t n = s->suffix_lens[i];
        sl = mm_find(&s->suffix, hash_bytes(line + len - n, n));
        hit = sl ? confirm(s, &s->suffix, sl, line, len) : -1;
    }
    for (size_t i = 0; hit < 0 && i < s->nscan; i++) {
        const struct pattern *p = &s->pat[s->scan[i]];
        s->confirms++;
        if (full_match(s, p, line, len))
            hit = (int)s->scan[i];
    }
    return hit;
}

/* ---- building ----------------------------------------------------------- */

/* How common a byte is in mail text (lower is rarer). */
static int commonness(unsigned char c)
{
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
        return 3;
    if (strchr("etaoinshrdlu", c) && c)
        return 2;
    if (strchr("bcfgkmpvwxyzjq", c) && c)
        return 1;
    return 0;
}

/* Gram use counts while building: how many patterns already chose a gram. */
struct counts { uint64_t *keys; uint32_t *n; size_t mask; };

static uint32_t *count_slot(struct counts *c, uint32_t g)
{
    size_t h = mix(g) & c->mask;
    while (c->n[h] && c->keys[h] != g)
        h = (h + 1) & c->mask;
    c->keys[h] = g;
    return &c->n[h];
}

/* The cheapest window of a piece: the sum over its four grams of their
 * commonness and of how often other patterns use them; in header sets a
 * window inside the field name ("Subject:") costs a lot, since every field
 * of that name would hit it.  Returns the window's offset, or -1. */
static long best_window(const unsigned char *t, const struct piece *pc, int npieces, int header,
                        struct counts *uses, int *best_piece)
{
    long best = -1, best_score = 0;
    size_t name_len = 0;
    if (header && pc[0].len) {
        const unsigned char *colon = memchr(t + pc[0].off, ':', pc[0].len);
        if (colon)
            name_len = (size_t)(colon - (t + pc[0].off)) + 2;
    }
    for (int pi = 0; pi < npieces; pi++) {
        size_t n = pc[pi].len;
        if (n < WINDOW)
            continue;
        const unsigned char *p = t + pc[pi].off;
        size_t last = n - WINDOW;
        size_t step = last + 1 > MAX_WINDOWS ? (last + 1) / MAX_WINDOWS : 1;
        for (size_t o = 0; o <= last; o += step) {
            long score = 0;
            for (size_t j = o; j < o + STEP; j++) {
                long c = 0;
                for (size_t q = j; q < j + GRAM; q++)
                    c += commonness(p[q]);
                if (pi == 0 && header)
                    c += j + GRAM <= name_len ? 1000 : 15;
                score += c + 20 * (long)*count_slot(uses, load32(p + j));
            }
            if (best < 0 || score < best_score) {
                best = (long)(pc[pi].off + o);
                best_score = score;
                *best_piece = pi;
            }
        }
    }
    return best;
}

/* The rarest 3-byte run of any piece (offset in the pattern), or -1. */
static long best_tri(const unsigned char *t, const struct piece *pc, int npieces)
{
    long best = -1, best_cost = 0;
    for (int pi = 0; pi < npieces; pi++)
        for (size_t o = 0; o + 3 <= pc[pi].len; o++) {
            const unsigned char *q = t + pc[pi].off + o;
            long c = commonness(q[0]) + commonness(q[1]) + commonness(q[2]);
            if (best < 0 || c < best_cost) {
                best = (long)(pc[pi].off + o);
                best_cost = c;
            }
        }
    return best;
}

static int add_length(uint32_t *lens, int *n, uint32_t len)
{
    for (int i = 0; i < *n; i++)
        if (lens[i] == len)
            return 0;
    if (*n >= 64)
        return -1;                  /* the caller falls back to the scan list */
    int i = (*n)++;
    while (i > 0 && lens[i - 1] > len) {
        lens[i] = lens[i - 1];
        i--;
    }
    lens[i] = len;
    return 0;
}

static int index_pattern(struct lineset *s, uint32_t id, int header, struct counts *uses)
{
    struct pattern *p = &s->pat[id];
    if (p->npieces == 1)
        return mm_add(&s->exact, hash_bytes(p->text, p->len), id);
    const struct piece *pc = &s->pieces[p->piece_at];
    int pi;
    long w = best_window(p->text, pc, p->npieces, header, uses, &pi);
    if (w >= 0) {
        for (int j = 0; j < STEP; j++) {
            uint32_t g = load32(p->text + w + j);
            (*count_slot(uses, g))++;
            if (mm_add(&s->grams.map, g, id) < 0)
                return -1;
        }
        return 0;
    }
    const struct piece *first = &pc[0], *last = &pc[p->npieces - 1];
    if (first->len && first->len >= last->len && add_length(s->prefix_lens, &s->nprefix_lens, first->len) == 0)
        return mm_add(&s->prefix, hash_bytes(p->text + first->off, first->len), id);
    if (last->len && add_length(s->suffix_lens, &s->nsuffix_lens, last->len) == 0)
        return mm_add(&s->suffix, hash_bytes(p->text + last->off, last->len), id);
    long k = best_tri(p->text, pc, p->npieces);
    if (k >= 0)
        return mm_add(&s->tri.map, load24(p->text + k), id);
    s->scan[s->nscan++] = id;
    return 0;
}

static int probed_finish(struct probed *pr)
{
    if (mm_finish(&pr->map) < 0)
        return -1;
    for (size_t i = 0; i < pr->map.n; i++) {
        uint32_t b = bit_of((uint32_t)pr->map.e[i].key);
        pr->bits[b >> 6] |= 1ull << (b & 63);
    }
    return 0;
}

struct lineset *lineset_new(const char *const *pats, const size_t *lens, size_t n, int header)
{
    struct lineset *s = calloc(1, sizeof *s);
    if (s) {
        s->grams.width = GRAM;
        s->grams.step = STEP;
        s->tri.width = 3;
        s->tri.step = 1;
    }
    size_t bytes = 0, npieces = 0;
    for (size_t i = 0; i < n; i++) {
        bytes += lens[i];
        npieces += 1;
        for (size_t k = 0; k < lens[i]; k++)
            npieces += pats[i][k] == '*';
    }
    struct counts uses = { 0 };
    size_t csize = 64;
    while (csize < n * 8)
        csize *= 2;
    uses.mask = csize - 1;
    if (!s || !(s->pat = calloc(n + 1, sizeof *s->pat)) || !(s->pieces = calloc(npieces + 1, sizeof *s->pieces)) ||
        !(s->arena = malloc(bytes + 1)) || !(s->scan = calloc(n + 1, sizeof *s->scan)) ||
        !(s->grams.bits = calloc((1u << BITMAP_BITS) / 64, sizeof *s->grams.bits)) ||
        !(s->tri.bits = calloc((1u << BITMAP_BITS) / 64, sizeof *s->tri.bits)) ||
        !(uses.keys = calloc(csize, sizeof *uses.keys)) || !(uses.n = calloc(csize, sizeof *uses.n)))
        goto fail;
    unsigned char *at = s->arena;
    for (size_t i = 0; i < n; i++) {
        struct pattern *p = &s->pat[i];
        memcpy(at, pats[i], lens[i]);
        p->text = at;
        p->len = lens[i];
        p->piece_at = (uint32_t)s->npieces;
        size_t start = 0;
        for (size_t k = 0; k <= lens[i]; k++)
            if (k == lens[i] || at[k] == '*') {
                s->pieces[s->npieces++] = (struct piece){ (uint32_t)start, (uint32_t)(k - start) };
                start = k + 1;
            }
        p->npieces = (int)(s->npieces - p->piece_at);
        at += lens[i];
        s->npat++;
        if (index_pattern(s, (uint32_t)i, header, &uses) < 0)
            goto fail;
    }
    if (mm_finish(&s->exact) < 0 || mm_finish(&s->prefix) < 0 || mm_finish(&s->suffix) < 0 ||
        probed_finish(&s->grams) < 0 || probed_finish(&s->tri) < 0)
        goto fail;
    free(uses.keys);
    free(uses.n);
    return s;
fail:
    free(uses.keys);
    free(uses.n);
    lineset_free(s);
    return NULL;
}

void lineset_free(struct lineset *s)
{
    if (!s)
        return;
    mm_free(&s->exact);
    mm_free(&s->grams.map);
    mm_free(&s->prefix);
    mm_free(&s->suffix);
    mm_free(&s->tri.map);
    free(s->grams.bits);
    free(s->tri.bits);
    free(s->scan);
    free(s->arena);
    free(s->pieces);
    free(s->pat);
    free(s);
}

void lineset_stats(const struct lineset *s, size_t out[6])
{
    out[0] = s->exact.n;
    out[1] = s->grams.map.n / STEP;
    out[2] = s->prefix.n;
    out[3] = s->suffix.n;
    out[4] = s->nscan + s->tri.map.n;
    out[5] = s->confirms;
}

/* ---- Lua: require "moat.lineset" ---------------------------------------- */

#define LINESET_MT "moat.lineset"

struct lua_lineset { struct lineset *s; };

/* lineset.new(patterns [, "header"]) -> set; patterns is a list of strings
 * ('*' = any run).  set:match(line) -> index of a matching pattern | nil. */
static int l_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int header = lua_isstring(L, 2) && strcmp(lua_tostring(L, 2), "header") == 0;
    lua_Integer n = luaL_len(L, 1);
    if (n < 0 || n > 1000000)
        return luaL_error(L, "lineset.new: too many patterns");
    const char **pats = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *pats, 0);
    size_t *lens = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *lens, 0);
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        pats[i] = luaL_checklstring(L, -1, &lens[i]);
        lua_pop(L, 1);   /* the table keeps the string alive */
    }
    struct lua_lineset *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->s = NULL;
    luaL_setmetatable(L, LINESET_MT);
    u->s = lineset_new(pats, lens, (size_t)n, header);
    if (!u->s)
        return luaL_error(L, "lineset.new: out of memory");
    return 1;
}

static int l_match(lua_State *L)
{
    struct lua_lineset *u = luaL_checkudata(L, 1, LINESET_MT);
    size_t len;
    const char *line = luaL_checklstring(L, 2, &len);
    int hit = u->s ? lineset_match(u->s, line, len) : -1;
    if (hit < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, hit + 1);
    return 1;
}

/* set:stats() -> exact, gram, prefix, suffix, scan (patterns per index),
 * confirms (full matches tried so far). */
static int l_stats(lua_State *L)
{
    struct lua_lineset *u = luaL_checkudata(L, 1, LINESET_MT);
    size_t st[6] = { 0 };
    if (u->s)
        lineset_stats(u->s, st);
    for (int i = 0; i < 6; i++)
        lua_pushinteger(L, (lua_Integer)st[i]);
    return 6;
}

static int l_gc(lua_State *L)
{
    struct lua_lineset *u = luaL_checkudata(L, 1, LINESET_MT);
    lineset_free(u->s);
    u->s = NULL;
    return 0;
}

/* ---- filters: a data_line hook made of two sets ------------------------ */

/* lineset.filter{ header = set, body = set, verdict = v, header_labels = {..},
 * body_labels = {..} }: a data_line hook that gives verdict v (a table made by
 * moat.reject & co.) when a header field matches the header set or a body
 * line the body set, and logs "LABEL" of the pattern (labels[i] for pattern
 * i) through s:log.  Called from Lua like any hook; the core runs a chain of
 * nothing but filters without entering Lua at all (lineset_filter_test). */
#define FILTER_MT "moat.lineset.filter"
#define UV_HEADER 1
#define UV_BODY 2
#define UV_VERDICT 3
#define UV_HLABELS 4
#define UV_BLABELS 5

static struct lineset *set_at(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return NULL;
    return ((struct lua_lineset *)luaL_checkudata(L, idx, LINESET_MT))->s;
}

static int l_filter(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct line_filter *f = lua_newuserdatauv(L, sizeof *f, 5);
    memset(f, 0, sizeof *f);
    static const char *const keys[] = { "header", "body", "verdict", "header_labels", "body_labels" };
    for (int i = 0; i < 5; i++) {
        lua_getfield(L, 1, keys[i]);
        if (i == 0)
            f->header = set_at(L, -1);
        else if (i == 1)
            f->body = set_at(L, -1);
        else
            luaL_argcheck(L, lua_istable(L, -1) || (i > 2 && lua_isnil(L, -1)), 1, keys[i]);
        lua_setiuservalue(L, -2, i + 1);
    }
    lua_getfield(L, 1, "verdict");
    lua_getfield(L, -1, "action");
    lua_getfield(L, -2, "code");
    lua_getfield(L, -3, "text");
    snprintf(f->action, sizeof f->action, "%s", lua_isstring(L, -3) ? lua_tostring(L, -3) : "");
    f->code = (int)lua_tointeger(L, -2);
    snprintf(f->text, sizeof f->text, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_pop(L, 4);
    /* What the core will give without asking Lua again: a refusal with a
     * 4xx/5xx code, or discard (a hook can never accept by accident). */
    int refusal = strcmp(f->action, "reject") == 0 || strcmp(f->action, "tempfail") == 0 ||
                  strcmp(f->action, "drop") == 0;
    if (!(refusal && f->code >= 400 && f->code <= 599) && strcmp(f->action, "discard") != 0)
        return luaL_error(L, "lineset.filter: verdict must be moat.reject, tempfail, drop or discard");
    luaL_setmetatable(L, FILTER_MT);
    return 1;
}

const struct line_filter *lineset_filter_test(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, FILTER_MT);
}

void lineset_filter_label(lua_State *L, int idx, int header, int pattern)
{
    lua_getiuservalue(L, idx, header ? UV_HLABELS : UV_BLABELS);
    if (lua_istable(L, -1))
        lua_rawgeti(L, -1, pattern + 1);
    else
        lua_pushnil(L);
    lua_remove(L, -2);
}

static int l_is_filter(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, FILTER_MT) != NULL);
    return 1;
}

/* filter(s, line, part) -> verdict | nil, as a Lua hook. */
static int l_filter_call(lua_State *L)
{
    const struct line_filter *f = luaL_checkudata(L, 1, FILTER_MT);
    size_t len;
    const char *line = luaL_checklstring(L, 3, &len);
    int header = strcmp(luaL_checkstring(L, 4), "header") == 0;
    struct lineset *set = header ? f->header : f->body;
    int hit = set ? lineset_match(set, line, len) : -1;
    if (hit < 0)
        return 0;
    lineset_filter_label(L, 1, header, hit);
    if (lua_isstring(L, -1)) {
        lua_getfield(L, 2, "log");
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -3);
        lua_call(L, 2, 0);
    }
    lua_getiuservalue(L, 1, UV_VERDICT);
    return 1;
}

int luaopen_moat_lineset(lua_State *L)
{
    if (luaL_newmetatable(L, LINESET_MT)) {
        static const luaL_Reg methods[] = { { "match", l_match }, { "stats", l_stats }, { NULL, NULL } };
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, FILTER_MT)) {
        lua_pushcfunction(L, l_filter_call);
        lua_setfield(L, -2, "__call");
        lua_pushliteral(L, "line filter");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        { "new", l_new }, { "filter", l_filter }, { "is_filter", l_is_filter }, { NULL, NULL },
    };
    luaL_newlib(L, fns);
    return 1;
}
