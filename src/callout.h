/* callout.h - Reverse Connect probes (sender callouts, DESIGN §8).
 *
 * A probe asks the sender domain's mail exchangers whether they accept the
 * sender as a recipient: EHLO, MAIL FROM:<>, RCPT TO:<sender>, QUIT (never
 * DATA), on the event loop with src/smtpc.c.  The hosts are tried in order
 * until one answers RCPT; the whole probe is bounded by one timeout.
 * Concurrent requests for the same address share one probe, and at most
 * max_probes probes run at once.  Policy (caching, reply codes) is Lua's. */
#ifndef MOAT_CALLOUT_H
#define MOAT_CALLOUT_H

struct event_base;
struct callout_wait;

#define CALLOUT_MAX_HOSTS 16

/* code: the RCPT reply's code (2xx/4xx/5xx), or 0 for every other outcome
 * (no host reachable, greeting/EHLO/MAIL refused, timeout, a reply line
 * too long); text: the reply or why. */
typedef void (*callout_cb)(void *arg, int code, const char *text);

/* Start (or join) the probe for address.  Returns NULL without calling cb
 * when max_probes probes are already running (or on bad arguments). */
struct callout_wait *callout_probe(struct event_base *base, const char *address,
                                   const char *const *ips, int nips, int port,
                                   const char *helo, int timeout_s, int max_probes,
                                   callout_cb cb, void *arg);
/* The waiter goes away (its session ended); cb never runs.  The probe goes
 * on for the other waiters, if any. */
void callout_cancel(struct callout_wait *w);
/* At shutdown, after the sessions are closed: abort and free every probe
 * still running; no callback runs. */
void callout_shutdown(void);
/* Probes running now (for tests and stats). */
int callout_running(void);
/* Probes started and requests that joined a running probe, since start. */
void callout_counts_get(unsigned long long *started, unsigned long long *joined);

#endif
