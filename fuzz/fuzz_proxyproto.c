/* fuzz_proxyproto.c - libFuzzer target for the PROXY header parser
 * (src/proxyproto.c): the input is the first bytes a balancer sends.
 * Checks beyond the sanitizers:
 *   - the result is PP_NEED, PP_DONE or PP_ERROR; an error has a printable
 *     reason; NEED only while fewer than PP_MAX bytes have arrived;
 *   - a DONE header lies within the input and PP_MAX (v1 within 107 bytes)
 *     and is an AF_INET/AF_INET6 source unless LOCAL;
 *   - the header alone parses to the same result (what follows it, which
 *     the listener leaves in the socket, never changes it);
 *   - every shorter prefix of a NEED input is NEED too (fed byte by byte the
 *     parser never decides early and then changes its mind). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"

#define CHECK(c, what)                                                                 \
    do {                                                                               \
        if (!(c)) {                                                                    \
            fprintf(stderr, "fuzz_proxyproto: invariant failed: %s (%s)\n", what, #c); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so ASan sees any read past the end. */
    unsigned char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    struct pp_header h;
    enum pp_result r = pp_parse(buf, size, &h);
    CHECK(r == PP_NEED || r == PP_DONE || r == PP_ERROR, "known result");
    if (r == PP_ERROR) {
        CHECK(h.error && *h.error, "an error says why");
        for (const char *p = h.error; *p; p++)
            CHECK(*p > 0x20 && *p < 0x7f, "the reason is one printable word (it goes into the log)");
    } else if (r == PP_NEED) {
        CHECK(size < PP_MAX, "never waits for more than PP_MAX bytes");
        if (size > 0)
            CHECK(pp_parse(buf, size - 1, &h) == PP_NEED, "a prefix of an incomplete header is incomplete");
    } else {
        CHECK(h.length > 0 && h.length <= size && h.length <= PP_MAX, "the header is within the input");
        if (buf[0] == 'P')
            CHECK(h.length <= PP_V1_MAX, "v1 header within 107 bytes");
        if (!h.local)
            CHECK((h.src.ss_family == 2 /* AF_INET */ || h.src.ss_family == 10 /* AF_INET6 */) && h.addrlen > 0,
                  "a PROXY source is an IP address");
        struct pp_header again;
        CHECK(pp_parse(buf, h.length, &again) == PP_DONE, "the header alone is complete");
        CHECK(again.length == h.length && again.local == h.local && again.addrlen == h.addrlen &&
                  memcmp(&again.src, &h.src, sizeof h.src) == 0,
              "bytes after the header change nothing");
    }
    free(buf);
    return 0;
}
