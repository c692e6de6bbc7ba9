/* smtp.c - the SMTP server state machine (RFC 5321).
 *
 * One session per connection, driven by libevent.  Commands are read line by
 * line from a bounded input buffer and dispatched through a table.  When a
 * command needs the policy chain, the session is marked busy and reading
 * stops until the verdict arrives (synchronously, or later when a hook's
 * DNS query or sleep completes), so pipelined commands are answered in order.
 *
 * Limits (all named in conf smtp = { ... } or below): command lines
 * CMD_LINE_MAX, text lines smtp.max_line_length, message smtp.max_message_size,
 * recipients smtp.max_recipients, protocol errors smtp.max_errors, idle
 * smtp.timeout, and pending output OUT_MAX. */
#include "smtp.h"
#include "smtp_session.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "address.h"
#include "iplist.h"
#include "listener.h"
#include "log.h"
#include "lua_bridge.h"
#include "runtime.h"
#include "server.h"
#include "spool.h"
#include "tls.h"
#include "envelope.h"
#include "delivery.h"
#include "stats.h"
#include "accounts.h"
#include "tempblock.h"
#include "worker.h"
#include "smtpc.h"
#include "debugrec.h"

static int open_sessions;
static struct session *all_sessions;
static unsigned long session_serial;

static void on_hook_done(void *owner, const struct verdict *v);

int smtp_sessions_open(void) { return open_sessions; }

/* The shutdown_timeout ran out: whoever is left gets a 421 (best effort: it
 * reaches a clear-text client whose output is drained) and is closed. */
void smtp_close_all(void)
{
    while (all_sessions) {
        struct session *s = all_sessions;
        if (!s->closing && s->bev && !s->tls_switch)
            reply(s, "421 4.3.2 %s Service shutting down, closing connection", s->rt->cfg.server_name);
        session_free(s);
    }
}

static void say_shutdown(struct session *s)
{
    reply(s, "421 4.3.2 %s Service shutting down, closing connection", s->rt->cfg.server_name);
    close_after_reply(s);
}

/* SIGTERM: a session between commands is told 421 now.  One in DATA, or
 * waiting for a hook or the spool, finishes that command first:
 * process_input says 421 when it would read the next one. */
void smtp_drain(void)
{
    for (struct session *s = all_sessions, *next; s; s = next) {
        next = s->next;
        if (!s->busy && !s->closing && !s->tls_switch && s->state != S_INIT && s->state != S_DATA &&
            s->auth_state == AUTH_NONE)
            say_shutdown(s);
    }
}

/* ---- replies -------------------------------------------------------------- */

/* A reply goes straight to the socket when nothing is queued before it on
 * a clear-text connection: one send(2) and no write event.  Through the
 * bufferevent, every reply armed EPOLLOUT and disarmed it after the write
 * (two epoll_ctl calls a reply, ~16 a message).  Whatever the kernel does
 * not take, and everything on TLS, goes through the bufferevent as before,
 * so order and the OUT_MAX flow control are unchanged.  With pipelined
 * commands still unread, replies are gathered in the buffer too: one write
 * for the batch, and a reply followed by a close is not split into many
 * segments that a reset (unread input at close) could cut short. */
#define REPLY_LINE_MAX 1024   /* one reply line with its NUL, before CR LF */

static void send_reply(struct session *s, const char *p, size_t n)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (!s->tls_active && evbuffer_get_length(out) == 0 &&
        evbuffer_get_length(bufferevent_get_input(s->bev)) == 0) {
        ssize_t w = send(bufferevent_getfd(s->bev), p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
        /* An error (reset, EPIPE) is left for the bufferevent to find on
         * its own write or read, as before. */
    }
    if (n > 0)
        evbuffer_add(out, p, n);
}

void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void reply(struct session *s, const char *fmt, ...)
{
    char line[REPLY_LINE_MAX + 2];   /* + CR LF */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, REPLY_LINE_MAX, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n >= REPLY_LINE_MAX)
        n = REPLY_LINE_MAX - 1;
    if (s->debug) {
        log_kv(LOG_INFO, "debug_out", "session", s->id, "line", line, NULL);
        debugrec_server(s->rec, line);
    }
    memcpy(line + n, "\r\n", 2);
    send_reply(s, line, (size_t)n + 2);
}

