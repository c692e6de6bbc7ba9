/* iplist.c - IP address tables (see iplist.h). */
#include "iplist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* A key as two host-order halves: comparing and masking 64-bit integers is
 * simpler and faster than working on the 16 bytes. */
struct ipkey {
    uint64_t hi, lo;
};

struct interval {
    struct ipkey first, last;   /* inclusive */
};

struct iplist {
    struct interval *v;
    size_t n, cap;
    int finished;               /* sorted and merged since the last parse */
};

/* ---- keys ---- */

static struct ipkey key_from_bytes(const unsigned char b[16])
{
    struct ipkey k = { 0, 0 };
    for (int i = 0; i < 8; i++) {
        k.hi = (k.hi << 8) | b[i];
        k.lo = (k.lo << 8) | b[i + 8];
    }
    return k;
}

static int key_cmp(struct ipkey a, struct ipkey b)
{
    if (a.hi != b.hi)
        return a.hi < b.hi ? -1 : 1;
    if (a.lo != b.lo)
        return a.lo < b.lo ? -1 : 1;
    return 0;
}

/* A mask of n low bits, 0 <= n <= 64, without the undefined shift by 64. */
static uint64_t low_bits(int n)
{
    if (n <= 0)
        return 0;
    if (n >= 64)
        return UINT64_MAX;
    return ((uint64_t)1 << n) - 1;
}

/* The block of a 128-bit prefix length around k. Host bits in the base are
 * ignored on purpose: 10.1.2.3/8 means 10.0.0.0/8, as in CommuniGate. */
static struct interval key_block(struct ipkey k, int prefix)
{
    int host = 128 - prefix;
    struct ipkey mask = { low_bits(host - 64), low_bits(host) };
    struct interval iv;
    iv.first.hi = k.hi & ~mask.hi;
    iv.first.lo = k.lo & ~mask.lo;
    iv.last.hi = k.hi | mask.hi;
    iv.last.lo = k.lo | mask.lo;
    return iv;
}

int ip_key_from_str(const char *ip, unsigned char key[16])
{
    if (!ip)
        return -1;
    if (strchr(ip, ':'))
        return inet_pton(AF_INET6, ip, key) == 1 ? 0 : -1;
    /* IPv4 goes into the last four bytes of ::ffff:0:0/96. */
    memset(key, 0, 10);
    key[10] = 0xff;
    key[11] = 0xff;
    return inet_pton(AF_INET, ip, key + 12) == 1 ? 0 : -1;
}

int ip_key_from_sa(const struct sockaddr *sa, unsigned char key[16])
{
    if (!sa)
        return -1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        memset(key, 0, 10);
        key[10] = 0xff;
        key[11] = 0xff;
        memcpy(key + 12, &sin->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        /* A v4-mapped address is already in key form. */
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        memcpy(key, &sin6->sin6_addr, 16);
        return 0;
    }
    return -1;
}

/* ---- list ---- */

iplist *iplist_new(void)
{
    return calloc(1, sizeof(iplist));
}

void iplist_free(iplist *l)
{
    if (!l)
        return;
    free(l->v);
    free(l);
}

size_t iplist_count(const iplist *l)
{
    return l ? l->n : 0;
}

static int push(iplist *l, struct interval iv)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct interval *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = iv;
    l->finished = 0;
    return 0;
}

/* ---- parsing ---- */

/* Not isspace(): that depends on the locale. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Trims in place and returns the start of the trimmed text. */
static char *trim(char *s)
{
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

static int parse_addr(char *s, struct ipkey *k, int *v6)
{
    unsigned char b[16];
    s = trim(s);
    if (ip_key_from_str(s, b) != 0)
        return -1;
    *k = key_from_bytes(b);
    *v6 = strchr(s, ':') != NULL;
    return 0;
}

/* Returns the prefix length, or -1 unless it is 1-3 plain digits. */
static int parse_prefix(char *s)
{
    s = trim(s);
    size_t n = strlen(s);
    if (n < 1 || n > 3 || strspn(s, "0123456789") != n)
        return -1;
    return atoi(s);
}

static const char *parse_range(char *s, char *dash, struct interval *iv)
{
    int v6a, v6b;
    *dash = '\0';
    if (parse_addr(s, &iv->first, &v6a) != 0 || parse_addr(dash + 1, &iv->last, &v6b) != 0)
        return "bad address entry";
    if (v6a != v6b)
        return "range ends are of different families";
    if (key_cmp(iv->first, iv->last) > 0)
        return "range start is after range end";
    return NULL;
}

static const char *parse_cidr(char *s, char *slash, struct interval *iv)
{
    struct ipkey k;
    int v6;
    *slash = '\0';
    if (parse_addr(s, &k, &v6) != 0)
        return "bad address entry";
    int prefix = parse_prefix(slash + 1);
    if (prefix < 0 || prefix > (v6 ? 128 : 32))
        return "bad prefix length";
    /* An IPv4 prefix counts within the mapped block's last 32 bits. */
    *iv = key_block(k, v6 ? prefix : 96 + prefix);
    return NULL;
}

/* Parses one trimmed, non-empty entry; s is scratch (it gets cut up).
 * Returns NULL, or the problem. */
static const char *parse_entry(char *s, struct interval *iv)
{
    char *dash = strchr(s, '-');
    char *slash = strchr(s, '/');
    if (dash && slash)
        return "bad address entry";
    if (dash)
        return parse_range(s, dash, iv);
    if (slash)
        return parse_cidr(s, slash, iv);
    int v6;
    if (parse_addr(s, &iv->first, &v6) != 0)
        return "bad address entry";
    iv->last = iv->first;
    return NULL;
}

/* The entry as quoted in an error: control bytes would garble a log line. */
static void printable(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p; p++)
        if (*p < ' ' || *p == 0x7f)
            *p = '?';
}

