/* auth.c - SMTP AUTH (RFC 4954): PLAIN and LOGIN against the accounts table.
 *
 * Offered only on secure sessions (TLS here, or tls = "ext").  The password
 * check (crypt(3), slow by design) runs on the worker pool, never on the
 * loop; unknown users cost the same as known ones.  Roaming, the auth hook,
 * failed-login counting and the "trusted" marking happen here too. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "accounts.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "smtp_session.h"
#include "tempblock.h"
#include "worker.h"

struct auth_job {
    struct session *s;            /* NULL once the session has gone */
    struct worker_job *job;
    char user[256];
    char password[256];
    char hash[256];
    int known, ok;
};

int auth_offered(const struct session *s) { return s->rt->accounts && session_secure(s) && !s->user[0]; }

/* The session went away while its password check runs: the check finishes,
 * nobody is told. */
void auth_detach(struct session *s)
{
    if (s->auth_job)
        s->auth_job->s = NULL;
}

/* Strict base64: returns the decoded length, or -1 for bad input. */
static int b64_decode(const char *in, unsigned char *out, size_t cap)
{
    static const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(in), n = 0;
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        unsigned v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = in[i + k];
            const char *p = c ? strchr(tab, c) : NULL;
            if (c == '=' && i + 4 == len && k >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!p || pad)
                return -1;
            v = (v << 6) | (unsigned)(p - tab);
        }
        for (int k = 0; k < 3 - pad; k++) {
            if (n >= cap)
                return -1;
            out[n++] = (unsigned char)(v >> (16 - 8 * k));
        }
    }
    return (int)n;
}


static void auth_finish(struct session *s, const char *user, int ok, const char *why);

/* On a pool thread: crypt(3) is slow by design. */
static void auth_work(void *arg)
{
    struct auth_job *a = arg;
    /* Unknown users cost the same as known ones: no user enumeration by timing. */
    const char *dummy = "$6$moatdummysalt$YjD9wmPzGQ5zFuRE6OjRJTqtLZvqJ1H6k2KqVwD0xvP1k0LXWCmt1ZXBrUSGhwChfOv4s0Qx5A96lH1Kc4Z7d/";
    int ok = accounts_check_password(a->known ? a->hash : dummy, a->password);
    a->ok = a->known && ok;
    memset(a->password, 0, sizeof a->password);
}

