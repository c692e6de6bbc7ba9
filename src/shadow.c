/* shadow.c - the shadow chain beside the live one (see shadow.h). */
#include "shadow.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "runtime.h"

#define NACT 8          /* enum verdict_action values */
#define RECENT 20       /* moatctl shadow shows the last 20 differences */

struct shadow_sess {
    struct lb_session lb;
    char id[32], ip[64];
    enum phase ph;      /* the hook being compared */
    int active;         /* a comparison is open for ph */
    int live_done, sh_done;
    struct verdict live, shv;
    /* data_line: the first verdict the shadow's data_line hooks gave this
     * message (as the live chain keeps its own), compared once at the dot. */
    int in_dl;          /* a data_line call of ours is suspended */
    int dl_closed;      /* the message it was for has ended: drop its result */
    int dl_have;
    struct verdict dl_kept;
};

static const char *const act_names[NACT] = { "none", "accept", "reject", "tempfail", "drop", "discard", "error", "redirect" };

/* Process-wide counters: they outlive reloads, like the other stats. */
static struct {
    unsigned long sessions, hooks, skipped, errors, diffs;
    int open;           /* comparisons started and not yet made (shadow_pending) */
    unsigned long pairs[PH_COUNT][NACT][NACT];   /* differing hooks: [phase][live][shadow] */
    struct recent { char line[1024]; } recent[RECENT];
    int nrecent, next;
} S;

/* "250 text" / "550 5.7.1 text" as the client would have seen it. */
void shadow_verdict_text(const struct verdict *v, char *buf, size_t len)
{
    if (v->action == V_NONE)
        snprintf(buf, len, "none");
    else
        snprintf(buf, len, "%d %s", v->code ? v->code : (v->action == V_ACCEPT ? 250 : 451), v->text);
}

void shadow_policy_file(const struct verdict *v, char *buf, size_t len)
{
    /* Stock policies are named, site scripts by their file name. */
    if (v->action == V_ERROR)
        snprintf(buf, len, "error");
    else if (v->policy[0] && !strstr(v->policy, ".lua"))
        snprintf(buf, len, "policies/%s.lua", v->policy);
    else
        snprintf(buf, len, "%s", v->policy[0] ? v->policy : "-");
}

void (*shadow_on_pair)(enum phase ph, const struct verdict *live, const struct verdict *shadow);

int shadow_pending(void) { return S.open; }

/* Both verdicts of phase ph are known: report them if they differ. */
static void report(struct shadow_sess *sh, enum phase phase, const struct verdict *a, const struct verdict *b)
{
    if (shadow_on_pair)
        shadow_on_pair(phase, a, b);
    if (a->action == b->action && a->code == b->code)
        return;
    char lt[600], st[600], pf[96], ph[16];
    shadow_verdict_text(a, lt, sizeof lt);
    shadow_verdict_text(b, st, sizeof st);
    shadow_policy_file(b, pf, sizeof pf);
    snprintf(ph, sizeof ph, "%s", phase_names[phase]);
    log_kv(LOG_INFO, "shadow_diff", "session", sh->id, "phase", ph, "ip", sh->ip, "live", lt,
           "shadow", st, "policy", pf, NULL);
    S.diffs++;
    S.pairs[phase][a->action][b->action]++;
    snprintf(S.recent[S.next].line, sizeof S.recent[S.next].line,
             "session=%s phase=%s ip=%s live=\"%.200s\" shadow=\"%.200s\" policy=%s", sh->id, ph, sh->ip, lt, st, pf);
    S.next = (S.next + 1) % RECENT;
    if (S.nrecent < RECENT)
        S.nrecent++;
}

static void compare(struct shadow_sess *sh)
{
    sh->active = 0;
    S.open--;
    report(sh, sh->ph, &sh->live, &sh->shv);
}

static void got_shadow(struct shadow_sess *sh, const struct verdict *v)
{
    if (!sh->active)
        return;
    if (v->action == V_ERROR)
        S.errors++;     /* lua_bridge logged it as event=shadow_error */
    sh->shv = *v;
    sh->sh_done = 1;
    if (sh->live_done)
        compare(sh);
}

static void dl_result(struct shadow_sess *sh, const struct verdict *v)
{
    if (v->action == V_ERROR)
        S.errors++;
    if (v->action != V_NONE && !sh->dl_have) {
        sh->dl_kept = *v;
        sh->dl_have = 1;
    }
}

static void on_shadow_done(void *owner, const struct verdict *v)
{
    struct shadow_sess *sh = owner;
    if (sh->in_dl) {
        sh->in_dl = 0;
        if (!sh->dl_closed)
            dl_result(sh, v);
        return;
    }
    got_shadow(sh, v);
}

void shadow_data_line(struct shadow_sess *sh, const char *line, size_t len, int header)
{
    if (!sh || sh->dl_have || !lb_has_phase(sh->lb.rt, PH_DATA_LINE))
        return;
    if (sh->lb.running || sh->lb.waiting) {
        S.skipped++;    /* still on an earlier line: this one is not seen */
        return;
    }
    S.hooks++;
    sh->dl_closed = 0;
    sh->in_dl = 1;
    struct verdict v;
    if (lb_data_line(&sh->lb, line, len, header, &v)) {
        sh->in_dl = 0;
        dl_result(sh, &v);
    }
}

