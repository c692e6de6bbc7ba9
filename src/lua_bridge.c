/* lua_bridge.c - Lua states, the moat.core module, session coroutines.
 *
 * The rules that keep the loop safe:
 *  - hooks run in a per-session coroutine; only moat's own C functions may
 *    yield it, and they register what will resume it (a timer, a DNS query);
 *  - a count hook charges every hook call against lua.budget;
 *  - the allocator charges the state against lua.memory_mb;
 *  - any error, overrun or malformed verdict becomes a 451 and a log line
 *    with the traceback, never an accept. */
#include "lua_bridge.h"

#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "callout.h"
#include "dns.h"
#include "stats.h"
#include "lineset.h"
#include "iplist.h"
#include "ownaddr.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "tempblock.h"
#include <time.h>

const char *const phase_names[PH_COUNT] = {
    "connect", "helo", "auth", "mail_from", "rcpt", "data", "data_line", "data_end", "disconnect",
};

#define HOOK_EVERY 1000          /* instructions between budget checks */
#define MAX_ADDED_HEADERS 64
#define MAX_HEADER_LEN 998
#define MAX_SLEEP_S 3600.0

static char SESS_KEY;            /* light-userdata key of the C session inside s */
static const char *CONFIG_KEY = "moat.config";
static const char *SESSION_MT = "moat.session";
static const char *LIST_MT = "moat.list";

/* ---- allocator and budget -------------------------------------------- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct runtime *rt = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        rt->mem_used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && rt->mem_used + (nsize - old) > rt->mem_limit)
        return NULL;     /* Lua raises "not enough memory": a script error */
    void *p = realloc(ptr, nsize);
    if (p)
        rt->mem_used = rt->mem_used - old + nsize;
    return p;
}

static struct runtime *rt_of(lua_State *L) { return *(struct runtime **)lua_getextraspace(L); }

/* Instruction budget: the current hook call pays for every instruction it
 * runs, including those in coroutines it creates (they inherit the hook). */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct runtime *rt = rt_of(L);
    struct lb_session *ls = rt->current;
    if (!ls)
        return;
    ls->instructions += HOOK_EVERY;
    if (ls->instructions > rt->cfg.lua_budget)
        luaL_error(L, "instruction budget exceeded (lua.budget = %d)", (int)rt->cfg.lua_budget);
}

static int l_panic(lua_State *L)
{
    log_kv(LOG_ERR, "lua_panic", "error", lua_tostring(L, -1), NULL);
    abort();
}

/* ---- helpers ------------------------------------------------------------ */

/* Copy a script-provided reply text: no CR/LF or control bytes can reach the
 * wire, so a script cannot inject extra reply lines. */
static void copy_reply_text(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (; src && *src && n + 1 < cap && n < 400; src++)
        dst[n++] = ((unsigned char)*src < ' ' || *src == 0x7f) ? ' ' : *src;
    dst[n] = '\0';
}

static struct lb_session *session_of(lua_State *L, int idx)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_rawgetp(L, idx, &SESS_KEY);
    struct lb_session *ls = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!ls)
        luaL_error(L, "this session has ended");
    return ls;
}

/* The session whose coroutine is calling: async calls must come from it. */
static struct lb_session *calling_session(lua_State *L, const char *what)
{
    struct lb_session *ls = rt_of(L)->current;
    if (!ls || ls->co != L || !lua_isyieldable(L))
        luaL_error(L, "%s may only be called from a session hook (not at load time, "
                      "not inside a coroutine of the script's own)", what);
    return ls;
}

static const char *concat_args(lua_State *L, int first)
{
    int n = lua_gettop(L);      /* before buffinit, which may push a box */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = first; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
        if (i < n)
            luaL_addchar(&b, ' ');
    }
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

/* ---- async resume ----------------------------------------------------- */

static int resume(struct lb_session *ls, int nargs, struct verdict *v);
int lb_push_dns_results(struct lb_session *ls, lua_State *to);

static void resume_async(struct lb_session *ls, int nargs)
{
    struct verdict v;
    if (resume(ls, nargs, &v))
        ls->on_done(ls->owner, &v);
}

static void sleep_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lb_session *ls = arg;
    event_free(ls->timer);
    ls->timer = NULL;
    ls->waiting = 0;
    resume_async(ls, 0);
}

static int l_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    if (!(secs >= 0 && secs <= MAX_SLEEP_S))
        return luaL_error(L, "moat.sleep: seconds must be 0..%d", (int)MAX_SLEEP_S);
    struct lb_session *ls = calling_session(L, "moat.sleep");
    struct timeval tv = { (time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6) };
    ls->timer = evtimer_new(srv.base, sleep_done, ls);
    evtimer_add(ls->timer, &tv);
    ls->waiting = 1;
    return lua_yield(L, 0);
}

static const char *const dns_type_names[] = { "A", "AAAA", "MX", "PTR", "TXT", NULL };

/* Push one query's outcome: the answer list, or nil and the error name.
 * MX answers are { host =, pref = } tables, the others strings. */
