/* lua_bridge.h - the Lua side of moat: states, the hook chain, coroutines.
 *
 * Each runtime generation owns one lua_State with the policies and scripts
 * loaded.  Each SMTP session gets a coroutine in it; a hook that calls an
 * asynchronous function (moat.sleep, moat.dns.query) yields that coroutine
 * and only that session waits.  Every hook call has an instruction budget and
 * the state has a memory ceiling; overrunning either is a script error, and a
 * script error is always a 451, never an accept. */
#ifndef MOAT_LUA_BRIDGE_H
#define MOAT_LUA_BRIDGE_H

#include <stddef.h>

struct lua_State;
struct runtime;
struct event;
struct callout_wait;

enum phase {
    PH_CONNECT, PH_HELO, PH_AUTH, PH_MAIL, PH_RCPT, PH_DATA, PH_DATA_LINE, PH_DATA_END,
    PH_DISCONNECT, PH_COUNT,
    PH_TASK = PH_COUNT             /* a control-socket task (test-address) */
};
#define LB_DNS_MAX 16
extern const char *const phase_names[PH_COUNT];

/* V_REDIRECT (data_line/data_end only): the message goes to route.address
 * instead of its recipients. */
enum verdict_action { V_NONE, V_ACCEPT, V_REJECT, V_TEMPFAIL, V_DROP, V_DISCARD, V_ERROR, V_REDIRECT };

struct route {
    char kind[16];            /* local | remote | error | spamtrap | null */
    char address[512];
    char host[256];
    int can_relay;
};

struct verdict {
    enum verdict_action action;
    int code;
    char text[512];           /* CR/LF-free, may be empty */
    char policy[64];          /* which policy decided, "" if none */
    struct route route;       /* PH_RCPT: the route after the chain ran */
};

/* Per-session bridge state, embedded in the SMTP session. */
struct lb_session {
    struct runtime *rt;
    int co_ref, s_ref, arg_ref;    /* registry refs: coroutine, session table, rcpt table */
    struct lua_State *co;
    enum phase phase;
    long instructions;             /* used by the current hook call */
    int waiting;                   /* an async call is outstanding */
    int running;                   /* a chain call is in progress */
    int loading;                   /* the pseudo-session of script loading */
    struct event *timer;           /* moat.sleep */
    /* moat.dns.query / query_all: up to LB_DNS_MAX queries in flight */
    struct lb_dnsq {
        struct lb_session *ls;
        void *q;
        int type;
    } dns[16];
    int dns_n, dns_pending, dns_multi, dns_starting, dns_results_ref;
    struct callout_wait *callout;  /* moat.core.callout: a Reverse Connect probe */
    void (*on_done)(void *owner, const struct verdict *v);
    void *owner;
    /* s:add_header() results, applied to the message by the SMTP layer */
    char **headers;
    int nheaders;
};

/* Load-time: build the Lua state of a runtime (config already parsed). */
struct lua_State *lb_state_new(struct runtime *rt);
int lb_load_config(struct runtime *rt, const char *path, char *err, size_t errlen);
/* Push the table moat.config.load returned for rt (for --print-config). */
void lb_push_config(struct runtime *rt);
int lb_load_policies(struct runtime *rt, char *err, size_t errlen);
/* shadow = { ... } in the parsed config of rt: 1 and *sample, or 0 if none. */
int lb_shadow_sample(struct runtime *rt, double *sample);
/* On a shadow runtime after lb_load_config: make shadow.policies/scripts the
 * chain lb_load_policies loads. */
int lb_shadow_chain(struct runtime *rt);
int lb_has_phase(const struct runtime *rt, enum phase ph);

/* Session lifecycle. */
int lb_session_open(struct lb_session *ls, struct runtime *rt, void *owner,
                    void (*on_done)(void *, const struct verdict *));
void lb_session_close(struct lb_session *ls);   /* cancels a pending hook; never calls on_done */

/* Session fields visible to scripts as s.<name>. */
void lb_set_str(struct lb_session *ls, const char *field, const char *val);
void lb_set_int(struct lb_session *ls, const char *field, long val);
void lb_set_bool(struct lb_session *ls, const char *field, int val);
void lb_reset_transaction(struct lb_session *ls);   /* s.from = nil, s.rcpts = {} */

/* Hook calls.  Each returns 1 when the chain finished synchronously (*v is
 * filled) or 0 when it is suspended: on_done(owner, v) runs later. */
int lb_connect(struct lb_session *ls, struct verdict *v);
int lb_helo(struct lb_session *ls, const char *name, struct verdict *v);
int lb_auth(struct lb_session *ls, const char *user, int ok, struct verdict *v);
int lb_mail_from(struct lb_session *ls, const char *raw, const char *local, const char *domain,
                 struct verdict *v);
int lb_rcpt(struct lb_session *ls, const char *raw, const char *local, const char *domain,
            const struct route *r, struct verdict *v);
int lb_data(struct lb_session *ls, struct verdict *v);
int lb_data_line(struct lb_session *ls, const char *line, size_t len, int header, struct verdict *v);
int lb_data_end(struct lb_session *ls, long size, struct verdict *v);
void lb_disconnect(struct lb_session *ls);

/* An accepted recipient joins s.rcpts, with its route. */
void lb_rcpt_accepted(struct lb_session *ls, const char *raw, const struct route *r);


/* Run require(module)[fn](arg) in a coroutine of its own (it may use DNS and
 * sleep); cb(cbarg, ok, text) gets its string result, possibly before
 * lb_task returns. */
void lb_task(struct runtime *rt, const char *module, const char *fn, const char *arg,
             void (*cb)(void *cbarg, int ok, const char *text), void *cbarg);


/* Every file a runtime loaded: config, tables, certificates, policies, scripts. */
void lb_config_files(struct runtime *rt, void (*cb)(void *arg, const char *path), void *arg);

#endif
