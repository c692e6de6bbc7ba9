/* envelope.c - ID.env writer and a strict, bounded JSON reader for it. */
#include "envelope.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_DEPTH_MAX 8
#define RCPTS_MAX 100000

const char *rcpt_status_name(enum rcpt_status s)
{
    return s == RS_SENT ? "sent" : s == RS_BOUNCED ? "bounced" : "pending";
}

/* ---- writing ----------------------------------------------------------- */

static void put_str(struct evbuffer *b, const char *s)
{
    if (!s) {
        evbuffer_add(b, "null", 4);
        return;
    }
    evbuffer_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add_printf(b, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            evbuffer_add_printf(b, "\\u%04x", *p);
        else
            evbuffer_add(b, p, 1);
    }
    evbuffer_add(b, "\"", 1);
}

void envelope_write(const struct envelope *e, struct evbuffer *b)
{
    evbuffer_add_printf(b, "{\"id\":");
    put_str(b, e->id);
    evbuffer_add_printf(b, ",\"from\":");
    put_str(b, e->from ? e->from : "");
    evbuffer_add_printf(b, ",\"rcpts\":[");
    for (int i = 0; i < e->nrcpts; i++) {
        const struct env_rcpt *r = &e->rcpts[i];
        evbuffer_add_printf(b, "%s{\"addr\":", i ? "," : "");
        put_str(b, r->addr);
        evbuffer_add_printf(b, ",\"route\":{\"kind\":");
        put_str(b, r->kind);
        evbuffer_add_printf(b, ",\"address\":");
        put_str(b, r->route_address);
        evbuffer_add_printf(b, ",\"host\":");
        put_str(b, r->host && *r->host ? r->host : NULL);
        evbuffer_add_printf(b, ",\"can_relay\":%s},\"status\":\"%s\",\"attempts\":%d,\"next_try\":%lld,\"reply\":",
                            r->can_relay ? "true" : "false", rcpt_status_name(r->status), r->attempts,
                            (long long)r->next_try);
        put_str(b, r->reply);
        evbuffer_add(b, "}", 1);
    }
    evbuffer_add_printf(b, "],\"ip\":");
    put_str(b, e->ip);
    evbuffer_add_printf(b, ",\"helo\":");
    put_str(b, e->helo);
    evbuffer_add_printf(b, ",\"user\":");
    put_str(b, e->user);
    evbuffer_add_printf(b, ",\"received\":");
    put_str(b, e->received);
    evbuffer_add_printf(b, ",\"received_at\":%lld,\"size\":%ld}\n", (long long)e->received_at, e->size);
}

/* ---- reading: a small recursive-descent parser over our own format ------ */

struct jp {
    const char *p, *end;
    char *err;
    size_t errlen;
    int depth;
};

static void skip_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int fail(struct jp *j, const char *what)
{
    snprintf(j->err, j->errlen, "%s at offset %ld", what, (long)(j->end - j->p));
    return -1;
}

static int expect(struct jp *j, char c)
{
    skip_ws(j);
    if (j->p >= j->end || *j->p != c)
        return fail(j, "unexpected character");
    j->p++;
    return 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A string (or null -> *out = NULL).  \uXXXX beyond Latin-1 is written as UTF-8. */
static int parse_string(struct jp *j, char **out)
{
    skip_ws(j);
    *out = NULL;
    if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) {
        j->p += 4;
        return 0;
    }
    if (j->p >= j->end || *j->p != '"')
        return fail(j, "expected a string");
    j->p++;
    size_t cap = 32, n = 0;
    char *s = malloc(cap);
    while (j->p < j->end && *j->p != '"') {
        if (n + 4 >= cap)
            s = realloc(s, cap *= 2);
        char c = *j->p++;
        if (c != '\\') {
            s[n++] = c;
            continue;
        }
        if (j->p >= j->end)
            break;
        c = *j->p++;
        if (c == 'u') {
            int v = 0;
            for (int k = 0; k < 4; k++) {
                int h = j->p < j->end ? hexval(*j->p++) : -1;
                if (h < 0) {
                    free(s);
                    return fail(j, "bad \\u escape");
                }
                v = v * 16 + h;
            }
            if (v < 0x80) {
                s[n++] = (char)v;
            } else if (v < 0x800) {
                s[n++] = (char)(0xc0 | (v >> 6));
                s[n++] = (char)(0x80 | (v & 0x3f));
            } else {
                s[n++] = (char)(0xe0 | (v >> 12));
                s[n++] = (char)(0x80 | ((v >> 6) & 0x3f));
                s[n++] = (char)(0x80 | (v & 0x3f));
            }
        } else {
            s[n++] = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
        }
    }
    if (j->p >= j->end) {
        free(s);
        return fail(j, "unterminated string");
    }
    j->p++;
    s[n] = '\0';
    *out = s;
    return 0;
}