static int push_dns_result(lua_State *L, int type, int status, const dns_answer *ans)
{
    if (status != DNS_OK || !ans) {
        lua_pushnil(L);
        lua_pushstring(L, dns_status_str(status));
        return 2;
    }
    lua_createtable(L, ans->n, 0);
    for (int i = 0; i < ans->n; i++) {
        if (type == DNS_MX) {
            lua_createtable(L, 0, 2);
            lua_pushstring(L, ans->rr[i].text);
            lua_setfield(L, -2, "host");
            lua_pushinteger(L, ans->rr[i].pref);
            lua_setfield(L, -2, "pref");
        } else {
            lua_pushstring(L, ans->rr[i].text);
        }
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* Results wait in a registry table until the last query of the batch is in:
 * results[i] = { answers = {...} } or { error = "timeout" }. */
static void dns_done(void *arg, int status, const dns_answer *ans)
{
    struct lb_dnsq *dq = arg;
    struct lb_session *ls = dq->ls;
    lua_State *L = ls->rt->L;
    int idx = (int)(dq - ls->dns) + 1;
    dq->q = NULL;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->dns_results_ref);
    lua_createtable(L, 0, 1);
    if (push_dns_result(L, dq->type, status, ans) == 2) {
        lua_setfield(L, -3, "error");   /* the error name */
        lua_pop(L, 1);                  /* the nil */
    } else {
        lua_setfield(L, -2, "answers");
    }
    lua_rawseti(L, -2, idx);
    lua_pop(L, 1);
    if (--ls->dns_pending > 0 || ls->dns_starting)
        return;
    ls->waiting = 0;
    resume_async(ls, lb_push_dns_results(ls, ls->co));
}

static int start_queries(lua_State *L, struct lb_session *ls, const char **names, const int *types,
                         const int *once, int n)
{
    lua_State *main = ls->rt->L;
    lua_newtable(main);
    ls->dns_results_ref = luaL_ref(main, LUA_REGISTRYINDEX);
    ls->dns_n = ls->dns_pending = n;
    ls->dns_starting = 1;
    for (int i = 0; i < n; i++) {
        struct lb_dnsq *dq = &ls->dns[i];
        dq->ls = ls;
        dq->type = types[i];
        struct dns *d = once[i] ? srv.dns_once : srv.dns;
        dq->q = d ? dns_query_start(d, names[i], (enum dns_type)types[i], dns_done, dq) : NULL;
        if (!dq->q && ls->dns_pending > 0 && ls->dns_results_ref != LUA_NOREF) {
            /* Could not start: record a local error without waiting. */
            lua_rawgeti(main, LUA_REGISTRYINDEX, ls->dns_results_ref);
            lua_createtable(main, 0, 1);
            lua_pushstring(main, "error");
            lua_setfield(main, -2, "error");
            lua_rawseti(main, -2, i + 1);
            lua_pop(main, 1);
            ls->dns_pending--;
        }
    }
    ls->dns_starting = 0;
    if (ls->dns_pending == 0)       /* everything finished (or failed) already */
        return lb_push_dns_results(ls, L);
    ls->waiting = 1;
    return lua_yield(L, 0);
}

static int l_dns_query(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int type = luaL_checkoption(L, 2, "A", dns_type_names);
    if (strlen(name) > 253)
        return luaL_error(L, "moat.dns.query: name too long");
    struct lb_session *ls = calling_session(L, "moat.dns.query");
    ls->dns_multi = 0;
    int once = 0;
    return start_queries(L, ls, &name, &type, &once, 1);
}

/* moat.dns.query_all{ {name, type [, once = true]}, ... }: all queries in
 * parallel, one wait.  once: a single try with the first timeout (c-ares's
 * own retries double it), for callers that decide about retrying. */
static int l_dns_query_all(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)luaL_len(L, 1);
    if (n < 1 || n > LB_DNS_MAX)
        return luaL_error(L, "moat.dns.query_all: 1..%d queries", LB_DNS_MAX);
    const char *names[LB_DNS_MAX];
    int types[LB_DNS_MAX], once[LB_DNS_MAX];
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        luaL_argcheck(L, lua_istable(L, -1), 1, "each query is { name, type }");
        lua_getfield(L, -1, "once");
        once[i] = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        names[i] = luaL_checkstring(L, -2);
        types[i] = luaL_checkoption(L, -1, "A", dns_type_names);
        if (strlen(names[i]) > 253)
            return luaL_error(L, "moat.dns.query_all: name too long");
        lua_pop(L, 1);
        lua_replace(L, -2);   /* keep the name string alive on the stack */
    }
    struct lb_session *ls = calling_session(L, "moat.dns.query_all");
    ls->dns_multi = 1;
    return start_queries(L, ls, names, types, once, n);
}

/* Push what the waiting Lua call returns: for query, answers or nil, err;
 * for query_all, the results list. */
int lb_push_dns_results(struct lb_session *ls, lua_State *to)
{
    lua_State *L = ls->rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->dns_results_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, ls->dns_results_ref);
    ls->dns_results_ref = LUA_NOREF;
    ls->dns_n = 0;
    if (ls->dns_multi) {
        lua_xmove(L, to, 1);
        return 1;
    }
    lua_rawgeti(L, -1, 1);
    lua_getfield(L, -1, "answers");
    if (!lua_isnil(L, -1)) {
        lua_xmove(L, to, 1);
        lua_pop(L, 2);
        return 1;
    }
    lua_pop(L, 1);
    lua_pushnil(to);
    lua_getfield(L, -1, "error");
    lua_xmove(L, to, 1);
    lua_pop(L, 2);
    return 2;
}

static int l_dns_reverse(lua_State *L)
{
    const char *ip = luaL_checkstring(L, 1);
    const char *zone = luaL_optstring(L, 2, NULL);
    char out[512];
    if (dns_reverse_name(ip, zone, out, sizeof out) != 0)
        return luaL_error(L, "moat.dns.reverse: '%s' is not an IP address", ip);
    lua_pushstring(L, out);
    return 1;
}

/* ---- Reverse Connect ---------------------------------------------------- */

static void callout_done(void *arg, int code, const char *text)
{
    struct lb_session *ls = arg;
    ls->callout = NULL;
    ls->waiting = 0;
    lua_pushinteger(ls->co, code);
    lua_pushstring(ls->co, text);
    resume_async(ls, 2);
}

/* moat.core.callout(address, { ip, ... }, port, helo, timeout, max_probes)
 * -> code, text: the probe's RCPT reply code (0: no verdict, text says why),
 * or nil, "busy" when max_probes probes are running.  Suspends the session;
 * a probe already running for the address is joined, not repeated. */
