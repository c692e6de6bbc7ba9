/* listener.c - listener sockets and admission (seed 000). */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "iplist.h"
#include "log.h"
#include "proxyproto.h"
#include "runtime.h"
#include "server.h"
#include "smtp.h"
#include "tempblock.h"
#include <time.h>

#define BACKLOG 1024


/* ---- per-address connection counts ------------------------------------- *
 * One table per listener (all its sockets share the limits), keyed by the
 * 16-byte address.  Only addresses with open connections are in it, so it
 * never holds more entries than there are connections. */
#define COUNT_BUCKETS 4096

struct conn_count {
    unsigned char key[16];
    int n;
    struct conn_count *next;
};

struct listener_state {
    char name[64];
    int active;
    int waiting;              /* connections still waiting for their PROXY header */
    struct conn_count *buckets[COUNT_BUCKETS];
    struct listener_state *next;
};

/* Kept by listener name for the life of the process: counts survive reloads,
 * and a listener removed by a reload keeps counting down its sessions. */
static struct listener_state *states;

static struct listener_state *state_for(const char *name)
{
    struct listener_state *st = states;
    while (st && strcmp(st->name, name) != 0)
        st = st->next;
    if (!st) {
        st = calloc(1, sizeof *st);
        snprintf(st->name, sizeof st->name, "%s", name);
        st->next = states;
        states = st;
    }
    return st;
}

static unsigned bucket_of(const unsigned char key[16])
{
    unsigned h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % COUNT_BUCKETS;
}

static struct conn_count **find_count(struct listener_state *st, const unsigned char key[16])
{
    struct conn_count **p = &st->buckets[bucket_of(key)];
    while (*p && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    return p;
}

static int count_of(struct listener_state *st, const unsigned char key[16])
{
    struct conn_count **p = find_count(st, key);
    return *p ? (*p)->n : 0;
}

static void count_add(struct listener_state *st, const unsigned char key[16], int delta)
{
    struct conn_count **p = find_count(st, key);
    if (!*p) {
        if (delta <= 0)
            return;
        *p = calloc(1, sizeof **p);
        memcpy((*p)->key, key, 16);
    }
    (*p)->n += delta;
    st->active += delta;
    if ((*p)->n <= 0) {
        struct conn_count *dead = *p;
        *p = dead->next;
        free(dead);
    }
}

void listener_conn_closed(const struct listener_sock *ls, const unsigned char key[16])
{
    if (ls->state)      /* NULL: the stand-in socket of moat --replay, nothing counted */
        count_add(ls->state, key, -1);
}

/* Refuse with a reply: write it straight to the new socket (it fits in the
 * socket buffer of a fresh connection) and close. */
static void refuse_421(int fd, const char *ip, const struct listener_sock *ls, const char *why, const char *text)
{
    char line[256];
    int n = snprintf(line, sizeof line, "421 4.7.0 %s %s\r\n", srv.rt->cfg.server_name, text);
    ssize_t w = send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    log_kv(LOG_INFO, "refused", "ip", ip, "socket", ls->desc, "reason", why, NULL);
    close(fd);
}

/* The limits of seed 000, in order: the listener is full; free slots are at
 * or below the reserve and the address is not a client; the address is past
 * its per-address limit (limit_non_client for non-clients).  cluster_ips are
 * exempt from all of them. */
static const char *over_limit(const struct listener_conf *lc, struct listener_state *st,
                              const unsigned char key[16], int client)
{
    if (lc->max_connections && st->active >= lc->max_connections)
        return "max_connections";
    if (lc->max_connections && lc->reserve_for_clients && !client &&
        lc->max_connections - st->active <= lc->reserve_for_clients)
        return "reserve_for_clients";
    int limit = lc->limit_per_address;
    if (!client && lc->limit_non_client)
        limit = lc->limit_non_client;
    if (limit && count_of(st, key) >= limit)
        return client || !lc->limit_non_client ? "limit_per_address" : "limit_non_client";
    return NULL;
}

static void addr_text(const struct sockaddr *sa, char *buf, size_t len)
{
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, buf, (socklen_t)len);
    } else {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len);
    }
}

static const struct sock_conf *sock_conf_of(const struct listener_sock *ls)
{
    const struct config *c = &srv.rt->cfg;
    if (ls->listener_index < c->nlisteners && ls->sock_index < c->listeners[ls->listener_index].nsocks)
        return &c->listeners[ls->listener_index].socks[ls->sock_index];
    return NULL;
}