struct where {
    const char *name;
    int line;
    char *err;
    size_t errlen;
};

static int fail(const struct where *w, const char *problem, const char *text)
{
    if (!w->err || w->errlen == 0)
        return -1;
    if (text)
        snprintf(w->err, w->errlen, "%s:%d: %s '%s'", w->name, w->line, problem, text);
    else
        snprintf(w->err, w->errlen, "%s:%d: %s", w->name, w->line, problem);
    return -1;
}

/* Parses one entry that has been cut out of its line. */
static int add_entry(iplist *l, char *tok, const struct where *w)
{
    tok = trim(tok);
    if (*tok == '\0')
        return 0;
    char quoted[IPLIST_LINE_MAX + 1];
    snprintf(quoted, sizeof quoted, "%s", tok);     /* parse_entry cuts tok */
    struct interval iv;
    const char *problem = parse_entry(tok, &iv);
    if (problem) {
        printable(quoted);
        return fail(w, problem, quoted);
    }
    if (push(l, iv) != 0)
        return fail(w, "out of memory", NULL);
    return 0;
}

static int parse_line(iplist *l, const char *s, size_t n, int inline_mode, const struct where *w)
{
    if (n > IPLIST_LINE_MAX)
        return fail(w, "line longer than 1024 bytes", NULL);
    /* The string functions below would stop at a NUL and skip the rest. */
    if (memchr(s, '\0', n))
        return fail(w, "line contains a NUL byte", NULL);
    char buf[IPLIST_LINE_MAX + 1];
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *semi = strchr(buf, ';');
    if (semi)
        *semi = '\0';
    if (!inline_mode)
        return add_entry(l, buf, w);
    char *tok = buf;
    for (char *comma; (comma = strchr(tok, ',')) != NULL; tok = comma + 1) {
        *comma = '\0';
        if (add_entry(l, tok, w) != 0)
            return -1;
    }
    return add_entry(l, tok, w);
}

int iplist_parse(iplist *l, const char *text, size_t len, const char *name,
                 int first_line, int inline_mode, char *err, size_t errlen)
{
    struct where w = { name ? name : "(ip list)", first_line, err, errlen };
    if (!l)
        return fail(&w, "out of memory", NULL);
    size_t before = l->n;
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        if (parse_line(l, text + pos, n, inline_mode, &w) != 0) {
            /* Half a table is worse than none: the caller keeps the old one. */
            l->n = before;
            return -1;
        }
        pos += n + 1;
        w.line++;
    }
    return 0;
}

/* ---- finishing and lookup ---- */

static int interval_cmp(const void *a, const void *b)
{
    const struct interval *x = a, *y = b;
    int c = key_cmp(x->first, y->first);
    return c ? c : key_cmp(x->last, y->last);
}

/* Whether an interval starting at first overlaps or directly follows one
 * ending at last, so that the two make one interval. */
static int touches(struct ipkey last, struct ipkey first)
{
    if (key_cmp(first, last) <= 0)
        return 1;
    if (last.hi == UINT64_MAX && last.lo == UINT64_MAX)
        return 1;
    struct ipkey next = { last.lo == UINT64_MAX ? last.hi + 1 : last.hi, last.lo + 1 };
    return key_cmp(first, next) == 0;
}

void iplist_finish(iplist *l)
{
    if (!l)
        return;
    if (l->n > 1)
        qsort(l->v, l->n, sizeof *l->v, interval_cmp);
    size_t w = 0;
    for (size_t r = 0; r < l->n; r++) {
        if (w > 0 && touches(l->v[w - 1].last, l->v[r].first)) {
            if (key_cmp(l->v[r].last, l->v[w - 1].last) > 0)
                l->v[w - 1].last = l->v[r].last;
        } else {
            l->v[w++] = l->v[r];
        }
    }
    l->n = w;
    l->finished = 1;
}

int iplist_contains_key(const iplist *l, const unsigned char key[16])
{
    if (!l || !l->finished || l->n == 0)
        return 0;
    struct ipkey k = key_from_bytes(key);
    /* Find how many intervals start at or before k; only the last of those
     * can hold k, because merged intervals do not overlap. */
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp(l->v[mid].first, k) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && key_cmp(k, l->v[lo - 1].last) <= 0;
}

int iplist_contains_sa(const iplist *l, const struct sockaddr *sa)
{
    unsigned char key[16];
    if (ip_key_from_sa(sa, key) != 0)
        return 0;
    return iplist_contains_key(l, key);
}

int iplist_contains_str(const iplist *l, const char *ip)
{
    unsigned char key[16];
    if (ip_key_from_str(ip, key) != 0)
        return 0;
    return iplist_contains_key(l, key);
}

/* ---- files ---- */

/* Reads the whole file; the size from fstat is only a hint. */
static char *read_all(int fd, size_t *lenp)
{
    struct stat st;
    size_t cap = 4096;
    if (fstat(fd, &st) == 0 && st.st_size > 0)
        cap = (size_t)st.st_size + 1;
    char *buf = malloc(cap);
    size_t len = 0;
    while (buf) {
        if (len == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            errno = e;
            return NULL;
        }
        len += (size_t)r;
    }
    *lenp = len;
    return buf;
}

int iplist_load_file(iplist *l, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = 0;
    char *text = read_all(fd, &len);
    int e = errno;
    close(fd);
    if (!text) {
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -1;
    }
    int rc = iplist_parse(l, text, len, path, 1, 0, err, errlen);
    free(text);
    iplist_finish(l);
    return rc;
}