static int l_callout(lua_State *L)
{
    const char *addr = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int port = (int)luaL_checkinteger(L, 3);
    const char *helo = luaL_checkstring(L, 4);
    int timeout = (int)luaL_checkinteger(L, 5);
    int maxp = (int)luaL_checkinteger(L, 6);
    const char *ips[CALLOUT_MAX_HOSTS];
    int n = 0;
    for (int i = 1; i <= (int)luaL_len(L, 2) && n < CALLOUT_MAX_HOSTS; i++) {
        lua_rawgeti(L, 2, i);
        const char *ip = lua_tostring(L, -1);
        lua_pop(L, 1);     /* the string stays alive in the table */
        if (ip)
            ips[n++] = ip;
    }
    if (port < 1 || port > 65535 || n == 0)
        return luaL_error(L, "moat.callout: need 1..%d addresses and a port", CALLOUT_MAX_HOSTS);
    struct lb_session *ls = calling_session(L, "moat.callout");
    ls->callout = callout_probe(srv.base, addr, ips, n, port, helo, timeout, maxp, callout_done, ls);
    if (!ls->callout) {
        lua_pushnil(L);
        lua_pushstring(L, "busy");
        return 2;
    }
    ls->waiting = 1;
    return lua_yield(L, 0);
}

/* ---- moat.core: log, list, config ---------------------------------------- */

static int l_log(lua_State *L)
{
    struct lb_session *ls = rt_of(L)->current;
    char sid[64] = "";
    if (ls && ls->s_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
        lua_getfield(L, -1, "id");
        snprintf(sid, sizeof sid, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
        lua_pop(L, 2);
    }
    const char *msg = concat_args(L, 1);
    log_kv(LOG_INFO, "script", "session", sid[0] ? sid : NULL, "msg", msg, NULL);
    return 0;
}

static int l_list(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    struct runtime *rt = rt_of(L);
    for (int t = 0; t < T_NTABLES; t++) {
        if (strcmp(name, ip_table_names[t]) == 0) {
            const iplist **u = lua_newuserdatauv(L, sizeof *u, 0);
            *u = rt->cfg.ip[t];    /* NULL = not configured = contains nothing */
            luaL_setmetatable(L, LIST_MT);
            return 1;
        }
    }
    return luaL_error(L, "moat.list: no address table '%s' (client_ips, lan_ips, denied_ips, "
                         "blacklisted_ips, unblacklistable_ips, cluster_ips)", name);
}

static int l_list_contains(lua_State *L)
{
    const iplist **u = luaL_checkudata(L, 1, LIST_MT);
    const char *ip = luaL_checkstring(L, 2);
    lua_pushboolean(L, iplist_contains_str(*u, ip));
    return 1;
}

/* moat.table_text(name) -> text, path: the contents of tables[name], read
 * while scripts load (never from a hook: file reads would block the loop). */
static int l_table_text(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    struct lb_session *ls = rt_of(L)->current;
    if (!ls || !ls->loading)
        return luaL_error(L, "moat.table_text: tables are read when scripts load, not in hooks");
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    lua_getfield(L, -1, "tables");
    if (!lua_istable(L, -1))
        return 0;
    lua_getfield(L, -1, name);
    const char *path = lua_tostring(L, -1);
    if (!path)
        return 0;   /* not configured: nil */
    FILE *f = fopen(path, "rb");
    if (!f)
        return luaL_error(L, "%s: %s", path, strerror(errno));
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        luaL_addlstring(&b, buf, n);
    int err = ferror(f);
    fclose(f);
    if (err)
        return luaL_error(L, "%s: read error", path);
    luaL_pushresult(&b);
    lua_pushstring(L, path);
    return 2;
}

/* moat.is_local_address(ip): one of this host's own addresses (the "Local"
 * prefix of test-address). */
/* moat.core.spf_result(result): count one SPF check for moatctl stats. */
static int l_spf_result(lua_State *L)
{
    stats_spf(luaL_checkstring(L, 1));
    return 0;
}

/* moat.core.callout_result(result, cached): count one Reverse Connect check. */
static int l_callout_result(lua_State *L)
{
    stats_callout(luaL_checkstring(L, 1), lua_toboolean(L, 2));
    return 0;
}

static int l_is_local_address(lua_State *L)
{
    unsigned char want[16];
    if (ip_key_from_str(luaL_checkstring(L, 1), want) != 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    /* the snapshot taken at start and reload (src/ownaddr.c) */
    lua_pushboolean(L, ownaddr_contains(want));
    return 1;
}

/* moat.tempblock: the process-wide temporary blocks (they survive reloads). */
static int l_tb_add(lua_State *L)
{
    const char *ip = luaL_checkstring(L, 1);
    const char *reason = luaL_optstring(L, 2, "policy");
    if (!srv.tempblock)
        return luaL_error(L, "moat.tempblock is not available here");
    /* White holes are never blocked (seed 002). */
    if (iplist_contains_str(rt_of(L)->cfg.ip[T_UNBLACKLISTABLE], ip)) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, "white hole");
        return 2;
    }
    enum tb_result r = tb_block_str(srv.tempblock, ip, reason, time(NULL));
    if (r == TB_BLOCKED) {
        log_kv(LOG_WARN, "blocked", "ip", ip, "reason", reason, NULL);
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushstring(L, "refused");
    return 2;
}

static int l_tb_blocked(lua_State *L)
{
    int left = srv.tempblock ? tb_blocked_str(srv.tempblock, luaL_checkstring(L, 1), time(NULL)) : 0;
    if (left > 0)
        lua_pushinteger(L, left);
    else
        lua_pushboolean(L, 0);
    return 1;
}

static int l_tb_trusted(lua_State *L)
{
    lua_pushboolean(L, srv.tempblock && tb_trusted_str(srv.tempblock, luaL_checkstring(L, 1), time(NULL)) > 0);
    return 1;
}

static void push_tempblock(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "add", l_tb_add }, { "blocked", l_tb_blocked }, { "trusted", l_tb_trusted }, { NULL, NULL },
    };
    luaL_newlib(L, fns);
}

