/* smtpc.c - asynchronous SMTP/LMTP client (see smtpc.h). */
#include "smtpc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define LINE_MAX_IN 1024
#define REPLY_LINES_MAX 100

enum cstate { C_CONNECTING, C_GREETING, C_EHLO, C_STARTTLS, C_EHLO_TLS, C_READY, C_DEAD };

struct entry {
    char *line;                 /* a command, or NULL for message content */
    struct evbuffer *body;      /* DATA: the message, sent after 354 */
    int replies;                /* replies still expected for this entry */
    int body_sent;
    smtpc_cb cb;
    void *arg;
    int sent;
    struct entry *next;
};

struct smtpc {
    struct event_base *base;
    struct bufferevent *bev;
    enum cstate state;
    int lmtp, timeout_s;
    char helo[256];
    int pipelining, starttls_offered, tls;
    smtpc_cb ready;
    void *ready_arg;
    struct entry *head, **tail;
    char reply[SMTPC_REPLY_MAX];
    size_t rlen;
    int rlines;
    int closing;
    int in_cb;                  /* inside an owner's callback: closing must wait */
    int close_requested;
};

static void do_close(struct smtpc *c);

/* Every owner callback goes through here: the owner may call smtpc_close
 * from inside it, which is carried out once the callback has returned.
 * Returns 1 when c is gone and the caller must not touch it. */
static int call(struct smtpc *c, smtpc_cb cb, void *arg, int code, const char *text)
{
    c->in_cb++;
    cb(arg, code, text);
    c->in_cb--;
    if (c->close_requested && c->in_cb == 0) {
        do_close(c);
        return 1;
    }
    return c->close_requested;
}

/* One context for every client: the queue runner's thread and the main
 * loop's callout probes both use it, so it is made exactly once. */
static SSL_CTX *ctx;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;

static void make_client_ctx(void)
{
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);   /* opportunistic TLS */
}

static SSL_CTX *client_ctx(void)
{
    pthread_once(&ctx_once, make_client_ctx);
    return ctx;
}

static void write_line(struct smtpc *c, const char *line)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "%s\r\n", line);
}

/* Copy msg to the wire: CRLF line ends, leading dots doubled, CRLF.CRLF. */
static void write_body(struct smtpc *c, struct evbuffer *msg)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t n;
    int at_line_start = 1;
    for (;;) {
        struct evbuffer_ptr p = evbuffer_search_eol(msg, NULL, &n, EVBUFFER_EOL_LF);
        size_t len = p.pos < 0 ? evbuffer_get_length(msg) : (size_t)p.pos;
        if (p.pos < 0 && len == 0)
            break;
        unsigned char *line = evbuffer_pullup(msg, (ev_ssize_t)len);
        size_t content = len > 0 && line[len - 1] == '\r' ? len - 1 : len;
        if (at_line_start && content > 0 && line[0] == '.')
            evbuffer_add(out, ".", 1);
        evbuffer_add(out, line, content);
        evbuffer_add(out, "\r\n", 2);
        evbuffer_drain(msg, len + (p.pos < 0 ? 0 : 1));
        if (p.pos < 0)
            break;
    }
    (void)at_line_start;
    evbuffer_add(out, ".\r\n", 3);
}

/* Send whatever may go now: everything with PIPELINING, else one at a time.
 * A DATA entry's body goes only after its 354. */
static void flush(struct smtpc *c)
{
    if (c->state != C_READY)
        return;
    int outstanding = 0;
    for (struct entry *e = c->head; e; e = e->next) {
        if (e->sent) {
            outstanding = 1;
            if (e->body && !e->body_sent)
                return;   /* nothing goes after DATA until its 354 */
            continue;
        }
        if (outstanding && !c->pipelining)
            return;
        write_line(c, e->line);
        e->sent = 1;
        outstanding = 1;
        if (e->body)
            return;
    }
}

static void free_entries(struct smtpc *c)
{
    while (c->head) {
        struct entry *e = c->head;
        c->head = e->next;
        free(e->line);
        if (e->body)
            evbuffer_free(e->body);
        free(e);
    }
    c->tail = &c->head;
}

/* The connection is unusable: every waiting command gets (code, text).
 * Returns 1 when c was closed meanwhile. */
