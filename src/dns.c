/* dns.c - c-ares driven by libevent; see dns.h for the callback contract.
 *
 * c-ares owns the sockets and tells us through the sock-state callback which
 * fds it wants watched; we mirror that with one persistent event per fd and a
 * single timer for c-ares's retransmits and timeouts.  Nothing here waits.
 *
 * ares_timeout() walks every outstanding query, so calling it after each
 * start made 10,000 back-to-back starts cost ~300 ms (quadratic).  Instead
 * the timer is only pulled in to now + timeout after ordinary activity (see
 * rearm_cheap) and recomputed exactly from ares_timeout() when it fires.
 *
 * Re-entrancy is handled with a depth counter around every c-ares call that
 * can run callbacks: dns_free() from inside a callback only marks the
 * resolver, and the outermost frame destroys it once c-ares has unwound
 * (destroying a channel from inside its own processing is undefined). */
#include "dns.h"
#include "dnscache.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ares.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

struct dns_sock {
    ares_socket_t fd;
    struct event *ev;
    struct dns_sock *next;
};

struct dns_query {
    dns *d;
    dns_cb cb;
    void *arg;
    enum dns_type type;
    int cancelled;
    int status;              /* result parked on the ready list */
    dns_answer *ans;
    struct dns_query *next;  /* ready list link */
    struct dns_query *wnext; /* the lookup's waiter list */
};

/* One question on the wire; every dns_query asking it waits on it.  With a
 * cache the lookup is findable by (name, type) so later askers join it
 * instead of sending the same question again; without one (cache_size 0)
 * each dns_query has its own, as before the cache existed. */
struct dns_lookup {
    dns *d;
    enum dns_type type;
    uint32_t hash;
    int shared;                /* in d->pending */
    dns_query *waiters;
    struct dns_lookup *hnext;
    char name[];
};

#define PENDING_BUCKETS 1024   /* in-flight questions; chains stay short */

struct dns {
    struct event_base *base;
    ares_channel ch;
    struct event *timer;     /* c-ares retransmit/timeout clock */
    struct event *deliver;   /* runs results that completed inside dns_query_start */
    struct dns_sock *socks;
    dns_query *ready_head, *ready_tail;
    int depth;               /* nesting of our frames that can run callbacks */
    int in_start;            /* inside ares_query(): results must be deferred */
    int free_pending;        /* dns_free() seen; destroy when depth drops to 0 */
    int freeing;             /* destroy in progress */
    int inflight;            /* queries c-ares still holds */
    int timeout_ms;          /* first-try timeout c-ares actually uses */
    int timer_armed, timer_exact;
    struct timeval timer_at; /* monotonic time the timer is due */
    struct dns_stats st;
    dnscache *cache;         /* not owned; NULL = no caching, no joining */
    struct dns_lookup *pending[PENDING_BUCKETS];
};

static void destroy(dns *d);

const char *dns_status_str(int status)
{
    static const char *const names[] = { "ok", "nxdomain", "nodata", "servfail", "timeout", "error" };
    if (status < 0 || status >= (int)(sizeof names / sizeof names[0]))
        return "?";
    return names[status];
}

static int map_ares_status(int s)
{
    switch (s) {
    case ARES_SUCCESS:   return DNS_OK;
    case ARES_ENOTFOUND: return DNS_NXDOMAIN; /* rcode NXDOMAIN */
    case ARES_ENODATA:   return DNS_NODATA;   /* NOERROR, no records of the type */
    case ARES_ESERVFAIL:
    case ARES_EREFUSED:
    /* c-ares 1.18 retries SERVFAIL/REFUSED/NOTIMP answers on the next server
     * and, once out of tries, reports ECONNREFUSED rather than the rcode;
     * ICMP port-unreachable ends the same way.  Either way no server gave
     * an answer: a temporary failure like SERVFAIL. */
    case ARES_ECONNREFUSED: return DNS_SERVFAIL;
    case ARES_ETIMEOUT:  return DNS_TIMEOUT;
    default:             return DNS_ERROR;
    }
}

/* ---- answers ---------------------------------------------------------- */

static void answer_free(dns_answer *a)
{
    dnscache_answer_free(a); /* one layout for parsed and cached answers */
}

static dns_answer *answer_new(int cap)
{
    dns_answer *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    if (cap > DNS_MAX_RR)
        cap = DNS_MAX_RR;
    a->rr = calloc(cap > 0 ? (size_t)cap : 1, sizeof *a->rr);
    if (!a->rr) {
        free(a);
        return NULL;
    }
    return a;
}