static int l_config(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    return 1;
}

/* s:add_header(name, value): the header goes on top of the stored message. */
static int l_add_header(lua_State *L)
{
    struct lb_session *ls = session_of(L, 1);
    size_t nl, vl;
    const char *name = luaL_checklstring(L, 2, &nl);
    const char *val = luaL_checklstring(L, 3, &vl);
    if (nl == 0 || nl > 76)
        return luaL_error(L, "add_header: bad header name");
    for (size_t i = 0; i < nl; i++)
        if ((unsigned char)name[i] <= ' ' || name[i] == ':' || (unsigned char)name[i] >= 0x7f)
            return luaL_error(L, "add_header: bad character in header name '%s'", name);
    for (size_t i = 0; i < vl; i++)
        if (val[i] == '\r' || val[i] == '\n' || val[i] == '\0')
            return luaL_error(L, "add_header: header value may not contain CR, LF or NUL");
    if (nl + vl + 2 > MAX_HEADER_LEN)
        return luaL_error(L, "add_header: header longer than %d bytes", MAX_HEADER_LEN);
    if (ls->nheaders >= MAX_ADDED_HEADERS)
        return luaL_error(L, "add_header: more than %d headers", MAX_ADDED_HEADERS);
    char **h = realloc(ls->headers, (size_t)(ls->nheaders + 1) * sizeof *h);
    if (!h)
        return luaL_error(L, "add_header: out of memory");
    ls->headers = h;
    h[ls->nheaders] = malloc(nl + vl + 3);
    snprintf(h[ls->nheaders], nl + vl + 3, "%s: %s", name, val);
    ls->nheaders++;
    return 0;
}

static int l_session_log(lua_State *L)
{
    (void)session_of(L, 1);
    lua_getfield(L, 1, "id");
    const char *sid = lua_tostring(L, -1);
    lua_pop(L, 1);
    lua_pushstring(L, sid ? sid : "");
    lua_replace(L, 1);
    sid = lua_tostring(L, 1);
    const char *msg = concat_args(L, 2);
    log_kv(LOG_INFO, "script", "session", sid, "msg", msg, NULL);
    return 0;
}

static int luaopen_moat_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "sleep", l_sleep }, { "log", l_log }, { "list", l_list },
        { "dns_query", l_dns_query }, { "dns_query_all", l_dns_query_all },
        { "dns_reverse", l_dns_reverse }, { "callout", l_callout }, { "callout_result", l_callout_result }, { "config", l_config },
        { "table_text", l_table_text }, { "is_local_address", l_is_local_address }, { "spf_result", l_spf_result },
        { NULL, NULL },
    };
    luaL_newlib(L, fns);
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    lua_setfield(L, -2, "settings");
    push_tempblock(L);
    lua_setfield(L, -2, "tempblock");
    return 1;
}

static void create_metatables(lua_State *L)
{
    luaL_newmetatable(L, SESSION_MT);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, l_add_header);
    lua_setfield(L, -2, "add_header");
    lua_pushcfunction(L, l_session_log);
    lua_setfield(L, -2, "log");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newmetatable(L, LIST_MT);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_list_contains);
    lua_setfield(L, -2, "contains");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* ---- states ---------------------------------------------------------------- */

lua_State *lb_state_new(struct runtime *rt)
{
    lua_State *L = lua_newstate(l_alloc, rt);
    if (!L)
        return NULL;
    *(struct runtime **)lua_getextraspace(L) = rt;
    lua_atpanic(L, l_panic);
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", runtime_root(), runtime_root());
    lua_setfield(L, -2, "path");
    lua_pushstring(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_moat_core);
    lua_setfield(L, -2, "moat.core");
    lua_pushcfunction(L, luaopen_moat_lineset);
    lua_setfield(L, -2, "moat.lineset");
    lua_pop(L, 1);
    create_metatables(L);
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
    return L;
}

/* Calls during loading run under a session-less budget of 100 hook calls. */
static int load_call(struct runtime *rt, int nargs, int nres, char *err, size_t errlen)
{
    struct lb_session loading = { .rt = rt, .loading = 1, .co_ref = LUA_NOREF, .s_ref = LUA_NOREF,
                                  .arg_ref = LUA_NOREF, .dns_results_ref = LUA_NOREF };
    long saved = rt->cfg.lua_budget;
    rt->cfg.lua_budget = (saved > 0 ? saved : 1000000) * 100;
    rt->current = &loading;
    int st = lua_pcall(rt->L, nargs, nres, 0);
    rt->current = NULL;
    rt->cfg.lua_budget = saved;
    if (st != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(rt->L, -1));
        lua_pop(rt->L, 1);
        return -1;
    }
    return 0;
}