static int fail_all(struct smtpc *c, int code, const char *text)
{
    c->state = C_DEAD;
    if (c->ready) {
        smtpc_cb r = c->ready;
        c->ready = NULL;
        return call(c, r, c->ready_arg, code, text);
    }
    c->in_cb++;     /* no closing under our feet while we walk the list */
    while (c->head && !c->close_requested) {
        struct entry *e = c->head;
        c->head = e->next;
        if (!c->head)
            c->tail = &c->head;
        for (int i = 0; i < (e->replies > 0 ? e->replies : 1) && !c->close_requested; i++)
            e->cb(e->arg, code, text);
        free(e->line);
        if (e->body)
            evbuffer_free(e->body);
        free(e);
    }
    c->in_cb--;
    if (c->close_requested && c->in_cb == 0) {
        do_close(c);
        return 1;
    }
    return 0;
}

static void capabilities(struct smtpc *c)
{
    /* The reply is "250-host\n250-PIPELINING\n...": look at each line. */
    c->pipelining = c->starttls_offered = 0;
    for (char *l = c->reply; l && *l;) {
        char *nl = strchr(l, '\n');
        if (strlen(l) > 4) {
            const char *kw = l + 4;
            if (strncasecmp(kw, "PIPELINING", 10) == 0)
                c->pipelining = 1;
            else if (strncasecmp(kw, "STARTTLS", 8) == 0)
                c->starttls_offered = 1;
        }
        l = nl ? nl + 1 : NULL;
    }
}

static void send_ehlo(struct smtpc *c)
{
    char line[300];
    snprintf(line, sizeof line, "%s %s", c->lmtp ? "LHLO" : "EHLO", c->helo);
    write_line(c, line);
}

static void start_tls(struct smtpc *c)
{
    SSL *ssl = SSL_new(client_ctx());
    struct bufferevent *tls = bufferevent_openssl_filter_new(c->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
    c->bev = tls;
    c->tls = 1;
}

static void setup(struct smtpc *c);

/* The opening dialogue: greeting, EHLO, STARTTLS, EHLO again. */
/* Returns 1 when c is gone. */
static int handshake_reply(struct smtpc *c, int code)
{
    switch (c->state) {
    case C_GREETING:
        if (code != 220)
            break;
        c->state = C_EHLO;
        send_ehlo(c);
        return 0;
    case C_EHLO:
    case C_EHLO_TLS:
        if (code != 250)
            break;
        capabilities(c);
        if (c->state == C_EHLO && c->starttls_offered) {
            c->state = C_STARTTLS;
            write_line(c, "STARTTLS");
            return 0;
        }
        c->state = C_READY;
        smtpc_cb r = c->ready;
        c->ready = NULL;
        if (call(c, r, c->ready_arg, 250, c->reply))
            return 1;
        flush(c);
        return 0;
    case C_STARTTLS:
        if (code != 220)
            break;
        start_tls(c);
        setup(c);
        c->state = C_EHLO_TLS;
        send_ehlo(c);
        return 0;
    default:
        break;
    }
    return fail_all(c, code ? code : 421, c->reply);
}

/* Returns 1 when c is gone. */
static int command_reply(struct smtpc *c, int code)
{
    struct entry *e = c->head;
    if (!e || !e->sent)
        return fail_all(c, 421, "unexpected reply from the server");
    if (e->body && !e->body_sent) {
        if (code == 354) {
            write_body(c, e->body);
            e->body_sent = 1;
            return 0;
        }
        /* DATA refused: every expected answer (one per LMTP recipient) is that refusal. */
        c->head = e->next;
        if (!c->head)
            c->tail = &c->head;
        c->in_cb++;
        for (int i = 0; i < e->replies && !c->close_requested; i++)
            e->cb(e->arg, code, c->reply);
        c->in_cb--;
        free(e->line);
        evbuffer_free(e->body);
        free(e);
        if (c->close_requested && c->in_cb == 0) {
            do_close(c);
            return 1;
        }
        flush(c);
        return 0;
    }
    int last = --e->replies <= 0;
    if (last) {            /* unlink first: the callback may close c */
        c->head = e->next;
        if (!c->head)
            c->tail = &c->head;
    }
    int gone = call(c, e->cb, e->arg, code, c->reply);
    if (last) {
        free(e->line);
        if (e->body)
            evbuffer_free(e->body);
        free(e);
    }
    if (gone)
        return 1;
    flush(c);
    return 0;
}

/* Read complete replies (possibly several lines) and dispatch them. */
static void on_read(struct bufferevent *bev, void *arg)
{
    struct smtpc *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    char *line;
    while (c->state != C_DEAD && (line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF))) {
        if (n < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
            !isdigit((unsigned char)line[2]) || (n > 3 && line[3] != ' ' && line[3] != '-') ||
            ++c->rlines > REPLY_LINES_MAX) {
            free(line);
            fail_all(c, 421, "malformed reply from the server");
            return;   /* dead (or gone): stop reading */
        }
        size_t room = sizeof c->reply - 1 - c->rlen;
        int k = snprintf(c->reply + c->rlen, room, "%s%s", c->rlen ? "\n" : "", line);
        c->rlen += k < 0 ? 0 : ((size_t)k < room ? (size_t)k : room - 1);
        int last = n == 3 || line[3] == ' ';
        int code = atoi(line);
        free(line);
        if (!last)
            continue;
        int gone = c->state == C_READY ? command_reply(c, code) : handshake_reply(c, code);
        if (gone)
            return;
        c->rlen = 0;
        c->rlines = 0;
        c->reply[0] = '\0';
    }
    if (c->state != C_DEAD && evbuffer_get_length(in) > LINE_MAX_IN)
        fail_all(c, 421, "reply line too long");
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct smtpc *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (c->state == C_CONNECTING)
            c->state = C_GREETING;
        return;
    }
    const char *why = what & BEV_EVENT_TIMEOUT ? "timeout" : what & BEV_EVENT_EOF ? "connection closed" : "connection failed";
    if (c->closing) {
        bufferevent_free(c->bev);
        free(c);
        return;
    }
    if (c->state != C_DEAD)
        fail_all(c, 0, why);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct smtpc *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        bufferevent_free(c->bev);
        free(c);
    }
}