/* Takes ownership of text.  The caller sized rr, so this cannot overflow. */
static int answer_push(dns_answer *a, char *text, int pref)
{
    if (!text)
        return -1;
    a->rr[a->n].text = text;
    a->rr[a->n].pref = pref;
    a->n++;
    return 0;
}

static char *name_dup(const char *s)
{
    size_t n = strlen(s);
    if (n > 1 && s[n - 1] == '.') /* c-ares gives no trailing dot; be sure anyway */
        n--;
    return strndup(s, n);
}

/* Each parse_* returns an ares status and, on success, a non-empty answer. */

static int parse_a(const unsigned char *buf, int len, dns_answer **out)
{
    struct ares_addrttl t[DNS_MAX_RR];
    int n = DNS_MAX_RR;
    int rc = ares_parse_a_reply(buf, len, NULL, t, &n);
    if (rc != ARES_SUCCESS)
        return rc;
    if (n <= 0)
        return ARES_ENODATA;
    dns_answer *a = answer_new(n);
    if (!a)
        return ARES_ENOMEM;
    for (int i = 0; i < n; i++) {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &t[i].ipaddr, ip, sizeof ip);
        if (answer_push(a, strdup(ip), 0) < 0) {
            answer_free(a);
            return ARES_ENOMEM;
        }
    }
    *out = a;
    return ARES_SUCCESS;
}

static int parse_aaaa(const unsigned char *buf, int len, dns_answer **out)
{
    struct ares_addr6ttl t[DNS_MAX_RR];
    int n = DNS_MAX_RR;
    int rc = ares_parse_aaaa_reply(buf, len, NULL, t, &n);
    if (rc != ARES_SUCCESS)
        return rc;
    if (n <= 0)
        return ARES_ENODATA;
    dns_answer *a = answer_new(n);
    if (!a)
        return ARES_ENOMEM;
    for (int i = 0; i < n; i++) {
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &t[i].ip6addr, ip, sizeof ip);
        if (answer_push(a, strdup(ip), 0) < 0) {
            answer_free(a);
            return ARES_ENOMEM;
        }
    }
    *out = a;
    return ARES_SUCCESS;
}

static int parse_mx(const unsigned char *buf, int len, dns_answer **out)
{
    struct ares_mx_reply *mx = NULL;
    int rc = ares_parse_mx_reply(buf, len, &mx);
    if (rc != ARES_SUCCESS)
        return rc;
    int n = 0;
    for (struct ares_mx_reply *m = mx; m && n < DNS_MAX_RR; m = m->next)
        n++;
    dns_answer *a = n ? answer_new(n) : NULL;
    rc = n ? (a ? ARES_SUCCESS : ARES_ENOMEM) : ARES_ENODATA;
    for (struct ares_mx_reply *m = mx; a && m && a->n < n; m = m->next) {
        if (answer_push(a, name_dup(m->host), m->priority) < 0) {
            answer_free(a);
            a = NULL;
            rc = ARES_ENOMEM;
        }
    }
    ares_free_data(mx);
    *out = a;
    return rc;
}

static int parse_ptr(const unsigned char *buf, int len, dns_answer **out)
{
    /* ares_parse_ptr_reply wants the address to put in the hostent; we only
     * want the names, so a dummy is enough. */
    static const unsigned char dummy[4];
    struct hostent *h = NULL;
    int rc = ares_parse_ptr_reply(buf, len, dummy, sizeof dummy, AF_INET, &h);
    if (rc != ARES_SUCCESS)
        return rc;
    /* Every PTR target is in h_aliases (h_name is just the last one). */
    char *only[2] = { h->h_name, NULL };
    char **names = (h->h_aliases && h->h_aliases[0]) ? h->h_aliases : only;
    int n = 0;
    while (names[n] && n < DNS_MAX_RR)
        n++;
    dns_answer *a = n ? answer_new(n) : NULL;
    rc = n ? (a ? ARES_SUCCESS : ARES_ENOMEM) : ARES_ENODATA;
    for (int i = 0; a && i < n; i++) {
        if (answer_push(a, name_dup(names[i]), 0) < 0) {
            answer_free(a);
            a = NULL;
            rc = ARES_ENOMEM;
        }
    }
    ares_free_hostent(h);
    *out = a;
    return rc;
}