int lb_load_config(struct runtime *rt, const char *path, char *err, size_t errlen)
{
    lua_State *L = rt->L;
    lua_getglobal(L, "require");
    lua_pushstring(L, "moat.config");
    if (load_call(rt, 1, 1, err, errlen) != 0)
        return -1;
    lua_getfield(L, -1, "load");
    lua_pushstring(L, path);
    if (load_call(rt, 1, 2, err, errlen) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    if (lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_pop(L, 3);
        return -1;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    int rc = config_from_lua(L, -1, &rt->cfg, err, errlen);
    lua_pop(L, 2);
    if (rc == 0)
        rt->mem_limit = (size_t)rt->cfg.lua_memory_mb << 20;
    return rc;
}

int lb_shadow_sample(struct runtime *rt, double *sample)
{
    lua_State *L = rt->L;
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    lua_getfield(L, -1, "shadow");
    int has = lua_istable(L, -1);
    if (has) {
        lua_getfield(L, -1, "sample");
        *sample = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 1.0;
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    return has;
}

int lb_shadow_chain(struct runtime *rt)
{
    lua_State *L = rt->L;
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    lua_getfield(L, -1, "shadow");
    lua_getfield(L, -1, "policies");
    lua_setfield(L, -3, "policies");
    lua_getfield(L, -1, "scripts");
    lua_setfield(L, -3, "scripts");
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setfield(L, -2, "shadow");   /* a shadow has no shadow */
    /* "unknown policy" errors point at the shadow line */
    lua_getfield(L, -1, "lines");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "shadow");
        lua_setfield(L, -2, "policies");
    }
    lua_pop(L, 2);
    return 0;
}

/* Push the list of { name, path } entries: stock policies, then scripts. */
static int push_entries(struct runtime *rt, char *err, size_t errlen)
{
    lua_State *L = rt->L;
    lua_newtable(L);
    int n = 0;
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    lua_getfield(L, -1, "policies");
    for (int i = 1; lua_istable(L, -1) && i <= (int)luaL_len(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        const char *name = lua_tostring(L, -1);
        char path[4096];
        snprintf(path, sizeof path, "%s/policies/%s.lua", runtime_root(), name);
        if (access(path, R_OK) != 0) {
            lua_getfield(L, -3, "lines");
            lua_getfield(L, -1, "policies");
            snprintf(err, errlen, "%s:%d: unknown policy '%s' (no %s)", rt->cfg.path,
                     (int)lua_tointeger(L, -1), name, path);
            lua_pop(L, 6);
            return -1;
        }
        lua_createtable(L, 0, 2);
        lua_insert(L, -2);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, path);
        lua_setfield(L, -2, "path");
        lua_rawseti(L, -4, ++n);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "scripts");
    for (int i = 1; lua_istable(L, -1) && i <= (int)luaL_len(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        const char *path = lua_tostring(L, -1);
        const char *base = strrchr(path, '/');
        lua_createtable(L, 0, 2);
        lua_pushstring(L, base ? base + 1 : path);
        lua_setfield(L, -2, "name");
        lua_insert(L, -2);
        lua_setfield(L, -2, "path");
        lua_rawseti(L, -4, ++n);
    }
    lua_pop(L, 2);
    return 0;
}

/* The chain's third result: { {name=, filter=}, ... } when every data_line
 * hook is a line filter (popped). */
static void native_filters(struct runtime *rt)
{
    lua_State *L = rt->L;
    rt->nfilters = 0;
    int n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
    if (n > (int)(sizeof rt->filters / sizeof rt->filters[0]))
        n = 0;                  /* the Lua chain runs them, as any hook */
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "name");
        lua_getfield(L, -2, "filter");
        const struct line_filter *f = lineset_filter_test(L, -1);
        if (!f) {
            lua_pop(L, 3);
            rt->nfilters = 0;
            break;
        }
        struct native_filter *nf = &rt->filters[rt->nfilters++];
        nf->f = f;
        snprintf(nf->policy, sizeof nf->policy, "%s", lua_tostring(L, -2));
        nf->ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
}

int lb_load_policies(struct runtime *rt, char *err, size_t errlen)
{
    lua_State *L = rt->L;
    lua_getglobal(L, "require");
    lua_pushstring(L, "moat.chain");
    if (load_call(rt, 1, 1, err, errlen) != 0)
        return -1;
    lua_getfield(L, -1, "load");
    lua_remove(L, -2);
    if (push_entries(rt, err, errlen) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    if (load_call(rt, 1, 3, err, errlen) != 0)
        return -1;
    if (lua_isnil(L, -3)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -2));
        lua_pop(L, 3);
        return -1;
    }
    native_filters(rt);
    rt->phase_mask = 0;
    for (int p = 0; p < PH_COUNT; p++) {
        lua_getfield(L, -1, phase_names[p]);
        if (lua_toboolean(L, -1))
            rt->phase_mask |= 1u << p;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    rt->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int lb_has_phase(const struct runtime *rt, enum phase ph) { return (rt->phase_mask >> ph) & 1; }

/* ---- sessions ------------------------------------------------------------ */

static void drop_coroutine(struct lb_session *ls)
{
    if (ls->co_ref != LUA_NOREF)
        luaL_unref(ls->rt->L, LUA_REGISTRYINDEX, ls->co_ref);
    ls->co_ref = LUA_NOREF;
    ls->co = NULL;
}

static void new_coroutine(struct lb_session *ls)
{
    lua_State *L = ls->rt->L;
    ls->co = lua_newthread(L);
    ls->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

int lb_session_open(struct lb_session *ls, struct runtime *rt, void *owner,
                    void (*on_done)(void *, const struct verdict *))
{
    memset(ls, 0, sizeof *ls);
    ls->rt = runtime_ref(rt);
    ls->owner = owner;
    ls->on_done = on_done;
    ls->co_ref = ls->arg_ref = ls->dns_results_ref = LUA_NOREF;
    lua_State *L = rt->L;
    lua_createtable(L, 0, 16);
    lua_newtable(L);
    lua_setfield(L, -2, "vars");
    lua_newtable(L);
    lua_setfield(L, -2, "rcpts");
    lua_pushlightuserdata(L, ls);
    lua_rawsetp(L, -2, &SESS_KEY);
    luaL_setmetatable(L, SESSION_MT);
    ls->s_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static void cancel_wait(struct lb_session *ls)
{
    callout_cancel(ls->callout);
    ls->callout = NULL;
    if (ls->timer) {
        event_free(ls->timer);
        ls->timer = NULL;
    }
    for (int i = 0; i < ls->dns_n; i++) {
        dns_cancel(ls->dns[i].q);
        ls->dns[i].q = NULL;
    }
    ls->dns_n = ls->dns_pending = 0;
    if (ls->dns_results_ref != LUA_NOREF) {
        luaL_unref(ls->rt->L, LUA_REGISTRYINDEX, ls->dns_results_ref);
        ls->dns_results_ref = LUA_NOREF;
    }
    ls->waiting = 0;
}

static void free_headers(struct lb_session *ls)
{
    for (int i = 0; i < ls->nheaders; i++)
        free(ls->headers[i]);
    free(ls->headers);
    ls->headers = NULL;
    ls->nheaders = 0;
}

void lb_session_close(struct lb_session *ls)
{
    if (!ls->rt)
        return;
    lua_State *L = ls->rt->L;
    cancel_wait(ls);
    drop_coroutine(ls);
    if (ls->arg_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, ls->arg_ref);
    /* A script that kept s somewhere gets "session has ended", not a dangling pointer. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
    lua_pushnil(L);
    lua_rawsetp(L, -2, &SESS_KEY);
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, ls->s_ref);
    free_headers(ls);
    runtime_unref(ls->rt);
    ls->rt = NULL;
}

static void set_field(struct lb_session *ls, const char *field)
{
    lua_State *L = ls->rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
    lua_insert(L, -2);
    lua_setfield(L, -2, field);
    lua_pop(L, 1);
}

void lb_set_str(struct lb_session *ls, const char *field, const char *val)
{
    if (val)
        lua_pushstring(ls->rt->L, val);
    else
        lua_pushnil(ls->rt->L);
    set_field(ls, field);
}

void lb_set_int(struct lb_session *ls, const char *field, long val)
{
    lua_pushinteger(ls->rt->L, val);
    set_field(ls, field);
}

void lb_set_bool(struct lb_session *ls, const char *field, int val)
{
    lua_pushboolean(ls->rt->L, val);
    set_field(ls, field);
}

void lb_reset_transaction(struct lb_session *ls)
{
    lua_pushnil(ls->rt->L);
    set_field(ls, "from");
    lua_newtable(ls->rt->L);
    set_field(ls, "rcpts");
    free_headers(ls);
}

/* ---- running the chain ------------------------------------------------- */

static enum verdict_action action_of(const char *a)
{
    static const struct { const char *name; enum verdict_action act; } map[] = {
        { "accept", V_ACCEPT }, { "reject", V_REJECT }, { "tempfail", V_TEMPFAIL },
        { "drop", V_DROP }, { "discard", V_DISCARD }, { "redirect", V_REDIRECT },
    };
    for (size_t i = 0; a && i < sizeof map / sizeof map[0]; i++)
        if (strcmp(a, map[i].name) == 0)
            return map[i].act;
    return V_ERROR;
}

static void error_verdict(struct lb_session *ls, struct verdict *v, const char *msg)
{
    lua_State *L = ls->rt->L;
    luaL_traceback(L, ls->co, msg, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
    lua_getfield(L, -1, "id");
    /* A shadow's errors only log (and shadow.c counts them): they are not
     * the live chain's. */
    log_kv(LOG_ERR, ls->rt->is_shadow ? "shadow_error" : "hook_error", "session", lua_tostring(L, -1),
           "phase", ls->phase < PH_COUNT ? phase_names[ls->phase] : "task",
           "error", lua_tostring(L, -3), NULL);
    lua_pop(L, 3);
    if (!ls->rt->is_shadow)
        srv.stats.hook_errors++;
    memset(v, 0, sizeof *v);
    v->action = V_ERROR;
    v->code = 451;
    snprintf(v->text, sizeof v->text, "4.3.0 Temporary policy error, try again later");
}

static void read_route(struct lb_session *ls, struct verdict *v)
{
    lua_State *L = ls->rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->arg_ref);
    lua_getfield(L, -1, "route");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "kind");
        lua_getfield(L, -2, "address");
        lua_getfield(L, -3, "host");
        lua_getfield(L, -4, "can_relay");
        snprintf(v->route.kind, sizeof v->route.kind, "%s", lua_isstring(L, -4) ? lua_tostring(L, -4) : "local");
        snprintf(v->route.address, sizeof v->route.address, "%s", lua_isstring(L, -3) ? lua_tostring(L, -3) : "");
        snprintf(v->route.host, sizeof v->route.host, "%s", lua_isstring(L, -2) ? lua_tostring(L, -2) : "");
        v->route.can_relay = lua_toboolean(L, -1);
        lua_pop(L, 4);
    }
    lua_pop(L, 2);
}

/* Turn the chain's results (verdict, policy name) into *v.  Malformed
 * verdicts (a script mutated one) are errors, not accepts. */
static void read_verdict(struct lb_session *ls, int nres, struct verdict *v)
{
    lua_State *co = ls->co;
    memset(v, 0, sizeof *v);
    v->action = V_NONE;
    if (nres >= 1 && lua_istable(co, 1)) {
        lua_getfield(co, 1, "action");
        v->action = action_of(lua_tostring(co, -1));
        lua_getfield(co, 1, "code");
        v->code = (int)lua_tointeger(co, -1);
        lua_getfield(co, 1, "text");
        copy_reply_text(v->text, sizeof v->text, lua_tostring(co, -1));
        lua_getfield(co, 1, "address");
        if (lua_isstring(co, -1))
            snprintf(v->route.address, sizeof v->route.address, "%s", lua_tostring(co, -1));
        lua_pop(co, 4);
        if (nres >= 2 && lua_isstring(co, 2))
            snprintf(v->policy, sizeof v->policy, "%s", lua_tostring(co, 2));
    }
    int bad_code = (v->action == V_REJECT || v->action == V_DROP || v->action == V_TEMPFAIL) &&
                   (v->code < 400 || v->code > 599);
    if (v->action == V_ERROR || bad_code) {
        lua_pushfstring(co, "%s: malformed verdict", v->policy[0] ? v->policy : "?");
        error_verdict(ls, v, lua_tostring(co, -1));
    }
}

static int resume(struct lb_session *ls, int nargs, struct verdict *v)
{
    struct runtime *rt = ls->rt;
    struct lb_session *prev = rt->current;
    rt->current = ls;
    int nres = 0;
    int st = lua_resume(ls->co, NULL, nargs, &nres);
    rt->current = prev;
    if (st == LUA_YIELD && ls->waiting) {
        lua_pop(ls->co, nres);
        return 0;
    }
    if (st == LUA_OK && ls->phase == PH_TASK) {
        memset(v, 0, sizeof *v);
        snprintf(v->text, sizeof v->text, "%s", nres >= 1 && lua_isstring(ls->co, 1) ? lua_tostring(ls->co, 1) : "");
        lua_settop(ls->co, 0);
    } else if (st == LUA_OK) {
        read_verdict(ls, nres, v);
        if (ls->phase == PH_RCPT && v->action != V_ERROR)
            read_route(ls, v);
        lua_settop(ls->co, 0);
    } else {
        const char *msg = st == LUA_YIELD ? "hook yielded outside moat.sleep/moat.dns.query"
                                          : lua_tostring(ls->co, -1);
        error_verdict(ls, v, msg ? msg : "error object is not a string");
        drop_coroutine(ls);  /* a dead coroutine cannot run again */
    }
    ls->running = 0;
    if (ls->arg_ref != LUA_NOREF) {
        luaL_unref(rt->L, LUA_REGISTRYINDEX, ls->arg_ref);
        ls->arg_ref = LUA_NOREF;
    }
    return 1;
}

/* Push run, phase, s onto the session coroutine; the caller pushes the rest. */
static lua_State *begin(struct lb_session *ls, enum phase ph)
{
    if (!ls->co)
        new_coroutine(ls);
    lua_State *co = ls->co;
    lua_settop(co, 0);
    ls->phase = ph;
    ls->instructions = 0;
    ls->running = 1;
    lua_rawgeti(co, LUA_REGISTRYINDEX, ls->rt->run_ref);
    lua_pushstring(co, phase_names[ph]);
    lua_rawgeti(co, LUA_REGISTRYINDEX, ls->s_ref);
    return co;
}

static int no_hooks(struct lb_session *ls, enum phase ph, struct verdict *v)
{
    if (lb_has_phase(ls->rt, ph))
        return 0;
    memset(v, 0, sizeof *v);
    v->action = V_NONE;
    return 1;
}

int lb_connect(struct lb_session *ls, struct verdict *v)
{
    if (no_hooks(ls, PH_CONNECT, v))
        return 1;
    begin(ls, PH_CONNECT);
    return resume(ls, 1 + 1, v);
}

int lb_helo(struct lb_session *ls, const char *name, struct verdict *v)
{
    lb_set_str(ls, "helo", name);
    if (no_hooks(ls, PH_HELO, v))
        return 1;
    lua_pushstring(begin(ls, PH_HELO), name);
    return resume(ls, 3, v);
}

int lb_auth(struct lb_session *ls, const char *user, int ok, struct verdict *v)
{
    if (no_hooks(ls, PH_AUTH, v))
        return 1;
    lua_State *co = begin(ls, PH_AUTH);
    lua_pushstring(co, user);
    lua_pushboolean(co, ok);
    return resume(ls, 4, v);
}

/* addr = { raw, localpart, domain } with nil parts for <>. */
static void push_addr(lua_State *L, const char *raw, const char *local, const char *domain)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, raw);
    lua_setfield(L, -2, "raw");
    if (local && *local) {
        lua_pushstring(L, local);
        lua_setfield(L, -2, "localpart");
    }
    if (domain && *domain) {
        lua_pushstring(L, domain);
        lua_setfield(L, -2, "domain");
    }
}

int lb_mail_from(struct lb_session *ls, const char *raw, const char *local, const char *domain,
                 struct verdict *v)
{
    lua_State *L = ls->rt->L;
    push_addr(L, raw, local, domain);
    set_field(ls, "from");
    if (no_hooks(ls, PH_MAIL, v))
        return 1;
    lua_State *co = begin(ls, PH_MAIL);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
    lua_getfield(L, -1, "from");
    lua_xmove(L, co, 1);
    lua_pop(L, 1);
    return resume(ls, 3, v);
}

static void push_route(lua_State *L, const struct route *r)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, r->kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, r->address);
    lua_setfield(L, -2, "address");
    if (r->host[0]) {
        lua_pushstring(L, r->host);
        lua_setfield(L, -2, "host");
    }
    lua_pushboolean(L, r->can_relay);
    lua_setfield(L, -2, "can_relay");
}

