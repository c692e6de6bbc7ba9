/* runtime.h - one generation of configuration: settings, tables, Lua state.
 *
 * A reload builds a complete new runtime and only then makes it current; a
 * session keeps a reference to the runtime it started on, so in-flight
 * sessions finish on their own state and the old state is freed when the last
 * of them ends. */
#ifndef MOAT_RUNTIME_H
#define MOAT_RUNTIME_H

#include <stddef.h>

#include "config.h"
#include "lua_bridge.h"

struct tls_ctx;
struct accounts;

struct runtime {
    int refs;
    unsigned long generation;
    struct config cfg;
    struct lua_State *L;
    int run_ref;                   /* registry ref of the chain's run(phase, s, ...) */
    unsigned phase_mask;           /* 1 << phase for phases that have hooks */
    /* When every data_line hook is a line filter (moat.lineset), the core
     * runs them itself: no coroutine, no Lua, per message line. */
    int nfilters;
    struct native_filter {
        const struct line_filter *f;
        int ref;                   /* registry ref keeping the filter alive */
        char policy[64];
    } filters[8];
    size_t mem_used, mem_limit;    /* Lua allocator accounting */
    struct lb_session *current;    /* the session whose hook is running now */
    struct tls_ctx *tls;           /* certificates of this generation, NULL if none */
    struct accounts *accounts;     /* tables.accounts, NULL if none (no AUTH) */
    /* shadow = { ... } (DESIGN.md §12): the second policy set, a runtime of
     * its own (own Lua state), owned by this one; NULL if none. */
    struct runtime *shadow;
    double shadow_sample;          /* fraction of sessions the shadow runs on */
    int is_shadow;                 /* this runtime is a shadow: errors only log */
    int promoted;                  /* its live chain is the config's shadow lists */
};

/* Where lua/ and policies/ live: the directory of the moat binary, or $MOAT_ROOT. */
const char *runtime_root(void);

/* Load a configuration completely; NULL with err = "file:line: problem". */
/* Set by moatctl promote: while the configuration has a shadow, its lists
 * are loaded as the live chain (and no shadow runs).  The reload that finds
 * no shadow in the file (the administrator moved the lists into policies /
 * scripts) ends it. */
extern int runtime_promoted;

struct runtime *runtime_load(const char *config_path, char *err, size_t errlen);
struct runtime *runtime_ref(struct runtime *rt);
void runtime_unref(struct runtime *rt);

#endif
