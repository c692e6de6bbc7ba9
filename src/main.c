/* main.c - moat: command line, startup, signals, reload, shutdown. */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "callout.h"
#include "control.h"
#include "ownaddr.h"
#include "dns.h"
#include "dnscache.h"
#include "listener.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "smtp.h"
#include "spool.h"
#include "tempblock.h"
#include "worker.h"
#include "metrics.h"
#include "stats.h"
#include "watch.h"
#include "delivery.h"
#include "replay.h"
#include "privdrop.h"
#include "sdnotify.h"
#include "printconfig.h"

struct server srv;

static void usage(FILE *f)
{
    fprintf(f, "usage: moat -c CONFIG [--check | --print-config | --replay SESSION.smtp [--shadow]]\n"
               "  -c CONFIG   configuration file (Lua syntax, see README)\n"
               "  --check     load the config, every table and every script; report the first error\n"
               "  --print-config  print the effective configuration, defaults included (config syntax)\n"
               "  --replay F  run the client session in F through the policies and print the replies\n"
               "  --shadow    with --replay: print the shadow chain's verdict beside each reply\n");
}

static void apply_log_level(const struct config *c)
{
    static const char *names[] = { "debug", "info", "warn", "error" };
    for (int i = 0; i < 4; i++)
        if (strcmp(c->log_level, names[i]) == 0)
            log_set_level((enum log_level)i);
}

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

/* Settings that are set up once at start.  A reload that changes one is
 * refused (and says which), rather than acknowledged and ignored. */
static const char *restart_only_change(const struct config *a, const struct config *b)
{
    if (!same_str(a->spool_dir, b->spool_dir) || a->spool_threads != b->spool_threads ||
        a->spool_syncfs != b->spool_syncfs)
        return "spool_dir/spool_threads";
    if (!same_str(a->control_socket, b->control_socket))
        return "control_socket";
    if (!same_str(a->user, b->user))
        return "user";
    if (!same_str(a->dns_servers, b->dns_servers) || a->dns_timeout_ms != b->dns_timeout_ms || a->dns_tries != b->dns_tries ||
        a->dns_cache_size != b->dns_cache_size || a->dns_cache_max_ttl != b->dns_cache_max_ttl)
        return "dns";
    if (!same_str(a->metrics_address, b->metrics_address) || a->metrics_port != b->metrics_port)
        return "metrics";
    const struct delivery_conf *x = &a->delivery, *y = &b->delivery;
    if (x->mode != y->mode || !same_str(x->next_hop, y->next_hop) || x->next_hop_port != y->next_hop_port ||
        x->lmtp != y->lmtp || x->max_age != y->max_age || x->retry_min != y->retry_min ||
        x->retry_max != y->retry_max || x->concurrency != y->concurrency || x->timeout != y->timeout)
        return "delivery";
    return NULL;
}

/* READY=1 with the one-line summary systemctl status shows. */
static void notify_ready(const char *note)
{
    sdnotify("READY=1\nSTATUS=%s: generation %lu, %d listener%s", note, srv.rt->generation,
             srv.rt->cfg.nlisteners, srv.rt->cfg.nlisteners == 1 ? "" : "s");
}

static int reload(char *err, size_t errlen);

int server_reload(char *err, size_t errlen)
{
    if (srv.stopping) {   /* a reload would open the listeners again */
        snprintf(err, errlen, "moat is stopping: reload refused");
        return -1;
    }
    sdnotify_reloading();
    int rc = reload(err, errlen);
    notify_ready(rc == 0 ? "reloaded" : "reload failed, running");
    return rc;
}

int server_promote(char *err, size_t errlen)
{
    if (!srv.rt->shadow) {
        snprintf(err, errlen, "%s", runtime_promoted ? "the shadow set is already live (promoted)" : "no shadow configured");
        return -1;
    }
    runtime_promoted = 1;
    int rc = server_reload(err, errlen);
    if (rc != 0)
        runtime_promoted = 0;   /* broken: nothing changed, the shadow keeps running */
    else
        log_kv(LOG_WARN, "shadow_promoted", "note", "until shadow = {...} is removed from the config, reloads keep the shadow lists live", NULL);
    return rc;
}

