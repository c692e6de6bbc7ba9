/* test_iplist.c - unit tests for src/iplist.c.
 *
 * Build: cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -Isrc \
 *          tests/unit/test_iplist.c src/iplist.c -o build/test_iplist */
#include "iplist.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int passed, failed;

static void check(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s - ", cond ? "ok" : "not ok");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (cond)
        passed++;
    else
        failed++;
}

/* A finished list from text, or NULL (with the error printed) on failure. */
static iplist *make(const char *text, int inline_mode)
{
    char err[512];
    iplist *l = iplist_new();
    if (iplist_parse(l, text, strlen(text), "t", 1, inline_mode, err, sizeof err) != 0) {
        printf("# unexpected error: %s\n", err);
        iplist_free(l);
        return NULL;
    }
    iplist_finish(l);
    return l;
}

static void expect_in(const iplist *l, const char *ip, int want, const char *what)
{
    check(iplist_contains_str(l, ip) == want, "%s: %s %s", what, ip, want ? "in" : "not in");
}

static void expect_error(const char *text, int inline_mode, const char *want, const char *what)
{
    char err[512] = "";
    iplist *l = iplist_new();
    int rc = iplist_parse(l, text, strlen(text), "f.txt", 10, inline_mode, err, sizeof err);
    int ok = rc == -1 && strstr(err, want) != NULL;
    check(ok, "error %s: want \"%s\"", what, want);
    if (!ok)
        printf("# got rc=%d err=\"%s\"\n", rc, err);
    iplist_free(l);
}

static void test_singles(void)
{
    iplist *l = make("192.0.2.7\n2001:db8::7\n", 0);
    check(l && iplist_count(l) == 2, "singles: two intervals");
    expect_in(l, "192.0.2.7", 1, "single v4");
    expect_in(l, "192.0.2.6", 0, "single v4");
    expect_in(l, "192.0.2.8", 0, "single v4");
    expect_in(l, "2001:db8::7", 1, "single v6");
    expect_in(l, "2001:db8::6", 0, "single v6");
    expect_in(l, "2001:db8::8", 0, "single v6");
    expect_in(l, "garbage", 0, "unparsable lookup");
    expect_in(l, "", 0, "empty lookup");
    check(iplist_contains_str(l, NULL) == 0, "NULL string lookup");
    iplist_free(l);
}

static void test_ranges(void)
{
    iplist *l = make("192.0.2.10-192.0.2.99\n2001:db8::100 - 2001:db8::1:0\n10.0.0.5-10.0.0.5\n", 0);
    check(l && iplist_count(l) == 3, "ranges: three intervals");
    expect_in(l, "192.0.2.10", 1, "range v4 start");
    expect_in(l, "192.0.2.99", 1, "range v4 end");
    expect_in(l, "192.0.2.50", 1, "range v4 middle");
    expect_in(l, "192.0.2.9", 0, "range v4 below");
    expect_in(l, "192.0.2.100", 0, "range v4 above");
    expect_in(l, "2001:db8::100", 1, "range v6 start");
    expect_in(l, "2001:db8::1:0", 1, "range v6 end");
    expect_in(l, "2001:db8::ffff", 1, "range v6 middle");
    expect_in(l, "2001:db8::ff", 0, "range v6 below");
    expect_in(l, "2001:db8::1:1", 0, "range v6 above");
    expect_in(l, "10.0.0.5", 1, "one-address range");
    iplist_free(l);
}

