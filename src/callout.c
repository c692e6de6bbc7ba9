/* callout.c - Reverse Connect probes (see callout.h). */
#include "callout.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtpc.h"

struct callout_wait {
    struct probe *p;
    callout_cb cb;
    void *arg;
    struct callout_wait *next;
};

struct probe {
    char address[512];
    char *ips[CALLOUT_MAX_HOSTS];
    int nips, idx, port, timeout_s;
    char helo[256];
    struct event_base *base;
    struct smtpc *c;
    struct event *timer;      /* the whole probe's deadline */
    int done;
    char last_err[SMTPC_REPLY_MAX];
    struct callout_wait *waiters;
    struct probe *next;
};

static struct probe *probes;  /* running probes, one per address */
static int nrunning;

static unsigned long long nstarted, njoined;

int callout_running(void) { return nrunning; }

void callout_counts_get(unsigned long long *started, unsigned long long *joined)
{
    *started = nstarted;
    *joined = njoined;
}

static void probe_free(struct probe *p)
{
    for (struct probe **pp = &probes; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    nrunning--;
    if (p->timer)
        event_free(p->timer);
    for (int i = 0; i < p->nips; i++)
        free(p->ips[i]);
    free(p);
}

/* Tell every waiter and forget the probe.  The smtpc client has already
 * been closed (or aborted) by the caller. */
static void finish(struct probe *p, int code, const char *text)
{
    p->done = 1;
    struct callout_wait *w = p->waiters;
    p->waiters = NULL;
    char copy[SMTPC_REPLY_MAX];
    snprintf(copy, sizeof copy, "%s", text ? text : "");
    probe_free(p);
    while (w) {
        struct callout_wait *n = w->next;
        callout_cb cb = w->cb;
        void *arg = w->arg;
        free(w);
        cb(arg, code, copy);   /* may resume a session, which may start probes */
        w = n;
    }
}

static void try_next(struct probe *p);

static void on_rcpt(void *arg, int code, const char *text)
{
    struct probe *p = arg;
    if (p->done)
        return;
    struct smtpc *c = p->c;
    p->c = NULL;
    smtpc_close(c);            /* QUIT; carried out once this callback returns */
    if (code == 0) {           /* the connection broke: the next host may answer */
        snprintf(p->last_err, sizeof p->last_err, "%s", text ? text : "");
        try_next(p);
        return;
    }
    finish(p, code, text);
}

static void on_mail(void *arg, int code, const char *text)
{
    struct probe *p = arg;
    if (p->done || (code >= 200 && code < 300))
        return;                /* RCPT's reply decides */
    struct smtpc *c = p->c;
    p->c = NULL;
    smtpc_close(c);
    p->done = 1;               /* RCPT's callback (pipelined) must not run on */
    finish(p, 0, text);
}

static void on_ready(void *arg, int code, const char *text)
{
    struct probe *p = arg;
    if (code != 250) {         /* connect failed or greeting/EHLO refused */
        struct smtpc *c = p->c;
        p->c = NULL;
        smtpc_close(c);
        snprintf(p->last_err, sizeof p->last_err, "%s: %s", p->ips[p->idx - 1], text ? text : "");
        try_next(p);
        return;
    }
    smtpc_cmd(p->c, "MAIL FROM:<>", on_mail, p);
    char line[600];
    snprintf(line, sizeof line, "RCPT TO:<%s>", p->address);
    smtpc_cmd(p->c, line, on_rcpt, p);
}

static void try_next(struct probe *p)
{
    while (p->idx < p->nips) {
        const char *ip = p->ips[p->idx++];
        p->c = smtpc_open(p->base, ip, p->port, 0, p->helo, p->timeout_s, on_ready, p);
        if (p->c)
            return;
    }
    finish(p, 0, p->last_err[0] ? p->last_err : "no mail exchanger could be reached");
}

static void start_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    try_next(arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct probe *p = arg;
    smtpc_abort(p->c);         /* not inside an smtpc callback: free now */
    p->c = NULL;
    finish(p, 0, "no answer within the timeout");
}

struct callout_wait *callout_probe(struct event_base *base, const char *address,
                                   const char *const *ips, int nips, int port,
                                   const char *helo, int timeout_s, int max_probes,
                                   callout_cb cb, void *arg)
{
    if (!address || strlen(address) >= sizeof ((struct probe *)0)->address || nips < 1)
        return NULL;
    struct probe *p;
    for (p = probes; p; p = p->next)
        if (strcasecmp(p->address, address) == 0)
            break;
    if (!p) {
        if (nrunning >= max_probes)
            return NULL;
        p = calloc(1, sizeof *p);
        if (!p)
            return NULL;
        snprintf(p->address, sizeof p->address, "%s", address);
        snprintf(p->helo, sizeof p->helo, "%s", helo ? helo : "localhost");
        for (int i = 0; i < nips && i < CALLOUT_MAX_HOSTS; i++)
            if ((p->ips[p->nips] = strdup(ips[i])))
                p->nips++;
        p->port = port;
        p->timeout_s = timeout_s > 0 ? timeout_s : 30;
        p->base = base;
        p->next = probes;
        probes = p;
        nrunning++;
        nstarted++;
        p->timer = evtimer_new(base, on_timeout, p);
        struct timeval tv = { p->timeout_s, 0 };
        evtimer_add(p->timer, &tv);
        struct callout_wait *w = calloc(1, sizeof *w);
        if (!w) {
            probe_free(p);
            return NULL;
        }
        w->p = p;
        w->cb = cb;
        w->arg = arg;
        p->waiters = w;
        /* Start from the loop, so cb never runs before we return. */
        struct timeval now = { 0, 0 };
        if (event_base_once(base, -1, EV_TIMEOUT, start_cb, p, &now) != 0) {
            p->waiters = NULL;
            free(w);
            probe_free(p);
            return NULL;
        }
        return w;
    }
    struct callout_wait *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->p = p;
    w->cb = cb;
    w->arg = arg;
    w->next = p->waiters;
    p->waiters = w;
    njoined++;
    return w;
}

void callout_cancel(struct callout_wait *w)
{
    if (!w)
        return;
    for (struct callout_wait **pp = &w->p->waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    free(w);
}

void callout_shutdown(void)
{
    /* At exit the loop no longer runs, so a probe still waiting on a peer
     * (a hanging MX) would never finish: abort its connection and free it,
     * so nothing is left behind (ASan's leak check stays clean).  The
     * sessions are gone already (smtp_close_all cancelled their waits);
     * any waiter left is freed without its callback: nobody to resume. */
    while (probes) {
        struct probe *p = probes;
        smtpc_abort(p->c);
        p->c = NULL;
        struct callout_wait *w = p->waiters;
        while (w) {
            struct callout_wait *n = w->next;
            free(w);
            w = n;
        }
        p->waiters = NULL;
        probe_free(p);
    }
}