void close_after_reply(struct session *s)
{
    s->closing = 1;
    bufferevent_disable(s->bev, EV_READ);
    /* Never free here: callers go on using s after a reply and a close.
     * With the reply already in the kernel (send_reply) no write will
     * complete, so on_write is called from the loop to free the session. */
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        bufferevent_trigger(s->bev, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* Failed logins and protocol errors count against the address (seed 002
 * "Temporarily Blocked Addresses"): past the debug threshold its sessions
 * are logged verbatim, past the block threshold it is blocked and this
 * session ends. */
void note_event(struct session *s, enum tb_event ev)
{
    /* White holes are never placed on the list, not even counted toward it. */
    if (!srv.tempblock || iplist_contains_str(s->rt->cfg.ip[T_UNBLACKLISTABLE], s->ip))
        return;
    enum tb_result r = tb_event(srv.tempblock, s->ipkey, ev, time(NULL));
    if (r == TB_DEBUG && !s->debug) {
        s->debug = 1;
        log_kv(LOG_INFO, "debug_on", "session", s->id, "ip", s->ip, NULL);
        s->rec = debugrec_new(s->id, s->ip, s->port, s->tls_mode != TLS_OFF, 1);
    }
    if (r == TB_BLOCKED) {
        log_kv(LOG_WARN, "blocked", "ip", s->ip, "session", s->id,
               "reason", ev == TB_FAILED_LOGIN ? "failed_logins" : "protocol_errors", NULL);
        reply(s, "421 4.7.0 %s Your address is temporarily blocked", s->rt->cfg.server_name);
        close_after_reply(s);
    }
}

/* Protocol errors are counted; past smtp.max_errors the session ends. */
void protocol_error(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void protocol_error(struct session *s, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    reply(s, "%s", text);
    s->errors++;
    note_event(s, TB_PROTOCOL_ERROR);
    if (s->closing)
        return;
    if (s->errors >= s->rt->cfg.max_errors) {
        log_kv(LOG_WARN, "too_many_errors", "session", s->id, "ip", s->ip, NULL);
        reply(s, "421 4.7.0 %s Too many errors, closing connection", s->rt->cfg.server_name);
        close_after_reply(s);
    }
}

/* Give a verdict from the chain as the reply; returns 1 if it answered. */
static const char *action_name(const struct verdict *v);

void (*smtp_on_verdict)(const char *phase, const char *policy, const char *action, int code);

int reply_verdict(struct session *s, const struct verdict *v)
{
    if (v->action != V_NONE && smtp_on_verdict)
        smtp_on_verdict(s->lb.phase < PH_COUNT ? phase_names[s->lb.phase] : "-",
                        v->action == V_ERROR ? "error" : v->policy, action_name(v), v->code);
    if (v->action != V_NONE)
        stats_verdict(v->action == V_ERROR ? "error" : v->policy,
                      s->lb.phase < PH_COUNT ? phase_names[s->lb.phase] : "-", action_name(v), v->code);
    switch (v->action) {
    case V_REJECT:
    case V_TEMPFAIL:
    case V_ERROR:
    case V_DROP: {
        int code = v->code ? v->code : 451;
        const char *text = v->text[0] ? v->text : (code >= 500 ? "5.7.1 Rejected by policy" : "4.7.1 Try again later");
        /* Every reply carries an enhanced status code (RFC 2034). */
        if (isdigit((unsigned char)text[0]) && text[1] == '.')
            reply(s, "%d %s", code, text);
        else
            reply(s, "%d %s %s", code, code >= 500 ? "5.7.1" : "4.7.1", text);
        if (v->action == V_DROP)
            close_after_reply(s);
        return 1;
    }
    default:
        return 0;
    }
}

static const char *action_name(const struct verdict *v)
{
    static const char *names[] = { "none", "accept", "reject", "tempfail", "drop", "discard", "error", "redirect" };
    return names[v->action];
}

/* ---- transaction ---------------------------------------------------------- */

void reset_transaction(struct session *s)
{
    free(s->from);
    s->from = NULL;
    for (int i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i].raw);
    free(s->rcpts);
    s->rcpts = NULL;
    s->nrcpts = 0;
    s->smtputf8 = s->body_8bit = s->discard_all = 0;
    if (s->msg) {
        evbuffer_free(s->msg);
        s->msg = NULL;
    }
    if (s->field) {
        evbuffer_free(s->field);
        s->field = NULL;
    }
    free(s->kept);
    s->kept = NULL;
    s->have_kept = 0;
    free(s->proxy_worst_text);
    s->proxy_worst_text = NULL;
    s->too_big = s->line_too_long = 0;
    if (s->state > S_HELO)
        s->state = S_HELO;
    lb_reset_transaction(&s->lb);
    if (s->shadow)
        lb_reset_transaction(shadow_lb(s->shadow));
}

static char *rcpt_list(struct session *s)
{
    size_t cap = 1;
    for (int i = 0; i < s->nrcpts; i++)
        cap += strlen(s->rcpts[i].raw) + 1;
    char *r = calloc(1, cap);
    for (int i = 0; i < s->nrcpts; i++) {
        if (i)
            strcat(r, ",");
        strcat(r, s->rcpts[i].raw);
    }
    return r;
}

void log_transaction(struct session *s, const char *verdict, const char *policy, const char *reply_text)
{
    char *rcpts = rcpt_list(s);
    char size[32];
    snprintf(size, sizeof size, "%zu", s->msg_size);
    log_kv(LOG_INFO, "message", "session", s->id, "qid", s->qid[0] ? s->qid : NULL, "ip", s->ip,
           "helo", s->helo, "from", s->from, "rcpts", rcpts, "size", size, "verdict", verdict,
           "policy", policy && *policy ? policy : NULL, "reply", reply_text, NULL);
    free(rcpts);
}

/* ---- hooks -------------------------------------------------------------- */

/* Each hook call either finishes now (returns 1, v filled) or suspends the
 * session until on_hook_done. */
int hook_wait(struct session *s, enum phase ph, int done, struct verdict *v)
{
    if (done) {
        shadow_live(s->shadow, ph, v);
        return 1;
    }
    s->busy = 1;
    s->pending = ph;
    return 0;
}

static void finish_connect(struct session *s, const struct verdict *v);
static void finish_helo(struct session *s, const struct verdict *v);
static void finish_mail(struct session *s, const struct verdict *v);
static void finish_rcpt(struct session *s, const struct verdict *v);
static void finish_data_cmd(struct session *s, const struct verdict *v);
static void finish_data_line(struct session *s, const struct verdict *v);
static void finish_data_end(struct session *s, const struct verdict *v);

static void on_hook_done(void *owner, const struct verdict *v)
{
    struct session *s = owner;
    s->busy = 0;
    shadow_live(s->shadow, s->pending, v);
    switch (s->pending) {
    case PH_CONNECT: finish_connect(s, v); break;
    case PH_HELO: finish_helo(s, v); break;
    case PH_MAIL: finish_mail(s, v); break;
    case PH_RCPT: finish_rcpt(s, v); break;
    case PH_DATA: finish_data_cmd(s, v); break;
    case PH_DATA_LINE: finish_data_line(s, v); break;
    case PH_DATA_END: finish_data_end(s, v); break;
    case PH_AUTH: finish_auth_hook(s, v); break;
    default: break;
    }
    if (s->closing) {
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
            session_free(s);
        return;
    }
    if (!s->busy)
        process_input(s);
}

/* ---- greeting ------------------------------------------------------------- */

static void send_greeting(struct session *s)
{
    /* A client that talks before the greeting is not a patient MTA. */
    if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
        log_kv(LOG_WARN, "pregreet", "session", s->id, "ip", s->ip, NULL);
        s->errors++;
        reply(s, "554 5.5.1 %s Protocol error: data sent before the greeting", s->rt->cfg.server_name);
        close_after_reply(s);
        return;
    }
    reply(s, "220 %s ESMTP moat", s->rt->cfg.server_name);
    s->state = S_GREETED;
    process_input(s);
}

static void greet_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct session *s = arg;
    event_free(s->greet_timer);
    s->greet_timer = NULL;
    s->busy = 0;
    send_greeting(s);
}

static void finish_connect(struct session *s, const struct verdict *v)
{
    if (v->action == V_REJECT || v->action == V_TEMPFAIL || v->action == V_ERROR) {
        /* Refusing at connect: say why, then close (RFC 5321 3.1 allows 554). */
        log_kv(LOG_INFO, "connect_refused", "session", s->id, "ip", s->ip, "policy", v->policy, NULL);
        reply_verdict(s, v);
        close_after_reply(s);
        return;
    }
    if (reply_verdict(s, v))
        return;
    int delay = s->rt->cfg.greet_delay_ms;
    if (delay > 0) {
        struct timeval tv = { delay / 1000, (delay % 1000) * 1000 };
        s->greet_timer = evtimer_new(srv.base, greet_timer_cb, s);
        evtimer_add(s->greet_timer, &tv);
        s->busy = 1;
        s->pending = PH_COUNT;
        return;
    }
    send_greeting(s);
}

/* ---- commands ------------------------------------------------------------ */

