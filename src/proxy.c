/* proxy.c - delivery mode "proxy": a before-queue proxy to the next hop.
 *
 * After the policies accept MAIL and each RCPT, the command goes to the next
 * hop and its own reply goes back to the client; the message is forwarded
 * after the final dot (the policies see it whole first) and the next hop's
 * final reply is the client's.  Nothing is queued locally; a next hop that is
 * down is a 451 4.4.1, never a silent accept. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "smtp_session.h"

int proxy_mode(const struct session *s) { return s->rt->cfg.delivery.mode == DELIVERY_PROXY; }

/* Give the next hop's reply to the client as it came (multi-line kept). */
static void relay_reply(struct session *s, int code, const char *text)
{
    if (code == 0) {
        log_kv(LOG_WARN, "proxy_error", "session", s->id, "error", text, NULL);
        reply(s, "451 4.4.1 Next hop unavailable, try again later");
        return;
    }
    char buf[SMTPC_REPLY_MAX];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *line = buf, *nl; line && *line; line = nl) {
        nl = strchr(line, '\n');
        if (nl)
            *nl++ = '\0';
        reply(s, "%s", line);
    }
}

static void proxy_resume(struct session *s)
{
    s->busy = 0;
    if (s->closing) {
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
            session_free(s);
        return;
    }
    process_input(s);
}

static void proxy_drop(struct session *s)
{
    smtpc_close(s->proxy);
    s->proxy = NULL;
}

static void proxy_mail_done(void *arg, int code, const char *text)
{
    struct session *s = arg;
    relay_reply(s, code, text);
    if (code < 200 || code > 299) {
        reset_transaction(s);
        if (code == 0 || code == 421)
            proxy_drop(s);
    }
    proxy_resume(s);
}

static void proxy_send_mail(struct session *s)
{
    char line[PATH_MAX_LEN + 64];
    snprintf(line, sizeof line, "MAIL FROM:<%s>%s", s->from ? s->from : "", s->smtputf8 ? " SMTPUTF8" : "");
    smtpc_cmd(s->proxy, line, proxy_mail_done, s);
}

static void proxy_ready(void *arg, int code, const char *text)
{
    struct session *s = arg;
    if (code != 250) {
        relay_reply(s, 0, text);
        reset_transaction(s);
        proxy_drop(s);
        proxy_resume(s);
        return;
    }
    proxy_send_mail(s);
}

void proxy_mail(struct session *s)
{
    const struct delivery_conf *d = &s->rt->cfg.delivery;
    s->busy = 1;
    s->pending = PH_COUNT;
    if (s->proxy) {
        proxy_send_mail(s);
        return;
    }
    s->proxy = smtpc_open(srv.base, d->next_hop, d->next_hop_port, d->lmtp, s->rt->cfg.server_name,
                          d->timeout, proxy_ready, s);
    if (!s->proxy) {
        s->busy = 0;
        relay_reply(s, 0, "cannot connect");
        reset_transaction(s);
    }
}

static void proxy_rcpt_done(void *arg, int code, const char *text)
{
    struct session *s = arg;
    if (code >= 200 && code <= 299) {
        struct route r;
        memset(&r, 0, sizeof r);
        snprintf(r.kind, sizeof r.kind, "proxy");
        add_rcpt(s, s->pending_rcpt, &r, 0);
    }
    relay_reply(s, code, text);
    proxy_resume(s);
}

static void proxy_data_done(void *arg, int code, const char *text)
{
    struct session *s = arg;
    /* LMTP answers once per recipient; an SMTP client gets one reply, so the
     * first failure stands for the message (it will retry or bounce). */
    if ((code < 200 || code > 299) && !s->proxy_worst) {
        s->proxy_worst = code;
        free(s->proxy_worst_text);
        s->proxy_worst_text = strdup(text);
    }
    if (--s->proxy_replies > 0)
        return;
    if (s->proxy_worst) {
        code = s->proxy_worst;
        text = s->proxy_worst_text ? s->proxy_worst_text : text;
    }
    relay_reply(s, code, text);
    log_transaction(s, code >= 200 && code <= 299 ? "accept" : "reject", "proxy", text);
    if (code >= 200 && code <= 299)
        srv.stats.messages_accepted++;
    reset_transaction(s);
    proxy_resume(s);
}


void proxy_rcpt(struct session *s, const char *raw)
{
    char line[PATH_MAX_LEN + 16];
    snprintf(line, sizeof line, "RCPT TO:<%s>", raw);
    s->busy = 1;
    s->pending = PH_COUNT;
    smtpc_cmd(s->proxy, line, proxy_rcpt_done, s);
}

/* The message, with moat's headers, goes to the next hop. */
void proxy_message(struct session *s, struct evbuffer *msg)
{
    if (!s->proxy) {
        evbuffer_free(msg);
        relay_reply(s, 0, "next hop connection lost");
        reset_transaction(s);
        return;
    }
    s->busy = 1;
    s->pending = PH_COUNT;
    int live = 0;
    for (int i = 0; i < s->nrcpts; i++)
        live += !s->rcpts[i].discard;
    s->proxy_replies = s->rt->cfg.delivery.lmtp ? live : 1;
    s->proxy_worst = 0;
    smtpc_data(s->proxy, msg, s->proxy_replies, proxy_data_done, s);
}

static void ignore_reply(void *arg, int code, const char *text)
{
    (void)arg;
    (void)code;
    (void)text;
}

void proxy_rset(struct session *s)
{
    if (s->proxy)
        smtpc_cmd(s->proxy, "RSET", ignore_reply, NULL);
}

void proxy_close(struct session *s)
{
    smtpc_close(s->proxy);
    s->proxy = NULL;
}
