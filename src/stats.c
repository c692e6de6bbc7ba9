/* stats.c - counters and their two renderings (see stats.h). */
#include "stats.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callout.h"
#include "dns.h"
#include "dnscache.h"
#include "runtime.h"
#include "server.h"

struct verdict_row {
    char policy[64], phase[16], action[16];
    int code;
    unsigned long long n;
};

static struct verdict_row *rows;
static int nrows;
static int live_runtimes;

void stats_runtime_created(void) { live_runtimes++; }
void stats_runtime_freed(void) { live_runtimes--; }

void stats_verdict(const char *policy, const char *phase, const char *action, int code)
{
    if (!policy || !*policy)
        policy = "-";
    for (int i = 0; i < nrows; i++)
        if (rows[i].code == code && strcmp(rows[i].policy, policy) == 0 &&
            strcmp(rows[i].phase, phase) == 0 && strcmp(rows[i].action, action) == 0) {
            rows[i].n++;
            return;
        }
    if (nrows == STATS_VERDICT_MAX) {
        if (strcmp(policy, "other") != 0)
            stats_verdict("other", phase, action, code);
        else
            rows[nrows - 1].n++;
        return;
    }
    if (nrows % 16 == 0)
        rows = realloc(rows, (size_t)(nrows + 16) * sizeof *rows);
    struct verdict_row *r = &rows[nrows++];
    memset(r, 0, sizeof *r);
    snprintf(r->policy, sizeof r->policy, "%s", policy);
    snprintf(r->phase, sizeof r->phase, "%s", phase);
    snprintf(r->action, sizeof r->action, "%s", action);
    r->code = code;
    r->n = 1;
}

/* SPF results, in the order of spf_results[]: a fixed set, so a fixed array. */
static const char *const spf_results[] = { "pass", "fail", "softfail", "neutral", "none", "permerror",
                                           "temperror" };
#define SPF_NRESULTS (int)(sizeof spf_results / sizeof spf_results[0])
static unsigned long long spf_counts[SPF_NRESULTS];

void stats_spf(const char *result)
{
    for (int i = 0; result && i < SPF_NRESULTS; i++)
        if (strcmp(result, spf_results[i]) == 0)
            spf_counts[i]++;
}

/* Reverse Connect outcomes: ok, rejected, tempfail, then answered from the cache. */
static unsigned long long callout_counts[4];

void stats_callout(const char *result, int cached)
{
    static const char *const names[] = { "ok", "rejected", "tempfail" };
    for (int i = 0; result && i < 3; i++)
        if (strcmp(result, names[i]) == 0)
            callout_counts[i]++;
    if (cached)
        callout_counts[3]++;
}

void stats_free(void)
{
    free(rows);
    rows = NULL;
    nrows = 0;
}

/* One table drives both renderings: name, help, type, value. */
struct metric {
    const char *name, *help, *type;
    double value;
};

