/* delivery.c - the queue runner of relay mode (see delivery.h). */
#include "delivery.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "dnscache.h"
#include "envelope.h"
#include "log.h"
#include "smtpc.h"
#include "spool.h"

#define TICK_MS 1000
#define MAX_IPS 8
#define ENV_MAX (16 << 20)

struct qmsg {
    struct envelope env;
    int in_flight;             /* attempts running for this message */
    struct qmsg *next;
};

struct attempt {
    struct qmsg *m;
    char dest[300];            /* "next hop", "via relay.example", "MX of example.net" */
    char key[300];             /* per-destination concurrency key */
    int rcpt[64];              /* indexes into m->env.rcpts */
    int n;
    int port;
    char ips[MAX_IPS][64];
    int nips, cur;
    struct smtpc *c;
    int replies_left, accepted;
    int rcpt_code[64];
    char *rcpt_reply[64];
    void *dnsq;
    char mx_hosts[MAX_IPS][256];
    int nmx, mx_done;
    char cur_host[256];        /* the host whose A, then AAAA, records are asked */
    int cur_type;              /* DNS_A or DNS_AAAA */
    int nxdomain, dns_failed;  /* what the address lookups said, for the verdict */
    struct attempt *prev, *next;   /* live attempts, aborted at shutdown */
};

static struct {
    int running;
    pthread_t thread;
    struct event_base *base;
    struct dns *dns;
    int pipe_rd, pipe_wr;
    struct event *pipe_ev, *tick;
    pthread_mutex_t mu;         /* the queue, for moatctl queue/flush */
    struct qmsg *queue;
    int flush;
    struct delivery_conf conf;
    char *spool_dir, *server_name;
    struct dest_count { char key[300]; int n; } dests[256];
    int ndests;
    struct attempt *attempts;
    int stopping;
    dnscache *cache;
} R = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void finish_attempt(struct attempt *a);
static void start_attempt(struct attempt *a);

/* ---- per-destination concurrency ------------------------------------------- */

static int *dest_count(const char *key)
{
    for (int i = 0; i < R.ndests; i++)
        if (strcmp(R.dests[i].key, key) == 0)
            return &R.dests[i].n;
    if (R.ndests == (int)(sizeof R.dests / sizeof R.dests[0]))
        return &R.dests[R.ndests - 1].n;   /* bounded: the rest share one slot */
    snprintf(R.dests[R.ndests].key, sizeof R.dests[0].key, "%s", key);
    R.dests[R.ndests].n = 0;
    return &R.dests[R.ndests++].n;
}

/* ---- files -------------------------------------------------------------------- */

