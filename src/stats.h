/* stats.h - counters for `moatctl stats` and the Prometheus endpoint.
 *
 * The plain counters live in srv.stats (server.h).  Verdicts are counted by
 * (policy, phase, action, code); the table is bounded (STATS_VERDICT_MAX
 * rows; later combinations are counted under policy "other"), so hostile
 * traffic cannot grow it. */
#ifndef MOAT_STATS_H
#define MOAT_STATS_H

struct evbuffer;

#define STATS_VERDICT_MAX 256

void stats_verdict(const char *policy, const char *phase, const char *action, int code);
/* One SPF check at MAIL FROM ended in result (RFC 7208 words; others are ignored). */
void stats_spf(const char *result);
/* One Reverse Connect check ended in result ("ok" "rejected" "tempfail";
 * others are ignored); cached: answered from the cache, no probe. */
void stats_callout(const char *result, int cached);

void stats_render_text(struct evbuffer *out);
void stats_render_prometheus(struct evbuffer *out);
void stats_free(void);

/* Runtime generations alive (the current one plus those old sessions still use). */
void stats_runtime_created(void);
void stats_runtime_freed(void);

#endif
