/* envelope.h - the ID.env file: one JSON object describing a spooled message.
 *
 *   {"id":..., "from":"" for <>, "rcpts":[{"addr":..., "route":{"kind","address","host","can_relay"},
 *     "status":"pending|sent|bounced", "attempts":N, "next_try":T, "reply":...}],
 *    "ip":..., "helo":..., "user":..., "received":"2026-...Z", "received_at":T, "size":N}
 *
 * The SMTP side writes it once; the queue runner rewrites it (tmp, fsync,
 * rename) after every delivery attempt, so per-recipient progress survives a
 * crash. */
#ifndef MOAT_ENVELOPE_H
#define MOAT_ENVELOPE_H

#include <stddef.h>
#include <time.h>

struct evbuffer;

enum rcpt_status { RS_PENDING, RS_SENT, RS_BOUNCED };

struct env_rcpt {
    char *addr;
    char kind[16];
    char *route_address, *host;   /* host NULL = none */
    int can_relay;
    enum rcpt_status status;
    int attempts;
    time_t next_try;
    char *reply;                  /* last reply or error, NULL if none */
};

struct envelope {
    char id[32];
    char *from;                   /* "" for <> */
    struct env_rcpt *rcpts;
    int nrcpts;
    char *ip, *helo, *user, *received;
    time_t received_at;
    long size;
};

/* Append the JSON object (and a newline) to out. */
void envelope_write(const struct envelope *e, struct evbuffer *out);
/* Parse; 0 or -1 with err.  Strings are copied; free with envelope_clear. */
int envelope_parse(const char *text, size_t len, struct envelope *e, char *err, size_t errlen);
void envelope_clear(struct envelope *e);
const char *rcpt_status_name(enum rcpt_status s);

#endif