static int reload(char *err, size_t errlen)
{
    struct runtime *rt = runtime_load(srv.rt->cfg.path, err, errlen);
    const char *changed = rt ? restart_only_change(&srv.rt->cfg, &rt->cfg) : NULL;
    if (changed) {
        snprintf(err, errlen, "%s: '%s' changed: restart moat to apply it (the running configuration is unchanged)",
                 rt->cfg.path, changed);
        runtime_unref(rt);
        rt = NULL;
    }
    if (rt && listeners_apply(&rt->cfg, err, errlen) != 0) {
        runtime_unref(rt);
        rt = NULL;
    }
    if (rt)
        ownaddr_refresh();     /* the sockets (and interfaces) may have changed */
    if (!rt) {
        srv.stats.reloads_failed++;
        log_kv(LOG_ERR, "reload_failed", "error", err, NULL);
        return -1;
    }
    struct runtime *old = srv.rt;
    rt->generation = old->generation + 1;
    srv.rt = rt;      /* new sessions start here; running ones keep theirs */
    tb_configure(srv.tempblock, &rt->cfg.tb);   /* blocks and counters survive */
    runtime_unref(old);
    apply_log_level(&rt->cfg);
    if (rt->cfg.watch)
        watch_update(rt);       /* the set of files may have changed */
    else
        watch_stop();
    srv.stats.reloads_ok++;
    runtime_promoted = rt->promoted;   /* a config without a shadow ends a promotion */
    char gen[32];
    snprintf(gen, sizeof gen, "%lu", rt->generation);
    log_kv(LOG_INFO, "reloaded", "generation", gen, NULL);
    return 0;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    char err[2048];
    server_reload(err, sizeof err);
}

static struct event *drain_timer;

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    char n[16];
    snprintf(n, sizeof n, "%d", smtp_sessions_open());
    log_kv(LOG_INFO, "shutdown_timeout", "sessions", n, NULL);
    event_base_loopbreak(srv.base);   /* main() closes the rest with 421 */
}

/* Graceful stop: no new connection from now on, sessions between commands
 * get 421 4.3.2, the others finish what they are doing (a message in DATA,
 * a spool write) for up to shutdown_timeout seconds.  A second signal stops
 * at once. */
static void on_term(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    const char *name = sig == SIGINT ? "INT" : "TERM";
    if (srv.stopping) {
        log_kv(LOG_INFO, "stopping_now", "signal", name, NULL);
        event_base_loopbreak(srv.base);
        return;
    }
    char n[16];
    snprintf(n, sizeof n, "%d", smtp_sessions_open());
    log_kv(LOG_INFO, "stopping", "signal", name, "sessions", n, NULL);
    srv.stopping = 1;
    sdnotify("STOPPING=1\nSTATUS=stopping on SIG%s, %s session(s) to finish", name, n);
    listeners_close();
    smtp_drain();
    if (smtp_sessions_open() == 0) {
        event_base_loopbreak(srv.base);
        return;
    }
    drain_timer = evtimer_new(srv.base, on_drain_timeout, NULL);
    struct timeval tv = { srv.rt->cfg.shutdown_timeout, 0 };
    evtimer_add(drain_timer, &tv);
}

static int check_only(const char *path)
{
    char err[4096];
    struct runtime *rt = runtime_load(path, err, sizeof err);
    if (!rt) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("%s: ok (%d listener%s, policies and scripts loaded)\n", path, rt->cfg.nlisteners,
           rt->cfg.nlisteners == 1 ? "" : "s");
    runtime_unref(rt);
    return 0;
}

