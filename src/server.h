/* server.h - the process-wide state that outlives a reload.
 *
 * One event loop, the current runtime generation, the spool, DNS, and the
 * counters that must survive reloads (connections, temporary blocks). */
#ifndef MOAT_SERVER_H
#define MOAT_SERVER_H

#include <stdint.h>

struct event_base;
struct runtime;
struct spool;
struct dns;
struct tempblock;

struct stats {
    uint64_t connections_total, connections_current;
    uint64_t refused_denied, refused_restrict, refused_limit, refused_blocked;
    uint64_t refused_proxy;    /* PROXY-protocol sockets: every event=proxy_refused */
    uint64_t transactions, messages_accepted, messages_rejected, messages_discarded;
    uint64_t rcpts_accepted, rcpts_rejected;
    uint64_t hook_errors;
    uint64_t reloads_ok, reloads_failed;
    uint64_t spool_commits;
    uint64_t refused_disk;     /* 452 4.3.1: below min_free_space at MAIL, or disk full at the dot */
    double spool_latency_sum_ms, spool_latency_max_ms;
};

struct server {
    struct event_base *base;
    struct runtime *rt;        /* current generation; sessions hold their own ref */
    struct spool *spool;
    struct dns *dns;
    struct dns *dns_once;      /* one try, first timeout: queries a policy retries itself (RBL) */
    struct dnscache *dnscache; /* shared by dns and dns_once; NULL = dns.cache_size 0 */
    struct tempblock *tempblock;   /* temporary blocks outlive reloads */
    struct stats stats;
    int stopping;
};

extern struct server srv;

#endif