static void test_cidr(void)
{
    iplist *l = make("192.0.2.0/24\n10.1.2.3/8\n172.16.0.1/32\n2001:db8::/32\n2001:db9::1/128\n", 0);
    check(l && iplist_count(l) == 5, "cidr: five intervals");
    expect_in(l, "192.0.2.0", 1, "cidr v4 /24");
    expect_in(l, "192.0.2.255", 1, "cidr v4 /24");
    expect_in(l, "192.0.3.0", 0, "cidr v4 /24");
    expect_in(l, "192.0.1.255", 0, "cidr v4 /24");
    expect_in(l, "10.0.0.0", 1, "cidr non-aligned base 10.1.2.3/8");
    expect_in(l, "10.255.255.255", 1, "cidr non-aligned base 10.1.2.3/8");
    expect_in(l, "11.0.0.0", 0, "cidr non-aligned base 10.1.2.3/8");
    expect_in(l, "9.255.255.255", 0, "cidr non-aligned base 10.1.2.3/8");
    expect_in(l, "172.16.0.1", 1, "cidr v4 /32");
    expect_in(l, "172.16.0.0", 0, "cidr v4 /32");
    expect_in(l, "172.16.0.2", 0, "cidr v4 /32");
    expect_in(l, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1, "cidr v6 /32");
    expect_in(l, "2001:db8::", 1, "cidr v6 /32");
    expect_in(l, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 0, "cidr v6 /32");
    expect_in(l, "2001:db9::1", 1, "cidr v6 /128");
    expect_in(l, "2001:db9::2", 0, "cidr v6 /128");
    expect_in(l, "2001:db9::", 0, "cidr v6 /128");
    iplist_free(l);

    l = make("0.0.0.0/0\n", 0);
    check(l && iplist_count(l) == 1, "cidr v4 /0: one interval");
    expect_in(l, "0.0.0.0", 1, "cidr v4 /0");
    expect_in(l, "255.255.255.255", 1, "cidr v4 /0");
    expect_in(l, "::ffff:1.2.3.4", 1, "cidr v4 /0, v4-mapped");
    expect_in(l, "::1", 0, "cidr v4 /0 holds no native v6");
    iplist_free(l);

    l = make("::/0\n", 0);
    expect_in(l, "::", 1, "cidr v6 /0");
    expect_in(l, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, "cidr v6 /0");
    expect_in(l, "1.2.3.4", 1, "cidr v6 /0 holds v4 too");
    iplist_free(l);

    l = make("2001:db8:1:2:3:4:5:6/64\n", 0);
    expect_in(l, "2001:db8:1:2::", 1, "cidr v6 non-aligned base /64");
    expect_in(l, "2001:db8:1:2:ffff:ffff:ffff:ffff", 1, "cidr v6 non-aligned base /64");
    expect_in(l, "2001:db8:1:3::", 0, "cidr v6 non-aligned base /64");
    iplist_free(l);
}

static void test_mapped(void)
{
    iplist *l = make("192.0.2.0/24\n", 0);
    expect_in(l, "::ffff:192.0.2.77", 1, "v4-mapped text");
    expect_in(l, "::ffff:192.0.3.77", 0, "v4-mapped text");

    struct sockaddr_in6 s6;
    memset(&s6, 0, sizeof s6);
    s6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:192.0.2.1", &s6.sin6_addr);
    check(iplist_contains_sa(l, (struct sockaddr *)&s6) == 1, "v4-mapped sockaddr_in6 matches v4 entry");
    inet_pton(AF_INET6, "::192.0.2.1", &s6.sin6_addr);
    check(iplist_contains_sa(l, (struct sockaddr *)&s6) == 0, "v4-compatible sockaddr_in6 does not match");

    struct sockaddr_in s4;
    memset(&s4, 0, sizeof s4);
    s4.sin_family = AF_INET;
    inet_pton(AF_INET, "192.0.2.200", &s4.sin_addr);
    check(iplist_contains_sa(l, (struct sockaddr *)&s4) == 1, "sockaddr_in in list");
    inet_pton(AF_INET, "192.0.1.200", &s4.sin_addr);
    check(iplist_contains_sa(l, (struct sockaddr *)&s4) == 0, "sockaddr_in not in list");

    struct sockaddr su;
    memset(&su, 0, sizeof su);
    su.sa_family = AF_UNIX;
    check(iplist_contains_sa(l, &su) == 0, "AF_UNIX sockaddr not in list");
    check(iplist_contains_sa(l, NULL) == 0, "NULL sockaddr not in list");
    iplist_free(l);

    l = make("::ffff:10.0.0.0/104\n", 0);
    expect_in(l, "10.20.30.40", 1, "v4-mapped v6 entry matches v4 lookup");
    iplist_free(l);
}

static void test_comments(void)
{
    const char *text =
        "; a comment line\n"
        "   ; indented comment\n"
        "\n"
        "   \t \n"
        "192.0.2.1 ; trailing comment 9.9.9.9\n"
        "\t192.0.2.2\t\r\n"
        "192.0.2.3;no space\n"
        "192.0.2.4";            /* no final newline */
    iplist *l = make(text, 0);
    check(l && iplist_count(l) == 1, "comments: four adjacent addresses merge into one");
    expect_in(l, "192.0.2.1", 1, "trailing comment");
    expect_in(l, "192.0.2.2", 1, "whitespace and CRLF");
    expect_in(l, "192.0.2.3", 1, "comment without space");
    expect_in(l, "192.0.2.4", 1, "last line without newline");
    expect_in(l, "9.9.9.9", 0, "address in a comment is ignored");
    iplist_free(l);
}

