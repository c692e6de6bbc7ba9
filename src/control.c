/* control.c - the control socket (see control.h). */
#include "control.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "shadow.h"
#include "lua_bridge.h"
#include "runtime.h"
#include "server.h"
#include "smtp.h"
#include "stats.h"
#include "delivery.h"
#include "dnscache.h"
#include "tempblock.h"
#include <time.h>

#define CTL_LINE_MAX 1024

static struct evconnlistener *ctl;
static char *ctl_path;

static void cmd_stats(struct evbuffer *out)
{
    evbuffer_add_printf(out, "ok\n");
    stats_render_text(out);
    shadow_stats_text(out);
}

/* A command that waits (test-address asks DNS) keeps its connection until
 * the answer is written; if the client left meanwhile, it is just freed. */
struct ctl_conn {
    struct bufferevent *bev;
    int waiting, gone;
};

static void ctl_finish(struct ctl_conn *c);

static void test_address_done(void *arg, int ok, const char *text)
{
    struct ctl_conn *c = arg;
    c->waiting = 0;
    if (!c->gone) {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (ok && strncmp(text, "error:", 6) != 0)
            evbuffer_add_printf(out, "ok\n%s\n", text);
        else
            evbuffer_add_printf(out, "%s%s\n", ok ? "" : "error: ", text);
    }
    ctl_finish(c);
}

static void list_blocked(void *arg, const char *ip, const char *kind, int left, const char *reason)
{
    evbuffer_add_printf(arg, "%s %s %ds %s\n", ip, kind, left, reason && *reason ? reason : "-");
}

static void cmd_unblock(const char *ip, struct evbuffer *out)
{
    if (!ip || !*ip) {
        evbuffer_add_printf(out, "error: usage: unblock IP\n");
        return;
    }
    int r = tb_unblock_str(srv.tempblock, ip);
    if (r < 0)
        evbuffer_add_printf(out, "error: '%s' is not an IP address\n", ip);
    else if (r == 0)
        evbuffer_add_printf(out, "error: %s is not blocked\n", ip);
    else {
        log_kv(LOG_INFO, "unblocked", "ip", ip, "by", "moatctl", NULL);
        evbuffer_add_printf(out, "ok\n%s unblocked\n", ip);
    }
}

static void run_command(struct ctl_conn *c, char *line, struct evbuffer *out)
{
    char *arg = strpbrk(line, " \t");   /* moatctl uses tabs when an argument has spaces */
    if (arg)
        *arg++ = '\0';
    if (strcmp(line, "stats") == 0) {
        cmd_stats(out);
    } else if (strcmp(line, "reload") == 0) {
        char err[2048];
        if (server_reload(err, sizeof err) == 0)
            evbuffer_add_printf(out, "ok\nreloaded: generation %lu\n", srv.rt->generation);
        else
            evbuffer_add_printf(out, "error: %s\n", err);
    } else if (strcmp(line, "promote") == 0) {
        char err[2048];
        if (server_promote(err, sizeof err) == 0)
            evbuffer_add_printf(out, "ok\npromoted: the shadow set is live, generation %lu\n", srv.rt->generation);
        else
            evbuffer_add_printf(out, "error: %s\n", err);
    } else if (strcmp(line, "queue") == 0 || strcmp(line, "flush") == 0) {
        if (!delivery_running()) {
            evbuffer_add_printf(out, "error: no queue runner (delivery mode is not \"relay\")\n");
        } else if (line[0] == 'f') {
            delivery_flush();
            evbuffer_add_printf(out, "ok\nflushing: every waiting recipient is retried now\n");
        } else {
            evbuffer_add_printf(out, "ok\n");
            delivery_queue_text(out);
        }
    } else if (strcmp(line, "dns") == 0) {
        if (!arg || strcmp(arg, "flush") != 0) {
            evbuffer_add_printf(out, "error: usage: dns flush\n");
            return;
        }
        struct dnscache_stats cs;
        dnscache_get_stats(srv.dnscache, &cs);
        dnscache_flush(srv.dnscache);
        delivery_dns_flush();
        evbuffer_add_printf(out, "ok\nflushed: %lu DNS cache entries\n", cs.entries);
    } else if (strcmp(line, "shadow") == 0) {
        evbuffer_add_printf(out, "ok\nshadow: %s\n", srv.rt->shadow ? "on" : srv.rt->promoted ? "promoted (the shadow lists are live)" : "off");
        shadow_report(out);
    } else if (strcmp(line, "blocked") == 0) {
        evbuffer_add_printf(out, "ok\n");
        tb_foreach(srv.tempblock, time(NULL), list_blocked, out);
    } else if (strcmp(line, "unblock") == 0) {
        cmd_unblock(arg, out);
    } else if (strcmp(line, "test-address") == 0) {
        if (!arg || !*arg) {
            evbuffer_add_printf(out, "error: usage: test-address IP\n");
            return;
        }
        c->waiting = 1;
        lb_task(srv.rt, "moat.status", "test_address", arg, test_address_done, c);
    } else if (strcmp(line, "spf") == 0) {
        /* RFC 7208 check_host() on the daemon's resolver (DESIGN §8); the
         * Lua side answers "error: ..." for bad arguments. */
        c->waiting = 1;
        lb_task(srv.rt, "moat.spf", "control", arg ? arg : "", test_address_done, c);
    } else {
        evbuffer_add_printf(out, "error: unknown command '%s' (reload, promote, stats, shadow, test-address, spf, blocked, unblock, queue, flush, dns flush)\n", line);
    }
}

static void ctl_done(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *c = arg;
    if (!c->waiting && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        bufferevent_free(bev);
        free(c);
    }
}

/* After the answer is queued: free once it is written (or the peer left). */
static void ctl_finish(struct ctl_conn *c)
{
    if (c->gone) {
        bufferevent_free(c->bev);
        free(c);
        return;
    }
    ctl_done(c->bev, c);
}

static void ctl_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    struct ctl_conn *c = arg;
    c->gone = 1;
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    if (!c->waiting)
        ctl_finish(c);
}

static void ctl_read(struct bufferevent *bev, void *arg)
{
    struct ctl_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
    if (!line) {
        if (evbuffer_get_length(in) > CTL_LINE_MAX) {
            c->gone = 1;
            ctl_finish(c);
        }
        return;
    }
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, ctl_done, ctl_event, c);
    run_command(c, line, bufferevent_get_output(bev));
    free(line);
    if (!c->waiting && !c->gone)
        ctl_done(bev, c);
}

static void ctl_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    (void)arg;
    struct ctl_conn *c = calloc(1, sizeof *c);
    c->bev = bufferevent_socket_new(srv.base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, ctl_read, NULL, ctl_event, c);
    struct timeval tmo = { 30, 0 };
    bufferevent_set_timeouts(c->bev, &tmo, &tmo);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

int control_open(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "%s: control socket path too long", path);
        return -1;
    }
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    mode_t old = umask(0077);   /* mode 0600 from the start: no window where others can connect */
    int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (rc != 0 || listen(fd, 16) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    chmod(path, 0600);
    ctl = evconnlistener_new(srv.base, ctl_accept, NULL, LEV_OPT_CLOSE_ON_FREE, 0, fd);
    ctl_path = strdup(path);
    log_kv(LOG_INFO, "control_socket", "path", path, NULL);
    return 0;
}

void control_close(void)
{
    if (ctl) {
        evconnlistener_free(ctl);
        ctl = NULL;
    }
    if (ctl_path) {
        unlink(ctl_path);
        free(ctl_path);
        ctl_path = NULL;
    }
}