int lb_rcpt(struct lb_session *ls, const char *raw, const char *local, const char *domain,
            const struct route *r, struct verdict *v)
{
    lua_State *L = ls->rt->L;
    lua_createtable(L, 0, 2);
    push_addr(L, raw, local, domain);
    lua_setfield(L, -2, "addr");
    push_route(L, r);
    lua_setfield(L, -2, "route");
    lua_pushvalue(L, -1);
    ls->arg_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (no_hooks(ls, PH_RCPT, v)) {
        lua_pop(L, 1);
        luaL_unref(L, LUA_REGISTRYINDEX, ls->arg_ref);
        ls->arg_ref = LUA_NOREF;
        v->route = *r;
        return 1;
    }
    lua_State *co = begin(ls, PH_RCPT);
    lua_xmove(L, co, 1);
    return resume(ls, 3, v);
}

void lb_rcpt_accepted(struct lb_session *ls, const char *raw, const struct route *r)
{
    lua_State *L = ls->rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
    lua_getfield(L, -1, "rcpts");
    lua_createtable(L, 0, 2);
    lua_pushstring(L, raw);
    lua_setfield(L, -2, "addr");
    push_route(L, r);
    lua_setfield(L, -2, "route");
    lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
    lua_pop(L, 2);
}

int lb_data(struct lb_session *ls, struct verdict *v)
{
    if (no_hooks(ls, PH_DATA, v))
        return 1;
    begin(ls, PH_DATA);
    return resume(ls, 2, v);
}