static char *read_file(const char *path, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size > max) {
        close(fd);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t n = 0;
    ssize_t r;
    while (n < (size_t)st.st_size && (r = read(fd, buf + n, (size_t)st.st_size - n)) > 0)
        n += (size_t)r;
    close(fd);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int write_durable(const char *dir, const char *name, struct evbuffer *b)
{
    char tmp[4096], dst[4096];
    snprintf(tmp, sizeof tmp, "%s/tmp/%s.%d", dir, name, (int)getpid());
    snprintf(dst, sizeof dst, "%s/new/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno;
    int err = 0;
    while (!err && evbuffer_get_length(b) > 0)
        if (evbuffer_write(b, fd) < 0 && errno != EINTR)
            err = errno;
    if (!err && fsync(fd) != 0)
        err = errno;
    close(fd);
    if (!err && rename(tmp, dst) != 0)
        err = errno;
    if (err) {
        unlink(tmp);
        return err;
    }
    char ndir[4096];
    snprintf(ndir, sizeof ndir, "%s/new", dir);
    int dfd = open(ndir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* Record per-recipient progress: the .env is replaced atomically. */
static int save_env(struct qmsg *m)
{
    struct evbuffer *b = evbuffer_new();
    envelope_write(&m->env, b);
    char name[64];
    snprintf(name, sizeof name, "%s.env", m->env.id);
    int err = write_durable(R.spool_dir, name, b);
    evbuffer_free(b);
    if (err)
        log_kv(LOG_ERR, "queue_write_error", "qid", m->env.id, "error", strerror(err), NULL);
    return err;
}

/* ---- bounces (RFC 3464) ------------------------------------------------------ */

static void add_original_headers(struct evbuffer *out, const char *id)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/new/%s.eml", R.spool_dir, id);
    size_t len;
    char *text = read_file(path, 64 << 20, &len);
    if (!text)
        return;
    char *end = strstr(text, "\r\n\r\n");
    size_t hlen = end ? (size_t)(end - text) + 2 : (len < 65536 ? len : 65536);
    evbuffer_add(out, text, hlen);
    free(text);
}

static void queue_bounce(struct qmsg *m)
{
    struct envelope *e = &m->env;
    char id[32], date[64], boundary[80];
    spool_new_id(id);
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
    snprintf(boundary, sizeof boundary, "%s/%s", id, R.server_name);
    struct evbuffer *msg = evbuffer_new();
    evbuffer_add_printf(msg,
        "From: Mail Delivery System <MAILER-DAEMON@%s>\r\nTo: <%s>\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Date: %s\r\nMessage-ID: <%s@%s>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host %s.\r\n\r\nYour message (queue id %s) could not be delivered to one or more\r\n"
        "recipients:\r\n\r\n",
        R.server_name, e->from, date, id, R.server_name, boundary, boundary, R.server_name, e->id);
    for (int i = 0; i < e->nrcpts; i++)
        if (e->rcpts[i].status == RS_BOUNCED)
            evbuffer_add_printf(msg, "<%s>: %s\r\n", e->rcpts[i].addr, e->rcpts[i].reply ? e->rcpts[i].reply : "failed");
    evbuffer_add_printf(msg, "\r\n--%s\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; %s\r\n"
                             "X-Moat-Queue-ID: %s\r\nArrival-Date: %s\r\n",
                        boundary, R.server_name, e->id, e->received ? e->received : date);
    for (int i = 0; i < e->nrcpts; i++) {
        struct env_rcpt *r = &e->rcpts[i];
        if (r->status != RS_BOUNCED)
            continue;
        const char *reply = r->reply ? r->reply : "";
        char status[16] = "5.0.0";
        if (strncmp(reply, "delivery time expired", 21) == 0)
            snprintf(status, sizeof status, "4.4.7");   /* RFC 3463: delivery time expired */
        else if (strlen(reply) > 8 && reply[3] == ' ' && reply[4] >= '4' && reply[4] <= '5' && reply[5] == '.')
            sscanf(reply + 4, "%15s", status);
        evbuffer_add_printf(msg, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n"
                                 "Diagnostic-Code: smtp; %s\r\n", r->addr, status, reply);
    }
    evbuffer_add_printf(msg, "\r\n--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", boundary);
    add_original_headers(msg, e->id);
    evbuffer_add_printf(msg, "\r\n--%s--\r\n", boundary);

    /* The bounce is an ordinary message from <> to the Return-Path. */
    struct envelope b;
    memset(&b, 0, sizeof b);
    snprintf(b.id, sizeof b.id, "%s", id);
    b.from = "";
    struct env_rcpt r = { .addr = e->from, .route_address = e->from };
    snprintf(r.kind, sizeof r.kind, "remote");
    b.rcpts = &r;
    b.nrcpts = 1;
    b.received = e->received;
    b.received_at = now;
    b.size = (long)evbuffer_get_length(msg);
    struct evbuffer *env = evbuffer_new();
    envelope_write(&b, env);
    char eml[64], envn[64];
    snprintf(eml, sizeof eml, "%s.eml", id);
    snprintf(envn, sizeof envn, "%s.env", id);
    int err = write_durable(R.spool_dir, eml, msg);
    if (!err)
        err = write_durable(R.spool_dir, envn, env);
    evbuffer_free(msg);
    evbuffer_free(env);
    log_kv(err ? LOG_ERR : LOG_INFO, "bounce", "qid", e->id, "bounce_qid", id, "to", e->from,
           "error", err ? strerror(err) : NULL, NULL);
}

/* ---- one message's life ------------------------------------------------------ */

/* The address to give the next hop: the Router's rewrite when there is one. */
static const char *rcpt_address(const struct env_rcpt *r)
{
    return r->route_address && *r->route_address ? r->route_address : r->addr;
}


static int pending_rcpts(const struct qmsg *m)
{
    int n = 0;
    for (int i = 0; i < m->env.nrcpts; i++)
        n += m->env.rcpts[i].status == RS_PENDING;
    return n;
}

static void remove_message(struct qmsg *m)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/new/%s.env", R.spool_dir, m->env.id);
    unlink(path);           /* .env first: without it the .eml is not a message */
    snprintf(path, sizeof path, "%s/new/%s.eml", R.spool_dir, m->env.id);
    unlink(path);
    pthread_mutex_lock(&R.mu);
    for (struct qmsg **p = &R.queue; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            break;
        }
    pthread_mutex_unlock(&R.mu);
    log_kv(LOG_INFO, "removed", "qid", m->env.id, NULL);
    envelope_clear(&m->env);
    free(m);
}

/* After the last attempt of a round: persist, bounce, remove when done. */
static void message_round_done(struct qmsg *m)
{
    if (m->in_flight > 0)
        return;
    save_env(m);
    if (pending_rcpts(m) > 0)
        return;
    int bounced = 0;
    for (int i = 0; i < m->env.nrcpts; i++)
        bounced += m->env.rcpts[i].status == RS_BOUNCED;
    if (bounced && m->env.from && *m->env.from)
        queue_bounce(m);
    else if (bounced)
        log_kv(LOG_INFO, "bounce_dropped", "qid", m->env.id, "reason", "null sender: no bounce to <>", NULL);
    remove_message(m);
}

static void set_result(struct attempt *a, int k, int code, const char *text)
{
    struct env_rcpt *r = &a->m->env.rcpts[a->rcpt[k]];
    pthread_mutex_lock(&R.mu);
    free(r->reply);
    char buf[SMTPC_REPLY_MAX + 32];
    if (code)
        snprintf(buf, sizeof buf, "%s", text);
    else
        snprintf(buf, sizeof buf, "connection to %s failed: %s", a->dest, text);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    r->reply = strdup(buf);
    r->attempts++;
    time_t now = time(NULL);
    const char *status;
    if (code >= 200 && code < 300) {
        r->status = RS_SENT;
        status = "sent";
    } else if (code >= 500) {
        r->status = RS_BOUNCED;
        status = "bounced";
    } else if (now - a->m->env.received_at >= R.conf.max_age) {
        r->status = RS_BOUNCED;
        free(r->reply);
        snprintf(buf + 200, sizeof buf - 200, "delivery time expired; last error: %.180s", buf);
        r->reply = strdup(buf + 200);
        status = "bounced";
    } else {
        long delay = R.conf.retry_min;
        for (int i = 1; i < r->attempts && delay < R.conf.retry_max; i++)
            delay *= 2;
        if (delay > R.conf.retry_max)
            delay = R.conf.retry_max;
        r->next_try = now + delay;
        status = "deferred";
    }
    pthread_mutex_unlock(&R.mu);
    char port[16];
    snprintf(port, sizeof port, "%d", a->port);
    log_kv(LOG_INFO, "delivery", "qid", a->m->env.id, "rcpt", r->addr, "status", status, "relay", a->dest,
           "ip", a->nips ? a->ips[a->cur < a->nips ? a->cur : a->nips - 1] : NULL, "port", port,
           "reply", r->reply, NULL);
}

static void fail_rest(struct attempt *a, int code, const char *text)
{
    for (int k = 0; k < a->n; k++)
        if (a->rcpt_code[k] == -1)
            set_result(a, k, code, text);
}

static void on_final(void *arg, int code, const char *text)
{
    struct attempt *a = arg;
    /* SMTP: one reply for all accepted recipients; LMTP: one per recipient, in order. */
    for (int k = 0; k < a->n; k++) {
        if (a->rcpt_code[k] != 250 && a->rcpt_code[k] != 251)
            continue;
        if (R.conf.lmtp) {
            a->rcpt_code[k] = -2;
            set_result(a, k, code, text);
            break;
        }
        a->rcpt_code[k] = -2;
        set_result(a, k, code, text);
    }
    if (--a->replies_left == 0)
        finish_attempt(a);
}

static void free_ref(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)data);
}

