/* listener.c - listener sockets and admission (seed 000). */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
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
#include "runtime.h"
#include "server.h"
#include "smtp.h"
#include "tempblock.h"
#include <time.h>

#define BACKLOG 1024

static struct listener_sock *socks;
static int nsocks;

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
    int active;
    struct conn_count *buckets[COUNT_BUCKETS];
};

static struct listener_state *lstate;   /* one per configured listener */
static int nlstate;

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
    if (ls->listener_index < nlstate)
        count_add(&lstate[ls->listener_index], key, -1);
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

static void refuse(int fd, const char *ip, const struct listener_sock *ls, const char *why, uint64_t *counter)
{
    log_kv(LOG_INFO, "refused", "ip", ip, "socket", ls->desc, "reason", why, NULL);
    (*counter)++;
    close(fd);
}

/* Admission before any byte is sent: denied_ips and the socket's own
 * grant/deny list close the connection with no greeting (seed 000). */
static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)evl;
    struct listener_sock *ls = arg;
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
    const struct sock_conf *sc = NULL;
    if (ls->listener_index < c->nlisteners && ls->sock_index < c->listeners[ls->listener_index].nsocks)
        sc = &c->listeners[ls->listener_index].socks[ls->sock_index];
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
    struct listener_state *st = &lstate[ls->listener_index];
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
    smtp_session_new(fd, sa, (socklen_t)salen, ls, key);
}

static void on_accept_error(struct evconnlistener *evl, void *arg)
{
    struct listener_sock *ls = arg;
    int e = EVUTIL_SOCKET_ERROR();
    log_kv(LOG_ERR, "accept_error", "socket", ls->desc, "error", strerror(e), NULL);
    (void)evl;
    /* EMFILE and friends: libevent retries on the next readable event. */
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

static int add_socket(int li, int si, const struct sock_conf *sc, const struct sockaddr *sa, socklen_t len,
                      char *err, size_t errlen)
{
    struct listener_sock *ls = &socks[nsocks];
    memset(ls, 0, sizeof *ls);
    char ip[64];
    addr_text(sa, ip, sizeof ip);
    snprintf(ls->desc, sizeof ls->desc, sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, sc->port);
    int fd = bind_one(sa, len, 1, err, errlen, ls->desc);
    if (fd < 0)
        return -1;
    ls->listener_index = li;
    ls->sock_index = si;
    ls->tls = sc->tls;
    ls->evl = evconnlistener_new(srv.base, on_accept, ls, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    evconnlistener_set_error_cb(ls->evl, on_accept_error);
    nsocks++;
    char port[16];
    snprintf(port, sizeof port, "%d", sc->port);
    log_kv(LOG_INFO, "listening", "socket", ls->desc, "address", ip, "port", port,
           "tls", sc->tls == TLS_ON ? "on" : sc->tls == TLS_EXT ? "ext" : "off", NULL);
    return 0;
}

static int open_sock(int li, int si, const struct sock_conf *sc, char *err, size_t errlen)
{
    if (strcasecmp(sc->address, "all") == 0) {
        struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)sc->port) };
        v4.sin_addr.s_addr = htonl(INADDR_ANY);
        if (add_socket(li, si, sc, (struct sockaddr *)&v4, sizeof v4, err, errlen) != 0)
            return -1;
        struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)sc->port) };
        v6.sin6_addr = in6addr_any;
        char e6[256];
        if (add_socket(li, si, sc, (struct sockaddr *)&v6, sizeof v6, e6, sizeof e6) != 0)
            log_kv(LOG_WARN, "no_ipv6", "error", e6, NULL);   /* a host without IPv6 still serves v4 */
        return 0;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (strchr(sc->address, ':')) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)sc->port);
        inet_pton(AF_INET6, sc->address, &v6->sin6_addr);
        len = sizeof *v6;
    } else {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)sc->port);
        inet_pton(AF_INET, sc->address, &v4->sin_addr);
        len = sizeof *v4;
    }
    return add_socket(li, si, sc, (struct sockaddr *)&ss, len, err, errlen);
}

int listeners_open(const struct config *cfg, char *err, size_t errlen)
{
    int total = 0;
    for (int i = 0; i < cfg->nlisteners; i++)
        total += cfg->listeners[i].nsocks * 2;
    socks = calloc((size_t)total + 1, sizeof *socks);
    lstate = calloc((size_t)cfg->nlisteners + 1, sizeof *lstate);
    nlstate = cfg->nlisteners;
    for (int i = 0; i < cfg->nlisteners; i++)
        for (int j = 0; j < cfg->listeners[i].nsocks; j++)
            if (open_sock(i, j, &cfg->listeners[i].socks[j], err, errlen) != 0)
                return -1;
    return 0;
}

void listeners_close(void)
{
    for (int i = 0; i < nsocks; i++)
        evconnlistener_free(socks[i].evl);
    nsocks = 0;
    /* The array stays: sessions still point at their listener_sock. */
}

void listeners_free(void)
{
    free(socks);
    socks = NULL;
    for (int i = 0; i < nlstate; i++)
        for (int b = 0; b < COUNT_BUCKETS; b++)
            while (lstate[i].buckets[b]) {
                struct conn_count *n = lstate[i].buckets[b]->next;
                free(lstate[i].buckets[b]);
                lstate[i].buckets[b] = n;
            }
    free(lstate);
    lstate = NULL;
    nlstate = 0;
}