static int parse_number(struct jp *j, long long *out)
{
    skip_ws(j);
    char *endp;
    char buf[32];
    size_t n = 0;
    while (j->p + n < j->end && n < sizeof buf - 1 && strchr("-0123456789", j->p[n]))
        n++;
    memcpy(buf, j->p, n);
    buf[n] = '\0';
    *out = strtoll(buf, &endp, 10);
    if (n == 0 || *endp)
        return fail(j, "expected a number");
    j->p += n;
    return 0;
}

static int parse_bool(struct jp *j, int *out)
{
    skip_ws(j);
    if (j->end - j->p >= 4 && memcmp(j->p, "true", 4) == 0) {
        j->p += 4;
        *out = 1;
        return 0;
    }
    if (j->end - j->p >= 5 && memcmp(j->p, "false", 5) == 0) {
        j->p += 5;
        *out = 0;
        return 0;
    }
    return fail(j, "expected true or false");
}

/* Skip any value (for keys we do not know: forward compatibility). */
static int skip_value(struct jp *j)
{
    skip_ws(j);
    if (j->p >= j->end)
        return fail(j, "unexpected end");
    if (++j->depth > JSON_DEPTH_MAX)
        return fail(j, "nested too deeply");
    int rc = 0;
    char c = *j->p;
    if (c == '"' || c == 'n') {
        char *s;
        rc = parse_string(j, &s);
        free(s);
    } else if (c == 't' || c == 'f') {
        int b;
        rc = parse_bool(j, &b);
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        skip_ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
        } else {
            for (;;) {
                if (c == '{') {
                    char *k;
                    if (parse_string(j, &k) != 0 || expect(j, ':') != 0) {
                        free(k);
                        return -1;
                    }
                    free(k);
                }
                if (skip_value(j) != 0)
                    return -1;
                skip_ws(j);
                if (j->p < j->end && *j->p == ',') {
                    j->p++;
                    continue;
                }
                rc = expect(j, close);
                break;
            }
        }
    } else {
        long long n;
        rc = parse_number(j, &n);
    }
    j->depth--;
    return rc;
}

/* Iterate an object's members: fn(j, key, ctx) parses each value. */
static int parse_object(struct jp *j, int (*fn)(struct jp *, const char *, void *), void *ctx)
{
    if (expect(j, '{') != 0)
        return -1;
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }
    for (;;) {
        char *key;
        if (parse_string(j, &key) != 0 || !key || expect(j, ':') != 0) {
            free(key);
            return fail(j, "bad object member");
        }
        int rc = fn(j, key, ctx);
        free(key);
        if (rc != 0)
            return -1;
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        return expect(j, '}');
    }
}

/* A key given twice keeps the last value, without leaking the first. */
static int set_string(struct jp *j, char **field)
{
    char *v;
    if (parse_string(j, &v) != 0)
        return -1;
    free(*field);
    *field = v;
    return 0;
}

static int route_member(struct jp *j, const char *k, void *ctx)
{
    struct env_rcpt *r = ctx;
    if (strcmp(k, "kind") == 0) {
        char *s;
        if (parse_string(j, &s) != 0)
            return -1;
        snprintf(r->kind, sizeof r->kind, "%s", s ? s : "");
        free(s);
        return 0;
    }
    if (strcmp(k, "address") == 0)
        return set_string(j, &r->route_address);
    if (strcmp(k, "host") == 0)
        return set_string(j, &r->host);
    if (strcmp(k, "can_relay") == 0)
        return parse_bool(j, &r->can_relay);
    return skip_value(j);
}