void shadow_data_lines_end(struct shadow_sess *sh, const struct verdict *live)
{
    if (!sh)
        return;
    struct verdict none = { .action = V_NONE };
    report(sh, PH_DATA_LINE, live ? live : &none, sh->dl_have ? &sh->dl_kept : &none);
    sh->dl_have = 0;
    sh->dl_closed = 1;
}

int shadow_wants_data_line(const struct shadow_sess *sh)
{
    return sh && lb_has_phase(sh->lb.rt, PH_DATA_LINE);
}

struct shadow_sess *shadow_open(struct runtime *rt, const char *id, const char *ip)
{
    struct runtime *srt = rt->shadow;
    if (!srt || rt->shadow_sample <= 0)
        return NULL;
    /* drand48: a sample, not a secret. */
    if (rt->shadow_sample < 1 && drand48() >= rt->shadow_sample)
        return NULL;
    struct shadow_sess *sh = calloc(1, sizeof *sh);
    lb_session_open(&sh->lb, srt, sh, on_shadow_done);
    snprintf(sh->id, sizeof sh->id, "%s", id);
    snprintf(sh->ip, sizeof sh->ip, "%s", ip);
    S.sessions++;
    return sh;
}

void shadow_close(struct shadow_sess *sh)
{
    if (!sh)
        return;
    if (sh->active)
        S.open--;
    lb_disconnect(&sh->lb);
    lb_session_close(&sh->lb);
    free(sh);
}

struct lb_session *shadow_begin(struct shadow_sess *sh, enum phase ph)
{
    if (!sh)
        return NULL;
    if (sh->lb.running || sh->lb.waiting) {
        S.skipped++;
        return NULL;
    }
    if (!sh->active)
        S.open++;   /* else the previous comparison never got its live verdict: replaced */
    sh->active = 1;
    sh->ph = ph;
    sh->live_done = sh->sh_done = 0;
    S.hooks++;
    return &sh->lb;
}

void shadow_done_now(struct shadow_sess *sh, const struct verdict *v) { got_shadow(sh, v); }

void shadow_live(struct shadow_sess *sh, enum phase ph, const struct verdict *v)
{
    if (!sh || !sh->active || sh->ph != ph || sh->live_done)
        return;
    sh->live = *v;
    sh->live_done = 1;
    if (sh->sh_done)
        compare(sh);
}

struct lb_session *shadow_lb(struct shadow_sess *sh) { return sh ? &sh->lb : NULL; }

void shadow_report(struct evbuffer *out)
{
    evbuffer_add_printf(out, "sessions: %lu\nhooks: %lu\nskipped: %lu\nerrors: %lu\ndifferences: %lu\n",
                        S.sessions, S.hooks, S.skipped, S.errors, S.diffs);
    for (int p = 0; p < PH_COUNT; p++)
        for (int a = 0; a < NACT; a++)
            for (int b = 0; b < NACT; b++)
                if (S.pairs[p][a][b])
                    evbuffer_add_printf(out, "diff %s %s->%s: %lu\n", phase_names[p], act_names[a], act_names[b],
                                        S.pairs[p][a][b]);
    int first = (S.next - S.nrecent + RECENT) % RECENT;
    for (int i = 0; i < S.nrecent; i++)
        evbuffer_add_printf(out, "recent %s\n", S.recent[(first + i) % RECENT].line);
}

void shadow_stats_text(struct evbuffer *out)
{
    evbuffer_add_printf(out, "shadow_hooks_total %lu\nshadow_skipped_total %lu\nshadow_errors_total %lu\n",
                        S.hooks, S.skipped, S.errors);
    for (int p = 0; p < PH_COUNT; p++)
        for (int a = 0; a < NACT; a++)
            for (int b = 0; b < NACT; b++)
                if (S.pairs[p][a][b])
                    evbuffer_add_printf(out, "shadow_diff phase=%s live=%s shadow=%s %lu\n", phase_names[p],
                                        act_names[a], act_names[b], S.pairs[p][a][b]);
}

void shadow_prometheus(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP moat_shadow_hooks_total Hooks run on the shadow chain\n"
                             "# TYPE moat_shadow_hooks_total counter\nmoat_shadow_hooks_total %lu\n"
                             "# HELP moat_shadow_skipped_total Hooks the shadow skipped (still busy with the previous one)\n"
                             "# TYPE moat_shadow_skipped_total counter\nmoat_shadow_skipped_total %lu\n"
                             "# HELP moat_shadow_errors_total Shadow hook errors (script errors, budget overruns)\n"
                             "# TYPE moat_shadow_errors_total counter\nmoat_shadow_errors_total %lu\n"
                             "# HELP moat_shadow_diffs_total Hooks where shadow and live verdicts differ, by phase and verdict pair\n"
                             "# TYPE moat_shadow_diffs_total counter\n",
                        S.hooks, S.skipped, S.errors);
    for (int p = 0; p < PH_COUNT; p++)
        for (int a = 0; a < NACT; a++)
            for (int b = 0; b < NACT; b++)
                if (S.pairs[p][a][b])
                    evbuffer_add_printf(out, "moat_shadow_diffs_total{phase=\"%s\",live=\"%s\",shadow=\"%s\"} %lu\n",
                                        phase_names[p], act_names[a], act_names[b], S.pairs[p][a][b]);
}