static void send_data(struct attempt *a)
{
    size_t len;
    char path[4096];
    snprintf(path, sizeof path, "%s/new/%s.eml", R.spool_dir, a->m->env.id);
    char *text = read_file(path, (size_t)2 << 30, &len);
    if (!text) {
        for (int k = 0; k < a->n; k++)
            if (a->rcpt_code[k] == 250 || a->rcpt_code[k] == 251)
                a->rcpt_code[k] = -1;
        fail_rest(a, 451, "451 4.3.0 queue file unreadable");
        finish_attempt(a);
        return;
    }
    struct evbuffer *msg = evbuffer_new();
    evbuffer_add_reference(msg, text, len, free_ref, NULL);
    a->replies_left = R.conf.lmtp ? a->accepted : 1;
    smtpc_data(a->c, msg, a->replies_left, on_final, a);
}

static void on_rcpt(void *arg, int code, const char *text)
{
    struct attempt *a = arg;
    int k = 0;
    while (k < a->n && a->rcpt_code[k] != -1)
        k++;
    if (k == a->n)
        return;
    if (code == 250 || code == 251) {
        a->rcpt_code[k] = code;
        a->accepted++;
    } else {
        set_result(a, k, code, text);
        a->rcpt_code[k] = -2;
    }
    if (--a->replies_left > 0)
        return;
    if (a->accepted)
        send_data(a);
    else
        finish_attempt(a);
}

