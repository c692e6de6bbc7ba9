/* address.c - RFC 5321 path parsing (see address.h). */
#include "address.h"

#include <string.h>
#include <strings.h>
#include <strings.h>

static int is_atext(unsigned char c)
{
    if (c >= 0x80)
        return 1;    /* UTF-8 (RFC 6531); validated separately */
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL;
}

static int is_domain_char(unsigned char c)
{
    return c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.';
}

int utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p++;
        int n;
        unsigned min;
        if (c < 0x80)
            continue;
        else if ((c & 0xe0) == 0xc0) { n = 1; min = 0x80; c &= 0x1f; }
        else if ((c & 0xf0) == 0xe0) { n = 2; min = 0x800; c &= 0x0f; }
        else if ((c & 0xf8) == 0xf0) { n = 3; min = 0x10000; c &= 0x07; }
        else return 0;
        if (end - p < n)
            return 0;
        for (int i = 0; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (p[i] & 0x3f);
        }
        p += n;
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
    }
    return 1;
}

/* Source route: "@h1,@h2:" - skip it, remember that it was there. */
static const char *skip_route(const char *p, const char *end, struct smtp_path *out)
{
    if (p >= end || *p != '@')
        return p;
    const char *colon = memchr(p, ':', (size_t)(end - p));
    if (!colon)
        return NULL;
    for (const char *q = p; q < colon; q++)
        if (!is_domain_char((unsigned char)*q) && *q != '@' && *q != ',' && *q != '[' && *q != ']')
            return NULL;
    out->routed = 1;
    return colon + 1;
}

static const char *scan_local(const char *p, const char *end)
{
    if (p < end && *p == '"') {
        for (p++; p < end; p++) {
            if (*p == '\\') {
                /* quoted-pairSMTP: a backslash and one of %d32-126 (RFC 5321 4.1.2) */
                if (++p >= end || (unsigned char)*p < ' ' || (unsigned char)*p > '~')
                    return NULL;
            } else if (*p == '"') {
                return p + 1;
            } else if ((unsigned char)*p < ' ' || *p == 0x7f) {
                return NULL;
            }
        }
        return NULL;
    }
    const char *start = p;
    while (p < end && is_atext((unsigned char)*p))
        p++;
    return p > start ? p : NULL;
}

static int scan_domain(const char *p, const char *end, struct smtp_path *out)
{
    if (p >= end)
        return -1;
    if (*p == '[') {
        if (end[-1] != ']' || end - p < 3)
            return -1;
        for (const char *q = p + 1; q < end - 1; q++)
            if ((unsigned char)*q <= ' ' || *q == '[' || *q == ']' || *q == '\\' || (unsigned char)*q >= 0x7f)
                return -1;
        out->literal = 1;
        return 0;
    }
    if (*p == '.' || *p == '-')
        return -1;
    for (const char *q = p; q < end; q++) {
        if (!is_domain_char((unsigned char)*q))
            return -1;
        if (*q == '.' && q + 1 < end && q[1] == '.')
            return -1;
    }
    return 0;
}

static int has_8bit(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 1;
    return 0;
}

/* The mailbox after any route: local-part "@" domain, or "postmaster". */
static enum path_error parse_mailbox(const char *p, const char *end, struct smtp_path *out)
{
    const char *lend = scan_local(p, end);
    if (!lend)
        return PATH_SYNTAX;
    if ((size_t)(lend - p) > LOCAL_MAX_LEN)
        return PATH_TOO_LONG;
    memcpy(out->local, p, (size_t)(lend - p));
    out->local[lend - p] = '\0';
    if (lend == end)
        return strcasecmp(out->local, "postmaster") == 0 && !out->routed ? PATH_OK : PATH_SYNTAX;
    if (*lend != '@')
        return PATH_SYNTAX;
    const char *d = lend + 1;
    if ((size_t)(end - d) > DOMAIN_MAX_LEN)
        return PATH_TOO_LONG;
    if (scan_domain(d, end, out) != 0)
        return PATH_SYNTAX;
    memcpy(out->domain, d, (size_t)(end - d));
    out->domain[end - d] = '\0';
    return PATH_OK;
}

enum path_error parse_path(const char *s, struct smtp_path *out, const char **rest)
{
    memset(out, 0, sizeof *out);
    while (*s == ' ')
        s++;
    if (*s != '<')
        return PATH_SYNTAX;
    const char *start = s + 1, *end = start;
    int quoted = 0;
    /* Find the closing '>' outside a quoted local part. */
    for (; *end && (quoted || *end != '>'); end++) {
        if (*end == '\\' && quoted && end[1])
            end++;
        else if (*end == '"')
            quoted = !quoted;
    }
    if (*end != '>')
        return PATH_SYNTAX;
    if ((size_t)(end - start) > PATH_MAX_LEN)
        return PATH_TOO_LONG;
    memcpy(out->raw, start, (size_t)(end - start));
    out->raw[end - start] = '\0';
    *rest = end + 1;
    if (end == start) {
        out->null = 1;
        return PATH_OK;
    }
    const char *p = skip_route(start, end, out);
    if (!p)
        return PATH_SYNTAX;
    enum path_error e = parse_mailbox(p, end, out);
    if (e != PATH_OK)
        return e;
    out->has_8bit = has_8bit(out->raw);
    if (out->has_8bit && !utf8_valid(out->raw, strlen(out->raw)))
        return PATH_BAD_UTF8;
    return PATH_OK;
}
