/* runtime.c - load and reference-count configuration generations. */
#include "runtime.h"
#include "tls.h"
#include "stats.h"
#include "accounts.h"

#include <lua.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *runtime_root(void)
{
    static char root[PATH_MAX];
    if (root[0])
        return root;
    const char *env = getenv("MOAT_ROOT");
    if (env && *env) {
        snprintf(root, sizeof root, "%s", env);
        return root;
    }
    ssize_t n = readlink("/proc/self/exe", root, sizeof root - 1);
    if (n <= 0) {
        snprintf(root, sizeof root, ".");
        return root;
    }
    root[n] = '\0';
    char *slash = strrchr(root, '/');
    if (slash)
        *slash = '\0';
#ifdef MOAT_SHAREDIR
    /* Installed (bin in PREFIX/sbin, runtime in PREFIX/share/moat): a moat
     * next to its lua/ (the source tree) still uses that one. */
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/lua/moat/config.lua", root);
    if (access(probe, R_OK) != 0)
        snprintf(root, sizeof root, "%s", MOAT_SHAREDIR);
#endif
    return root;
}

/* The shadow chain: the same configuration parsed again on a state of its
 * own, with shadow.policies/scripts as its chain.  A broken shadow fails the
 * whole load, so a reload with one changes nothing (and says why). */
int runtime_promoted;

static int load_shadow(struct runtime *live, char *err, size_t errlen)
{
    double sample;
    if (!lb_shadow_sample(live, &sample))
        return 0;
    if (runtime_promoted) {
        /* The shadow's lists are the live chain now; nothing runs beside it. */
        live->promoted = 1;
        return lb_shadow_chain(live);
    }
    struct runtime *sh = calloc(1, sizeof *sh);
    sh->refs = 1;
    stats_runtime_created();
    sh->generation = 1;
    sh->is_shadow = 1;
    sh->cfg.path = strdup(live->cfg.path);
    sh->mem_limit = 256u << 20;
    live->shadow = sh;
    live->shadow_sample = sample;
    sh->L = lb_state_new(sh);
    if (!sh->L) {
        snprintf(err, errlen, "%s: cannot create the shadow's Lua state", live->cfg.path);
        return -1;
    }
    char e[4096];
    if (lb_load_config(sh, live->cfg.path, e, sizeof e) != 0 || lb_shadow_chain(sh) != 0 ||
        lb_load_policies(sh, e, sizeof e) != 0) {
        snprintf(err, errlen, "shadow: %s", e);
        return -1;
    }
    return 0;
}

struct runtime *runtime_load(const char *config_path, char *err, size_t errlen)
{
    struct runtime *rt = calloc(1, sizeof *rt);
    rt->refs = 1;
    stats_runtime_created();
    rt->generation = 1;   /* server_reload numbers the ones that go live */
    rt->cfg.path = strdup(config_path);
    rt->mem_limit = 256u << 20;   /* until the config says otherwise */
    rt->L = lb_state_new(rt);
    if (!rt->L) {
        snprintf(err, errlen, "%s: cannot create a Lua state", config_path);
        runtime_unref(rt);
        return NULL;
    }
    if (lb_load_config(rt, config_path, err, errlen) != 0 ||
        tls_load(&rt->cfg, &rt->tls, err, errlen) != 0 ||
        (rt->cfg.accounts_path &&
         !(rt->accounts = accounts_load(rt->cfg.accounts_path, &rt->cfg, err, errlen))) ||
        (runtime_promoted && load_shadow(rt, err, errlen) != 0) ||
        lb_load_policies(rt, err, errlen) != 0 ||
        (!rt->promoted && load_shadow(rt, err, errlen) != 0)) {
        runtime_unref(rt);
        return NULL;
    }
    return rt;
}

struct runtime *runtime_ref(struct runtime *rt)
{
    rt->refs++;
    return rt;
}

void runtime_unref(struct runtime *rt)
{
    if (!rt || --rt->refs > 0)
        return;
    runtime_unref(rt->shadow);
    if (rt->L)
        lua_close(rt->L);
    tls_free(rt->tls);
    accounts_free(rt->accounts);
    config_free(&rt->cfg);
    free(rt);
    stats_runtime_freed();
}
