/* listener.h - listener sockets (seed 000 "Listeners").
 *
 * A listener holds several sockets; each is a port plus one local address or
 * "all" (every IPv4 and IPv6 address).  Connections refused by denied_ips or
 * by the socket's grant/deny list are closed before any greeting. */
#ifndef MOAT_LISTENER_H
#define MOAT_LISTENER_H

#include <stddef.h>

struct config;
struct sock_conf;

struct listener_state;

struct listener_sock {
    int listener_index, sock_index;   /* into the current config */
    int tls;                          /* enum tls_mode */
    char desc[80];                    /* "127.0.0.1:2525", "[::]:2525": also its identity */
    struct evconnlistener *evl;       /* NULL once a reload closed it */
    struct listener_state *state;     /* the listener's connection counts */
    int wanted;
    struct event *backoff;            /* out of descriptors: re-enables accepting */
    int paused;                       /* accept_paused logged, not yet resumed */
    struct listener_sock *next;
};

int listeners_open(const struct config *cfg, char *err, size_t errlen);
/* Make the open sockets match cfg: keep, open, close.  On error nothing
 * changed.  Call right before making cfg's runtime current. */
int listeners_apply(const struct config *cfg, char *err, size_t errlen);

/* Connection accounting across all sockets of a listener (seed 000
 * "Limiting Connections from the same Network Address"): a session that was
 * admitted calls listener_conn_closed when it ends. */
void listener_conn_closed(const struct listener_sock *ls, const unsigned char key[16]);
/* The addresses the open sockets are bound to (0.0.0.0 / :: for "all"),
 * as ip_key_from_sa keys; at most max; returns how many. */
int listeners_bound_keys(unsigned char (*keys)[16], int max);
void listeners_close(void);   /* stop accepting */
void listeners_free(void);    /* after every session has ended */

#endif
