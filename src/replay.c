/* replay.c - moat -c FILE --replay SESSION.smtp (DESIGN.md §12).
 *
 * A recorded or hand-written client session is run through the real SMTP
 * state machine and the configured policies (real DNS), so the replies
 * printed are exactly the daemon's.  Nothing listens and nothing is stored:
 * the session sits on one end of a loopback TCP pair made once at start (a
 * socketpair would have no IP addresses for s.local_ip), the spool is a dry
 * one, and no delivery runs.  The peer address the policies see comes from
 * the file's "# ip=... port=... helo=... tls=..." header.
 *
 * Format: "C: line" is a client line (after DATA, the message lines up to
 * "C: ."), "S:" lines (recorded replies) and other "#" lines are ignored. */
#include "replay.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "debugrec.h"
#include "dns.h"
#include "iplist.h"
#include "listener.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "shadow.h"
#include "smtp.h"
#include "spool.h"
#include "tempblock.h"
#include "worker.h"

#define REPLAY_FILE_MAX (32L << 20)   /* a session file is read whole */
#define REPLAY_LINE_MAX 65536

struct replay {
    char **lines;                /* client lines, "C: " stripped */
    int n, next;
    char ip[64], helo[256];
    int port, tls;
    int in_data;                 /* the last command sent was DATA */
    int answered;                /* replies printed for the current step */
    struct bufferevent *bev;     /* our (the client's) end */
    char decided[128];           /* "rcpt: policies/relay.lua" of the step's verdict */
    int shadow;                  /* --shadow: print the shadow chain's verdicts too */
    int waiting;                 /* the live reply is in; the shadow's verdict is not */
    char shadow_out[4096];       /* the step's shadow lines, printed after the reply */
    struct event *shadow_timer;  /* a shadow that never answers does not stall the replay */
};

static struct replay R;

static void add_line(const char *l)
{
    R.lines = realloc(R.lines, (size_t)(R.n + 1) * sizeof *R.lines);
    R.lines[R.n++] = strdup(l);
}

/* "# ip=1.2.3.4 helo=mx.example port=25 tls=on" (any order, any subset). */
static void parse_header(const char *l)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", l);
    for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        if (strncmp(t, "ip=", 3) == 0)
            snprintf(R.ip, sizeof R.ip, "%s", t + 3);
        else if (strncmp(t, "helo=", 5) == 0)
            snprintf(R.helo, sizeof R.helo, "%s", t + 5);
        else if (strncmp(t, "port=", 5) == 0)
            R.port = atoi(t + 5);
        else if (strncmp(t, "tls=", 4) == 0)
            R.tls = strcmp(t + 4, "off") != 0;
    }
}

static int load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *line = malloc(REPLAY_LINE_MAX);
    long total = 0;
    int lineno = 0, rc = 0;
    while (fgets(line, REPLAY_LINE_MAX, f)) {
        lineno++;
        size_t len = strlen(line);
        total += (long)len;
        if (total > REPLAY_FILE_MAX || (len == REPLAY_LINE_MAX - 1 && line[len - 1] != '\n')) {
            snprintf(err, errlen, "%s:%d: file or line too long", path, lineno);
            rc = -1;
            break;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (strncmp(line, "C:", 2) == 0)
            add_line(line[2] == ' ' ? line + 3 : line + 2);
        else if (line[0] == '#' && R.n == 0)
            parse_header(line + 1);
        /* S: lines, other comments and blank lines are not the client's */
    }
    free(line);
    fclose(f);
    if (rc == 0 && R.n == 0) {
        snprintf(err, errlen, "%s: no client lines (C: ...)", path);
        rc = -1;
    }
    return rc;
}

static void on_verdict(const char *phase, const char *policy, const char *action, int code)
{
    (void)action;
    (void)code;
    char file[96];
    /* Stock policies are named, site scripts by their file name. */
    if (policy && *policy && !strstr(policy, ".lua"))
        snprintf(file, sizeof file, "policies/%s.lua", policy);
    else
        snprintf(file, sizeof file, "%s", policy && *policy ? policy : "-");
    snprintf(R.decided, sizeof R.decided, "%s: %s", phase, file);
}

static void send_step(void);

static void flush_shadow(void)
{
    fputs(R.shadow_out, stdout);
    R.shadow_out[0] = '\0';
    fflush(stdout);
}

