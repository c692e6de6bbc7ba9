/* fuzz_path.c - libFuzzer target for the RFC 5321 path parser (src/address.c).
 *
 * parse_path() runs on a NUL-terminated copy of the input, exactly as the
 * SMTP layer calls it on the text after "MAIL FROM:" / "RCPT TO:".  Besides
 * the sanitizers, it checks what the rest of moat relies on:
 *   - on PATH_OK, raw/local/domain are within their RFC limits and hold no
 *     control bytes (raw goes into the envelope, logs and the Received:
 *     header: a CR or LF there would be header injection);
 *   - *rest points inside the input, right after the closing '>';
 *   - has_8bit addresses are valid UTF-8;
 *   - utf8_valid() agrees with an independent reference decoder. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "address.h"

#define CHECK(c, what)                                                            \
    do {                                                                          \
        if (!(c)) {                                                               \
            fprintf(stderr, "fuzz_path: invariant failed: %s (%s)\n", what, #c); \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* Reference UTF-8 validator (RFC 3629 table 4), written independently. */
static int ref_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        unsigned char lo = 0x80, hi = 0xbf;
        int need;
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c == 0xe0) { need = 2; lo = 0xa0; }
        else if (c >= 0xe1 && c <= 0xec) need = 2;
        else if (c == 0xed) { need = 2; hi = 0x9f; }
        else if (c >= 0xee && c <= 0xef) need = 2;
        else if (c == 0xf0) { need = 3; lo = 0x90; }
        else if (c >= 0xf1 && c <= 0xf3) need = 3;
        else if (c == 0xf4) { need = 3; hi = 0x8f; }
        else return 0;
        if (n - i - 1 < (size_t)need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
        i += (size_t)need + 1;
    }
    return 1;
}

/* FUZZ_KNOWN=path-del tolerates DEL (0x7f), to keep fuzzing past the known
 * finding fuzz/regress/fuzz_path/quoted-pair-del until it is fixed. */
static int allow_del;

static int has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (*s == 0x7f && !allow_del))
            return 1;
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *e = getenv("FUZZ_KNOWN");
    allow_del = e && strstr(e, "path-del") != NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* utf8_valid on the raw bytes (NULs included), against the reference. */
    CHECK(utf8_valid((const char *)data, size) == ref_utf8_valid(data, size), "utf8_valid agrees with reference");

    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    size_t slen = strlen(s);

    struct smtp_path p;
    const char *rest = NULL;
    enum path_error e = parse_path(s, &p, &rest);
    CHECK(e == PATH_OK || e == PATH_SYNTAX || e == PATH_TOO_LONG || e == PATH_BAD_UTF8, "known result");
    if (e == PATH_OK) {
        size_t rl = strlen(p.raw), ll = strlen(p.local), dl = strlen(p.domain);
        CHECK(rest != NULL && rest > s && rest <= s + slen, "rest inside the input");
        CHECK(rest[-1] == '>', "rest follows the closing >");
        CHECK(rl <= PATH_MAX_LEN, "raw within 256");
        CHECK(ll <= LOCAL_MAX_LEN, "local part within 64");
        CHECK(dl <= DOMAIN_MAX_LEN, "domain within 255");
        CHECK(!has_ctl(p.raw), "no control bytes in raw");
        CHECK(!has_ctl(p.local) && !has_ctl(p.domain), "no control bytes in local/domain");
        CHECK(p.null == (rl == 0), "null iff <>");
        if (p.null)
            CHECK(ll == 0 && dl == 0, "null path has no parts");
        else
            CHECK(ll > 0, "a mailbox has a local part");
        if (p.has_8bit)
            CHECK(utf8_valid(p.raw, rl), "8-bit address is valid UTF-8");
        if (p.literal)
            CHECK(dl >= 3 && p.domain[0] == '[' && p.domain[dl - 1] == ']', "literal is bracketed");
        /* The parts come out of raw. */
        CHECK(strstr(p.raw, p.local) != NULL, "local part is in raw");
        CHECK(dl == 0 || strstr(p.raw, p.domain) != NULL, "domain is in raw");
        /* Parsing the path again from raw gives the same answer. */
        char again[PATH_MAX_LEN + 3];
        snprintf(again, sizeof again, "<%s>", p.raw);
        struct smtp_path q;
        const char *rest2;
        CHECK(parse_path(again, &q, &rest2) == PATH_OK, "re-parse of raw succeeds");
        CHECK(strcmp(q.raw, p.raw) == 0 && strcmp(q.local, p.local) == 0 && strcmp(q.domain, p.domain) == 0 &&
                  q.routed == p.routed && q.literal == p.literal && q.has_8bit == p.has_8bit,
              "re-parse is identical");
    }
    free(s);
    return 0;
}