static void cmd_ehlo_helo(struct session *s, char *arg, int esmtp)
{
    while (*arg == ' ')
        arg++;
    size_t n = strcspn(arg, " ");
    if (n == 0) {
        protocol_error(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        return;
    }
    if (n >= sizeof s->helo || !utf8_valid(arg, n)) {
        protocol_error(s, "501 5.5.4 Invalid hostname");
        return;
    }
    arg[n] = '\0';
    for (char *p = arg; *p; p++)
        if ((unsigned char)*p < ' ' || *p == 0x7f) {
            protocol_error(s, "501 5.5.4 Invalid hostname");
            return;
        }
    if (s->state >= S_MAIL)
        reset_transaction(s);
    snprintf(s->helo, sizeof s->helo, "%s", arg);
    s->esmtp = esmtp;
    struct verdict v;
    SHADOW_HOOK(s, PH_HELO, lb_helo(sl, s->helo, &sv));
    if (hook_wait(s, PH_HELO, lb_helo(&s->lb, s->helo, &v), &v))
        finish_helo(s, &v);
}

/* AUTH only where the password cannot be sniffed (TLS here or in front). */
int session_secure(const struct session *s) { return s->tls_active || s->tls_mode == TLS_EXT; }

/* STARTTLS is offered on plain sockets whose domain has a certificate. */
static int starttls_offered(const struct session *s)
{
    return !s->tls_active && s->tls_mode == TLS_OFF &&
           tls_available(s->rt->tls, &s->rt->cfg, s->local_ip);
}

static void finish_helo(struct session *s, const struct verdict *v)
{
    if (reply_verdict(s, v)) {
        s->helo[0] = '\0';
        return;
    }
    s->state = S_HELO;
    const struct config *c = &s->rt->cfg;
    if (!s->esmtp) {
        reply(s, "250 %s", c->server_name);
        return;
    }
    reply(s, "250-%s", c->server_name);
    reply(s, "250-PIPELINING");
    reply(s, "250-SIZE %ld", c->max_message_size);
    reply(s, "250-8BITMIME");
    reply(s, "250-ENHANCEDSTATUSCODES");
    if (starttls_offered(s))
        reply(s, "250-STARTTLS");
    if (auth_offered(s))
        reply(s, "250-AUTH PLAIN LOGIN");
    reply(s, "250 SMTPUTF8");
}

static void cmd_ehlo(struct session *s, char *arg) { cmd_ehlo_helo(s, arg, 1); }
static void cmd_helo(struct session *s, char *arg) { cmd_ehlo_helo(s, arg, 0); }

/* "FROM:" / "TO:" prefix, case-insensitive. */
static char *after_keyword(char *arg, const char *kw)
{
    while (*arg == ' ')
        arg++;
    size_t n = strlen(kw);
    return strncasecmp(arg, kw, n) == 0 ? arg + n : NULL;
}

static int path_error_reply(struct session *s, enum path_error e, int is_from)
{
    const char *ec = is_from ? "5.1.7" : "5.1.3";
    switch (e) {
    case PATH_OK: return 0;
    case PATH_TOO_LONG: protocol_error(s, "501 %s Address too long", ec); break;
    case PATH_BAD_UTF8: protocol_error(s, "501 5.6.7 Invalid UTF-8 in address"); break;
    default: protocol_error(s, "501 %s Bad %s address syntax", ec, is_from ? "sender" : "recipient"); break;
    }
    return 1;
}

/* MAIL parameters: SIZE, BODY, SMTPUTF8.  Returns 0 or replies and returns -1.
 * *declared = the SIZE= value (0 when absent). */
static int mail_params(struct session *s, const char *p, unsigned long long *declared)
{
    *declared = 0;
    char buf[CMD_LINE_MAX];
    snprintf(buf, sizeof buf, "%s", p);
    char *save = NULL;
    for (char *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (strncasecmp(tok, "SIZE=", 5) == 0) {
            char *end;
            errno = 0;
            unsigned long long size = strtoull(tok + 5, &end, 10);
            if (*end || end == tok + 5 || errno) {
                protocol_error(s, "501 5.5.4 Bad SIZE parameter");
                return -1;
            }
            if (size > (unsigned long long)s->rt->cfg.max_message_size) {
                reply(s, "552 5.3.4 Message size exceeds fixed maximum message size");
                return -1;
            }
            *declared = size;
        } else if (strncasecmp(tok, "BODY=", 5) == 0) {
            if (strcasecmp(tok + 5, "8BITMIME") == 0)
                s->body_8bit = 1;
            else if (strcasecmp(tok + 5, "7BIT") != 0) {
                protocol_error(s, "501 5.5.4 Bad BODY parameter");
                return -1;
            }
        } else if (strcasecmp(tok, "SMTPUTF8") == 0) {
            s->smtputf8 = 1;
        } else {
            protocol_error(s, "555 5.5.4 Unsupported MAIL parameter");
            return -1;
        }
    }
    return 0;
}

/* Room in spool_dir for this transaction: min_free_space must stay free
 * after a message of the declared SIZE (Postfix's queue_minfree test).  The
 * free space is a cached statvfs (spool_free_bytes), so a busy MAIL rate costs
 * one system call a second. */
static int disk_has_room(struct session *s, unsigned long long declared)
{
    unsigned long long want = (unsigned long long)s->rt->cfg.min_free_space_mb * 1024 * 1024 + declared;
    return want == 0 || spool_free_bytes(srv.spool) >= want;
}

static void cmd_mail(struct session *s, char *arg)
{
    if (s->state < S_HELO) {
        protocol_error(s, "503 5.5.1 Error: send HELO/EHLO first");
        return;
    }
    if (s->state >= S_MAIL) {
        protocol_error(s, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    char *p = after_keyword(arg, "FROM:");
    if (!p) {
        protocol_error(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
        return;
    }
    struct smtp_path path;
    const char *rest;
    if (path_error_reply(s, parse_path(p, &path, &rest), 1))
        return;
    if (*rest && *rest != ' ') {
        protocol_error(s, "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]");
        return;
    }
    unsigned long long declared;
    if (mail_params(s, rest, &declared) != 0) {
        s->smtputf8 = s->body_8bit = 0;
        return;
    }
    if (path.has_8bit && !s->smtputf8) {
        reply(s, "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter");
        return;
    }
    if (!proxy_mode(s) && !disk_has_room(s, declared)) {
        srv.stats.refused_disk++;
        log_kv(LOG_WARN, "mail_refused", "session", s->id, "ip", s->ip, "reason", "min_free_space", NULL);
        s->smtputf8 = s->body_8bit = 0;
        reply(s, "452 4.3.1 Insufficient system storage");
        return;
    }
    s->from = strdup(path.raw);
    s->state = S_MAIL;
    s->qid[0] = '\0';
    srv.stats.transactions++;
    struct verdict v;
    SHADOW_HOOK(s, PH_MAIL, lb_mail_from(sl, path.raw, path.null ? NULL : path.local, path.null ? NULL : path.domain, &sv));
    if (hook_wait(s, PH_MAIL, lb_mail_from(&s->lb, path.raw, path.null ? NULL : path.local,
                                           path.null ? NULL : path.domain, &v), &v))
        finish_mail(s, &v);
}

static void finish_mail(struct session *s, const struct verdict *v)
{
    if (reply_verdict(s, v)) {
        log_kv(LOG_INFO, "mail_rejected", "session", s->id, "ip", s->ip, "from", s->from,
               "verdict", action_name(v), "policy", v->policy, NULL);
        reset_transaction(s);
        return;
    }
    if (v->action == V_DISCARD)
        s->discard_all = 1;
    if (proxy_mode(s)) {
        proxy_mail(s);
        return;
    }
    reply(s, "250 2.1.0 Ok");
}

/* The route the core gives a recipient before any policy: local only for a
 * plain address in a local domain.  Anything carrying a route (source route,
 * %, !, a quoted @) counts as remote, so that without the router policy
 * moat still never relays on a trick. */
static void default_route(const struct config *c, const struct smtp_path *p, struct route *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->address, sizeof r->address, "%s", p->raw);
    int plain = !p->routed && !strpbrk(p->local, "%!@\"");
    int local = !p->domain[0] || (plain && config_is_local_domain(c, p->domain));   /* "" = <postmaster> */
    snprintf(r->kind, sizeof r->kind, "%s", local ? "local" : "remote");
    /* Like the Router: a remote route's host is where it goes, here its domain. */
    if (!local)
        snprintf(r->host, sizeof r->host, "%s", p->domain);
}

static void cmd_rcpt(struct session *s, char *arg)
{
    if (s->state < S_MAIL) {
        protocol_error(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    char *p = after_keyword(arg, "TO:");
    if (!p) {
        protocol_error(s, "501 5.5.4 Syntax: RCPT TO:<address>");
        return;
    }
    struct smtp_path parsed, *path = &parsed;
    const char *rest;
    if (path_error_reply(s, parse_path(p, path, &rest), 0))
        return;
    if (path->null) {
        protocol_error(s, "501 5.1.3 Bad recipient address syntax");
        return;
    }
    while (*rest == ' ')
        rest++;
    if (*rest) {
        protocol_error(s, "555 5.5.4 Unsupported RCPT parameter");
        return;
    }
    if (path->has_8bit && !s->smtputf8) {
        reply(s, "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter");
        return;
    }
    if (s->nrcpts >= s->rt->cfg.max_recipients) {
        reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    struct route r;
    default_route(&s->rt->cfg, path, &r);
    struct verdict v;
    _Static_assert(sizeof s->pending_rcpt == sizeof path->raw, "pending_rcpt holds a raw path");
    memcpy(s->pending_rcpt, path->raw, sizeof s->pending_rcpt);
    SHADOW_HOOK(s, PH_RCPT, lb_rcpt(sl, path->raw, path->local, path->domain, &r, &sv));
    if (hook_wait(s, PH_RCPT, lb_rcpt(&s->lb, path->raw, path->local, path->domain, &r, &v), &v))
        finish_rcpt(s, &v);
}

static void finish_rcpt(struct session *s, const struct verdict *v)
{
    const char *raw = s->pending_rcpt;
    if (reply_verdict(s, v)) {
        srv.stats.rcpts_rejected++;
        log_kv(LOG_INFO, "rcpt_rejected", "session", s->id, "ip", s->ip, "from", s->from, "rcpt", raw,
               "verdict", action_name(v), "policy", v->policy, "reply", v->text, NULL);
        return;
    }
    if (proxy_mode(s) && s->proxy && v->action != V_DISCARD) {
        proxy_rcpt(s, raw);
        return;
    }
    add_rcpt(s, raw, &v->route, v->action == V_DISCARD);
    reply(s, "250 2.1.5 Ok");
}

void add_rcpt(struct session *s, const char *raw, const struct route *r, int discard)
{
    struct rcpt *n = realloc(s->rcpts, (size_t)(s->nrcpts + 1) * sizeof *n);
    if (!n)
        return;
    s->rcpts = n;
    n[s->nrcpts].raw = strdup(raw);
    n[s->nrcpts].route = *r;
    n[s->nrcpts].discard = discard;
    s->nrcpts++;
    srv.stats.rcpts_accepted++;
    s->state = S_RCPT;
    LB_BOTH(lb_rcpt_accepted, s, raw, r);
}

static void cmd_data(struct session *s, char *arg)
{
    if (*arg) {
        protocol_error(s, "501 5.5.4 Syntax: DATA");
        return;
    }
    if (s->state < S_MAIL) {
        protocol_error(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    if (s->nrcpts == 0) {
        protocol_error(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    struct verdict v;
    SHADOW_HOOK(s, PH_DATA, lb_data(sl, &sv));
    if (hook_wait(s, PH_DATA, lb_data(&s->lb, &v), &v))
        finish_data_cmd(s, &v);
}

static void finish_data_cmd(struct session *s, const struct verdict *v)
{
    if (reply_verdict(s, v)) {
        log_transaction(s, action_name(v), v->policy, v->text);
        srv.stats.messages_rejected++;
        reset_transaction(s);
        return;
    }
    s->state = S_DATA;
    s->msg = evbuffer_new();
    s->msg_size = 0;
    s->prev_crlf = 1;
    s->in_header = 1;
    s->have_kept = 0;
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void setup_bev(struct session *s);

/* RFC 3207.  Anything the client pipelined after STARTTLS was sent in clear
 * text and must not be read as if it came over TLS (the STARTTLS command
 * injection hole): it is thrown away.  After the handshake the session
 * starts over: the client must say EHLO again, and forgets everything. */
static void cmd_starttls(struct session *s, char *arg)
{
    if (*arg) {
        protocol_error(s, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    if (s->tls_active || s->tls_mode == TLS_EXT) {
        protocol_error(s, "503 5.5.1 Error: TLS already active");
        return;
    }
    SSL *ssl = starttls_offered(s) ? tls_new_ssl(s->rt->tls, &s->rt->cfg, s->local_ip) : NULL;
    if (!ssl) {
        reply(s, "454 4.7.0 TLS not available");
        return;
    }
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t junk = evbuffer_get_length(in);
    if (junk) {
        char n[32];
        snprintf(n, sizeof n, "%zu", junk);
        log_kv(LOG_WARN, "starttls_injection", "session", s->id, "ip", s->ip, "discarded_bytes", n, NULL);
        evbuffer_drain(in, junk);
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    /* The handshake starts once the 220 is on the wire (on_write); until
     * then nothing more is read. */
    bufferevent_disable(s->bev, EV_READ);
    s->tls_switch = ssl;
    s->busy = 1;
    /* The 220 may already be in the kernel (send_reply): then no write
     * will complete to call on_write, so call it from the loop. */
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        bufferevent_trigger(s->bev, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    s->pending = PH_COUNT;
    reset_transaction(s);
    s->helo[0] = '\0';
    s->esmtp = 0;
    s->state = S_GREETED;
    LB_BOTH(lb_set_str, s, "tls", "starttls");
    LB_BOTH(lb_set_bool, s, "secure", 1);
    LB_BOTH(lb_set_str, s, "helo", NULL);
}

static void cmd_rset(struct session *s, char *arg)
{
    (void)arg;
    proxy_rset(s);
    reset_transaction(s);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct session *s, char *arg)
{
    (void)arg;
    reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct session *s, char *arg)
{
    (void)arg;
    reply(s, "221 2.0.0 Bye");
    close_after_reply(s);
}

static void cmd_vrfy(struct session *s, char *arg)
{
    (void)arg;
    reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_help(struct session *s, char *arg)
{
    (void)arg;
    reply(s, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
}

static void cmd_not_implemented(struct session *s, char *arg)
{
    (void)arg;
    protocol_error(s, "502 5.5.1 Command not implemented");
}

static const struct command {
    const char *name;
    void (*fn)(struct session *, char *);
} commands[] = {
    { "EHLO", cmd_ehlo }, { "HELO", cmd_helo }, { "MAIL", cmd_mail }, { "RCPT", cmd_rcpt },
    { "DATA", cmd_data }, { "RSET", cmd_rset }, { "NOOP", cmd_noop }, { "QUIT", cmd_quit },
    { "VRFY", cmd_vrfy }, { "HELP", cmd_help }, { "STARTTLS", cmd_starttls }, { "AUTH", cmd_auth },
    { "EXPN", cmd_not_implemented },
    { "TURN", cmd_not_implemented }, { "ETRN", cmd_not_implemented },
};

static void dispatch(struct session *s, char *line)
{
    size_t vlen = strcspn(line, " ");
    char *arg = line + vlen;
    if (*arg)
        *arg++ = '\0';
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcasecmp(line, commands[i].name) == 0) {
            commands[i].fn(s, arg);
            return;
        }
    }
    protocol_error(s, "500 5.5.2 Error: command not recognized");
}

/* ---- DATA ----------------------------------------------------------------- */

static char *envelope_json(struct session *s);
static void spool_done(void *arg, int err, double latency_ms);

static void build_received(struct session *s, struct evbuffer *out)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
    /* RFC 3848 / 6531 protocol names: ESMTP, +S with TLS, +A when authenticated. */
    char proto[16];
    snprintf(proto, sizeof proto, "%s%s%s", !s->esmtp ? "SMTP" : s->smtputf8 ? "UTF8SMTP" : "ESMTP",
             s->esmtp && s->tls_active ? "S" : "", s->esmtp && s->user[0] ? "A" : "");
    evbuffer_add_printf(out, "Received: from %s (%s [%s])", s->helo[0] ? s->helo : "unknown", s->ip, s->ip);
    if (s->tls_active)
        evbuffer_add_printf(out, "\r\n\t(using %s)", s->tls_info);
    if (s->user[0])
        evbuffer_add_printf(out, "\r\n\t(authenticated sender)");
    evbuffer_add_printf(out, "\r\n\tby %s (moat) with %s id %s", s->rt->cfg.server_name, proto, s->qid);
    if (s->nrcpts == 1)
        evbuffer_add_printf(out, "\r\n\tfor <%s>", s->rcpts[0].raw);
    evbuffer_add_printf(out, ";\r\n\t%s\r\n", date);
}

static void store_message(struct session *s, const char *policy)
{
    struct evbuffer *out = evbuffer_new();
    build_received(s, out);
    for (int i = 0; i < s->lb.nheaders; i++)
        evbuffer_add_printf(out, "%s\r\n", s->lb.headers[i]);
    evbuffer_add_buffer(out, s->msg);
    if (proxy_mode(s)) {
        proxy_message(s, out);
        return;
    }
    char *env = envelope_json(s);
    log_kv(LOG_DEBUG, "spool_submit", "session", s->id, "qid", s->qid, "policy", policy, NULL);
    s->busy = 1;
    s->pending = PH_COUNT;
    s->job = spool_submit(srv.spool, s->qid, out, env, spool_done, s);
}

static void spool_done(void *arg, int err, double latency_ms)
{
    struct session *s = arg;
    s->job = NULL;
    s->busy = 0;
    srv.stats.spool_commits++;
    srv.stats.spool_latency_sum_ms += latency_ms;
    if (latency_ms > srv.stats.spool_latency_max_ms)
        srv.stats.spool_latency_max_ms = latency_ms;
    if (err) {
        log_kv(LOG_ERR, "spool_error", "session", s->id, "qid", s->qid, "error", strerror(err), NULL);
        if (spool_err_is_full(err)) {
            /* The writer removed its tmp/ files: nothing half-written stays,
             * and the client keeps the message and retries later. */
            srv.stats.refused_disk++;
            reply(s, "452 4.3.1 Insufficient system storage");
            log_transaction(s, "tempfail", "spool", "insufficient system storage");
        } else {
            reply(s, "451 4.3.0 Error: queue file write error");
            log_transaction(s, "tempfail", "spool", "queue file write error");
        }
    } else {
        srv.stats.messages_accepted++;
        delivery_poke();
        reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
        log_transaction(s, "accept", NULL, "queued");
    }
    reset_transaction(s);
    process_input(s);
}

/* A redirect replaces every recipient with one address (server-wide rules). */
static void redirect_message(struct session *s, const char *address)
{
    for (int i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i].raw);
    s->nrcpts = 1;
    s->rcpts[0].raw = strdup(address);
    s->rcpts[0].discard = 0;
    struct smtp_path p;
    char bracketed[PATH_MAX_LEN + 3];
    snprintf(bracketed, sizeof bracketed, "<%s>", address);
    const char *rest;
    if (parse_path(bracketed, &p, &rest) == PATH_OK && !*rest) {
        default_route(&s->rt->cfg, &p, &s->rcpts[0].route);
    } else {
        /* Not a path the core can read: a remote route to itself, never a
         * route borrowed from the first original recipient. */
        struct route *r = &s->rcpts[0].route;
        memset(r, 0, sizeof *r);
        snprintf(r->kind, sizeof r->kind, "remote");
        snprintf(r->address, sizeof r->address, "%s", address);
        const char *at = strrchr(address, '@');
        snprintf(r->host, sizeof r->host, "%s", at ? at + 1 : "");
    }
    log_kv(LOG_INFO, "redirect", "session", s->id, "qid", s->qid, "to", address, NULL);
}

static void finish_message(struct session *s, const struct verdict *v)
{
    if (s->too_big) {
        srv.stats.messages_rejected++;
        reply(s, "552 5.3.4 Message size exceeds fixed maximum message size");
        log_transaction(s, "reject", NULL, "message too big");
    } else if (s->line_too_long) {
        srv.stats.messages_rejected++;
        reply(s, "500 5.5.2 Line too long (more than %d bytes)", s->rt->cfg.max_line_length);
        log_transaction(s, "reject", NULL, "line too long");
    } else if (reply_verdict(s, v)) {
        srv.stats.messages_rejected++;
        log_transaction(s, action_name(v), v->policy, v->text);
    } else {
        if (v->action == V_REDIRECT)
            redirect_message(s, v->route.address);
        int all_discarded = 1;
        for (int i = 0; i < s->nrcpts; i++)
            all_discarded &= s->rcpts[i].discard;
        int discard = v->action == V_DISCARD || s->discard_all || all_discarded;
        if (discard) {
            /* Accepted and thrown away: the client cannot tell (that is the point). */
            srv.stats.messages_discarded++;
            reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
            log_transaction(s, "discard", v->policy, "discarded");
        } else {
            store_message(s, v->policy);
            return;
        }
    }
    if (!s->closing)
        reset_transaction(s);
}

static void finish_data_end(struct session *s, const struct verdict *v) { finish_message(s, v); }

static void finish_data_line(struct session *s, const struct verdict *v);

/* Message lines go to data_line hooks when either chain has one. */
static int want_data_line(struct session *s)
{
    return lb_has_phase(s->rt, PH_DATA_LINE) || shadow_wants_data_line(s->shadow);
}

static void end_of_data(struct session *s)
{
    spool_new_id(s->qid);
    s->state = S_RCPT;   /* no more DATA lines */
    if (want_data_line(s))
        shadow_data_lines_end(s->shadow, s->kept);
    if (s->have_kept || s->too_big || s->line_too_long) {
        struct verdict none = { .action = V_NONE };
        finish_message(s, s->kept ? s->kept : &none);
        return;
    }
    struct verdict v;
    SHADOW_HOOK(s, PH_DATA_END, lb_data_end(sl, (long)s->msg_size, &sv));
    if (hook_wait(s, PH_DATA_END, lb_data_end(&s->lb, (long)s->msg_size, &v), &v))
        finish_message(s, &v);
}

static void finish_data_line(struct session *s, const struct verdict *v)
{
    if (v->action != V_NONE && !s->have_kept) {
        s->kept = malloc(sizeof *s->kept);
        *s->kept = *v;
        s->have_kept = 1;
    }
    if (s->eod_pending) {
        s->eod_pending = 0;
        end_of_data(s);
    }
}

/* A header field is complete: give it to the data_line hooks whole, with
 * its inner line breaks (a wrapped field is one "line", seed 002). */
static void submit_field(struct session *s)
{
    size_t flen = s->field ? evbuffer_get_length(s->field) : 0;
    if (flen == 0)
        return;
    struct verdict v;
    const char *f = (const char *)evbuffer_pullup(s->field, -1);
    shadow_data_line(s->shadow, f, flen, 1);
    int live = !s->have_kept && lb_has_phase(s->rt, PH_DATA_LINE);
    int done = live ? lb_data_line(&s->lb, f, flen, 1, &v) : 1;
    evbuffer_drain(s->field, flen);
    if (live && hook_wait(s, PH_DATA_LINE, done, &v))
        finish_data_line(s, &v);
}

/* Feed one unstuffed line (without its terminator) to the data_line hooks.
 * Returns 0 if the session is now waiting for a hook. */
static int feed_line(struct session *s, const char *line, size_t len, const char *eol, size_t eollen)
{
    if (!want_data_line(s))
        return 1;
    if (!s->in_header) {
        shadow_data_line(s->shadow, line, len, 0);
        if (s->have_kept || !lb_has_phase(s->rt, PH_DATA_LINE))
            return 1;
        struct verdict v;
        if (hook_wait(s, PH_DATA_LINE, lb_data_line(&s->lb, line, len, 0, &v), &v))
            finish_data_line(s, &v);
        return !s->busy;
    }
    int continuation = len > 0 && (line[0] == ' ' || line[0] == '\t');
    if (continuation && s->field && evbuffer_get_length(s->field) > 0) {
        if (evbuffer_get_length(s->field) + len + eollen <= HEADER_FIELD_MAX) {
            evbuffer_add(s->field, eol, eollen);
            evbuffer_add(s->field, line, len);
        }
        return 1;
    }
    submit_field(s);
    if (len == 0) {
        s->in_header = 0;     /* the blank line ends the header */
    } else {
        if (!s->field)
            s->field = evbuffer_new();
        evbuffer_add(s->field, line, len < HEADER_FIELD_MAX ? len : HEADER_FIELD_MAX);
    }
    return !s->busy;
}

/* The message lines wholly inside [p, p + n): each is dot-unstuffed, added
 * to the message (a run of lines in one evbuffer_add) and given to the
 * data_line hooks.  Stops before the end-of-data line (data_step handles
 * it), at the first incomplete line, and as soon as the session must wait
 * for a hook.  *used is the number of bytes taken (0: not one line); returns
 * 0 when the session must wait. */
static int take_lines(struct session *s, const char *p, size_t n, size_t *used)
{
    size_t max = (size_t)s->rt->cfg.max_line_length;
    size_t limit = (size_t)s->rt->cfg.max_message_size;
    const char *run = NULL;      /* bytes for s->msg not yet added */
    size_t runlen = 0, off = 0;
    int go_on = 1;
    while (off < n && go_on && !s->busy && !s->closing) {
        const char *line = p + off;
        const char *lf = memchr(line, '\n', n - off);
        if (!lf)
            break;
        size_t linelen = (size_t)(lf - line) + 1;
        int crlf = linelen >= 2 && line[linelen - 2] == '\r';
        size_t content = linelen - 1 - (size_t)crlf;
        if (content > max) {
            s->line_too_long = 1;
            s->prev_crlf = crlf;
            off += linelen;
            continue;
        }
        if (content == 1 && line[0] == '.' && crlf && s->prev_crlf)
            break;               /* the end of the message */
        debugrec_client(s->rec, line, content);   /* as sent: dot-stuffed */
        const char *text = line;
        size_t tlen = linelen;
        if (line[0] == '.') {    /* dot-unstuffing (RFC 5321 4.5.2) */
            text++;
            tlen--;
            content--;
        }
        if (!s->too_big && s->msg_size + tlen > limit) {
            s->too_big = 1;      /* keep nothing of it, refuse it after the dot */
            run = NULL;
            runlen = 0;
            evbuffer_drain(s->msg, evbuffer_get_length(s->msg));
        } else if (!s->too_big) {
            if (run && run + runlen == text) {
                runlen += tlen;
            } else {
                if (runlen)
                    evbuffer_add(s->msg, run, runlen);
                run = text;
                runlen = tlen;
            }
        }
        s->msg_size += tlen;
        s->prev_crlf = crlf;
        if (!s->too_big && !s->line_too_long)
            go_on = feed_line(s, text, content, text + content, tlen - content);
        off += linelen;
    }
    if (runlen && !s->too_big)
        evbuffer_add(s->msg, run, runlen);
    *used = off;
    return go_on;
}

/* DATA input.  Lines end at LF; the message ends only at CRLF "." CRLF (a
 * bare LF never ends the message: no SMTP smuggling through moat).  The
 * lines inside the input's first buffer segment are taken where they lie;
 * a line that crosses into the next segment is made contiguous first.
 * Returns 0 when no complete line is buffered or the session must wait. */
static int data_step(struct session *s, struct evbuffer *in)
{
    struct evbuffer_iovec seg;
    size_t used = 0;
    if (evbuffer_peek(in, -1, NULL, &seg, 1) >= 1) {
        int go_on = take_lines(s, seg.iov_base, seg.iov_len, &used);
        if (used > 0) {
            evbuffer_drain(in, used);
            return go_on;
        }
    }
    size_t inlen = evbuffer_get_length(in);
    struct evbuffer_ptr pos = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
    size_t max = (size_t)s->rt->cfg.max_line_length;
    if (pos.pos < 0) {
        if (inlen > max + 1) {      /* + 1: the CR may be here, its LF still on the way */
            /* Overlong line: keep nothing of it, remember to refuse the message. */
            s->line_too_long = 1;
            evbuffer_drain(in, inlen);
            s->prev_crlf = 0;
        }
        return 0;
    }
    size_t linelen = (size_t)pos.pos + 1;
    const char *line = (const char *)evbuffer_pullup(in, (ev_ssize_t)linelen);
    int crlf = linelen >= 2 && line[linelen - 2] == '\r';
    size_t content = linelen - 1 - (size_t)crlf;
    if (content == 1 && line[0] == '.' && crlf && s->prev_crlf) {
        debugrec_client(s->rec, ".", 1);
        evbuffer_drain(in, linelen);
        /* A message with no blank line ends inside its header. */
        if (s->in_header && !s->too_big && !s->line_too_long && want_data_line(s))
            submit_field(s);
        if (s->busy)
            s->eod_pending = 1;   /* finish_data_line calls end_of_data */
        else
            end_of_data(s);
        return !s->busy;
    }
    int go_on = take_lines(s, line, linelen, &used);   /* exactly this line */
    evbuffer_drain(in, linelen);
    return go_on;
}

/* ---- input loop ------------------------------------------------------------ */

/* Read one command line into buf; 1 = got one, 0 = need more input. */
static int read_command(struct session *s, struct evbuffer *in, char *buf, size_t cap)
{
    struct evbuffer_ptr pos = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
    if (pos.pos < 0) {
        if (evbuffer_get_length(in) > CMD_LINE_MAX + 1) {   /* + 1: a CR whose LF is on the way */
            evbuffer_drain(in, evbuffer_get_length(in));
            s->skipping_line = 1;
        }
        return 0;
    }
    size_t n = (size_t)pos.pos;
    size_t content = n > 0 && evbuffer_pullup(in, (ev_ssize_t)n)[n - 1] == '\r' ? n - 1 : n;
    if (s->skipping_line || content > CMD_LINE_MAX || n + 1 > cap) {
        evbuffer_drain(in, n + 1);
        s->skipping_line = 0;
        protocol_error(s, "500 5.5.2 Error: line too long");
        buf[0] = '\0';
        return -1;
    }
    evbuffer_remove(in, buf, n + 1);
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    if (memchr(buf, '\0', n)) {
        protocol_error(s, "500 5.5.2 Error: NUL byte in command");
        return -1;
    }
    return 1;
}

void process_input(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer *out = bufferevent_get_output(s->bev);
    char line[CMD_LINE_MAX + 2];
    while (!s->busy && !s->closing && s->state != S_INIT) {
        if (evbuffer_get_length(out) > OUT_MAX)
            return;   /* resumed from the write callback once the client reads */
        if (s->state == S_DATA) {
            if (!data_step(s, in))
                break;
            continue;
        }
        if (srv.stopping && s->auth_state == AUTH_NONE) {
            say_shutdown(s);    /* between commands while moat stops */
            return;
        }
        int r = read_command(s, in, line, sizeof line);
        if (r == 0)
            break;
        if (r < 0)
            continue;
        if (s->debug) {
            int secret = s->auth_state != AUTH_NONE || strncasecmp(line, "AUTH ", 5) == 0;
            log_kv(LOG_INFO, "debug_in", "session", s->id, "line", secret ? "(authentication data)" : line, NULL);
            if (secret)
                debugrec_comment(s->rec, "C: (authentication data)");
            else
                debugrec_client(s->rec, line, strlen(line));
        }
        if (s->auth_state != AUTH_NONE)
            auth_continue(s, line);
        else
            dispatch(s, line);
    }
}

/* ---- libevent callbacks ------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    process_input(arg);
}

/* STARTTLS, second half: the clear-text socket becomes a TLS socket.  The
 * same fd goes to a socket-level OpenSSL bufferevent (not a filter: with a
 * filter, "output empty" would not mean "on the wire", and a reply followed
 * by a close could be lost). */
static void switch_to_tls(struct session *s)
{
    SSL *ssl = s->tls_switch;
    s->tls_switch = NULL;
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    bufferevent_setfd(s->bev, -1);
    bufferevent_free(s->bev);
    s->bev = bufferevent_openssl_socket_new(srv.base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
    setup_bev(s);
    s->tls_active = 1;
    s->busy = 0;
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    if (s->tls_switch) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            switch_to_tls(s);
        return;
    }
    if (s->closing) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            session_free(s);
        return;
    }
    if (!s->busy)
        process_input(s);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct session *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        /* TLS handshake done (tls = on sockets and after STARTTLS). */
        SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
        if (ssl) {
            tls_describe(ssl, s->tls_info, sizeof s->tls_info);
            log_kv(LOG_INFO, "tls", "session", s->id, "ip", s->ip, "protocol", s->tls_info,
                   "sni", SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), NULL);
        }
        return;
    }
    if ((what & BEV_EVENT_ERROR) && bufferevent_openssl_get_ssl(s->bev)) {
        unsigned long e = bufferevent_get_openssl_error(s->bev);
        char buf[256] = "connection closed";
        if (e)
            ERR_error_string_n(e, buf, sizeof buf);
        log_kv(LOG_INFO, "tls_error", "session", s->id, "ip", s->ip, "error", buf, NULL);
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if ((what & BEV_EVENT_READING) && s->busy && !s->closing) {
            /* We are the slow one (a hook is waiting): keep the client. */
            bufferevent_enable(s->bev, EV_READ);
            return;
        }
        log_kv(LOG_INFO, "timeout", "session", s->id, "ip", s->ip, NULL);
        if ((what & BEV_EVENT_READING) && !s->closing) {
            reply(s, "421 4.4.2 %s Error: timeout exceeded", s->rt->cfg.server_name);
            close_after_reply(s);
            return;
        }
    }
    session_free(s);
}

/* ---- session lifecycle -------------------------------------------------- */

static void sockaddr_text(const struct sockaddr *sa, char *ip, size_t iplen, int *port)
{
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], ip, (socklen_t)iplen);
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, (socklen_t)iplen);
        *port = ntohs(s6->sin6_port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, (socklen_t)iplen);
        *port = ntohs(s4->sin_port);
    }
}

/* The status the lists and recent logins give (DESIGN §6); the blacklist
 * and rbl policies refine "other" with DNS. */
static const char *status_of(const struct config *c, const char *ip, const unsigned char key[16])
{
    if (iplist_contains_str(c->ip[T_CLIENT], ip))
        return "client";
    if (srv.tempblock && tb_trusted(srv.tempblock, key, time(NULL)) > 0)
        return "trusted";
    if (iplist_contains_str(c->ip[T_BLACKLISTED], ip))
        return "blacklisted";
    return "other";
}

static void set_session_fields(struct session *s, struct lb_session *lb)
{
    static const char *tls_names[] = { "off", "on", "ext" };
    lb_set_str(lb, "id", s->id);
    lb_set_str(lb, "ip", s->ip);
    lb_set_int(lb, "port", s->port);
    lb_set_str(lb, "local_ip", s->local_ip);
    lb_set_int(lb, "local_port", s->local_port);
    lb_set_str(lb, "tls", tls_names[s->tls_mode]);
    lb_set_bool(lb, "secure", s->tls_mode != TLS_OFF);   /* ext: TLS done in front of us */
    lb_set_str(lb, "status", s->client_status);
    lb_set_bool(lb, "lan", iplist_contains_str(s->rt->cfg.ip[T_LAN], s->ip));
}

void smtp_session_new(int fd, const struct sockaddr *peer, socklen_t peerlen, struct listener_sock *lsock,
                      const unsigned char key[16])
{
    (void)peerlen;
    struct session *s = calloc(1, sizeof *s);
    memcpy(s->ipkey, key, 16);
    s->tls_mode = lsock->tls;
    s->rt = runtime_ref(srv.rt);
    s->lsock = lsock;
    snprintf(s->id, sizeof s->id, "%lx.%lx", (unsigned long)time(NULL), ++session_serial);
    sockaddr_text(peer, s->ip, sizeof s->ip, &s->port);
    struct sockaddr_storage local;
    socklen_t llen = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0)
        sockaddr_text((struct sockaddr *)&local, s->local_ip, sizeof s->local_ip, &s->local_port);
    s->client_status = status_of(&s->rt->cfg, s->ip, key);
    /* An address past a debug threshold has all its sessions logged. */
    s->debug = srv.tempblock && tb_debugged(srv.tempblock, key, time(NULL));

    if (lsock->tls == TLS_ON) {
        /* Secure socket: TLS before SMTP, with the certificate of the domain
         * that owns the local address; no certificate, no session (seed 000). */
        SSL *ssl = tls_new_ssl(s->rt->tls, &s->rt->cfg, s->local_ip);
        if (!ssl) {
            log_kv(LOG_ERR, "tls_no_certificate", "ip", s->ip, "local", s->local_ip,
                   "domain", tls_domain_for(&s->rt->cfg, s->local_ip), NULL);
            listener_conn_closed(lsock, key);
            runtime_unref(s->rt);
            free(s);
            close(fd);
            return;
        }
        s->bev = bufferevent_openssl_socket_new(srv.base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
        bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
        s->tls_active = 1;
    } else {
        s->bev = bufferevent_socket_new(srv.base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (s->debug)
        s->rec = debugrec_new(s->id, s->ip, s->port, lsock->tls != TLS_OFF, 0);
    setup_bev(s);
    open_sessions++;
    s->next = all_sessions;
    if (all_sessions)
        all_sessions->prev = s;
    all_sessions = s;
    srv.stats.connections_total++;
    srv.stats.connections_current++;

    lb_session_open(&s->lb, s->rt, s, on_hook_done);
    set_session_fields(s, &s->lb);
    s->shadow = shadow_open(s->rt, s->id, s->ip);
    if (s->shadow)
        set_session_fields(s, shadow_lb(s->shadow));
    char port[16], lport[16];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(lport, sizeof lport, "%d", s->local_port);
    log_kv(LOG_INFO, "connect", "session", s->id, "ip", s->ip, "port", port, "local", s->local_ip,
           "local_port", lport, "status", s->client_status, NULL);

    struct verdict v;
    SHADOW_HOOK(s, PH_CONNECT, lb_connect(sl, &sv));
    if (hook_wait(s, PH_CONNECT, lb_connect(&s->lb, &v), &v))
        finish_connect(s, &v);
}

/* Callbacks, bounded input (libevent stops reading at the high-water mark)
 * and the idle timeout, for a new bufferevent or the TLS filter over it. */
static void setup_bev(struct session *s)
{
    bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
    size_t high = (size_t)s->rt->cfg.max_line_length + CMD_LINE_MAX + 4096;
    bufferevent_setwatermark(s->bev, EV_READ, 0, high);
    struct timeval tmo = { s->rt->cfg.timeout_s, 0 };
    bufferevent_set_timeouts(s->bev, &tmo, &tmo);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

void session_free(struct session *s)
{
    log_kv(LOG_INFO, "disconnect", "session", s->id, "ip", s->ip, NULL);
    if (s->job)
        spool_job_detach(s->job);
    auth_detach(s);
    if (s->greet_timer)
        event_free(s->greet_timer);
    proxy_close(s);             /* no callback reaches us after this */
    if (s->tls_switch)
        SSL_free(s->tls_switch);
    lb_disconnect(&s->lb);
    debugrec_finish(s->rec, s->rt->cfg.spool_dir);
    reset_transaction(s);
    lb_session_close(&s->lb);
    shadow_close(s->shadow);
    bufferevent_free(s->bev);
    listener_conn_closed(s->lsock, s->ipkey);
    runtime_unref(s->rt);
    open_sessions--;
    if (s->prev)
        s->prev->next = s->next;
    else
        all_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    srv.stats.connections_current--;
    free(s);
    if (srv.stopping && open_sessions == 0)
        event_base_loopbreak(srv.base);   /* the last session of a graceful stop is done */
}

/* ---- envelope ------------------------------------------------------------ */

/* The .env of the message: built from the session (borrowed strings). */
static char *envelope_json(struct session *s)
{
    struct envelope e;
    memset(&e, 0, sizeof e);
    snprintf(e.id, sizeof e.id, "%s", s->qid);
    e.from = s->from ? s->from : (char *)"";
    e.rcpts = calloc((size_t)s->nrcpts + 1, sizeof *e.rcpts);
    for (int i = 0; i < s->nrcpts; i++) {
        struct rcpt *r = &s->rcpts[i];
        if (r->discard)
            continue;
        struct env_rcpt *er = &e.rcpts[e.nrcpts++];
        er->addr = r->raw;
        snprintf(er->kind, sizeof er->kind, "%s", r->route.kind);
        er->route_address = r->route.address;
        er->host = r->route.host[0] ? r->route.host : NULL;
        er->can_relay = r->route.can_relay;
    }
    char ts[40];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    e.ip = s->ip;
    e.helo = s->helo[0] ? s->helo : NULL;
    e.user = s->user[0] ? s->user : NULL;
    e.received = ts;
    e.received_at = now;
    e.size = (long)s->msg_size;
    struct evbuffer *b = evbuffer_new();
    envelope_write(&e, b);
    free(e.rcpts);
    size_t n = evbuffer_get_length(b);
    char *r = malloc(n + 1);
    evbuffer_remove(b, r, n);
    r[n] = '\0';
    evbuffer_free(b);
    return r;
}