/* A data_line chain of line filters only, run here: the first filter whose
 * set matches gives its verdict, after the log line s:log would write. */
static void run_filters(struct lb_session *ls, const char *line, size_t len, int header, struct verdict *v)
{
    struct runtime *rt = ls->rt;
    memset(v, 0, sizeof *v);
    v->action = V_NONE;
    for (int i = 0; i < rt->nfilters; i++) {
        const struct line_filter *f = rt->filters[i].f;
        struct lineset *set = header ? f->header : f->body;
        int hit = set ? lineset_match(set, line, len) : -1;
        if (hit < 0)
            continue;
        lua_State *L = rt->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, rt->filters[i].ref);
        lineset_filter_label(L, -1, header, hit);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ls->s_ref);
        lua_getfield(L, -1, "id");
        if (lua_isstring(L, -3))
            log_kv(LOG_INFO, "script", "session", lua_tostring(L, -1), "msg", lua_tostring(L, -3), NULL);
        lua_pop(L, 4);
        v->action = action_of(f->action);
        v->code = f->code;
        copy_reply_text(v->text, sizeof v->text, f->text);
        snprintf(v->policy, sizeof v->policy, "%s", rt->filters[i].policy);
        return;
    }
}

int lb_data_line(struct lb_session *ls, const char *line, size_t len, int header, struct verdict *v)
{
    if (no_hooks(ls, PH_DATA_LINE, v))
        return 1;
    if (ls->rt->nfilters) {
        run_filters(ls, line, len, header, v);
        return 1;
    }
    lua_State *co = begin(ls, PH_DATA_LINE);
    lua_pushlstring(co, line, len);
    lua_pushstring(co, header ? "header" : "body");
    return resume(ls, 4, v);
}

