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

#define BACKLOG 1024

static struct listener_sock *socks;
static int nsocks;

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
    smtp_session_new(fd, sa, (socklen_t)salen, ls);
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
}
