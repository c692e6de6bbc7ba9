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
#include "runtime.h"
#include "server.h"
#include "smtp.h"

#define CTL_LINE_MAX 1024

static struct evconnlistener *ctl;
static char *ctl_path;

static void cmd_stats(struct evbuffer *out)
{
    const struct stats *st = &srv.stats;
    double avg = st->spool_commits ? st->spool_latency_sum_ms / (double)st->spool_commits : 0;
    evbuffer_add_printf(out,
        "ok\n"
        "connections_current %llu\nconnections_total %llu\n"
        "refused_denied %llu\nrefused_restrict %llu\nrefused_limit %llu\nrefused_blocked %llu\n"
        "transactions %llu\nmessages_accepted %llu\nmessages_rejected %llu\nmessages_discarded %llu\n"
        "rcpts_accepted %llu\nrcpts_rejected %llu\nhook_errors %llu\n"
        "spool_commits %llu\nspool_latency_avg_ms %.3f\nspool_latency_max_ms %.3f\n"
        "reloads_ok %llu\nreloads_failed %llu\ngeneration %lu\n",
        (unsigned long long)st->connections_current, (unsigned long long)st->connections_total,
        (unsigned long long)st->refused_denied, (unsigned long long)st->refused_restrict,
        (unsigned long long)st->refused_limit, (unsigned long long)st->refused_blocked,
        (unsigned long long)st->transactions, (unsigned long long)st->messages_accepted,
        (unsigned long long)st->messages_rejected, (unsigned long long)st->messages_discarded,
        (unsigned long long)st->rcpts_accepted, (unsigned long long)st->rcpts_rejected,
        (unsigned long long)st->hook_errors, (unsigned long long)st->spool_commits, avg,
        st->spool_latency_max_ms, (unsigned long long)st->reloads_ok,
        (unsigned long long)st->reloads_failed, srv.rt->generation);
}

static void run_command(char *line, struct evbuffer *out)
{
    char *arg = strchr(line, ' ');
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
    } else {
        evbuffer_add_printf(out, "error: unknown command '%s' (reload, stats)\n", line);
    }
}

static void ctl_done(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

static void ctl_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
    if (!line) {
        if (evbuffer_get_length(in) > CTL_LINE_MAX)
            bufferevent_free(bev);
        return;
    }
    bufferevent_disable(bev, EV_READ);
    run_command(line, bufferevent_get_output(bev));
    free(line);
    bufferevent_setcb(bev, NULL, ctl_done, NULL, NULL);
}

static void ctl_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    (void)arg;
    bufferevent_free(bev);
}

static void ctl_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    (void)arg;
    struct bufferevent *bev = bufferevent_socket_new(srv.base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, ctl_read, NULL, ctl_event, NULL);
    struct timeval tmo = { 10, 0 };
    bufferevent_set_timeouts(bev, &tmo, &tmo);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
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
    ctl = evconnlistener_new(srv.base, ctl_accept, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd);
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