/* Every session is a descriptor (two in proxy mode): take all the system
 * allows, and say how many that is. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    char cur[24], max[24];
    snprintf(cur, sizeof cur, "%llu", (unsigned long long)rl.rlim_cur);
    snprintf(max, sizeof max, "%llu", (unsigned long long)rl.rlim_max);
    log_kv(LOG_INFO, "fd_limit", "soft", cur, "hard", max, NULL);
}

static int start(const char *path, char *err, size_t errlen)
{
    sdnotify_open();    /* while still root: the connected socket outlives the drop */
    srv.rt = runtime_load(path, err, errlen);
    if (!srv.rt)
        return -1;
    const struct config *c = &srv.rt->cfg;
    apply_log_level(c);
    srv.tempblock = tb_new();
    tb_configure(srv.tempblock, &c->tb);
    if (worker_init(srv.base, 2) != 0) {
        snprintf(err, errlen, "cannot start worker threads");
        return -1;
    }
    srv.spool = spool_open(srv.base, c->spool_dir, c->spool_threads, c->spool_syncfs, err, errlen);
    if (!srv.spool)
        return -1;
    srv.dns = dns_new(srv.base, c->dns_servers, c->dns_timeout_ms, c->dns_tries, err, errlen);
    if (!srv.dns)
        return -1;
    /* Seed 002: RBL requests are sent "not more than twice, each time with
     * the minimal time-out".  c-ares doubles the timeout on every retry, so
     * RBL queries go out on a one-try channel and the policy asks again. */
    srv.dns_once = dns_new(srv.base, c->dns_servers, c->dns_timeout_ms, 1, err, errlen);
    if (!srv.dns_once)
        return -1;
    /* One cache for both channels: an RBL answer is the same data whichever
     * channel fetched it.  In-flight sharing stays per channel (their retry
     * rules differ). */
    srv.dnscache = dnscache_new((size_t)c->dns_cache_size, (unsigned)c->dns_cache_max_ttl);
    if (c->dns_cache_size > 0 && !srv.dnscache) {
        snprintf(err, errlen, "dns cache: out of memory");
        return -1;
    }
    dns_set_cache(srv.dns, srv.dnscache);
    dns_set_cache(srv.dns_once, srv.dnscache);
    if (delivery_start(c, err, errlen) != 0)
        return -1;
    if (c->control_socket && control_open(c->control_socket, err, errlen) != 0)
        return -1;
    if (c->metrics_address && metrics_open(c->metrics_address, c->metrics_port, err, errlen) != 0)
        return -1;
    if (c->watch)
        watch_update(srv.rt);
    if (listeners_open(c, err, errlen) != 0)
        return -1;
    ownaddr_refresh();         /* Reverse Connect never probes these */
    /* Everything privileged is open; no client byte has been read yet (the
     * event loop has not run).  The worker, spool and delivery threads
     * already exist: glibc's setuid/setgroups change every thread's ids. */
    return privdrop_apply(c, err, errlen);
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    int check = 0;
    const char *replay = NULL;
    int replay_shadow = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            config = argv[++i];
        else if (strcmp(argv[i], "--check") == 0)
            check = 1;
        else if (strcmp(argv[i], "--print-config") == 0)
            check = 2;
        else if (strcmp(argv[i], "--replay") == 0 && i + 1 < argc)
            replay = argv[++i];
        else if (strcmp(argv[i], "--shadow") == 0)
            replay_shadow = 1;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!config || (replay_shadow && !replay)) {
        usage(stderr);
        return 2;
    }
    if (check == 2)
        return print_config(config);
    if (check)
        return check_only(config);
    if (replay) {
        signal(SIGPIPE, SIG_IGN);
        evthread_use_pthreads();
        srv.base = event_base_new();
        int r = replay_run(config, replay, replay_shadow);
        event_base_free(srv.base);
        return r;
    }

    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    evthread_use_pthreads();
    srv.base = event_base_new();
    char err[4096];
    int rc = 0;
    if (start(config, err, sizeof err) != 0) {
        fprintf(stderr, "moat: %s\n", err);
        log_kv(LOG_ERR, "startup_failed", "error", err, NULL);
        rc = 1;
    } else {
        struct event *hup = evsignal_new(srv.base, SIGHUP, on_hup, NULL);
        struct event *term = evsignal_new(srv.base, SIGTERM, on_term, NULL);
        struct event *intr = evsignal_new(srv.base, SIGINT, on_term, NULL);
        event_add(hup, NULL);
        event_add(term, NULL);
        event_add(intr, NULL);
        log_kv(LOG_INFO, "started", "config", config, NULL);
        notify_ready("listening");   /* every socket listens: systemd may start what depends on us */
        event_base_dispatch(srv.base);
        event_free(hup);
        event_free(term);
        event_free(intr);
        if (drain_timer)
            event_free(drain_timer);
    }
    listeners_close();
    control_close();
    metrics_close();
    watch_stop();
    smtp_close_all();
    callout_shutdown();        /* after the sessions: they cancel their waits */
    spool_close(srv.spool);    /* finishes queued writes: nothing half-written */
    delivery_stop();
    worker_shutdown();
    tb_free(srv.tempblock);
    dns_free(srv.dns);
    dns_free(srv.dns_once);
    dnscache_free(srv.dnscache);
    runtime_unref(srv.rt);
    listeners_free();
    stats_free();
    event_base_free(srv.base);
    log_kv(LOG_INFO, "stopped", NULL);
    sdnotify_close();
    return rc;
}