static void on_mail(void *arg, int code, const char *text)
{
    struct attempt *a = arg;
    if (code != 250) {
        /* The RCPTs were pipelined behind MAIL: their replies still come. */
        a->replies_left = -a->n;   /* ignore them */
        fail_rest(a, code, text);
        for (int k = 0; k < a->n; k++)
            a->rcpt_code[k] = -2;
    }
}

static void on_rcpt_or_ignore(void *arg, int code, const char *text)
{
    struct attempt *a = arg;
    if (a->replies_left < 0) {
        if (++a->replies_left == 0)
            finish_attempt(a);
        return;
    }
    on_rcpt(arg, code, text);
}

static void on_ready(void *arg, int code, const char *text)
{
    struct attempt *a = arg;
    if (code != 250) {
        smtpc_close(a->c);
        a->c = NULL;
        if (code >= 500) {          /* the server refused us outright */
            fail_rest(a, code, text);
            finish_attempt(a);
            return;
        }
        a->cur++;                    /* try the next address */
        start_attempt(a);
        return;
    }
    char line[600];
    snprintf(line, sizeof line, "MAIL FROM:<%s>", a->m->env.from ? a->m->env.from : "");
    smtpc_cmd(a->c, line, on_mail, a);
    a->replies_left = a->n;
    for (int k = 0; k < a->n; k++) {
        snprintf(line, sizeof line, "RCPT TO:<%s>", rcpt_address(&a->m->env.rcpts[a->rcpt[k]]));
        smtpc_cmd(a->c, line, on_rcpt_or_ignore, a);
    }
}