static int collect(struct metric *m)
{
    const struct stats *st = &srv.stats;
    struct dns_stats ds = { 0, 0, 0 };
    if (srv.dns)
        dns_get_stats(srv.dns, &ds);
    if (srv.dns_once) {
        struct dns_stats once;
        dns_get_stats(srv.dns_once, &once);
        ds.queries += once.queries;
        ds.timeouts += once.timeouts;
        ds.failures += once.failures;
    }
    struct dnscache_stats cs;
    dnscache_get_stats(srv.dnscache, &cs);
    int n = 0;
#define M(nm, hp, tp, v) m[n++] = (struct metric){ nm, hp, tp, (double)(v) }
    M("connections_current", "Open SMTP connections", "gauge", st->connections_current);
    M("connections_total", "SMTP connections accepted", "counter", st->connections_total);
    M("refused_denied_total", "Connections closed by denied_ips", "counter", st->refused_denied);
    M("refused_restrict_total", "Connections closed by a socket's grant/deny list", "counter", st->refused_restrict);
    M("refused_limit_total", "Connections refused by connection limits", "counter", st->refused_limit);
    M("refused_blocked_total", "Connections refused: temporarily blocked address", "counter", st->refused_blocked);
    M("refused_proxy_total", "Connections closed on a proxy = true socket before the header was accepted", "counter",
      st->refused_proxy);
    M("transactions_total", "MAIL transactions started", "counter", st->transactions);
    M("messages_accepted_total", "Messages spooled", "counter", st->messages_accepted);
    M("messages_rejected_total", "Messages refused at DATA or after the dot", "counter", st->messages_rejected);
    M("messages_discarded_total", "Messages accepted and discarded", "counter", st->messages_discarded);
    M("rcpts_accepted_total", "Recipients accepted", "counter", st->rcpts_accepted);
    M("rcpts_rejected_total", "Recipients refused", "counter", st->rcpts_rejected);
    M("hook_errors_total", "Script errors and budget overruns (451)", "counter", st->hook_errors);
    M("dns_queries_total", "DNS queries started", "counter", ds.queries);
    M("dns_timeouts_total", "DNS queries that timed out", "counter", ds.timeouts);
    M("dns_failures_total", "DNS queries that failed", "counter", ds.failures);
    M("dns_cache_hits_total", "DNS questions answered from the cache", "counter", cs.hits);
    M("dns_cache_misses_total", "DNS questions sent because the cache had no fresh answer", "counter", cs.misses);
    M("dns_cache_joined_total", "DNS questions that waited on the same question already in flight", "counter", cs.joined);
    M("dns_cache_entries", "Answers in the DNS cache", "gauge", cs.entries);
    M("spf_pass_total", "SPF checks at MAIL FROM: pass", "counter", spf_counts[0]);
    M("spf_fail_total", "SPF checks at MAIL FROM: fail", "counter", spf_counts[1]);
    M("spf_softfail_total", "SPF checks at MAIL FROM: softfail", "counter", spf_counts[2]);
    M("spf_neutral_total", "SPF checks at MAIL FROM: neutral", "counter", spf_counts[3]);
    M("spf_none_total", "SPF checks at MAIL FROM: none", "counter", spf_counts[4]);
    M("spf_permerror_total", "SPF checks at MAIL FROM: permerror", "counter", spf_counts[5]);
    M("spf_temperror_total", "SPF checks at MAIL FROM: temperror", "counter", spf_counts[6]);
    M("callout_ok_total", "Reverse Connect checks: the sender's MX accepted the address", "counter", callout_counts[0]);
    M("callout_rejected_total", "Reverse Connect checks: the sender's MX refused the address (550 5.1.7)", "counter", callout_counts[1]);
    M("callout_tempfail_total", "Reverse Connect checks with no verdict (451 4.1.7)", "counter", callout_counts[2]);
    M("callout_cached_total", "Reverse Connect checks answered from the cache", "counter", callout_counts[3]);
    unsigned long long cprobes, cjoined;
    callout_counts_get(&cprobes, &cjoined);
    M("callout_probes_total", "Reverse Connect probes started", "counter", cprobes);
    M("callout_joined_total", "Reverse Connect checks that joined a probe already running", "counter", cjoined);
    M("callout_running", "Reverse Connect probes running now", "gauge", callout_running());
    M("refused_disk_full_total", "Transactions refused with 452 4.3.1 (min_free_space, or the disk filled up)", "counter", st->refused_disk);
    M("spool_commits_total", "Spool commits", "counter", st->spool_commits);
    M("spool_commit_seconds_sum", "Time from submit to durable, summed", "counter", st->spool_latency_sum_ms / 1000.0);
    M("spool_commit_seconds_max", "Slowest spool commit", "gauge", st->spool_latency_max_ms / 1000.0);
    M("reloads_ok_total", "Successful reloads", "counter", st->reloads_ok);
    M("reloads_failed_total", "Refused reloads (the old configuration kept running)", "counter", st->reloads_failed);
    M("generation", "Current configuration generation", "gauge", srv.rt ? srv.rt->generation : 0);
    M("runtimes_live", "Configuration generations alive (current + in use by old sessions)", "gauge", live_runtimes);
    M("lua_memory_bytes", "Lua memory of the current generation", "gauge", srv.rt ? srv.rt->mem_used : 0);
#undef M
    return n;
}

void stats_render_text(struct evbuffer *out)
{
    struct metric m[64];
    int n = collect(m);
    for (int i = 0; i < n; i++)
        evbuffer_add_printf(out, "%s %.15g\n", m[i].name, m[i].value);
    for (int i = 0; i < nrows; i++)
        evbuffer_add_printf(out, "verdict policy=%s phase=%s action=%s code=%d %llu\n", rows[i].policy,
                            rows[i].phase, rows[i].action, rows[i].code, rows[i].n);
}

/* A label value of the text exposition format: \\, \" and \n escaped (a
 * policy is named after its script file, which may hold any of them). */
static void add_label_value(struct evbuffer *out, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            evbuffer_add_printf(out, "\\%c", *v);
        else if (*v == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, v, 1);
    }
}

void stats_render_prometheus(struct evbuffer *out)
{
    struct metric m[64];
    int n = collect(m);
    for (int i = 0; i < n; i++)
        evbuffer_add_printf(out, "# HELP moat_%s %s\n# TYPE moat_%s %s\nmoat_%s %.15g\n", m[i].name,
                            m[i].help, m[i].name, m[i].type, m[i].name, m[i].value);
    evbuffer_add_printf(out, "# HELP moat_verdicts_total Policy verdicts by policy, phase, action and reply code\n"
                             "# TYPE moat_verdicts_total counter\n");
    for (int i = 0; i < nrows; i++) {
        evbuffer_add_printf(out, "moat_verdicts_total{policy=\"");
        add_label_value(out, rows[i].policy);
        evbuffer_add_printf(out, "\",phase=\"%s\",action=\"%s\",code=\"%d\"} %llu\n", rows[i].phase,
                            rows[i].action, rows[i].code, rows[i].n);
    }
}
