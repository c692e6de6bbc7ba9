/* fuzz_envelope.c - libFuzzer target for the ID.env reader (src/envelope.c).
 *
 * The queue runner re-reads every spooled envelope; a damaged or hostile
 * file must give an error, never a crash or a leak.  For inputs that parse,
 * write -> parse -> write must reproduce the same text (the runner rewrites
 * .env after each attempt: nothing may drift or get lost on the way). */
#include <event2/buffer.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

#define CHECK(c, what)                                                                \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "fuzz_envelope: invariant failed: %s (%s)\n", what, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

static char *written(const struct envelope *e, size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    envelope_write(e, b);
    *len = evbuffer_get_length(b);
    char *s = malloc(*len + 1);
    evbuffer_remove(b, s, *len);
    s[*len] = '\0';
    evbuffer_free(b);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);   /* exactly size bytes: ASan sees overreads */
    memcpy(text, data, size);
    struct envelope e;
    char err[256] = "";
    if (envelope_parse(text, size, &e, err, sizeof err) != 0) {
        CHECK(strnlen(err, sizeof err) > 0 && strnlen(err, sizeof err) < sizeof err, "error text is set");
        free(text);
        return 0;
    }
    size_t l1, l2;
    char *w1 = written(&e, &l1);
    CHECK(l1 > 0 && w1[l1 - 1] == '\n' && memchr(w1, '\n', l1) == w1 + l1 - 1, "written envelope is one line");
    struct envelope f;
    CHECK(envelope_parse(w1, l1, &f, err, sizeof err) == 0, "written envelope parses again");
    CHECK(f.nrcpts == e.nrcpts, "recipient count survives a rewrite");
    char *w2 = written(&f, &l2);
    if (l1 != l2 || memcmp(w1, w2, l1) != 0) {
        fprintf(stderr, "first:  %s\nsecond: %s\n", w1, w2);
        CHECK(0, "write(parse(write(e))) == write(e)");
    }
    free(w1);
    free(w2);
    envelope_clear(&e);
    envelope_clear(&f);
    free(text);
    return 0;
}