/* Connect to the next address of the list, or give up for this round. */
static void start_attempt(struct attempt *a)
{
    while (a->cur < a->nips) {
        a->c = smtpc_open(R.base, a->ips[a->cur], a->port, R.conf.lmtp, R.server_name, R.conf.timeout, on_ready, a);
        if (a->c)
            return;
        a->cur++;
    }
    fail_rest(a, 0, a->nips ? "all addresses failed" : "no address to connect to");
    finish_attempt(a);
}

static void unlink_attempt(struct attempt *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        R.attempts = a->next;
    if (a->next)
        a->next->prev = a->prev;
}

static void finish_attempt(struct attempt *a)
{
    unlink_attempt(a);
    if (a->c)
        smtpc_close(a->c);
    (*dest_count(a->key))--;
    struct qmsg *m = a->m;
    m->in_flight--;
    for (int k = 0; k < a->n; k++)
        free(a->rcpt_reply[k]);
    free(a);
    message_round_done(m);
}

/* ---- resolving the destination -------------------------------------------- */

static void add_ip(struct attempt *a, const char *ip)
{
    if (a->nips < MAX_IPS)
        snprintf(a->ips[a->nips++], sizeof a->ips[0], "%.63s", ip);
}

static void resolved_host(void *arg, int status, const dns_answer *ans);

/* The addresses of a host: its A records, then its AAAA records, in that
 * order (IPv4 first: an IPv6 route that is announced but broken is the more
 * common failure; both are tried before the next MX host). */
static int lookup_host(struct attempt *a, const char *host, enum dns_type type)
{
    if (host != a->cur_host)
        snprintf(a->cur_host, sizeof a->cur_host, "%s", host);
    a->cur_type = type;
    a->dnsq = dns_query_start(R.dns, a->cur_host, type, resolved_host, a);
    return a->dnsq != NULL;
}

static void resolve_next_mx(struct attempt *a)
{
    if (a->mx_done < a->nmx && lookup_host(a, a->mx_hosts[a->mx_done++], DNS_A))
        return;
    start_attempt(a);
}

static void resolved_host(void *arg, int status, const dns_answer *ans)
{
    struct attempt *a = arg;
    a->dnsq = NULL;
    for (int i = 0; status == DNS_OK && ans && i < ans->n; i++)
        add_ip(a, ans->rr[i].text);
    if (status == DNS_NXDOMAIN)
        a->nxdomain = 1;
    else if (status != DNS_OK && status != DNS_NODATA)
        a->dns_failed = 1;
    /* A name that does not exist has no AAAA either. */
    if (a->cur_type == DNS_A && status != DNS_NXDOMAIN && a->nips < MAX_IPS &&
        lookup_host(a, a->cur_host, DNS_AAAA))
        return;
    if (a->nmx && a->mx_done < a->nmx && a->nips < MAX_IPS) {
        resolve_next_mx(a);
        return;
    }
    if (a->nips == 0 && a->nxdomain && !a->dns_failed && !a->nmx) {
        fail_rest(a, 550, "550 5.1.2 host or domain name not found");
        finish_attempt(a);
        return;
    }
    if (a->nips == 0) {
        fail_rest(a, 451, a->dns_failed ? "451 4.4.3 DNS lookup failed, will retry"
                                        : "451 4.4.4 no address for the host");
        finish_attempt(a);
        return;
    }
    start_attempt(a);
}

static int by_pref(const void *x, const void *y)
{
    const struct dns_rr *a = x, *b = y;
    return a->pref - b->pref;
}