/* Both verdicts of one hook (shadow.c): "   shadow rcpt: none [differs]". */
static void on_pair(enum phase ph, const struct verdict *live, const struct verdict *sv)
{
    char text[600], file[96];
    shadow_verdict_text(sv, text, sizeof text);
    shadow_policy_file(sv, file, sizeof file);
    size_t used = strlen(R.shadow_out);
    snprintf(R.shadow_out + used, sizeof R.shadow_out - used, "   shadow %s: %s%s%s%s [%s]\n", phase_names[ph], text,
             sv->action == V_NONE ? "" : " (", sv->action == V_NONE ? "" : file, sv->action == V_NONE ? "" : ")",
             live->action == sv->action && live->code == sv->code ? "same" : "differs");
    if (R.waiting && !shadow_pending()) {
        R.waiting = 0;
        evtimer_del(R.shadow_timer);
        flush_shadow();
        send_step();
    }
}

static void on_shadow_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!R.waiting)
        return;
    R.waiting = 0;
    printf("   shadow: no verdict within 10 s\n");
    flush_shadow();
    send_step();
}

static int is_cmd(const char *l, const char *cmd)
{
    size_t n = strlen(cmd);
    return strncasecmp(l, cmd, n) == 0 && (l[n] == '\0' || l[n] == ' ');
}

/* Send the next step: one command, or after a 354 the whole message. */
static void send_step(void)
{
    struct evbuffer *out = bufferevent_get_output(R.bev);
    R.decided[0] = '\0';
    if (R.in_data) {
        R.in_data = 0;
        int lines = 0, ended = 0;
        while (R.next < R.n && !ended) {
            const char *l = R.lines[R.next++];
            evbuffer_add_printf(out, "%s\r\n", l);
            ended = strcmp(l, ".") == 0;
            lines += !ended;
        }
        /* A file cut inside DATA (a capped debug file): end the message,
         * or the session would wait for the rest until smtp.timeout. */
        if (!ended)
            evbuffer_add_printf(out, ".\r\n");
        printf("C: (message, %d line%s%s)\n", lines, lines == 1 ? "" : "s",
               ended ? "" : "; the file ends inside DATA: '.' added");
        return;
    }
    if (R.next >= R.n) {
        event_base_loopbreak(srv.base);
        return;
    }
    const char *l = R.lines[R.next++];
    printf("C: %s\n", is_cmd(l, "AUTH") ? "AUTH (authentication data)" : l);
    evbuffer_add_printf(out, "%s\r\n", l);
    R.in_data = is_cmd(l, "DATA");
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char *l;
    size_t n;
    while ((l = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF))) {
        printf("S: %s\n", l);
        /* "250-" continues a reply, "250 " ends it. */
        int last = n < 4 || l[3] != '-';
        int code = atoi(l);
        free(l);
        if (!last)
            continue;
        if (R.decided[0])
            printf("   (%s)\n", R.decided);
        fflush(stdout);
        if (R.in_data && code != 354) {
            /* DATA refused: its message lines are not sent as commands. */
            R.in_data = 0;
            while (R.next < R.n && strcmp(R.lines[R.next++], ".") != 0)
                ;
        }
        if (R.shadow && shadow_pending()) {
            /* The shadow runs beside the live chain and may answer later:
             * the next command waits for it, so each step shows both. */
            R.waiting = 1;
            struct timeval tv = { 10, 0 };
            evtimer_add(R.shadow_timer, &tv);
            return;
        }
        flush_shadow();
        send_step();
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        printf("(connection closed by moat)\n");
        event_base_loopbreak(srv.base);
    }
}

/* A connected loopback TCP pair: fds[0] for the session, fds[1] ours. */
static int loopback_pair(int fds[2])
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) != 0) {
        if (l >= 0)
            close(l);
        return -1;
    }
    fds[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[1] < 0 || connect(fds[1], (struct sockaddr *)&a, sizeof a) != 0) {
        close(l);
        return -1;
    }
    fds[0] = accept(l, NULL, NULL);
    close(l);
    if (fds[0] < 0)
        return -1;
    evutil_make_socket_nonblocking(fds[0]);
    evutil_make_socket_nonblocking(fds[1]);
    return 0;
}