static void refuse(int fd, const char *ip, const struct listener_sock *ls, const char *why, uint64_t *counter)
{
    log_kv(LOG_INFO, "refused", "ip", ip, "socket", ls->desc, "reason", why, NULL);
    (*counter)++;
    close(fd);
}

/* Admission before any byte is sent: denied_ips and the socket's own
 * grant/deny list close the connection with no greeting (seed 000).  sa is
 * the client: the peer, or the address a PROXY header named. */
static void admit(int fd, const struct sockaddr *sa, socklen_t salen, struct listener_sock *ls)
{
    const struct config *c = &srv.rt->cfg;
    char ip[64];
    addr_text(sa, ip, sizeof ip);
    if (srv.stopping) {
        close(fd);
        return;
    }
    if (iplist_contains_sa(c->ip[T_DENIED], sa)) {
        refuse(fd, ip, ls, "denied_ips", &srv.stats.refused_denied);
        return;
    }
    const struct sock_conf *sc = sock_conf_of(ls);
    if (sc && sc->restrict_mode != RESTRICT_NONE) {
        int listed = iplist_contains_sa(sc->remote, sa);
        if ((sc->restrict_mode == RESTRICT_GRANT) != (listed != 0)) {
            refuse(fd, ip, ls, sc->restrict_mode == RESTRICT_GRANT ? "not_granted" : "restricted",
                   &srv.stats.refused_restrict);
            return;
        }
    }
    unsigned char key[16];
    ip_key_from_sa(sa, key);
    int left = srv.tempblock ? tb_blocked(srv.tempblock, key, time(NULL)) : 0;
    if (left > 0 && !iplist_contains_key(c->ip[T_UNBLACKLISTABLE], key)) {
        srv.stats.refused_blocked++;
        refuse_421(fd, ip, ls, "temporarily_blocked", "Your address is temporarily blocked, try again later");
        return;
    }
    struct listener_state *st = ls->state;
    if (!iplist_contains_key(c->ip[T_CLUSTER], key)) {
        const char *why = over_limit(&c->listeners[ls->listener_index], st, key,
                                     iplist_contains_key(c->ip[T_CLIENT], key));
        if (why) {
            srv.stats.refused_limit++;
            refuse_421(fd, ip, ls, why, "Too many connections, try again later");
            return;
        }
    }
    count_add(st, key, 1);
    smtp_session_new(fd, sa, salen, ls, key);
}

/* ---- PROXY protocol (DESIGN.md §9) -------------------------------------- *
 * On a proxy = true socket the connection is held here, before admission,
 * until its header has arrived: the balancer's address must not count
 * against limits or lists, the header's must.  Bytes are peeked and only the
 * header's own are consumed, so whatever follows it (a TLS ClientHello, a
 * pipelining client) stays in the socket for the session. */
#define PROXY_TIMEOUT_S 5

struct proxy_wait {
    int fd;
    struct event *ev;
    struct listener_sock *ls;
    struct listener_state *st;        /* counted in st->waiting while here */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    unsigned char buf[PP_MAX];
    size_t len;                       /* consumed so far, all header bytes */
    struct timespec started;
    struct proxy_wait *prev, *next;
};

static struct proxy_wait *waits;   /* to free what is still waiting at exit */

/* Every refusal on a proxy = true socket, logged and counted in one place so
 * `moatctl stats` (refused_proxy_total) matches the event=proxy_refused lines. */
static void proxy_refuse_log(const struct sockaddr *sa, const struct listener_sock *ls, const char *why)
{
    char ip[64];
    addr_text(sa, ip, sizeof ip);
    srv.stats.refused_proxy++;
    log_kv(LOG_WARN, "proxy_refused", "ip", ip, "socket", ls->desc, "reason", why, NULL);
}

static void proxy_refused(struct proxy_wait *w, const char *why)
{
    proxy_refuse_log((struct sockaddr *)&w->peer, w->ls, why);
}

static void proxy_wait_free(struct proxy_wait *w, int close_fd)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->st->waiting--;
    event_free(w->ev);
    if (close_fd)
        close(w->fd);
    free(w);
}

