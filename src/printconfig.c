/* printconfig.c - the effective configuration, in conf/moat.conf syntax.
 *
 * The C core applies most defaults (src/config.c); this file hands them to
 * lua/moat/print_config.lua as a table so they are written down in one place.
 * Settings only Lua reads (policies, scripts, protection lists, domains,
 * tables) are printed as the config loader normalized them. */
#include "printconfig.h"

#include <lauxlib.h>
#include <lua.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "lua_bridge.h"
#include "runtime.h"

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (!v)
        return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, long v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static void set_pair(lua_State *L, const char *k, int count, int seconds)
{
    if (count <= 0)
        return;   /* a rule that is off has no spelling: leave it out */
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, count);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, seconds);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, k);
}

/* Comma-separated -> list at key k. */
static void set_list(lua_State *L, const char *k, const char *csv)
{
    lua_newtable(L);
    int n = 0;
    for (const char *p = csv; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len) {
            lua_pushlstring(L, p, len);
            lua_rawseti(L, -2, ++n);
        }
        p = e ? e + 1 : p + len;
    }
    lua_setfield(L, -2, k);
}

static void push_effective(lua_State *L, const struct config *c)
{
    lua_newtable(L);
    set_str(L, "server_name", c->server_name);
    set_str(L, "main_domain", c->main_domain);
    lua_createtable(L, c->nlocal_domains, 0);
    for (int i = 0; i < c->nlocal_domains; i++) {
        lua_pushstring(L, c->local_domains[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "local_domains");
    set_str(L, "spool_dir", c->spool_dir);
    set_int(L, "spool_threads", c->spool_threads);
    set_str(L, "spool_sync", c->spool_syncfs ? "syncfs" : "fsync");
    set_str(L, "control_socket", c->control_socket);
    set_str(L, "user", c->user);
    set_int(L, "shutdown_timeout", c->shutdown_timeout);
    set_int(L, "min_free_space", c->min_free_space_mb);
    set_str(L, "log_level", c->log_level);
    lua_pushboolean(L, c->watch);
    lua_setfield(L, -2, "watch");

    lua_newtable(L);
    set_list(L, "servers", c->dns_servers);
    set_int(L, "timeout_ms", c->dns_timeout_ms);
    set_int(L, "tries", c->dns_tries);
    set_int(L, "cache_size", c->dns_cache_size);
    set_int(L, "cache_max_ttl", c->dns_cache_max_ttl);
    lua_setfield(L, -2, "dns");

    if (c->metrics_address) {
        lua_newtable(L);
        set_str(L, "address", c->metrics_address);
        set_int(L, "port", c->metrics_port);
        lua_setfield(L, -2, "metrics");
    }

    lua_newtable(L);
    set_int(L, "max_message_size", c->max_message_size);
    set_int(L, "max_recipients", c->max_recipients);
    set_int(L, "timeout", c->timeout_s);
    set_int(L, "max_errors", c->max_errors);
    set_int(L, "greet_delay_ms", c->greet_delay_ms);
    set_int(L, "max_line_length", c->max_line_length);
    lua_setfield(L, -2, "smtp");

    lua_newtable(L);
    set_int(L, "budget", c->lua_budget);
    set_int(L, "memory_mb", c->lua_memory_mb);
    lua_setfield(L, -2, "lua");

    const struct delivery_conf *d = &c->delivery;
    static const char *modes[] = { "spool", "relay", "proxy" };
    lua_newtable(L);
    set_str(L, "mode", modes[d->mode]);
    set_str(L, "protocol", d->lmtp ? "lmtp" : "smtp");
    set_int(L, "max_age", d->max_age);
    set_int(L, "retry_min", d->retry_min);
    set_int(L, "retry_max", d->retry_max);
    set_int(L, "concurrency", d->concurrency);
    set_int(L, "timeout", d->timeout);
    lua_setfield(L, -2, "delivery");   /* next_hop: as written, from the Lua side */

    const struct tb_settings *t = &c->tb;
    lua_newtable(L);   /* protection: merged key by key with the Lua side */
    lua_newtable(L);
    set_pair(L, "failed_logins", t->login_block_count, t->login_block_window);
    set_pair(L, "protocol_errors", t->proto_block_count, t->proto_block_window);
    set_pair(L, "debug_failed_logins", t->login_debug_count, t->login_debug_window);
    set_pair(L, "debug_protocol_errors", t->proto_debug_count, t->proto_debug_window);
    set_int(L, "block_time", t->block_time);
    set_int(L, "limit", t->block_limit);
    lua_setfield(L, -2, "temp_block");
    lua_newtable(L);
    set_int(L, "time", t->unblock_time);
    set_int(L, "limit", t->unblock_limit);
    lua_setfield(L, -2, "temp_unblock");
    lua_setfield(L, -2, "protection");
}

static void push_listener_limits(lua_State *L, const struct config *c)
{
    lua_createtable(L, c->nlisteners, 0);
    for (int i = 0; i < c->nlisteners; i++) {
        const struct listener_conf *l = &c->listeners[i];
        lua_newtable(L);
        set_int(L, "limit_per_address", l->limit_per_address);
        set_int(L, "limit_non_client", l->limit_non_client);
        set_int(L, "reserve_for_clients", l->reserve_for_clients);
        set_int(L, "max_connections", l->max_connections);
        lua_rawseti(L, -2, i + 1);
    }
}

int print_config(const char *path)
{
    char err[4096];
    /* An absolute config path makes every path the loader resolves absolute:
     * the output means the same wherever it is saved. */
    char abs[PATH_MAX];
    if (realpath(path, abs))
        path = abs;
    struct runtime *rt = runtime_load(path, err, sizeof err);
    if (!rt) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    lua_State *L = rt->L;
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "moat.print_config");
    int rc = 1;
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
        lua_getfield(L, -1, "render");
        lb_push_config(rt);
        push_effective(L, &rt->cfg);
        push_listener_limits(L, &rt->cfg);
        if (lua_pcall(L, 3, 1, 0) == LUA_OK) {
            fputs(lua_tostring(L, -1), stdout);
            rc = 0;
        }
    }
    if (rc != 0)
        fprintf(stderr, "moat: --print-config: %s\n", lua_tostring(L, -1));
    lua_settop(L, top);
    runtime_unref(rt);
    return rc;
}