static void auth_done(void *arg)
{
    struct auth_job *a = arg;
    struct session *s = a->s;
    if (s) {
        s->auth_job = NULL;
        s->busy = 0;
        auth_finish(s, a->user, a->ok, a->ok ? NULL : "bad password or unknown user");
        if (!s->closing && !s->busy)
            process_input(s);
        else if (s->closing && evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
            session_free(s);
    }
    free(a);
}

static void auth_check(struct session *s, const char *user, const char *password)
{
    struct auth_job *a = calloc(1, sizeof *a);
    a->s = s;
    snprintf(a->user, sizeof a->user, "%s", user);
    snprintf(a->password, sizeof a->password, "%s", password);
    const struct account *acc = accounts_find(s->rt->accounts, user);
    if (acc) {
        a->known = 1;
        snprintf(a->hash, sizeof a->hash, "%s", acc->hash);
    }
    s->auth_job = a;
    s->busy = 1;
    s->pending = PH_COUNT;
    a->job = worker_submit(auth_work, auth_done, a);
}


/* The password was right (or not): apply Roaming, count failures, run the
 * auth hook, answer. */
static void auth_finish(struct session *s, const char *user, int ok, const char *why)
{
    const struct account *acc = ok ? accounts_find(s->rt->accounts, user) : NULL;
    int client = strcmp(s->client_status, "client") == 0;
    if (acc && !acc->roaming && !client) {
        ok = 0;
        why = "roaming disabled: login only from client addresses";
    }
    snprintf(s->auth_user, sizeof s->auth_user, "%s", user);
    s->relay_allowed = ok && acc && acc->relay;
    if (!ok)
        log_kv(LOG_WARN, "auth_failed", "session", s->id, "ip", s->ip, "user", user, "reason", why, NULL);
    s->auth_ok = ok;
    struct verdict v;
    SHADOW_HOOK(s, PH_AUTH, lb_auth(sl, user, ok, &sv));
    if (hook_wait(s, PH_AUTH, lb_auth(&s->lb, user, ok, &v), &v))
        finish_auth_hook(s, &v);
}

void finish_auth_hook(struct session *s, const struct verdict *v)
{
    int ok = s->auth_ok;
    if (ok && reply_verdict(s, v)) {
        ok = 0;       /* a policy refused this login: the client saw its reply */
        log_kv(LOG_INFO, "auth_refused", "session", s->id, "ip", s->ip, "user", s->auth_user, "policy", v->policy, NULL);
    } else if (ok) {
        snprintf(s->user, sizeof s->user, "%s", s->auth_user);
        LB_BOTH(lb_set_str, s, "user", s->user);
        LB_BOTH(lb_set_bool, s, "relay_allowed", s->relay_allowed);
        log_kv(LOG_INFO, "auth", "session", s->id, "ip", s->ip, "user", s->user,
               "relay", s->relay_allowed ? "yes" : "no", NULL);
        if (srv.tempblock) {
            tb_make_unblockable(srv.tempblock, s->ipkey, time(NULL));
            if (s->relay_allowed)
                tb_make_trusted(srv.tempblock, s->ipkey, time(NULL));
        }
        reply(s, "235 2.7.0 Authentication successful");
        return;
    } else {
        reply(s, "535 5.7.8 Authentication credentials invalid");
    }
    s->auth_user[0] = '\0';
    s->relay_allowed = 0;
    if (!ok && !s->closing)
        note_event(s, TB_FAILED_LOGIN);
}

/* PLAIN: authzid NUL authcid NUL password; authzid empty or the same user. */
static void auth_plain(struct session *s, const char *b64)
{
    unsigned char buf[768];
    int n = b64_decode(b64, buf, sizeof buf - 1);
    if (n < 0) {
        protocol_error(s, "501 5.5.2 Invalid base64 data");
        return;
    }
    buf[n] = '\0';
    const char *authz = (const char *)buf;
    const char *user = memchr(buf, '\0', (size_t)n) ? authz + strlen(authz) + 1 : NULL;
    const char *pass = user && user < (const char *)buf + n ? user + strlen(user) + 1 : NULL;
    if (!pass || pass > (const char *)buf + n || !*user || strlen(user) >= 256 || strlen(pass) >= 256 ||
        (*authz && strcmp(authz, user) != 0)) {
        protocol_error(s, "501 5.5.2 Invalid PLAIN authentication data");
        return;
    }
    auth_check(s, user, pass);
    memset(buf, 0, sizeof buf);
}

/* One line of a SASL exchange (the reply to a 334). */
void auth_continue(struct session *s, const char *line)
{
    if (strcmp(line, "*") == 0) {
        s->auth_state = AUTH_NONE;
        protocol_error(s, "501 5.7.0 Authentication cancelled");
        return;
    }
    int state = s->auth_state;
    s->auth_state = AUTH_NONE;
    if (state == AUTH_PLAIN_WAIT) {
        auth_plain(s, line);
        return;
    }
    unsigned char buf[256];
    int n = b64_decode(line, buf, sizeof buf - 1);
    if (n <= 0 || memchr(buf, '\0', (size_t)n)) {
        protocol_error(s, "501 5.5.2 Invalid base64 data");
        return;
    }
    buf[n] = '\0';
    if (state == AUTH_LOGIN_USER) {
        snprintf(s->auth_user, sizeof s->auth_user, "%s", (char *)buf);
        s->auth_state = AUTH_LOGIN_PASS;
        reply(s, "334 UGFzc3dvcmQ6");
        return;
    }
    char user[256];
    snprintf(user, sizeof user, "%s", s->auth_user);
    auth_check(s, user, (char *)buf);
    memset(buf, 0, sizeof buf);
}

void cmd_auth(struct session *s, char *arg)
{
    if (!s->rt->accounts) {
        protocol_error(s, "502 5.5.1 Error: authentication not enabled");
        return;
    }
    if (!session_secure(s)) {
        protocol_error(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return;
    }
    if (s->state < S_HELO) {
        protocol_error(s, "503 5.5.1 Error: send HELO/EHLO first");
        return;
    }
    if (s->user[0] || s->state >= S_MAIL) {
        protocol_error(s, "503 5.5.1 Error: already authenticated or in a transaction");
        return;
    }
    char *initial = strchr(arg, ' ');
    if (initial)
        *initial++ = '\0';
    if (strcasecmp(arg, "PLAIN") == 0) {
        if (initial && strcmp(initial, "=") != 0) {
            auth_plain(s, initial);
        } else {
            s->auth_state = AUTH_PLAIN_WAIT;
            reply(s, "334 ");
        }
    } else if (strcasecmp(arg, "LOGIN") == 0) {
        if (initial) {
            s->auth_state = AUTH_LOGIN_USER;
            auth_continue(s, initial);
        } else {
            s->auth_state = AUTH_LOGIN_USER;
            reply(s, "334 VXNlcm5hbWU6");
        }
    } else {
        protocol_error(s, "504 5.5.4 Unrecognized authentication type");
    }
}

