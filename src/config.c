/* config.c - copy the validated Lua config table into struct config. */
#include "config.h"
#include "iplist.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const ip_table_names[T_NTABLES] = {
    "client_ips", "lan_ips", "denied_ips", "blacklisted_ips", "unblacklistable_ips", "cluster_ips",
};

static char *xstrdup(const char *s) { return s ? strdup(s) : NULL; }

/* Field getters on the table at the top of the stack. */
static char *get_str(lua_State *L, const char *key, const char *def)
{
    lua_getfield(L, -1, key);
    const char *v = lua_isstring(L, -1) ? lua_tostring(L, -1) : def;
    char *r = xstrdup(v);
    lua_pop(L, 1);
    return r;
}

static long get_int(lua_State *L, const char *key, long def)
{
    lua_getfield(L, -1, key);
    long v = lua_isinteger(L, -1) ? (long)lua_tointeger(L, -1) : def;
    lua_pop(L, 1);
    return v;
}

static void read_string_list(lua_State *L, const char *key, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    lua_getfield(L, -1, key);
    if (lua_istable(L, -1)) {
        int len = (int)luaL_len(L, -1);
        *out = calloc((size_t)len + 1, sizeof **out);
        for (int i = 1; i <= len; i++) {
            lua_rawgeti(L, -1, i);
            (*out)[(*n)++] = xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static int read_dns(lua_State *L, struct config *c)
{
    c->dns_timeout_ms = 500;
    c->dns_tries = 2;
    c->dns_cache_size = 10000;
    c->dns_cache_max_ttl = 3600;
    c->dns_servers = strdup("");
    lua_getfield(L, -1, "dns");
    if (lua_istable(L, -1)) {
        c->dns_timeout_ms = (int)get_int(L, "timeout_ms", 500);
        c->dns_tries = (int)get_int(L, "tries", 2);
        c->dns_cache_size = (int)get_int(L, "cache_size", 10000);
        c->dns_cache_max_ttl = (int)get_int(L, "cache_max_ttl", 3600);
        char **servers;
        int n;
        read_string_list(L, "servers", &servers, &n);
        size_t cap = 1;
        for (int i = 0; i < n; i++)
            cap += strlen(servers[i]) + 1;
        free(c->dns_servers);
        c->dns_servers = calloc(1, cap);
        for (int i = 0; i < n; i++) {
            if (i)
                strcat(c->dns_servers, ",");
            strcat(c->dns_servers, servers[i]);
            free(servers[i]);
        }
        free(servers);
    }
    lua_pop(L, 1);
    return 0;
}

/* Two sockets conflict when the ports match and either the addresses are the
 * same or one of them is "all" (seed 000: an "all" socket owns the port). */
static int sockets_conflict(const struct sock_conf *a, const struct sock_conf *b)
{
    if (a->port != b->port)
        return 0;
    return strcasecmp(a->address, "all") == 0 || strcasecmp(b->address, "all") == 0 ||
           strcasecmp(a->address, b->address) == 0;
}

static int read_socket(lua_State *L, struct config *c, struct listener_conf *l, int i,
                       int line, char *err, size_t errlen)
{
    struct sock_conf *s = &l->socks[i];
    s->port = (int)get_int(L, "port", 0);
    s->address = get_str(L, "address", "all");
    char *tls = get_str(L, "tls", "off");
    s->tls = strcmp(tls, "on") == 0 ? TLS_ON : strcmp(tls, "ext") == 0 ? TLS_EXT : TLS_OFF;
    free(tls);
    char *r = get_str(L, "restrict", "none");
    s->restrict_mode = strcmp(r, "grant") == 0 ? RESTRICT_GRANT
                     : strcmp(r, "deny") == 0  ? RESTRICT_DENY : RESTRICT_NONE;
    free(r);
    s->remote_text = get_str(L, "remote", NULL);
    lua_getfield(L, -1, "proxy");
    s->proxy = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (strcasecmp(s->address, "all") != 0) {
        unsigned char key[16];
        if (ip_key_from_str(s->address, key) != 0) {
            snprintf(err, errlen, "%s:%d: listener '%s' socket %d: address '%s' is not an IP address or \"all\"",
                     c->path, line, l->name, i + 1, s->address);
            return -1;
        }
    }
    if (s->remote_text) {
        char name[512];
        snprintf(name, sizeof name, "%s:%d: listener '%s' socket %d remote", c->path, line, l->name, i + 1);
        s->remote = iplist_new();
        char perr[1024];
        if (iplist_parse(s->remote, s->remote_text, strlen(s->remote_text), name, 1, 1, perr, sizeof perr) != 0) {
            snprintf(err, errlen, "%s", perr);
            return -1;
        }
        iplist_finish(s->remote);
    }
    return 0;
}

static int check_socket_conflicts(struct config *c, char *err, size_t errlen)
{
    for (int a = 0; a < c->nlisteners; a++)
        for (int i = 0; i < c->listeners[a].nsocks; i++)
            for (int b = a; b < c->nlisteners; b++)
                for (int j = (b == a ? i + 1 : 0); j < c->listeners[b].nsocks; j++) {
                    struct sock_conf *x = &c->listeners[a].socks[i], *y = &c->listeners[b].socks[j];
                    if (!sockets_conflict(x, y))
                        continue;
                    snprintf(err, errlen,
                             "%s: listener '%s' socket %d (%s port %d) and listener '%s' socket %d (%s port %d) use the same port and address",
                             c->path, c->listeners[a].name, i + 1, x->address, x->port,
                             c->listeners[b].name, j + 1, y->address, y->port);
                    return -1;
                }
    return 0;
}

static int read_listener(lua_State *L, struct config *c, struct listener_conf *l, char *err, size_t errlen)
{
    int line = (int)get_int(L, "line", 0);
    l->name = get_str(L, "name", "smtp");
    l->limit_per_address = (int)get_int(L, "limit_per_address", 0);
    l->limit_non_client = (int)get_int(L, "limit_non_client", 0);
    l->reserve_for_clients = (int)get_int(L, "reserve_for_clients", 0);
    l->max_connections = (int)get_int(L, "max_connections", 0);
    if (l->limit_per_address && l->limit_non_client > l->limit_per_address) {
        snprintf(err, errlen, "%s:%d: listener '%s': limit_non_client (%d) must not exceed limit_per_address (%d)",
                 c->path, line, l->name, l->limit_non_client, l->limit_per_address);
        return -1;
    }
    if (l->max_connections && l->reserve_for_clients >= l->max_connections) {
        snprintf(err, errlen, "%s:%d: listener '%s': reserve_for_clients (%d) must be below max_connections (%d)",
                 c->path, line, l->name, l->reserve_for_clients, l->max_connections);
        return -1;
    }
    lua_getfield(L, -1, "sockets");
    l->nsocks = (int)luaL_len(L, -1);
    l->socks = calloc((size_t)l->nsocks, sizeof *l->socks);
    int rc = 0;
    for (int i = 0; i < l->nsocks && rc == 0; i++) {
        lua_rawgeti(L, -1, i + 1);
        rc = read_socket(L, c, l, i, line, err, errlen);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

static int read_listeners(lua_State *L, struct config *c, char *err, size_t errlen)
{
    lua_getfield(L, -1, "listeners");
    c->nlisteners = (int)luaL_len(L, -1);
    c->listeners = calloc((size_t)c->nlisteners + 1, sizeof *c->listeners);
    int rc = 0;
    for (int i = 0; i < c->nlisteners && rc == 0; i++) {
        lua_rawgeti(L, -1, i + 1);
        rc = read_listener(L, c, &c->listeners[i], err, errlen);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (rc == 0 && c->nlisteners == 0) {
        snprintf(err, errlen, "%s: no listener is configured: add listener \"smtp\" { { port = 25 } }", c->path);
        rc = -1;
    }
    return rc ? rc : check_socket_conflicts(c, err, errlen);
}

static int read_domain(lua_State *L, struct config *c, struct domain_conf *d, char *err, size_t errlen)
{
    d->name = strdup(lua_tostring(L, -2));
    d->certificate = get_str(L, "certificate", NULL);
    d->private_key = get_str(L, "private_key", NULL);
    lua_getfield(L, -1, "roaming");
    d->roaming = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : 1;
    lua_getfield(L, -2, "relay");
    d->relay = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : 1;
    lua_pop(L, 2);
    char **addrs;
    int n;
    read_string_list(L, "addresses", &addrs, &n);
    d->addresses = iplist_new();
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char name[512];
        snprintf(name, sizeof name, "%s: domains[\"%s\"].addresses[%d]", c->path, d->name, i + 1);
        if (rc == 0 && iplist_parse(d->addresses, addrs[i], strlen(addrs[i]), name, 1, 1, err, errlen) != 0)
            rc = -1;
        free(addrs[i]);
    }
    free(addrs);
    iplist_finish(d->addresses);
    return rc;
}

static int read_domains(lua_State *L, struct config *c, char *err, size_t errlen)
{
    lua_getfield(L, -1, "domains");
    int rc = 0;
    if (lua_istable(L, -1)) {
        int n = 0;
        for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
            n++;
        c->domains = calloc((size_t)n + 1, sizeof *c->domains);
        for (lua_pushnil(L); rc == 0 && lua_next(L, -2); lua_pop(L, 1))
            rc = read_domain(L, c, &c->domains[c->ndomains++], err, errlen);
        if (rc != 0)
            lua_pop(L, 1);   /* the key left by the interrupted lua_next loop */
    }
    lua_pop(L, 1);
    return rc;
}

const struct domain_conf *config_domain(const struct config *c, const char *domain)
{
    for (int i = 0; domain && i < c->ndomains; i++)
        if (strcasecmp(c->domains[i].name, domain) == 0)
            return &c->domains[i];
    return NULL;
}

static int read_ip_tables(lua_State *L, struct config *c, char *err, size_t errlen)
{
    lua_getfield(L, -1, "tables");
    int rc = 0;
    if (lua_istable(L, -1)) {
        c->accounts_path = get_str(L, "accounts", NULL);
        for (int t = 0; t < T_NTABLES && rc == 0; t++) {
            char *path = get_str(L, ip_table_names[t], NULL);
            if (path) {
                c->ip[t] = iplist_new();
                rc = iplist_load_file(c->ip[t], path, err, errlen);
                free(path);
            }
        }
    }
    lua_pop(L, 1);
    return rc;
}

static void read_pair(lua_State *L, const char *key, int *count, int *secs)
{
    lua_getfield(L, -1, key);
    if (lua_istable(L, -1)) {
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        *count = (int)lua_tointeger(L, -2);
        *secs = (int)lua_tointeger(L, -1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
}

/* Temporary blocking counts nothing unless protection.temp_block is set:
 * the rules are opt-in.  Explicit blocks (the spamtrap policy) use
 * block_time and limit, whose defaults come from tempblock.c. */
static void read_temp_block(lua_State *L, struct config *c)
{
    struct tb_settings *t = &c->tb;
    tb_default_settings(t);
    t->login_block_count = t->proto_block_count = t->login_debug_count = t->proto_debug_count = 0;
    lua_getfield(L, -1, "protection");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "temp_block");
        if (lua_istable(L, -1)) {
            read_pair(L, "failed_logins", &t->login_block_count, &t->login_block_window);
            read_pair(L, "protocol_errors", &t->proto_block_count, &t->proto_block_window);
            read_pair(L, "debug_failed_logins", &t->login_debug_count, &t->login_debug_window);
            read_pair(L, "debug_protocol_errors", &t->proto_debug_count, &t->proto_debug_window);
            t->block_time = (int)get_int(L, "block_time", t->block_time);
            t->block_limit = (int)get_int(L, "limit", t->block_limit);
        }
        lua_pop(L, 1);
        lua_getfield(L, -1, "temp_unblock");
        if (lua_istable(L, -1)) {
            t->unblock_time = (int)get_int(L, "time", t->unblock_time);
            t->unblock_limit = (int)get_int(L, "limit", t->unblock_limit);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* next_hop "host:port", "[v6]:port", "host" (port 25). */
static int split_host_port(const char *hp, char **host, int *port)
{
    const char *colon = strrchr(hp, ':');
    *port = 25;
    if (hp[0] == '[') {
        const char *close = strchr(hp, ']');
        if (!close)
            return -1;
        *host = strndup(hp + 1, (size_t)(close - hp - 1));
        if (close[1] == ':')
            *port = atoi(close + 2);
    } else if (colon && strchr(hp, ':') == colon) {
        *host = strndup(hp, (size_t)(colon - hp));
        *port = atoi(colon + 1);
    } else {
        *host = strdup(hp);
    }
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static int read_delivery(lua_State *L, struct config *c, char *err, size_t errlen)
{
    struct delivery_conf *d = &c->delivery;
    d->mode = DELIVERY_SPOOL;
    d->max_age = 5 * 86400;
    d->retry_min = 60;
    d->retry_max = 3600;
    d->concurrency = 10;
    d->timeout = 300;
    lua_getfield(L, -1, "delivery");
    int rc = 0;
    if (lua_istable(L, -1)) {
        char *mode = get_str(L, "mode", "spool");
        d->mode = strcmp(mode, "relay") == 0 ? DELIVERY_RELAY : strcmp(mode, "proxy") == 0 ? DELIVERY_PROXY : DELIVERY_SPOOL;
        free(mode);
        char *proto = get_str(L, "protocol", "smtp");
        d->lmtp = strcmp(proto, "lmtp") == 0;
        free(proto);
        char *hop = get_str(L, "next_hop", NULL);
        if (hop && split_host_port(hop, &d->next_hop, &d->next_hop_port) != 0) {
            snprintf(err, errlen, "%s: delivery.next_hop '%s': expected host:port", c->path, hop);
            rc = -1;
        }
        free(hop);
        d->max_age = (int)get_int(L, "max_age", d->max_age);
        d->retry_min = (int)get_int(L, "retry_min", d->retry_min);
        d->retry_max = (int)get_int(L, "retry_max", d->retry_max);
        d->concurrency = (int)get_int(L, "concurrency", d->concurrency);
        d->timeout = (int)get_int(L, "timeout", d->timeout);
        if (rc == 0 && d->mode == DELIVERY_PROXY && !d->next_hop) {
            snprintf(err, errlen, "%s: delivery mode \"proxy\" needs a next_hop", c->path);
            rc = -1;
        }
    }
    lua_pop(L, 1);
    return rc;
}

static void read_limits(lua_State *L, struct config *c)
{
    c->max_message_size = 10L * 1024 * 1024;
    c->max_recipients = 100;
    c->timeout_s = 300;
    c->max_errors = 10;
    c->greet_delay_ms = 0;
    c->max_line_length = 65536;
    lua_getfield(L, -1, "smtp");
    if (lua_istable(L, -1)) {
        c->max_message_size = get_int(L, "max_message_size", c->max_message_size);
        c->max_recipients = (int)get_int(L, "max_recipients", c->max_recipients);
        c->timeout_s = (int)get_int(L, "timeout", c->timeout_s);
        c->max_errors = (int)get_int(L, "max_errors", c->max_errors);
        c->greet_delay_ms = (int)get_int(L, "greet_delay_ms", 0);
        c->max_line_length = (int)get_int(L, "max_line_length", c->max_line_length);
    }
    lua_pop(L, 1);
    c->lua_budget = 1000000;
    c->lua_memory_mb = 256;
    lua_getfield(L, -1, "lua");
    if (lua_istable(L, -1)) {
        c->lua_budget = get_int(L, "budget", c->lua_budget);
        c->lua_memory_mb = get_int(L, "memory_mb", c->lua_memory_mb);
    }
    lua_pop(L, 1);
}

/* proxy_from: required as soon as one socket expects PROXY headers, since
 * a header from anyone else would let any client pick its own address. */
static int read_proxy_from(lua_State *L, struct config *c, char *err, size_t errlen)
{
    char *text = get_str(L, "proxy_from", NULL);
    int rc = 0;
    if (text) {
        char name[512];
        snprintf(name, sizeof name, "%s: proxy_from", c->path);
        c->proxy_from = iplist_new();
        if (iplist_parse(c->proxy_from, text, strlen(text), name, 1, 1, err, errlen) != 0)
            rc = -1;
        iplist_finish(c->proxy_from);
    }
    free(text);
    for (int li = 0; rc == 0 && li < c->nlisteners; li++)
        for (int si = 0; rc == 0 && si < c->listeners[li].nsocks; si++)
            if (c->listeners[li].socks[si].proxy && !c->proxy_from) {
                snprintf(err, errlen, "%s: listener '%s' socket %d has proxy = true but proxy_from is not set",
                         c->path, c->listeners[li].name, si + 1);
                rc = -1;
            }
    return rc;
}

int config_from_lua(lua_State *L, int idx, struct config *c, char *err, size_t errlen)
{
    lua_pushvalue(L, idx);
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    c->server_name = get_str(L, "server_name", host);
    c->main_domain = get_str(L, "main_domain", c->server_name);
    for (char *p = c->main_domain; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    read_string_list(L, "local_domains", &c->local_domains, &c->nlocal_domains);
    c->spool_dir = get_str(L, "spool_dir", NULL);
    c->spool_threads = (int)get_int(L, "spool_threads", 4);
    c->min_free_space_mb = get_int(L, "min_free_space", 0);
    char *sync = get_str(L, "spool_sync", "fsync");
    c->spool_syncfs = strcmp(sync, "syncfs") == 0;
    free(sync);
    c->control_socket = get_str(L, "control_socket", NULL);
    c->user = get_str(L, "user", "moat");
    c->shutdown_timeout = (int)get_int(L, "shutdown_timeout", 30);
    c->log_level = get_str(L, "log_level", "info");
    lua_getfield(L, -1, "watch");
    c->watch = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "metrics");
    if (lua_istable(L, -1)) {
        c->metrics_address = get_str(L, "address", "127.0.0.1");
        c->metrics_port = (int)get_int(L, "port", 0);
    }
    lua_pop(L, 1);
    int rc = 0;
    if (!c->spool_dir) {
        snprintf(err, errlen, "%s: spool_dir is not set", c->path);
        rc = -1;
    }
    read_dns(L, c);
    read_limits(L, c);
    read_temp_block(L, c);
    if (rc == 0)
        rc = read_listeners(L, c, err, errlen);
    if (rc == 0)
        rc = read_proxy_from(L, c, err, errlen);
    if (rc == 0)
        rc = read_ip_tables(L, c, err, errlen);
    if (rc == 0)
        rc = read_domains(L, c, err, errlen);
    if (rc == 0)
        rc = read_delivery(L, c, err, errlen);
    lua_pop(L, 1);
    return rc;
}

int config_is_local_domain(const struct config *c, const char *domain)
{
    if (!domain)
        return 0;
    if (c->main_domain && strcasecmp(domain, c->main_domain) == 0)
        return 1;
    for (int i = 0; i < c->nlocal_domains; i++)
        if (strcasecmp(domain, c->local_domains[i]) == 0)
            return 1;
    return 0;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->server_name);
    free(c->main_domain);
    for (int i = 0; i < c->nlocal_domains; i++)
        free(c->local_domains[i]);
    free(c->local_domains);
    free(c->spool_dir);
    free(c->control_socket);
    free(c->user);
    free(c->dns_servers);
    free(c->log_level);
    free(c->metrics_address);
    free(c->delivery.next_hop);
    free(c->accounts_path);
    for (int i = 0; i < c->nlisteners; i++) {
        struct listener_conf *l = &c->listeners[i];
        for (int j = 0; j < l->nsocks; j++) {
            free(l->socks[j].address);
            free(l->socks[j].remote_text);
            iplist_free(l->socks[j].remote);
        }
        free(l->socks);
        free(l->name);
    }
    free(c->listeners);
    for (int i = 0; i < c->ndomains; i++) {
        free(c->domains[i].name);
        free(c->domains[i].certificate);
        free(c->domains[i].private_key);
        iplist_free(c->domains[i].addresses);
    }
    free(c->domains);
    for (int t = 0; t < T_NTABLES; t++)
        iplist_free(c->ip[t]);
    iplist_free(c->proxy_from);
    memset(c, 0, sizeof *c);
}