/* One TXT record is a run of list nodes starting at a record_start node. */
static char *txt_join(const struct ares_txt_ext *r)
{
    size_t total = 0;
    for (const struct ares_txt_ext *p = r; p && (p == r || !p->record_start); p = p->next)
        total += p->length;
    char *s = malloc(total + 1), *w = s;
    if (!s)
        return NULL;
    for (const struct ares_txt_ext *p = r; p && (p == r || !p->record_start); p = p->next)
        for (size_t i = 0; i < p->length; i++)
            /* A NUL would silently truncate the C string; DEL stands in for it, so
             * the record stays visibly invalid (SPF: a permerror, RFC 7208 §3.1). */
            *w++ = p->txt[i] ? (char)p->txt[i] : '\x7f';
    *w = '\0';
    return s;
}

static int parse_txt(const unsigned char *buf, int len, dns_answer **out)
{
    struct ares_txt_ext *txt = NULL;
    int rc = ares_parse_txt_reply_ext(buf, len, &txt);
    if (rc != ARES_SUCCESS)
        return rc;
    int n = 0;
    for (struct ares_txt_ext *p = txt; p; p = p->next)
        if (p->record_start || p == txt)
            n++;
    if (n > DNS_MAX_RR)
        n = DNS_MAX_RR;
    dns_answer *a = n ? answer_new(n) : NULL;
    rc = n ? (a ? ARES_SUCCESS : ARES_ENOMEM) : ARES_ENODATA;
    for (struct ares_txt_ext *p = txt; a && p && a->n < n; p = p->next) {
        if (!(p->record_start || p == txt))
            continue;
        if (answer_push(a, txt_join(p), 0) < 0) {
            answer_free(a);
            a = NULL;
            rc = ARES_ENOMEM;
        }
    }
    ares_free_data(txt);
    *out = a;
    return rc;
}

static int parse_reply(enum dns_type type, const unsigned char *buf, int len, dns_answer **out)
{
    *out = NULL;
    switch (type) {
    case DNS_A:    return parse_a(buf, len, out);
    case DNS_AAAA: return parse_aaaa(buf, len, out);
    case DNS_MX:   return parse_mx(buf, len, out);
    case DNS_PTR:  return parse_ptr(buf, len, out);
    case DNS_TXT:  return parse_txt(buf, len, out);
    }
    return ARES_ENOTIMP;
}

/* ---- event plumbing --------------------------------------------------- */

static void mono_now(struct timeval *tv)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
}

static void arm_timer(dns *d, const struct timeval *rel)
{
    struct timeval now;
    mono_now(&now);
    timeradd(&now, rel, &d->timer_at);
    d->timer_armed = evtimer_add(d->timer, rel) == 0;
}

static void disarm_timer(dns *d)
{
    evtimer_del(d->timer);
    d->timer_armed = 0;
}

/* O(outstanding queries). */
static void rearm_exact(dns *d)
{
    struct timeval tv, *tvp = ares_timeout(d->ch, NULL, &tv);
    if (tvp)
        arm_timer(d, tvp);
    else
        disarm_timer(d);
}

/* O(1).  c-ares 1.18 gives every (re)sent query the deadline
 * now + timeout << k with k >= 0, so nothing that just happened can be due
 * before now + timeout; an earlier pending timer already covers it.  A timer
 * left early because queries were answered just fires and goes exact.  If
 * that invariant ever broke, a deadline would be noticed at most one timeout
 * late, never lost. */
static void rearm_cheap(dns *d)
{
    struct timeval now, due, rel = { d->timeout_ms / 1000, (d->timeout_ms % 1000) * 1000 };
    mono_now(&now);
    timeradd(&now, &rel, &due);
    if (d->timer_armed && timercmp(&d->timer_at, &due, <=))
        return;
    arm_timer(d, &rel);
}

static void rearm_timer(dns *d)
{
    if (d->inflight == 0)
        disarm_timer(d); /* lets event_base_dispatch() return when idle */
    else if (d->timer_exact)
        rearm_exact(d);
    else
        rearm_cheap(d);
    d->timer_exact = 0;
}

static void enter(dns *d)
{
    d->depth++;
}

/* Last thing a frame does: d may be gone afterwards. */
static void leave(dns *d)
{
    if (--d->depth > 0)
        return;
    if (d->free_pending)
        destroy(d);
    else
        rearm_timer(d);
}