static void resolved_mx(void *arg, int status, const dns_answer *ans)
{
    struct attempt *a = arg;
    a->dnsq = NULL;
    const char *domain = a->key + 6;     /* the key is "MX of DOMAIN" (destination_of) */
    if (status == DNS_OK && ans && ans->n > 0) {
        struct dns_rr rr[DNS_MAX_RR];
        int n = ans->n < DNS_MAX_RR ? ans->n : DNS_MAX_RR;
        memcpy(rr, ans->rr, (size_t)n * sizeof rr[0]);
        qsort(rr, (size_t)n, sizeof rr[0], by_pref);
        for (int i = 0; i < n && a->nmx < MAX_IPS; i++)
            snprintf(a->mx_hosts[a->nmx++], sizeof a->mx_hosts[0], "%s", rr[i].text);
        resolve_next_mx(a);
        return;
    }
    if (status == DNS_NODATA || status == DNS_NXDOMAIN) {
        /* No MX: the domain's own addresses (RFC 5321 5.1). */
        if (lookup_host(a, domain, DNS_A))
            return;
    }
    fail_rest(a, 451, "451 4.4.3 DNS lookup failed, will retry");
    finish_attempt(a);
}

static void resolve(struct attempt *a, const char *host, int mx)
{
    unsigned char buf[16];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) {
        add_ip(a, host);
        start_attempt(a);
        return;
    }
    int started;
    if (mx)
        started = (a->dnsq = dns_query_start(R.dns, host, DNS_MX, resolved_mx, a)) != NULL;
    else
        started = lookup_host(a, host, DNS_A);
    if (!started) {
        fail_rest(a, 451, "451 4.4.3 DNS lookup failed, will retry");
        finish_attempt(a);
    }
}

/* ---- scheduling ----------------------------------------------------------------- */

static void try_recipients(struct qmsg *m, time_t now);


/* A "via" host: the Router gave a host other than the address's own domain
 * (for a plain remote route, the Router's host is just that domain). */
static int via_host(const struct env_rcpt *r)
{
    if (!r->host || !*r->host)
        return 0;
    const char *at = strrchr(rcpt_address(r), '@');
    return !at || strcasecmp(at + 1, r->host) != 0;
}

/* Where a recipient goes: its route's via host, else next_hop, else the MX
 * of its (possibly rewritten) address's domain.  A via host is looked up like
 * a domain too (MX, then A), as "deliver via host" names a mail host. */
static void destination_of(const struct env_rcpt *r, char *key, size_t len, char *host, size_t hlen, int *mx)
{
    *mx = 1;
    if (via_host(r)) {
        snprintf(key, len, "MX of %s", r->host);
        snprintf(host, hlen, "%s", r->host);
    } else if (R.conf.next_hop) {
        *mx = 0;
        snprintf(key, len, "next hop %s:%d", R.conf.next_hop, R.conf.next_hop_port);
        snprintf(host, hlen, "%s", R.conf.next_hop);
    } else {
        const char *at = strrchr(rcpt_address(r), '@');
        snprintf(key, len, "MX of %s", at ? at + 1 : "");
        snprintf(host, hlen, "%s", at ? at + 1 : "");
    }
}

static void try_message(struct qmsg *m, time_t now)
{
    /* Hold the message: an attempt can end (and the message be removed)
     * before resolve() returns, while this loop still needs m. */
    m->in_flight++;
    try_recipients(m, now);
    m->in_flight--;
    message_round_done(m);
}

static void try_recipients(struct qmsg *m, time_t now)
{
    int flushing = __atomic_load_n(&R.flush, __ATOMIC_ACQUIRE);   /* set by moatctl flush */
    int used[64] = { 0 };
    for (int i = 0; i < m->env.nrcpts && i < 64; i++) {
        struct env_rcpt *r = &m->env.rcpts[i];
        if (used[i] || r->status != RS_PENDING || (r->next_try > now && !flushing))
            continue;
        struct attempt *a = calloc(1, sizeof *a);
        char host[256];
        int mx;
        destination_of(r, a->key, sizeof a->key, host, sizeof host, &mx);
        int *inflight = dest_count(a->key);
        if (*inflight >= R.conf.concurrency) {
            free(a);
            continue;
        }
        a->m = m;
        snprintf(a->dest, sizeof a->dest, "%s", a->key);
        a->port = mx ? 25 : R.conf.next_hop_port;
        for (int j = i; j < m->env.nrcpts && j < 64 && a->n < 64; j++) {
            char k2[300], h2[256];
            int mx2;
            struct env_rcpt *r2 = &m->env.rcpts[j];
            if (used[j] || r2->status != RS_PENDING || (r2->next_try > now && !flushing))
                continue;
            destination_of(r2, k2, sizeof k2, h2, sizeof h2, &mx2);
            if (strcmp(k2, a->key) != 0)
                continue;
            used[j] = 1;
            a->rcpt_code[a->n] = -1;
            a->rcpt[a->n++] = j;
        }
        (*inflight)++;
        m->in_flight++;
        a->next = R.attempts;
        if (R.attempts)
            R.attempts->prev = a;
        R.attempts = a;
        resolve(a, host, mx);
    }
}

