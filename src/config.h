/* config.h - the validated configuration (conf/moat.conf), as C structs.
 *
 * lua/moat/config.lua runs the file in a sandbox and checks every key; this
 * module copies the result into plain structs and does the checks that need
 * the whole picture (duplicate sockets, limits that depend on each other,
 * address lists). */
#ifndef MOAT_CONFIG_H
#define MOAT_CONFIG_H

#include <stddef.h>

#include "tempblock.h"

struct lua_State;
typedef struct iplist iplist;

enum tls_mode { TLS_OFF, TLS_ON, TLS_EXT };
enum restrict_mode { RESTRICT_NONE, RESTRICT_GRANT, RESTRICT_DENY };

struct sock_conf {
    int port;
    char *address;            /* "all" or a literal address */
    enum tls_mode tls;
    enum restrict_mode restrict_mode;
    iplist *remote;           /* grant/deny list, NULL with RESTRICT_NONE */
    char *remote_text;        /* as written, to tell whether a reload changed it */
    int proxy;                /* proxy = true: a PROXY header precedes SMTP (§9) */
};

struct listener_conf {
    char *name;
    struct sock_conf *socks;
    int nsocks;
    int limit_per_address;    /* 0 = no limit */
    int limit_non_client;
    int reserve_for_clients;
    int max_connections;
};

/* delivery = "spool" | { mode = "relay"|"proxy", next_hop = "ip:port", protocol, ... } */
enum delivery_mode { DELIVERY_SPOOL, DELIVERY_RELAY, DELIVERY_PROXY };
struct delivery_conf {
    enum delivery_mode mode;
    char *next_hop;           /* host or address, NULL = none */
    int next_hop_port;
    int lmtp;
    int max_age;              /* seconds before a deferred recipient bounces */
    int retry_min, retry_max; /* backoff bounds, seconds */
    int concurrency;          /* connections per destination */
    int timeout;              /* per reply, seconds */
};

/* domains = { ["example.test"] = { addresses, certificate, private_key, roaming, relay } } */
struct domain_conf {
    char *name;               /* lower case */
    iplist *addresses;        /* local addresses owned by the domain (TLS certificate choice) */
    char *certificate, *private_key;
    int roaming, relay;       /* services' defaults for its accounts; 1 unless set false */
};

/* Address tables kept in C because the core needs them before any Lua runs. */
enum ip_table {
    T_CLIENT, T_LAN, T_DENIED, T_BLACKLISTED, T_UNBLACKLISTABLE, T_CLUSTER, T_NTABLES
};
extern const char *const ip_table_names[T_NTABLES];

struct config {
    char *path;               /* as given on the command line */
    char *server_name;
    char *main_domain;
    char **local_domains;
    int nlocal_domains;
    char *spool_dir;
    int spool_threads;
    int spool_syncfs;         /* spool_sync = "syncfs" */
    long min_free_space_mb;   /* MAIL FROM gets 452 4.3.1 below this much free in spool_dir; 0 = off */
    char *control_socket;
    int shutdown_timeout;     /* seconds SIGTERM lets sessions finish */
    char *user;               /* started as root, run as this user ("root" = stay root) */
    char *dns_servers;        /* comma-separated, "" = /etc/resolv.conf */
    int dns_timeout_ms, dns_tries;
    int dns_cache_size;       /* entries, 0 = no cache (and no query sharing) */
    int dns_cache_max_ttl;    /* s, cap on any cached TTL */
    char *log_level;
    int watch;                /* reload when a loaded file changes */
    char *metrics_address;    /* Prometheus endpoint, NULL = off */
    int metrics_port;

    struct listener_conf *listeners;
    int nlisteners;

    struct domain_conf *domains;
    int ndomains;

    iplist *proxy_from;       /* who may send PROXY headers; NULL = not set */

    iplist *ip[T_NTABLES];    /* NULL when the table is not configured */
    char *accounts_path;      /* tables.accounts, NULL if not set */

    /* SMTP limits (smtp = { ... }) */
    long max_message_size;
    int max_recipients;
    int timeout_s;
    int max_errors;
    int greet_delay_ms;
    int max_line_length;

    struct delivery_conf delivery;

    /* protection.temp_block / temp_unblock */
    struct tb_settings tb;

    /* Lua limits (lua = { ... }) */
    long lua_budget;
    long lua_memory_mb;
};

/* Build *c from the table at stack index idx (as returned by moat.config.load).
 * Returns 0, or -1 with err set to "file:line: problem". */
int config_from_lua(struct lua_State *L, int idx, struct config *c, char *err, size_t errlen);
void config_free(struct config *c);

/* Is domain (lower case) one of local_domains or the main domain? */
int config_is_local_domain(const struct config *c, const char *domain);

/* The domains entry for a domain name, or NULL. */
const struct domain_conf *config_domain(const struct config *c, const char *domain);

#endif