static void on_sock(evutil_socket_t fd, short what, void *arg)
{
    dns *d = arg;
    enter(d);
    ares_process_fd(d->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    leave(d);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dns *d = arg;
    d->timer_armed = 0;
    d->timer_exact = 1;
    enter(d);
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts only */
    leave(d);
}

static struct dns_sock **sock_find(dns *d, ares_socket_t fd)
{
    struct dns_sock **pp = &d->socks;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    return pp;
}

static void sock_drop(struct dns_sock **pp)
{
    struct dns_sock *s = *pp;
    *pp = s->next;
    event_free(s->ev); /* fine even from this event's own callback */
    free(s);
}

/* c-ares says which directions it wants on fd; (0,0) means it is closing.
 * If we cannot allocate, the query is not lost: the timer still fires and
 * c-ares times it out. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    dns *d = data;
    struct dns_sock **pp = sock_find(d, fd);
    if (*pp)
        sock_drop(pp);
    if (!readable && !writable)
        return;
    struct dns_sock *s = calloc(1, sizeof *s);
    if (!s)
        return;
    short what = EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0);
    s->fd = fd;
    s->ev = event_new(d->base, fd, what, on_sock, d);
    if (!s->ev || event_add(s->ev, NULL) < 0) {
        if (s->ev)
            event_free(s->ev);
        free(s);
        return;
    }
    s->next = d->socks;
    d->socks = s;
}

/* ---- completion ------------------------------------------------------- */

static void finish(dns_query *q, int status, dns_answer *ans)
{
    if (!q->cancelled && q->cb)
        q->cb(q->arg, status, status == DNS_OK ? ans : NULL);
    answer_free(ans);
    free(q);
}

static void count(dns *d, int status)
{
    if (status == DNS_TIMEOUT)
        d->st.timeouts++;
    else if (status == DNS_SERVFAIL || status == DNS_ERROR)
        d->st.failures++;
}

static void ready_push(dns *d, dns_query *q, int status, dns_answer *ans)
{
    q->status = status;
    q->ans = ans;
    q->next = NULL;
    if (d->ready_tail)
        d->ready_tail->next = q;
    else
        d->ready_head = q;
    d->ready_tail = q;
    event_active(d->deliver, EV_TIMEOUT, 1);
}

static void pending_remove(dns *d, struct dns_lookup *l)
{
    if (!l->shared)
        return;
    struct dns_lookup **pp = &d->pending[l->hash % PENDING_BUCKETS];
    while (*pp && *pp != l)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = l->hnext;
    l->shared = 0;
}

/* Gives one waiter its result: now, or from the loop if we are still inside
 * dns_query_start (the callback must not run before it returns). */
static void hand_over(dns *d, dns_query *q, int status, dns_answer *ans)
{
    if (d->free_pending && status == DNS_OK) {
        answer_free(ans);
        ans = NULL;
        status = DNS_ERROR;
    }
    if (d->in_start)
        ready_push(d, q, status, ans);
    else
        finish(q, status, ans);
}

static void on_ares_done(void *arg, int astatus, int timeouts, unsigned char *buf, int len)
{
    (void)timeouts;
    struct dns_lookup *l = arg;
    dns *d = l->d;
    dns_answer *ans = NULL;
    int status;

    d->inflight--;
    /* Out of the table first: a callback asking the same question again
     * must start a fresh lookup (or hit the cache), not join this one. */
    pending_remove(d, l);
    if (astatus == ARES_EDESTRUCTION) {
        status = DNS_ERROR; /* our own dns_free: not a resolver failure */
    } else {
        if (astatus == ARES_SUCCESS)
            astatus = parse_reply(l->type, buf, len, &ans);
        status = map_ares_status(astatus);
        count(d, status);
        if (d->cache && !d->free_pending &&
            (status == DNS_OK || status == DNS_NXDOMAIN || status == DNS_NODATA))
            dnscache_put(d->cache, l->name, l->type, status, ans,
                         dnscache_reply_ttl(buf, len, status != DNS_OK));
    }
    dns_query *q = l->waiters;
    free(l);
    while (q) {
        dns_query *next = q->wnext;
        int st = status;
        dns_answer *mine = ans;
        if (next && ans && !(mine = dnscache_copy_answer(ans)))
            st = DNS_ERROR; /* out of memory for this waiter's copy */
        hand_over(d, q, st, mine);
        if (!next)
            ans = NULL; /* the last waiter got the original */
        q = next;
    }
    answer_free(ans);
}

/* Drains only what is queued now, so callbacks that start failing queries
 * cannot keep this event running forever. */
static void on_deliver(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dns *d = arg;
    dns_query *q = d->ready_head;
    d->ready_head = d->ready_tail = NULL;
    enter(d);
    while (q) {
        dns_query *next = q->next;
        if (d->free_pending && q->status == DNS_OK) {
            answer_free(q->ans);
            q->ans = NULL;
            q->status = DNS_ERROR;
        }
        finish(q, q->status, q->ans);
        q = next;
    }
    leave(d);
}

/* ---- public ----------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *what, const char *why)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s", what, why);
}

#define DNS_RCVBUF (4 << 20)   /* bytes; the kernel caps it at net.core.rmem_max */

static int init_channel(dns *d, int timeout_ms, int tries, char *err, size_t errlen)
{
    static char lookups[] = "b"; /* never the hosts file */
    struct ares_options o;
    memset(&o, 0, sizeof o);
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_FLAGS | ARES_OPT_LOOKUPS | ARES_OPT_SOCK_RCVBUF;
    /* Hundreds of sessions asking at once (RBLs at connect) answer in bursts;
     * the default ~200 KB UDP buffer dropped replies, each a retry later. */
    o.socket_receive_buffer_size = DNS_RCVBUF;
    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = d;
    o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
    o.lookups = lookups;
    if (timeout_ms > 0) {
        o.timeout = timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
    if (tries > 0) {
        o.tries = tries;
        mask |= ARES_OPT_TRIES;
    }
    int rc = ares_init_options(&d->ch, &o, mask);
    if (rc != ARES_SUCCESS) {
        set_err(err, errlen, "ares_init_options", ares_strerror(rc));
        return -1;
    }
    /* Without our own values resolv.conf options apply: ask what won. */
    struct ares_options saved;
    int saved_mask;
    d->timeout_ms = 2000;
    if (ares_save_options(d->ch, &saved, &saved_mask) == ARES_SUCCESS) {
        if (saved.timeout > 0)
            d->timeout_ms = saved.timeout; /* ms: 1.18 saves ARES_OPT_TIMEOUTMS */
        ares_destroy_options(&saved);
    }
    return 0;
}

dns *dns_new(struct event_base *base, const char *servers, int timeout_ms, int tries,
             char *err, size_t errlen)
{
    if (!base) {
        set_err(err, errlen, "dns_new", "no event base");
        return NULL;
    }
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        set_err(err, errlen, "ares_library_init", ares_strerror(rc));
        return NULL;
    }
    dns *d = calloc(1, sizeof *d);
    if (!d) {
        set_err(err, errlen, "dns_new", "out of memory");
        ares_library_cleanup();
        return NULL;
    }
    d->base = base;
    if (init_channel(d, timeout_ms, tries, err, errlen) < 0) {
        free(d);
        ares_library_cleanup();
        return NULL;
    }
    d->timer = evtimer_new(base, on_timer, d);
    d->deliver = event_new(base, -1, 0, on_deliver, d);
    if (!d->timer || !d->deliver) {
        set_err(err, errlen, "dns_new", "event_new failed");
        destroy(d);
        return NULL;
    }
    if (servers && *servers) {
        rc = ares_set_servers_ports_csv(d->ch, servers);
        if (rc != ARES_SUCCESS) {
            set_err(err, errlen, servers, ares_strerror(rc));
            destroy(d);
            return NULL;
        }
    }
    return d;
}

static void destroy(dns *d)
{
    d->freeing = d->free_pending = 1;
    /* Runs on_ares_done(ARES_EDESTRUCTION) for every query c-ares holds and
     * closes its sockets through sock_state_cb. */
    ares_destroy(d->ch);
    while (d->ready_head) { /* re-read: a callback may have queued more */
        dns_query *q = d->ready_head;
        d->ready_head = q->next;
        if (!d->ready_head)
            d->ready_tail = NULL;
        answer_free(q->ans);
        finish(q, DNS_ERROR, NULL);
    }
    while (d->socks)
        sock_drop(&d->socks);
    if (d->timer)
        event_free(d->timer);
    if (d->deliver)
        event_free(d->deliver);
    free(d);
    ares_library_cleanup();
}

void dns_free(dns *d)
{
    if (!d || d->free_pending)
        return;
    if (d->depth > 0) {
        d->free_pending = 1; /* the outermost frame's leave() destroys */
        return;
    }
    destroy(d);
}

static int qtype(enum dns_type t)
{
    switch (t) {
    case DNS_A:    return ns_t_a;
    case DNS_AAAA: return ns_t_aaaa;
    case DNS_MX:   return ns_t_mx;
    case DNS_PTR:  return ns_t_ptr;
    case DNS_TXT:  return ns_t_txt;
    }
    return -1;
}

static struct dns_lookup *pending_find(dns *d, const char *name, enum dns_type type, uint32_t h)
{
    for (struct dns_lookup *l = d->pending[h % PENDING_BUCKETS]; l; l = l->hnext)
        if (l->hash == h && l->type == type && strcasecmp(l->name, name) == 0)
            return l;
    return NULL;
}

dns_query *dns_query_start(dns *d, const char *name, enum dns_type type, dns_cb cb, void *arg)
{
    int t = qtype(type);
    if (!d || !name || !*name || !cb || t < 0 || d->free_pending)
        return NULL;
    dns_query *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->d = d;
    q->cb = cb;
    q->arg = arg;
    q->type = type;
    if (d->cache) {
        int status;
        dns_answer *ans;
        if (dnscache_get(d->cache, name, type, &status, &ans)) {
            ready_push(d, q, status, ans); /* from the loop, as a real answer would */
            return q;
        }
        uint32_t h = dnscache_key_hash(name, type);
        struct dns_lookup *l = pending_find(d, name, type, h);
        if (l) {
            dnscache_count_join(d->cache);
            q->wnext = l->waiters;
            l->waiters = q;
            return q;
        }
    }
    size_t len = strlen(name);
    struct dns_lookup *l = calloc(1, sizeof *l + len + 1);
    if (!l) {
        free(q);
        return NULL;
    }
    memcpy(l->name, name, len + 1);
    l->d = d;
    l->type = type;
    l->waiters = q;
    if (d->cache) {
        dnscache_count_miss(d->cache);
        l->hash = dnscache_key_hash(name, type);
        l->shared = 1;
        l->hnext = d->pending[l->hash % PENDING_BUCKETS];
        d->pending[l->hash % PENDING_BUCKETS] = l;
    }
    d->st.queries++;
    d->inflight++;
    enter(d);
    d->in_start++;
    ares_query(d->ch, name, ns_c_in, t, on_ares_done, l); /* may complete at once */
    d->in_start--;
    leave(d); /* cannot destroy: free_pending was clear and no callback ran */
    return q;
}

void dns_set_cache(dns *d, dnscache *c)
{
    if (d)
        d->cache = c;
}

void dns_cancel(dns_query *q)
{
    /* c-ares 1.18 cannot drop a single query, so q lives on until c-ares
     * finishes with it; finish() then frees it silently. */
    if (q)
        q->cancelled = 1;
}

void dns_get_stats(const dns *d, struct dns_stats *out)
{
    if (!out)
        return;
    if (d)
        *out = d->st;
    else
        memset(out, 0, sizeof *out);
}

/* ---- reverse names ---------------------------------------------------- */

static size_t zone_len(const char *zone)
{
    size_t n = strlen(zone);
    while (n > 0 && zone[n - 1] == '.')
        n--;
    return n;
}

static int emit(char *out, size_t outlen, const char *labels, const char *zone, const char *dflt)
{
    if (!zone || !zone_len(zone))
        zone = dflt;
    int w = snprintf(out, outlen, "%s%.*s", labels, (int)zone_len(zone), zone);
    if (w < 0 || (size_t)w >= outlen) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

static int reverse4(const unsigned char *b, const char *zone, char *out, size_t outlen)
{
    char labels[16 + 1];
    snprintf(labels, sizeof labels, "%u.%u.%u.%u.", b[3], b[2], b[1], b[0]);
    return emit(out, outlen, labels, zone, "in-addr.arpa");
}

static int reverse6(const unsigned char *b, const char *zone, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    char labels[64 + 1], *w = labels;
    for (int i = 15; i >= 0; i--) {
        *w++ = hex[b[i] & 0xf];
        *w++ = '.';
        *w++ = hex[b[i] >> 4];
        *w++ = '.';
    }
    *w = '\0';
    return emit(out, outlen, labels, zone, "ip6.arpa");
}

int dns_reverse_name(const char *ip, const char *zone, char *out, size_t outlen)
{
    unsigned char b[16];
    if (!out || !outlen)
        return -1;
    out[0] = '\0';
    if (!ip)
        return -1;
    if (inet_pton(AF_INET, ip, b) == 1)
        return reverse4(b, zone, out, outlen);
    if (inet_pton(AF_INET6, ip, b) != 1)
        return -1;
    static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(b, v4mapped, sizeof v4mapped) == 0)
        return reverse4(b + 12, zone, out, outlen);
    return reverse6(b, zone, out, outlen);
}