static void load_new_messages(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/new", R.spool_dir);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || len > 40 || strcmp(de->d_name + len - 4, ".env") != 0)
            continue;
        char id[32];
        snprintf(id, sizeof id, "%.*s", (int)(len - 4), de->d_name);
        int known = 0;
        for (struct qmsg *m = R.queue; m && !known; m = m->next)
            known = strcmp(m->env.id, id) == 0;
        if (known)
            continue;
        char path[4096 + 64];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        size_t n;
        char *text = read_file(path, ENV_MAX, &n);
        if (!text)
            continue;
        struct qmsg *m = calloc(1, sizeof *m);
        char err[256];
        if (envelope_parse(text, n, &m->env, err, sizeof err) != 0) {
            log_kv(LOG_ERR, "queue_bad_envelope", "file", path, "error", err, NULL);
            free(m);
        } else {
            snprintf(m->env.id, sizeof m->env.id, "%s", id);
            if (!m->env.received_at)
                m->env.received_at = time(NULL);
            pthread_mutex_lock(&R.mu);
            m->next = R.queue;
            R.queue = m;
            pthread_mutex_unlock(&R.mu);
        }
        free(text);
    }
    closedir(d);
}

static void run_queue(void)
{
    load_new_messages();
    time_t now = time(NULL);
    struct qmsg *m = R.queue, *next;
    for (; m; m = next) {
        next = m->next;   /* try_message may finish (and free) m synchronously */
        if (m->in_flight == 0) {
            if (pending_rcpts(m) == 0) {
                message_round_done(m);
                continue;
            }
            try_message(m, now);
        }
    }
    __atomic_store_n(&R.flush, 0, __ATOMIC_RELEASE);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    run_queue();
}

/* Shutdown, on the runner's thread: abandon what is in flight (those
 * recipients stay pending on disk and are retried at the next start) and
 * give connections that are saying QUIT a moment to finish. */
static void abort_attempts(void)
{
    while (R.attempts) {
        struct attempt *a = R.attempts;
        unlink_attempt(a);
        dns_cancel(a->dnsq);
        smtpc_abort(a->c);
        for (int k = 0; k < a->n; k++)
            free(a->rcpt_reply[k]);
        free(a);
    }
    struct timeval tv = { 0, 200000 };
    event_base_loopexit(R.base, &tv);
}

static void on_pipe(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    if (__atomic_load_n(&R.stopping, __ATOMIC_ACQUIRE)) {
        abort_attempts();
        return;
    }
    run_queue();
}

static void *runner(void *unused)
{
    (void)unused;
    event_base_dispatch(R.base);
    return NULL;
}

/* ---- control (called from the SMTP loop's thread) ----------------------- */

int delivery_running(void) { return R.running; }

void delivery_poke(void)
{
    if (!R.running)
        return;
    char c = 1;
    ssize_t w = write(R.pipe_wr, &c, 1);
    (void)w;
}

void delivery_dns_flush(void)
{
    if (R.running)
        dnscache_request_flush(R.cache); /* the runner empties it itself */
}

void delivery_flush(void)
{
    __atomic_store_n(&R.flush, 1, __ATOMIC_RELEASE);
    delivery_poke();
}