static void setup(struct smtpc *c)
{
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    struct timeval tv = { c->timeout_s, 0 };
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

struct smtpc *smtpc_open(struct event_base *base, const char *ip, int port, int lmtp,
                         const char *helo_name, int timeout_s, smtpc_cb ready, void *arg)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        len = sizeof *v6;
    } else {
        return NULL;
    }
    struct smtpc *c = calloc(1, sizeof *c);
    c->base = base;
    c->lmtp = lmtp;
    c->timeout_s = timeout_s > 0 ? timeout_s : 300;
    snprintf(c->helo, sizeof c->helo, "%s", helo_name);
    c->ready = ready;
    c->ready_arg = arg;
    c->tail = &c->head;
    c->state = C_CONNECTING;
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    setup(c);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)len) != 0) {
        bufferevent_free(c->bev);
        free(c);
        return NULL;
    }
    return c;
}

static struct entry *enqueue(struct smtpc *c, const char *line, smtpc_cb cb, void *arg)
{
    struct entry *e = calloc(1, sizeof *e);
    e->line = strdup(line);
    e->cb = cb;
    e->arg = arg;
    e->replies = 1;
    *c->tail = e;
    c->tail = &e->next;
    return e;
}

void smtpc_cmd(struct smtpc *c, const char *line, smtpc_cb cb, void *arg)
{
    if (c->state == C_DEAD) {
        cb(arg, 0, "connection closed");
        return;
    }
    enqueue(c, line, cb, arg);
    flush(c);
}

void smtpc_data(struct smtpc *c, struct evbuffer *msg, int nreplies, smtpc_cb cb, void *arg)
{
    if (c->state == C_DEAD) {
        evbuffer_free(msg);
        cb(arg, 0, "connection closed");
        return;
    }
    struct entry *e = enqueue(c, "DATA", cb, arg);
    e->body = msg;
    e->replies = nreplies > 0 ? nreplies : 1;
    flush(c);
}

int smtpc_pipelining(const struct smtpc *c) { return c->pipelining; }
int smtpc_tls(const struct smtpc *c) { return c->tls; }

static void do_close(struct smtpc *c)
{
    c->closing = 1;
    c->ready = NULL;
    free_entries(c);
    if (c->state == C_READY) {
        /* Say goodbye; on_write frees us once QUIT is out (or on error/timeout). */
        c->state = C_DEAD;
        write_line(c, "QUIT");
        bufferevent_disable(c->bev, EV_READ);
        return;
    }
    bufferevent_free(c->bev);
    free(c);
}

void smtpc_close(struct smtpc *c)
{
    if (!c)
        return;
    if (c->in_cb) {
        c->close_requested = 1;
        return;
    }
    do_close(c);
}

void smtpc_abort(struct smtpc *c)
{
    if (!c)
        return;
    free_entries(c);
    bufferevent_free(c->bev);
    free(c);
}