static void on_proxy_read(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_wait *w = arg;
    if (what & EV_TIMEOUT) {
        proxy_refused(w, w->len ? "header_timeout" : "no_header");
        proxy_wait_free(w, 1);
        return;
    }
    ssize_t n = recv(fd, w->buf + w->len, sizeof w->buf - w->len, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        goto again;
    if (n <= 0) {
        proxy_refused(w, n == 0 ? "closed_before_header" : "read_error");
        proxy_wait_free(w, 1);
        return;
    }
    struct pp_header h;
    enum pp_result r = pp_parse(w->buf, w->len + (size_t)n, &h);
    if (r == PP_ERROR) {
        proxy_refused(w, h.error);
        proxy_wait_free(w, 1);
        return;
    }
    /* Consume what is header: all of the peeked bytes while incomplete (so
     * the next peek sees only new ones), exactly up to its end once done. */
    size_t take = r == PP_DONE ? h.length - w->len : (size_t)n;
    ssize_t got = recv(fd, w->buf + w->len, take, MSG_DONTWAIT);
    if (got != (ssize_t)take) {
        proxy_refused(w, "read_error");
        proxy_wait_free(w, 1);
        return;
    }
    w->len += take;
    if (r == PP_DONE) {
        struct listener_sock *ls = w->ls;
        struct sockaddr_storage sa = h.local ? w->peer : h.src;
        socklen_t salen = h.local ? w->peerlen : h.addrlen;
        proxy_wait_free(w, 0);
        admit(fd, (struct sockaddr *)&sa, salen, ls);
        return;
    }
    if (w->len >= sizeof w->buf) {   /* pp_parse errs first; kept as a bound */
        proxy_refused(w, "too_long");
        proxy_wait_free(w, 1);
        return;
    }
again:;
    /* One deadline for the whole header, however it trickles in. */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = PROXY_TIMEOUT_S * 1000L - ((now.tv_sec - w->started.tv_sec) * 1000L +
                                         (now.tv_nsec - w->started.tv_nsec) / 1000000L);
    if (ms <= 0) {
        proxy_refused(w, "header_timeout");
        proxy_wait_free(w, 1);
        return;
    }
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    event_add(w->ev, &tv);
}

static void proxy_wait_new(int fd, const struct sockaddr *sa, int salen, struct listener_sock *ls)
{
    struct proxy_wait *w = calloc(1, sizeof *w);
    w->fd = fd;
    w->ls = ls;
    w->st = ls->state;
    w->st->waiting++;
    memcpy(&w->peer, sa, (size_t)salen < sizeof w->peer ? (size_t)salen : sizeof w->peer);
    w->peerlen = (socklen_t)salen;
    clock_gettime(CLOCK_MONOTONIC, &w->started);
    w->ev = event_new(srv.base, fd, EV_READ, on_proxy_read, w);
    w->next = waits;
    if (waits)
        waits->prev = w;
    waits = w;
    struct timeval tv = { PROXY_TIMEOUT_S, 0 };
    event_add(w->ev, &tv);
}

static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)evl;
    struct listener_sock *ls = arg;
    if (srv.stopping) {
        close(fd);
        return;
    }
    if (ls->paused) {
        ls->paused = 0;
        log_kv(LOG_INFO, "accept_resumed", "socket", ls->desc, NULL);
    }
    const struct sock_conf *sc = sock_conf_of(ls);
    if (sc && sc->proxy) {
        if (!iplist_contains_sa(srv.rt->cfg.proxy_from, sa)) {
            proxy_refuse_log(sa, ls, "not_in_proxy_from");
            close(fd);
            return;
        }
        /* Waiting connections count against max_connections too: without
         * it a balancer's flood of silent connections would be unbounded. */
        int max = srv.rt->cfg.listeners[ls->listener_index].max_connections;
        if (max && ls->state->active + ls->state->waiting >= max) {
            proxy_refuse_log(sa, ls, "max_connections");
            close(fd);
            return;
        }
        proxy_wait_new(fd, sa, salen, ls);
        return;
    }
    admit(fd, sa, (socklen_t)salen, ls);
}

static void on_backoff_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct listener_sock *ls = arg;
    if (ls->evl && !srv.stopping)
        evconnlistener_enable(ls->evl);
}

#define ACCEPT_BACKOFF_MS 100