static void test_inline(void)
{
    iplist *l = make("10.0.0.0/8, 127.0.0.1,2001:db8::1 ,, \n 192.0.2.5-192.0.2.6 ; c, 9.9.9.9\n,", 1);
    check(l && iplist_count(l) == 4, "inline: four intervals");
    expect_in(l, "10.1.1.1", 1, "inline cidr");
    expect_in(l, "127.0.0.1", 1, "inline single");
    expect_in(l, "2001:db8::1", 1, "inline v6");
    expect_in(l, "192.0.2.6", 1, "inline range on second line");
    expect_in(l, "9.9.9.9", 0, "inline comment");
    iplist_free(l);

    expect_error("10.0.0.1, 10.0.0.2\n", 0, "f.txt:10: bad address entry '10.0.0.1, 10.0.0.2'",
                 "comma outside inline mode");
    expect_error("10.0.0.1,\n10.0.0.2, junk\n", 1, "f.txt:11: bad address entry 'junk'",
                 "inline bad entry on second line");
}

static void test_merge(void)
{
    iplist *l = make("10.0.0.0/24\n10.0.0.128-10.0.1.10\n10.0.1.11\n10.0.1.13\n"
                     "10.0.0.5\n10.0.1.13\n10.0.0.0/16\n", 0);
    check(l && iplist_count(l) == 1, "merge: overlapping and contained entries give one interval");
    iplist_free(l);

    l = make("10.0.0.1\n10.0.0.3\n10.0.0.2\n10.0.0.5\n", 0);
    check(l && iplist_count(l) == 2, "merge: adjacent singles merge, a gap stays");
    expect_in(l, "10.0.0.4", 0, "merge: gap");
    expect_in(l, "10.0.0.3", 1, "merge: adjacent");
    iplist_free(l);

    l = make("::/1\n8000::/1\n", 0);
    check(l && iplist_count(l) == 1, "merge: two halves of v6 space");
    expect_in(l, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, "merge: top address");
    iplist_free(l);

    l = make("::ffff:ffff:ffff:ffff\n::1:0:0:0:0\n", 0);
    check(l && iplist_count(l) == 1, "merge: adjacent across the 64-bit halves");
    iplist_free(l);

    l = make("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\nffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124\n", 0);
    check(l && iplist_count(l) == 1, "merge: at the top of the key space");
    iplist_free(l);

    /* Parsing more after a finish and finishing again. */
    char err[256];
    l = make("10.0.0.1\n", 0);
    iplist_parse(l, "10.0.0.2\n", 9, "t", 1, 0, err, sizeof err);
    iplist_finish(l);
    check(iplist_count(l) == 1, "merge: parse after finish, finish again");
    iplist_free(l);
}

