/* fuzz_iplist.c - libFuzzer target for the address-table parser (src/iplist.c).
 *
 * The input is parsed twice, as a table file (one entry a line) and as an
 * inline config string (commas too), each into a fresh list, then finished
 * and looked up.  Checks beyond the sanitizers:
 *   - the error text is a terminated, printable one-line string;
 *   - a failed parse leaves the list as it was (empty here);
 *   - every entry that is a plain address, the base of a CIDR block and both
 *     ends of a range (as inet_pton reads them) is found after a successful
 *     parse; merging never grows the list;
 *   - parsing the same text again and finishing gives the same intervals. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iplist.h"

#define CHECK(c, what)                                                              \
    do {                                                                            \
        if (!(c)) {                                                                 \
            fprintf(stderr, "fuzz_iplist: invariant failed: %s (%s)\n", what, #c); \
            abort();                                                                \
        }                                                                           \
    } while (0)

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static char *trim(char *s)
{
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

static int valid_ip(const char *s)
{
    unsigned char b[16];
    return inet_pton(strchr(s, ':') ? AF_INET6 : AF_INET, s, b) == 1;
}

/* After a successful parse, the addresses each entry names must be in l. */
static void check_entry(const iplist *l, char *tok)
{
    tok = trim(tok);
    if (!*tok)
        return;
    char *dash = strchr(tok, '-'), *slash = strchr(tok, '/');
    if (dash) {
        *dash = '\0';
        char *a = trim(tok), *b = trim(dash + 1);
        CHECK(valid_ip(a) && valid_ip(b), "range ends of an accepted range are addresses");
        CHECK(iplist_contains_str(l, a) && iplist_contains_str(l, b), "both ends of a range are in the list");
    } else if (slash) {
        *slash = '\0';
        char *a = trim(tok);
        CHECK(valid_ip(a), "CIDR base of an accepted block is an address");
        CHECK(iplist_contains_str(l, a), "CIDR base is in the list");
    } else {
        CHECK(valid_ip(tok), "accepted entry is an address");
        CHECK(iplist_contains_str(l, tok), "address entry is in the list");
    }
}

static void check_all(const iplist *l, const char *text, size_t len, int inline_mode)
{
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        char *line = malloc(n + 1);
        memcpy(line, text + pos, n);
        line[n] = '\0';
        char *semi = strchr(line, ';');
        if (semi)
            *semi = '\0';
        if (inline_mode) {
            char *tok = line;
            for (char *comma; (comma = strchr(tok, ',')) != NULL; tok = comma + 1) {
                *comma = '\0';
                check_entry(l, tok);
            }
            check_entry(l, tok);
        } else {
            check_entry(l, line);
        }
        free(line);
        pos += n + 1;
    }
}

static void check_err(const char *err, size_t cap)
{
    size_t n = strnlen(err, cap);
    CHECK(n < cap, "error text is terminated");
    CHECK(n > 0, "error text is set on failure");
    for (size_t i = 0; i < n; i++)
        CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7f, "error text is printable");
}

static const char *const probes[] = {
    "0.0.0.0", "127.0.0.1", "192.0.2.1", "255.255.255.255", "10.0.0.1", "::", "::1",
    "::ffff:192.0.2.1", "2001:db8::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1%eth0",
    "", "not-an-ip", "1.2.3", "[::1]",
};

static void run(const char *text, size_t len, int inline_mode)
{
    char err[256];
    memset(err, 'X', sizeof err);
    iplist *l = iplist_new();
    int rc = iplist_parse(l, text, len, "fuzz", 1, inline_mode, err, sizeof err);
    if (rc != 0) {
        check_err(err, sizeof err);
        CHECK(iplist_count(l) == 0, "failed parse drops its entries");
        iplist_finish(l);
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
            CHECK(!iplist_contains_str(l, probes[i]), "empty list contains nothing");
        iplist_free(l);
        return;
    }
    CHECK(rc == 0, "parse result is 0 or -1");
    size_t raw = iplist_count(l);
    iplist_finish(l);
    size_t merged = iplist_count(l);
    CHECK(merged <= raw, "merging never adds intervals");
    check_all(l, text, len, inline_mode);
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        (void)iplist_contains_str(l, probes[i]);

    /* The same text parsed again into the finished list merges to the same set. */
    CHECK(iplist_parse(l, text, len, "fuzz", 1, inline_mode, err, sizeof err) == 0, "second parse succeeds");
    iplist_finish(l);
    CHECK(iplist_count(l) == merged, "parsing twice gives the same intervals");
    iplist *again = iplist_new();
    CHECK(iplist_parse(again, text, len, "fuzz", 1, inline_mode, err, sizeof err) == 0, "a fresh list parses too");
    iplist_finish(again);
    CHECK(iplist_count(again) == merged, "a fresh list has the same intervals");
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        CHECK(iplist_contains_str(again, probes[i]) == iplist_contains_str(l, probes[i]), "lookup is stable");
    iplist_free(again);
    iplist_free(l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so ASan sees any read past the end. */
    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);
    run(text, size, 0);
    run(text, size, 1);
    free(text);
    return 0;
}