int lb_data_end(struct lb_session *ls, long size, struct verdict *v)
{
    if (no_hooks(ls, PH_DATA_END, v))
        return 1;
    lua_State *co = begin(ls, PH_DATA_END);
    lua_createtable(co, 0, 1);
    lua_pushinteger(co, size);
    lua_setfield(co, -2, "size");
    return resume(ls, 3, v);
}

/* The disconnect hook runs to completion or not at all: there is no client
 * left to wait for, so an async call in it is cancelled. */
void lb_disconnect(struct lb_session *ls)
{
    struct verdict v;
    if (ls->waiting || ls->running) {
        /* The client left while a hook was suspended: abandon that call. */
        cancel_wait(ls);
        drop_coroutine(ls);
        ls->running = 0;
    }
    if (no_hooks(ls, PH_DISCONNECT, &v))
        return;
    begin(ls, PH_DISCONNECT);
    if (!resume(ls, 2, &v)) {
        cancel_wait(ls);
        drop_coroutine(ls);
        ls->running = 0;
    }
}

/* ---- control-socket tasks --------------------------------------------- */

struct task {
    struct lb_session ls;
    void (*cb)(void *, int, const char *);
    void *cbarg;
};

static void task_done(void *owner, const struct verdict *v)
{
    struct task *t = owner;
    t->cb(t->cbarg, v->action != V_ERROR, v->action == V_ERROR ? "script error (see the log)" : v->text);
    lb_session_close(&t->ls);
    free(t);
}

void lb_task(struct runtime *rt, const char *module, const char *fn, const char *arg,
             void (*cb)(void *cbarg, int ok, const char *text), void *cbarg)
{
    struct task *t = calloc(1, sizeof *t);
    t->cb = cb;
    t->cbarg = cbarg;
    lb_session_open(&t->ls, rt, t, task_done);
    lb_set_str(&t->ls, "id", "control");
    struct lb_session *ls = &t->ls;
    new_coroutine(ls);
    lua_State *co = ls->co;
    ls->phase = PH_TASK;
    ls->running = 1;
    lua_getglobal(co, "require");
    lua_pushstring(co, module);
    lua_call(co, 1, 1);
    lua_getfield(co, -1, fn);
    lua_remove(co, -2);
    lua_pushstring(co, arg);
    struct verdict v;
    if (resume(ls, 1, &v))
        task_done(t, &v);
}

/* ---- the files a runtime depends on (watch mode) --------------------------- */

static void each_string(lua_State *L, const char *field, void (*cb)(void *, const char *), void *arg)
{
    lua_getfield(L, -1, field);
    if (lua_istable(L, -1))
        for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
            if (lua_type(L, -1) == LUA_TSTRING)
                cb(arg, lua_tostring(L, -1));
    lua_pop(L, 1);
}

void lb_config_files(struct runtime *rt, void (*cb)(void *arg, const char *path), void *arg)
{
    lua_State *L = rt->L;
    cb(arg, rt->cfg.path);
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    each_string(L, "tables", cb, arg);
    each_string(L, "scripts", cb, arg);
    lua_getfield(L, -1, "policies");
    for (int i = 1; lua_istable(L, -1) && i <= (int)luaL_len(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        char path[4096];
        snprintf(path, sizeof path, "%s/policies/%s.lua", runtime_root(), lua_tostring(L, -1));
        cb(arg, path);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    for (int i = 0; i < rt->cfg.ndomains; i++) {
        if (rt->cfg.domains[i].certificate)
            cb(arg, rt->cfg.domains[i].certificate);
        if (rt->cfg.domains[i].private_key)
            cb(arg, rt->cfg.domains[i].private_key);
    }
}

void lb_push_config(struct runtime *rt)
{
    lua_getfield(rt->L, LUA_REGISTRYINDEX, CONFIG_KEY);
}