static void on_accept_error(struct evconnlistener *evl, void *arg)
{
    struct listener_sock *ls = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
        log_kv(LOG_ERR, "accept_error", "socket", ls->desc, "error", strerror(e), NULL);
        return;
    }
    /* Out of descriptors (or kernel memory): the pending connection stays
     * readable, so a level-triggered listener would call accept again at
     * once, forever, at 100% CPU.  Stop listening for a moment instead; the
     * sessions already open go on, and as they close descriptors come back. */
    evconnlistener_disable(evl);
    if (!ls->backoff)
        ls->backoff = evtimer_new(srv.base, on_backoff_done, ls);
    struct timeval tv = { 0, ACCEPT_BACKOFF_MS * 1000 };
    evtimer_add(ls->backoff, &tv);
    if (!ls->paused) {   /* once per episode, not ten lines a second */
        ls->paused = 1;
        log_kv(LOG_WARN, "accept_paused", "socket", ls->desc, "error", strerror(e), NULL);
    }
}

static int bind_one(const struct sockaddr *sa, socklen_t len, int v6only, char *err, size_t errlen,
                    const char *desc)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "%s: socket: %s", desc, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (sa->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    if (bind(fd, sa, len) != 0 || listen(fd, BACKLOG) != 0) {
        snprintf(err, errlen, "%s: cannot listen: %s", desc, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- the socket set: opened at start, adjusted by every reload ---------- *
 * A socket is known by what it is bound to ("127.0.0.1:2525", "[::]:2525").
 * A reload keeps the sockets it still wants (their file descriptors never
 * close, so no connection is refused meanwhile), opens the new ones and
 * closes those it no longer lists.  listener_sock structures live until exit
 * because sessions point at them. */
static struct listener_sock *all_socks;

struct want {
    int li, si, tls;
    struct sockaddr_storage sa;
    socklen_t len;
    char desc[80];
    int optional;         /* the IPv6 half of "all": may fail on a v4-only host */
};

static void describe(const struct sockaddr *sa, int port, char *out, size_t len)
{
    char ip[64];
    addr_text(sa, ip, sizeof ip);
    snprintf(out, len, sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

static int wanted_sockets(const struct config *cfg, struct want **out)
{
    int n = 0, cap = 0;
    struct want *w = NULL;
    for (int li = 0; li < cfg->nlisteners; li++)
        for (int si = 0; si < cfg->listeners[li].nsocks; si++) {
            const struct sock_conf *sc = &cfg->listeners[li].socks[si];
            int all = strcasecmp(sc->address, "all") == 0;
            for (int k = 0; k < (all ? 2 : 1); k++) {
                if (n + 1 > cap) {
                    cap = cap ? cap * 2 : 8;
                    w = realloc(w, (size_t)cap * sizeof *w);
                }
                struct want *x = &w[n++];
                memset(x, 0, sizeof *x);
                x->li = li;
                x->si = si;
                x->tls = sc->tls;
                int v6 = all ? k == 1 : strchr(sc->address, ':') != NULL;
                x->optional = all && v6;
                if (v6) {
                    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&x->sa;
                    a->sin6_family = AF_INET6;
                    a->sin6_port = htons((uint16_t)sc->port);
                    if (all)
                        a->sin6_addr = in6addr_any;
                    else
                        inet_pton(AF_INET6, sc->address, &a->sin6_addr);
                    x->len = sizeof *a;
                } else {
                    struct sockaddr_in *a = (struct sockaddr_in *)&x->sa;
                    a->sin_family = AF_INET;
                    a->sin_port = htons((uint16_t)sc->port);
                    if (all)
                        a->sin_addr.s_addr = htonl(INADDR_ANY);
                    else
                        inet_pton(AF_INET, sc->address, &a->sin_addr);
                    x->len = sizeof *a;
                }
                describe((struct sockaddr *)&x->sa, sc->port, x->desc, sizeof x->desc);
            }
        }
    *out = w;
    return n;
}

static struct listener_sock *find_open(const char *desc)
{
    for (struct listener_sock *ls = all_socks; ls; ls = ls->next)
        if (ls->evl && strcmp(ls->desc, desc) == 0)
            return ls;
    return NULL;
}

static struct listener_sock *open_new(const struct want *w, char *err, size_t errlen)
{
    int fd = bind_one((const struct sockaddr *)&w->sa, w->len, 1, err, errlen, w->desc);
    if (fd < 0)
        return NULL;
    struct listener_sock *ls = calloc(1, sizeof *ls);
    snprintf(ls->desc, sizeof ls->desc, "%s", w->desc);
    ls->evl = evconnlistener_new(srv.base, on_accept, ls, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_DISABLED, 0, fd);  /* 0: already listening, keep BACKLOG */
    evconnlistener_set_error_cb(ls->evl, on_accept_error);
    return ls;
}

static void log_listening(const struct listener_sock *ls, const char *event)
{
    char addr[80];
    snprintf(addr, sizeof addr, "%s", ls->desc[0] == '[' ? ls->desc + 1 : ls->desc);
    char *colon = strrchr(addr, ':');
    const char *port = colon ? colon + 1 : "";
    if (colon)
        *colon = '\0';
    size_t n = strlen(addr);
    if (n && addr[n - 1] == ']')
        addr[n - 1] = '\0';
    log_kv(LOG_INFO, event, "socket", ls->desc, "address", addr, "port", port,
           "tls", ls->tls == TLS_ON ? "on" : ls->tls == TLS_EXT ? "ext" : "off", NULL);
}

int listeners_apply(const struct config *cfg, char *err, size_t errlen)
{
    struct want *w;
    int n = wanted_sockets(cfg, &w);
    struct listener_sock **use = calloc((size_t)n + 1, sizeof *use);
    int *fresh = calloc((size_t)n + 1, sizeof *fresh);
    int rc = 0;
    /* 1. Find or open everything first: a failure changes nothing. */
    for (int i = 0; i < n && rc == 0; i++) {
        use[i] = find_open(w[i].desc);
        if (use[i])
            continue;
        char e[512];
        use[i] = open_new(&w[i], e, sizeof e);
        fresh[i] = use[i] != NULL;
        if (!use[i] && w[i].optional)
            log_kv(LOG_WARN, "no_ipv6", "error", e, NULL);
        else if (!use[i]) {
            snprintf(err, errlen, "%s", e);
            rc = -1;
        }
    }
    if (rc != 0) {
        for (int i = 0; i < n; i++)
            if (fresh[i]) {
                evconnlistener_free(use[i]->evl);
                free(use[i]);
            }
        free(use);
        free(fresh);
        free(w);
        return -1;
    }
    /* 2. Commit: close what is no longer wanted, point the rest at the new config. */
    for (struct listener_sock *ls = all_socks; ls; ls = ls->next)
        ls->wanted = 0;
    for (int i = 0; i < n; i++)
        if (use[i])
            use[i]->wanted = 1;
    for (struct listener_sock *ls = all_socks; ls; ls = ls->next)
        if (ls->evl && !ls->wanted) {
            evconnlistener_free(ls->evl);
            ls->evl = NULL;
            log_listening(ls, "closed");
        }
    for (int i = 0; i < n; i++) {
        struct listener_sock *ls = use[i];
        if (!ls)
            continue;
        ls->listener_index = w[i].li;
        ls->sock_index = w[i].si;
        ls->tls = w[i].tls;
        ls->state = state_for(cfg->listeners[w[i].li].name);
        if (fresh[i]) {
            ls->next = all_socks;
            all_socks = ls;
            evconnlistener_enable(ls->evl);
            log_listening(ls, "listening");
        }
    }
    free(use);
    free(fresh);
    free(w);
    return 0;
}

int listeners_open(const struct config *cfg, char *err, size_t errlen)
{
    return listeners_apply(cfg, err, errlen);
}

void listeners_close(void)
{
    while (waits)
        proxy_wait_free(waits, 1);
    for (struct listener_sock *ls = all_socks; ls; ls = ls->next)
        if (ls->evl) {
            evconnlistener_free(ls->evl);
            ls->evl = NULL;
        }
}

int listeners_bound_keys(unsigned char (*keys)[16], int max)
{
    int n = 0;
    for (struct listener_sock *ls = all_socks; ls && n < max; ls = ls->next) {
        if (!ls->evl)
            continue;             /* closed by a reload */
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        if (getsockname(evconnlistener_get_fd(ls->evl), (struct sockaddr *)&sa, &len) == 0 &&
            ip_key_from_sa((struct sockaddr *)&sa, keys[n]) == 0)
            n++;
    }
    return n;
}

void listeners_free(void)
{
    while (all_socks) {
        struct listener_sock *n = all_socks->next;
        if (all_socks->backoff)
            event_free(all_socks->backoff);
        free(all_socks);
        all_socks = n;
    }
    while (states) {
        struct listener_state *st = states;
        states = st->next;
        for (int b = 0; b < COUNT_BUCKETS; b++)
            while (st->buckets[b]) {
                struct conn_count *n = st->buckets[b]->next;
                free(st->buckets[b]);
                st->buckets[b] = n;
            }
        free(st);
    }
}
