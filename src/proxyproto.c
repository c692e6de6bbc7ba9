/* proxyproto.c - HAProxy PROXY protocol v1/v2 header parser (see the spec at
 * haproxy.org/download/2.8/doc/proxy-protocol.txt).  Everything here is
 * hostile input: the parser checks every length against len before reading. */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const unsigned char v2sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
static const char v1sig[6] = "PROXY ";

static enum pp_result fail(struct pp_header *h, const char *why)
{
    h->error = why;
    return PP_ERROR;
}

/* A decimal port: 1-5 digits, no sign, at most 65535. */
static int parse_port(const char *s, size_t n, unsigned *port)
{
    if (n == 0 || n > 5)
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = v;
    return 0;
}

static int set_addr(struct sockaddr_storage *ss, int family, const char *text, size_t n, unsigned port)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, text, n);
    buf[n] = '\0';
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        return inet_pton(AF_INET, buf, &a->sin_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((unsigned short)port);
    return inet_pton(AF_INET6, buf, &a->sin6_addr) == 1 ? 0 : -1;
}

/* v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN ...\r\n". */
static enum pp_result parse_v1(const unsigned char *buf, size_t len, struct pp_header *h)
{
    size_t lim = len < PP_V1_MAX ? len : PP_V1_MAX, end = 0;
    int found = 0;
    for (size_t i = 0; i < lim; i++) {
        if (buf[i] == '\r') {
            if (i + 1 >= len)
                return PP_NEED;
            if (buf[i + 1] != '\n' || i + 2 > PP_V1_MAX)
                return fail(h, buf[i + 1] != '\n' ? "v1_bad_line_end" : "v1_too_long");
            end = i;
            found = 1;
            break;
        }
        if (buf[i] < 0x20 || buf[i] > 0x7e)
            return fail(h, "v1_bad_byte");
    }
    if (!found)
        return len >= PP_V1_MAX ? fail(h, "v1_too_long") : PP_NEED;
    h->length = end + 2;
    /* Split on single spaces (the spec allows exactly one). */
    const char *tok[7];
    size_t tlen[7];
    int nt = 0;
    size_t start = 0;
    for (size_t i = 0; i <= end; i++) {
        if (i == end || buf[i] == ' ') {
            if (nt == 7)
                return fail(h, "v1_too_many_fields");
            tok[nt] = (const char *)buf + start;
            tlen[nt++] = i - start;
            start = i + 1;
        }
    }
    if (nt >= 2 && tlen[1] == 7 && memcmp(tok[1], "UNKNOWN", 7) == 0) {
        h->local = 1;   /* the rest of the line is to be ignored */
        return PP_DONE;
    }
    if (nt != 6)
        return fail(h, "v1_field_count");
    int family;
    if (tlen[1] == 4 && memcmp(tok[1], "TCP4", 4) == 0)
        family = AF_INET;
    else if (tlen[1] == 4 && memcmp(tok[1], "TCP6", 4) == 0)
        family = AF_INET6;
    else
        return fail(h, "v1_bad_protocol");
    unsigned sport, dport;
    if (parse_port(tok[4], tlen[4], &sport) != 0 || parse_port(tok[5], tlen[5], &dport) != 0)
        return fail(h, "v1_bad_port");
    if (set_addr(&h->src, family, tok[2], tlen[2], sport) != 0 ||
        set_addr(&h->dst, family, tok[3], tlen[3], dport) != 0)
        return fail(h, "v1_bad_address");
    h->addrlen = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    return PP_DONE;
}

static enum pp_result parse_v2(const unsigned char *buf, size_t len, struct pp_header *h)
{
    if (len < 16)
        return PP_NEED;
    if ((buf[12] >> 4) != 2)
        return fail(h, "v2_bad_version");
    int cmd = buf[12] & 0x0f;
    if (cmd > 1)
        return fail(h, "v2_bad_command");
    size_t body = ((size_t)buf[14] << 8) | buf[15];
    if (16 + body > PP_MAX)
        return fail(h, "v2_too_long");
    if (len < 16 + body)
        return PP_NEED;
    h->length = 16 + body;
    const unsigned char *p = buf + 16;
    if (cmd == 0) {   /* LOCAL: the balancer's own connection (health check) */
        h->local = 1;
        return PP_DONE;
    }
    switch (buf[13]) {
    case 0x00:        /* UNSPEC: the spec says use the real endpoints */
        h->local = 1;
        return PP_DONE;
    case 0x11: {      /* TCP over IPv4 */
        if (body < 12)
            return fail(h, "v2_short_address");
        struct sockaddr_in *s = (struct sockaddr_in *)&h->src, *d = (struct sockaddr_in *)&h->dst;
        memset(&h->src, 0, sizeof h->src);
        memset(&h->dst, 0, sizeof h->dst);
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, p, 4);
        memcpy(&d->sin_addr, p + 4, 4);
        memcpy(&s->sin_port, p + 8, 2);
        memcpy(&d->sin_port, p + 10, 2);
        h->addrlen = sizeof *s;
        return PP_DONE;
    }
    case 0x21: {      /* TCP over IPv6 */
        if (body < 36)
            return fail(h, "v2_short_address");
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h->src, *d = (struct sockaddr_in6 *)&h->dst;
        memset(&h->src, 0, sizeof h->src);
        memset(&h->dst, 0, sizeof h->dst);
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, p, 16);
        memcpy(&d->sin6_addr, p + 16, 16);
        memcpy(&s->sin6_port, p + 32, 2);
        memcpy(&d->sin6_port, p + 34, 2);
        h->addrlen = sizeof *s;
        return PP_DONE;
    }
    default:          /* UDP and UNIX sockets cannot carry SMTP to us */
        return fail(h, "v2_unsupported_family");
    }
}

enum pp_result pp_parse(const unsigned char *buf, size_t len, struct pp_header *h)
{
    memset(h, 0, sizeof *h);
    /* Detect the version from as much of either signature as has arrived. */
    size_t n1 = len < sizeof v1sig ? len : sizeof v1sig;
    if (memcmp(buf, v1sig, n1) == 0)
        return len < sizeof v1sig ? PP_NEED : parse_v1(buf, len, h);
    size_t n2 = len < sizeof v2sig ? len : sizeof v2sig;
    if (memcmp(buf, v2sig, n2) == 0)
        return len < sizeof v2sig ? PP_NEED : parse_v2(buf, len, h);
    return fail(h, "not_proxy_header");
}