static void test_errors(void)
{
    expect_error("garbage\n", 0, "f.txt:10: bad address entry 'garbage'", "garbage");
    expect_error("10.0.0.1\n1.2.3.4/33\n", 0, "f.txt:11: bad prefix length '1.2.3.4/33'", "v4 /33");
    expect_error("2001:db8::/129", 0, "f.txt:10: bad prefix length '2001:db8::/129'", "v6 /129");
    expect_error("1.2.3.4/", 0, "f.txt:10: bad prefix length", "empty prefix");
    expect_error("1.2.3.4/-1", 0, "f.txt:10: bad address entry", "negative prefix");
    expect_error("1.2.3.4/0x8", 0, "f.txt:10: bad prefix length", "hex prefix");
    expect_error("/8", 0, "f.txt:10: bad address entry '/8'", "prefix without address");
    expect_error("\n\n192.0.2.99-192.0.2.10\n", 0,
                 "f.txt:12: range start is after range end '192.0.2.99-192.0.2.10'", "reversed range");
    expect_error("2001:db8::9-2001:db8::1", 0, "f.txt:10: range start is after range end", "reversed v6 range");
    expect_error("1.2.3.4-2001:db8::1", 0,
                 "f.txt:10: range ends are of different families '1.2.3.4-2001:db8::1'", "mixed-family range");
    expect_error("::ffff:1.2.3.4-1.2.3.9", 0, "f.txt:10: range ends are of different families",
                 "mixed-family range with v4-mapped start");
    expect_error("; c\n256.1.1.1\n", 0, "f.txt:11: bad address entry '256.1.1.1'", "256.1.1.1");
    expect_error("1.2.3\n", 0, "f.txt:10: bad address entry '1.2.3'", "three-part v4");
    expect_error("1.2.3.4-\n", 0, "f.txt:10: bad address entry '1.2.3.4-'", "open range");
    expect_error("1.2.3.4-1.2.3.5-1.2.3.6\n", 0, "f.txt:10: bad address entry", "double range");
    expect_error("1.2.3.4/8-1.2.3.5\n", 0, "f.txt:10: bad address entry", "cidr and range");
    expect_error("1.2.3.4 5.6.7.8\n", 0, "f.txt:10: bad address entry '1.2.3.4 5.6.7.8'", "two addresses on a line");
    expect_error("2001:db8::1%eth0\n", 0, "f.txt:10: bad address entry", "v6 zone id");
    expect_error("1.2.3.4\n2001:db8:::1\n", 0, "f.txt:11: bad address entry '2001:db8:::1'", "bad v6");
    expect_error("1.2.3.4\x01\n", 0, "f.txt:10: bad address entry '1.2.3.4?'", "control byte quoted safely");

    char big[1100];
    memset(big, ' ', sizeof big);
    memcpy(big + 1090, "1.2.3.4", 7);
    big[sizeof big - 1] = '\0';
    expect_error(big, 0, "f.txt:10: line longer than 1024 bytes", "line over 1024 bytes");

    char err[256] = "";
    iplist *l = iplist_new();
    check(iplist_parse(l, "1.2.3.4\0junk\n", 13, "f.txt", 1, 0, err, sizeof err) == -1
          && strstr(err, "f.txt:1:") != NULL, "NUL byte in a line is an error");

    /* A failed parse leaves the list as it was. */
    iplist_parse(l, "10.0.0.1\n", 9, "f.txt", 1, 0, err, sizeof err);
    int rc = iplist_parse(l, "10.0.0.2\n10.0.0.3\nbad\n", 22, "f.txt", 1, 0, err, sizeof err);
    iplist_finish(l);
    check(rc == -1 && iplist_count(l) == 1 && iplist_contains_str(l, "10.0.0.2") == 0,
          "failed parse drops that call's entries");
    iplist_free(l);

    char line[1025];
    memset(line, ' ', sizeof line);
    memcpy(line, "1.2.3.4", 7);
    l = iplist_new();
    check(iplist_parse(l, line, 1024, "f.txt", 1, 0, err, sizeof err) == 0, "line of exactly 1024 bytes is fine");
    iplist_free(l);
}

static void test_empty_and_null(void)
{
    iplist *l = make("", 0);
    check(l && iplist_count(l) == 0, "empty text: no intervals");
    expect_in(l, "1.2.3.4", 0, "empty list");
    expect_in(l, "::", 0, "empty list");
    iplist_free(l);

    l = make("; only comments\n\n", 0);
    check(l && iplist_count(l) == 0, "comments only: no intervals");
    iplist_free(l);

    expect_in(NULL, "1.2.3.4", 0, "NULL list");
    struct sockaddr_in s4;
    memset(&s4, 0, sizeof s4);
    s4.sin_family = AF_INET;
    check(iplist_contains_sa(NULL, (struct sockaddr *)&s4) == 0, "NULL list, sockaddr");
    check(iplist_count(NULL) == 0, "NULL list count");
    iplist_free(NULL);
    check(1, "iplist_free(NULL)");

    l = iplist_new();
    iplist_parse(l, "1.2.3.4", 7, "t", 1, 0, NULL, 0);
    expect_in(l, "1.2.3.4", 0, "unfinished list finds nothing");
    iplist_free(l);
}

static void test_key_from_str(void)
{
    unsigned char k[16];
    static const unsigned char want[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1 };
    check(ip_key_from_str("192.0.2.1", k) == 0 && memcmp(k, want, 16) == 0, "ip_key_from_str v4 is v4-mapped");
    check(ip_key_from_str("::ffff:192.0.2.1", k) == 0 && memcmp(k, want, 16) == 0, "ip_key_from_str v4-mapped text");
    check(ip_key_from_str(" 192.0.2.1", k) == -1, "ip_key_from_str rejects whitespace");
    check(ip_key_from_str("all", k) == -1, "ip_key_from_str rejects a name");
}

