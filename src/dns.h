/* dns.h - non-blocking DNS lookups on a libevent loop (c-ares underneath).
 *
 * Every lookup is asynchronous: c-ares sockets and its retry timer are driven
 * by events on the caller's event_base, so a dead or slow resolver never
 * stalls SMTP sessions sharing the loop.
 *
 * Callback rules (the point of this module is that they are boring):
 *  - The callback never runs before dns_query_start() returns, even when the
 *    query fails at once (bad name): such failures are delivered from the loop.
 *  - Inside a callback it is safe to start queries, cancel other queries and
 *    call dns_free() (the free then happens once the current batch of c-ares
 *    processing has unwound; the remaining callbacks get DNS_ERROR).
 *  - After dns_cancel(q) the callback for q is never called.
 *  - A dns_query handle is valid until its callback has started or until
 *    dns_cancel(); do not touch it afterwards.
 *
 * Single-threaded: one dns per event_base thread. */
#ifndef MOAT_DNS_H
#define MOAT_DNS_H

#include <stddef.h>

struct event_base;
typedef struct dns dns;
typedef struct dns_query dns_query;

enum dns_type { DNS_A, DNS_AAAA, DNS_MX, DNS_PTR, DNS_TXT };
enum dns_status { DNS_OK = 0, DNS_NXDOMAIN, DNS_NODATA, DNS_SERVFAIL, DNS_TIMEOUT, DNS_ERROR };

#define DNS_MAX_RR 64 /* answers beyond this are dropped, a reply is untrusted input */

/* "ok", "nxdomain", "nodata", "servfail", "timeout", "error"; "?" otherwise. */
const char *dns_status_str(int status);

/* All strings belong to the answer, which is freed after the callback
 * returns: copy what must outlive it. */
typedef struct dns_answer {
    int n;
    struct dns_rr {
        char *text; /* A/AAAA: address text; MX: exchange; PTR: name without
                       trailing dot; TXT: the record's strings concatenated
                       (a NUL byte becomes DEL, 0x7f; the bytes are otherwise raw and may
                       hold CR/LF - sanitise before echoing to a client) */
        int pref;   /* MX preference, 0 for other types */
    } *rr;
} dns_answer;

/* status is an enum dns_status.  DNS_SERVFAIL covers every "no server would
 * answer" case (SERVFAIL, REFUSED, unreachable) - retry later; DNS_ERROR is
 * local: bad name, bad reply, out of memory, dns_free().
 * ans is NULL unless status == DNS_OK, and then ans->n >= 1. */
typedef void (*dns_cb)(void *arg, int status, const dns_answer *ans);

/* servers: NULL or "" = /etc/resolv.conf; otherwise comma-separated "ip" or
 * "ip:port", IPv6 as "[::1]:53".  timeout_ms is the first try's timeout; with
 * one server c-ares 1.18 doubles it on every further try, so the worst case
 * is timeout_ms * (2^tries - 1) (200 ms, 2 tries -> 600 ms).  timeout_ms <= 0
 * or tries <= 0 keep the resolv.conf / c-ares defaults (1.18: 5000 ms, 4 tries).  Names are
 * queried exactly as given: no search list, no hosts file.
 * Returns NULL with a message in err on failure. */
dns *dns_new(struct event_base *base, const char *servers, int timeout_ms, int tries,
             char *err, size_t errlen);

/* Outstanding, non-cancelled queries get their callback with DNS_ERROR
 * before dns_free returns (or, when called from a callback, before the
 * event that ran that callback returns).  The event_base must still exist. */
void dns_free(dns *d);

/* Returns NULL (and the callback will never run) if the arguments are bad,
 * memory is short or d is being freed.  name is used as-is, e.g.
 * "1.0.0.127.in-addr.arpa" for PTR (see dns_reverse_name). */
dns_query *dns_query_start(dns *d, const char *name, enum dns_type type, dns_cb cb, void *arg);

/* Guarantees the callback is never called.  NULL is ignored. */
void dns_cancel(dns_query *q);

/* 192.0.2.1 + "bl.example" -> "1.2.0.192.bl.example"; IPv6 -> 32 reversed
 * nibbles; zone NULL/"" -> "in-addr.arpa" / "ip6.arpa".  An IPv4-mapped IPv6
 * address (::ffff:192.0.2.1, what dual-stack sockets report) is treated as
 * the IPv4 address, since that is what PTR and DNSBL data are keyed on.
 * Returns 0, or -1 for a bad address or a too small buffer. */
int dns_reverse_name(const char *ip, const char *zone, char *out, size_t outlen);

/* queries: started; timeouts: ended in DNS_TIMEOUT; failures: ended in
 * DNS_SERVFAIL or DNS_ERROR (not counting dns_free's own cancellations).
 * Cancelled queries still count: the numbers describe resolver health. */
struct dns_stats { unsigned long queries, timeouts, failures; };
void dns_get_stats(const dns *d, struct dns_stats *out);

/* Answers from c (see dnscache.h), and one query in flight per (name, type)
 * with later askers waiting on it; NULL (the default) turns both off.  c
 * is not owned and may be shared by several dns on the same loop (the
 * retrying and the one-try channel share one).  Cached answers, like
 * fresh ones, reach the callback from the loop, never from inside
 * dns_query_start.  queries in dns_stats counts questions sent. */
struct dnscache;
void dns_set_cache(dns *d, struct dnscache *c);

#endif