static int rcpt_member(struct jp *j, const char *k, void *ctx)
{
    struct env_rcpt *r = ctx;
    long long n;
    if (strcmp(k, "addr") == 0)
        return set_string(j, &r->addr);
    if (strcmp(k, "route") == 0)
        return parse_object(j, route_member, r);
    if (strcmp(k, "reply") == 0)
        return set_string(j, &r->reply);
    if (strcmp(k, "status") == 0) {
        char *s;
        if (parse_string(j, &s) != 0)
            return -1;
        r->status = s && strcmp(s, "sent") == 0 ? RS_SENT : s && strcmp(s, "bounced") == 0 ? RS_BOUNCED : RS_PENDING;
        free(s);
        return 0;
    }
    if (strcmp(k, "attempts") == 0 || strcmp(k, "next_try") == 0) {
        if (parse_number(j, &n) != 0)
            return -1;
        if (k[0] == 'a')
            r->attempts = (int)n;
        else
            r->next_try = (time_t)n;
        return 0;
    }
    return skip_value(j);
}

static int parse_rcpts(struct jp *j, struct envelope *e)
{
    if (expect(j, '[') != 0)
        return -1;
    skip_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return 0;
    }
    for (;;) {
        if (e->nrcpts >= RCPTS_MAX)
            return fail(j, "too many recipients");
        e->rcpts = realloc(e->rcpts, (size_t)(e->nrcpts + 1) * sizeof *e->rcpts);
        struct env_rcpt *r = &e->rcpts[e->nrcpts++];
        memset(r, 0, sizeof *r);
        if (parse_object(j, rcpt_member, r) != 0)
            return -1;
        if (!r->addr)
            return fail(j, "recipient without addr");
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        return expect(j, ']');
    }
}

static int env_member(struct jp *j, const char *k, void *ctx)
{
    struct envelope *e = ctx;
    long long n;
    char *s;
    if (strcmp(k, "id") == 0) {
        if (parse_string(j, &s) != 0)
            return -1;
        snprintf(e->id, sizeof e->id, "%s", s ? s : "");
        free(s);
        return 0;
    }
    if (strcmp(k, "from") == 0) return set_string(j, &e->from);
    if (strcmp(k, "rcpts") == 0) {
        struct envelope old = { .rcpts = e->rcpts, .nrcpts = e->nrcpts };
        e->rcpts = NULL;
        e->nrcpts = 0;
        envelope_clear(&old);    /* "rcpts" twice: the last list counts */
        return parse_rcpts(j, e);
    }
    if (strcmp(k, "ip") == 0) return set_string(j, &e->ip);
    if (strcmp(k, "helo") == 0) return set_string(j, &e->helo);
    if (strcmp(k, "user") == 0) return set_string(j, &e->user);
    if (strcmp(k, "received") == 0) return set_string(j, &e->received);
    if (strcmp(k, "received_at") == 0 || strcmp(k, "size") == 0) {
        if (parse_number(j, &n) != 0)
            return -1;
        if (k[0] == 'r')
            e->received_at = (time_t)n;
        else
            e->size = (long)n;
        return 0;
    }
    return skip_value(j);
}

int envelope_parse(const char *text, size_t len, struct envelope *e, char *err, size_t errlen)
{
    memset(e, 0, sizeof *e);
    struct jp j = { text, text + len, err, errlen, 0 };
    if (parse_object(&j, env_member, e) != 0) {
        envelope_clear(e);
        return -1;
    }
    if (!e->from)
        e->from = strdup("");
    return 0;
}

void envelope_clear(struct envelope *e)
{
    for (int i = 0; i < e->nrcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].route_address);
        free(e->rcpts[i].host);
        free(e->rcpts[i].reply);
    }
    free(e->rcpts);
    free(e->from);
    free(e->ip);
    free(e->helo);
    free(e->user);
    free(e->received);
    memset(e, 0, sizeof *e);
}