void delivery_queue_text(struct evbuffer *out)
{
    time_t now = time(NULL);
    pthread_mutex_lock(&R.mu);
    int n = 0;
    for (struct qmsg *m = R.queue; m; m = m->next, n++) {
        evbuffer_add_printf(out, "%s from=<%s> age=%llds\n", m->env.id, m->env.from ? m->env.from : "",
                            (long long)(now - m->env.received_at));
        for (int i = 0; i < m->env.nrcpts; i++) {
            struct env_rcpt *r = &m->env.rcpts[i];
            long long wait = r->next_try > now ? (long long)(r->next_try - now) : 0;
            evbuffer_add_printf(out, "  <%s> %s attempts=%d", r->addr, rcpt_status_name(r->status), r->attempts);
            if (r->status == RS_PENDING)
                evbuffer_add_printf(out, " next_try=%llds", wait);
            evbuffer_add_printf(out, "%s%s\n", r->reply ? " last=" : "", r->reply ? r->reply : "");
        }
    }
    pthread_mutex_unlock(&R.mu);
    evbuffer_add_printf(out, "%d message%s in the queue\n", n, n == 1 ? "" : "s");
}

int delivery_start(const struct config *c, char *err, size_t errlen)
{
    if (c->delivery.mode != DELIVERY_RELAY)
        return 0;
    R.conf = c->delivery;
    R.conf.next_hop = c->delivery.next_hop ? strdup(c->delivery.next_hop) : NULL;
    R.spool_dir = strdup(c->spool_dir);
    R.server_name = strdup(c->server_name);
    R.base = event_base_new();
    R.dns = dns_new(R.base, c->dns_servers, c->dns_timeout_ms, c->dns_tries, err, errlen);
    if (!R.dns)
        return -1;
    /* The runner's own cache: its loop is another thread, and the cache is
     * single-threaded by design (no lock on the sessions' hot path). */
    R.cache = dnscache_new((size_t)c->dns_cache_size, (unsigned)c->dns_cache_max_ttl);
    dns_set_cache(R.dns, R.cache);
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "delivery: pipe: %s", strerror(errno));
        return -1;
    }
    R.pipe_rd = p[0];
    R.pipe_wr = p[1];
    R.pipe_ev = event_new(R.base, R.pipe_rd, EV_READ | EV_PERSIST, on_pipe, NULL);
    event_add(R.pipe_ev, NULL);
    R.tick = event_new(R.base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = { TICK_MS / 1000, (TICK_MS % 1000) * 1000 };
    event_add(R.tick, &tv);
    if (pthread_create(&R.thread, NULL, runner, NULL) != 0) {
        snprintf(err, errlen, "delivery: cannot start the queue runner");
        return -1;
    }
    R.running = 1;
    char hop[300];
    snprintf(hop, sizeof hop, "%s:%d", R.conf.next_hop ? R.conf.next_hop : "", R.conf.next_hop_port);
    log_kv(LOG_INFO, "delivery", "mode", "relay", "next_hop", R.conf.next_hop ? hop : NULL, NULL);
    return 0;
}

void delivery_stop(void)
{
    if (!R.running)
        return;
    __atomic_store_n(&R.stopping, 1, __ATOMIC_RELEASE);
    delivery_poke();
    pthread_join(R.thread, NULL);
    R.running = 0;
    /* Attempts in flight are abandoned: their recipients stay pending in the
     * .env on disk and are retried at the next start. */
    event_free(R.pipe_ev);
    event_free(R.tick);
    close(R.pipe_rd);
    close(R.pipe_wr);
    dns_free(R.dns);
    dnscache_free(R.cache);
    R.cache = NULL;
    event_base_free(R.base);
    while (R.queue) {
        struct qmsg *m = R.queue;
        R.queue = m->next;
        envelope_clear(&m->env);
        free(m);
    }
    free(R.conf.next_hop);
    free(R.spool_dir);
    free(R.server_name);
}