int replay_run(const char *config, const char *file, int shadow)
{
    char err[4096];
    snprintf(R.ip, sizeof R.ip, "127.0.0.1");
    R.port = 40000;
    if (load_file(file, err, sizeof err) != 0) {
        fprintf(stderr, "moat: %s\n", err);
        return 1;
    }
    if (R.helo[0] && !is_cmd(R.lines[0], "HELO") && !is_cmd(R.lines[0], "EHLO") && !is_cmd(R.lines[0], "LHLO")) {
        /* The header's helo= stands for a greeting the file does not have. */
        char ehlo[300];
        snprintf(ehlo, sizeof ehlo, "EHLO %s", R.helo);
        add_line(ehlo);
        char *first = R.lines[R.n - 1];
        memmove(R.lines + 1, R.lines, (size_t)(R.n - 1) * sizeof *R.lines);
        R.lines[0] = first;
    }
    struct sockaddr_storage peer;
    memset(&peer, 0, sizeof peer);
    struct sockaddr_in *p4 = (struct sockaddr_in *)&peer;
    struct sockaddr_in6 *p6 = (struct sockaddr_in6 *)&peer;
    if (inet_pton(AF_INET, R.ip, &p4->sin_addr) == 1) {
        p4->sin_family = AF_INET;
        p4->sin_port = htons((unsigned short)R.port);
    } else if (inet_pton(AF_INET6, R.ip, &p6->sin6_addr) == 1) {
        p6->sin6_family = AF_INET6;
        p6->sin6_port = htons((unsigned short)R.port);
    } else {
        fprintf(stderr, "moat: %s: ip=%s is not an address\n", file, R.ip);
        return 1;
    }

    srv.rt = runtime_load(config, err, sizeof err);
    if (!srv.rt) {
        fprintf(stderr, "moat: %s\n", err);
        return 1;
    }
    /* Proxy mode would forward the message to the next hop: a replay
     * answers as the store-and-forward front end instead. */
    if (srv.rt->cfg.delivery.mode == DELIVERY_PROXY)
        srv.rt->cfg.delivery.mode = DELIVERY_SPOOL;
    if (shadow && !srv.rt->shadow) {
        fprintf(stderr, "moat: %s: --shadow: no shadow = { ... } configured\n", config);
        runtime_unref(srv.rt);
        return 1;
    }
    if (shadow) {
        srv.rt->shadow_sample = 1;   /* the replayed session is always in the sample */
        R.shadow = 1;
        shadow_on_pair = on_pair;
        R.shadow_timer = evtimer_new(srv.base, on_shadow_timeout, NULL);
    } else
        srv.rt->shadow_sample = 0;   /* without --shadow only the live chain answers */
    log_set_level(LOG_WARN);     /* stdout is the transcript; warnings go to stderr */
    const struct config *c = &srv.rt->cfg;
    int rc = 1, fds[2] = { -1, -1 };
    srv.tempblock = tb_new();
    tb_configure(srv.tempblock, &c->tb);
    if (worker_init(srv.base, 1) != 0)
        goto out;
    srv.spool = spool_open(srv.base, NULL, 1, 0, err, sizeof err);
    srv.dns = dns_new(srv.base, c->dns_servers, c->dns_timeout_ms, c->dns_tries, err, sizeof err);
    srv.dns_once = srv.dns ? dns_new(srv.base, c->dns_servers, c->dns_timeout_ms, 1, err, sizeof err) : NULL;
    if (!srv.spool || !srv.dns || !srv.dns_once) {
        fprintf(stderr, "moat: %s\n", err);
        goto out;
    }
    if (loopback_pair(fds) != 0) {
        fprintf(stderr, "moat: loopback socket pair: %s\n", strerror(errno));
        goto out;
    }
    printf("# replay of %s: ip=%s port=%d tls=%s\n", file, R.ip, R.port, R.tls ? "on" : "off");
    smtp_on_verdict = on_verdict;
    debugrec_off = 1;            /* a replay writes no debug files either */
    R.bev = bufferevent_socket_new(srv.base, fds[1], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(R.bev, on_read, NULL, on_event, NULL);
    bufferevent_enable(R.bev, EV_READ | EV_WRITE);
    /* TLS already done in front of us (ext): the session is secure without
     * a handshake, which a replay cannot do. */
    static struct listener_sock ls;
    ls.tls = R.tls ? TLS_EXT : TLS_OFF;
    snprintf(ls.desc, sizeof ls.desc, "replay");
    unsigned char key[16];
    ip_key_from_sa((struct sockaddr *)&peer, key);
    smtp_session_new(fds[0], (struct sockaddr *)&peer, sizeof peer, &ls, key);
    event_base_dispatch(srv.base);
    rc = 0;
out:
    smtp_on_verdict = NULL;
    shadow_on_pair = NULL;
    if (R.shadow_timer)
        event_free(R.shadow_timer);
    if (R.bev)
        bufferevent_free(R.bev);
    smtp_close_all();
    spool_close(srv.spool);
    worker_shutdown();
    tb_free(srv.tempblock);
    dns_free(srv.dns);
    dns_free(srv.dns_once);
    runtime_unref(srv.rt);
    for (int i = 0; i < R.n; i++)
        free(R.lines[i]);
    free(R.lines);
    return rc;
}