static void test_file(void)
{
    char path[] = "/tmp/test_iplist_XXXXXX";
    int fd = mkstemp(path);
    const char *text = "; table\n192.0.2.0/24\n\nbogus entry\n";
    check(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text), "temp file written");
    close(fd);
    char err[512] = "", want[600];
    iplist *l = iplist_new();
    snprintf(want, sizeof want, "%s:4: bad address entry 'bogus entry'", path);
    check(iplist_load_file(l, path, err, sizeof err) == -1 && strcmp(err, want) == 0,
          "load_file error names file and line exactly");
    iplist_free(l);

    fd = open(path, O_WRONLY | O_TRUNC);
    text = "192.0.2.0/24\n2001:db8::/32\n";
    check(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text), "temp file rewritten");
    close(fd);
    l = iplist_new();
    check(iplist_load_file(l, path, err, sizeof err) == 0 && iplist_count(l) == 2, "load_file ok");
    expect_in(l, "192.0.2.9", 1, "load_file finishes the list");
    iplist_free(l);
    unlink(path);

    l = iplist_new();
    check(iplist_load_file(l, "/nonexistent/table", err, sizeof err) == -1
          && strstr(err, "/nonexistent/table: ") == err, "load_file missing file");
    iplist_free(l);
}

/* 100,000 two-address ranges with one-address gaps, written in a scrambled
 * order, so sorting matters and every boundary can be checked. */
static void test_large(void)
{
    enum { N = 100000 };
    const unsigned base = 0x0b000000;           /* 11.0.0.0 */
    char *text = malloc((size_t)N * 64);
    size_t len = 0;
    for (unsigned i = 0; i < N; i++) {
        unsigned j = (i * 7919u) % N;           /* 7919 is prime, so a permutation */
        unsigned a = base + j * 3;
        if (j % 2)
            len += (size_t)sprintf(text + len, "%u.%u.%u.%u-%u.%u.%u.%u\n", a >> 24, (a >> 16) & 255,
                                   (a >> 8) & 255, a & 255, (a + 1) >> 24, ((a + 1) >> 16) & 255,
                                   ((a + 1) >> 8) & 255, (a + 1) & 255);
        else
            len += (size_t)sprintf(text + len, "2001:db8::%x:%x-2001:db8::%x:%x\n%u.%u.%u.%u/31\n",
                                   (2 * j) >> 16, (2 * j) & 0xffff, (2 * j + 2) >> 16, (2 * j + 2) & 0xffff,
                                   a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
    }
    char err[256];
    iplist *l = iplist_new();
    check(iplist_parse(l, text, len, "big", 1, 0, err, sizeof err) == 0, "large: 150,000 lines parse");
    iplist_finish(l);
    check(iplist_count(l) == N + N / 2, "large: interval count %zu", iplist_count(l));

    int bad = 0;
    char ip[64];
    for (unsigned j = 0; j < N; j++) {
        unsigned a = base + j * 3;
        for (int d = -1; d <= 2; d++) {
            unsigned x = a + (unsigned)d;
            int want = d == 0 || d == 1;
            if (d == -1 && j == 0)
                continue;
            sprintf(ip, "%u.%u.%u.%u", x >> 24, (x >> 16) & 255, (x >> 8) & 255, x & 255);
            bad += iplist_contains_str(l, ip) != want;
        }
    }
    check(bad == 0, "large: every v4 boundary right (%d wrong)", bad);
    expect_in(l, "10.255.255.255", 0, "large: below all");
    expect_in(l, "11.4.147.224", 0, "large: above all");
    expect_in(l, "2001:db8::0:0", 1, "large: v6 first");
    expect_in(l, "2001:db8::0:2", 1, "large: v6 range end");
    expect_in(l, "2001:db8::0:3", 0, "large: v6 gap");
    expect_in(l, "2001:db8::0:4", 1, "large: v6 next range");
    expect_in(l, "2001:db8::3:d3e", 1, "large: v6 last range end");
    expect_in(l, "2001:db8::3:d3f", 0, "large: v6 above all");
    iplist_free(l);
    free(text);
}

int main(void)
{
    test_singles();
    test_ranges();
    test_cidr();
    test_mapped();
    test_comments();
    test_inline();
    test_merge();
    test_errors();
    test_empty_and_null();
    test_key_from_str();
    test_file();
    test_large();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
