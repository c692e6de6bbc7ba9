/* smtp_session.h - the SMTP session, shared by smtp.c (the state machine),
 * auth.c (SMTP AUTH) and proxy.c (before-queue proxy mode).  Private to
 * those three files: everyone else goes through smtp.h. */
#ifndef MOAT_SMTP_SESSION_H
#define MOAT_SMTP_SESSION_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "address.h"
#include "lua_bridge.h"
#include "shadow.h"
#include "smtpc.h"
#include "tempblock.h"

struct bufferevent;
struct evbuffer;
struct event;
struct runtime;
struct listener_sock;
struct spool_job;
struct auth_job;

#define CMD_LINE_MAX 2048          /* RFC 5321 says 512; extensions need more */
#define OUT_MAX (256 * 1024)       /* stop reading while the client does not read */
#define HEADER_FIELD_MAX (64 * 1024)

enum sstate { S_INIT, S_GREETED, S_HELO, S_MAIL, S_RCPT, S_DATA };

struct rcpt {
    char *raw;
    struct route route;
    int discard;
};

struct session {
    struct session *prev, *next;  /* all open sessions, for shutdown */
    char id[32];
    struct bufferevent *bev;
    struct runtime *rt;
    struct lb_session lb;
    struct shadow_sess *shadow;   /* the shadow chain's session (shadow.h), NULL if none */
    struct listener_sock *lsock;
    struct event *greet_timer;
    char ip[64], local_ip[64];
    unsigned char ipkey[16];      /* for the listener's per-address counts */
    int port, local_port;
    enum sstate state;
    int busy;                     /* waiting for a hook or the spool */
    enum phase pending;           /* which hook we wait for */
    int closing;                  /* close once the output is flushed */
    int skipping_line;            /* discarding an overlong line */
    int esmtp;
    int tls_mode;                 /* the socket's tls setting when we were accepted */
    int tls_active;               /* TLS is running (tls = on, or after STARTTLS) */
    SSL *tls_switch;              /* STARTTLS: start TLS once the 220 is written */
    char tls_info[96];            /* "TLSv1.3 TLS_AES_256_GCM_SHA384" */
    int errors;
    int debug;                    /* past a debug threshold: log the dialogue */
    struct debugrec *rec;         /* debug: the dialogue as a --replay file (debugrec.h) */
    enum { AUTH_NONE, AUTH_PLAIN_WAIT, AUTH_LOGIN_USER, AUTH_LOGIN_PASS } auth_state;
    char auth_user[256];          /* LOGIN: the user given so far */
    int auth_ok;                  /* the password check's result, for the auth hook */
    int relay_allowed;            /* the authenticated account may relay */
    struct auth_job *auth_job;    /* password check running off-loop */
    char helo[256];
    char user[256];               /* authenticated user, "" if none */
    const char *client_status;

    /* transaction */
    char *from;
    int smtputf8, body_8bit, discard_all;
    struct rcpt *rcpts;
    int nrcpts;
    char pending_rcpt[PATH_MAX_LEN + 1];   /* the RCPT whose hook is running */

    /* DATA */
    struct evbuffer *msg;
    size_t msg_size;
    int too_big, line_too_long;
    int prev_crlf;
    int in_header;
    struct evbuffer *field;       /* the header field being collected */
    struct verdict *kept;         /* first data_line verdict, given after the dot (heap: rare) */
    int have_kept;
    int eod_pending;              /* the final dot came while a hook ran */
    struct spool_job *job;
    char qid[32];
    struct smtpc *proxy;          /* delivery mode "proxy": the next hop session */
    int proxy_replies, proxy_worst;
    char *proxy_worst_text;       /* LMTP: the first failure's reply (heap) */
};

/* smtp.c */
void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void protocol_error(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void close_after_reply(struct session *s);
void note_event(struct session *s, enum tb_event ev);
int reply_verdict(struct session *s, const struct verdict *v);
void reset_transaction(struct session *s);
void log_transaction(struct session *s, const char *verdict, const char *policy, const char *reply_text);
int hook_wait(struct session *s, enum phase ph, int done, struct verdict *v);
void process_input(struct session *s);
void session_free(struct session *s);
void add_rcpt(struct session *s, const char *raw, const struct route *r, int discard);
int session_secure(const struct session *s);

/* auth.c */
int auth_offered(const struct session *s);
void cmd_auth(struct session *s, char *arg);
void auth_continue(struct session *s, const char *line);
void finish_auth_hook(struct session *s, const struct verdict *v);
void auth_detach(struct session *s);

/* proxy.c */
int proxy_mode(const struct session *s);
void proxy_mail(struct session *s);
void proxy_rcpt(struct session *s, const char *raw);
void proxy_message(struct session *s, struct evbuffer *msg);
void proxy_rset(struct session *s);
void proxy_close(struct session *s);

/* Run a hook on the shadow chain before the live one (shadow.h): `call`
 * uses sl (the shadow's lb_session) and &sv. */
#define SHADOW_HOOK(s, ph, call)                                       \
    do {                                                               \
        struct lb_session *sl = shadow_begin((s)->shadow, (ph));       \
        struct verdict sv;                                             \
        if (sl && (call))                                              \
            shadow_done_now((s)->shadow, &sv);                         \
    } while (0)
/* Session state both chains see: fn(&s->lb, ...) and the same on the shadow. */
#define LB_BOTH(fn, s, ...)                                            \
    do {                                                               \
        fn(&(s)->lb, __VA_ARGS__);                                     \
        if ((s)->shadow)                                               \
            fn(shadow_lb((s)->shadow), __VA_ARGS__);                   \
    } while (0)

#endif
