/* lua_harness.h - shared part of the Lua libFuzzer targets.
 *
 * Each target names a driver, fuzz/drivers/NAME.lua: a chunk that returns
 * function(data).  It runs in a plain Lua 5.4 state whose package.path points
 * at the repository's lua/ directory (and fuzz/drivers/), and the function
 * gets every input as a string.
 *
 * Anything the driver raises is a bug and abort()s, so libFuzzer keeps the
 * input: a Lua error inside a moat module (the modules must answer hostile
 * text with "nil, message", never with an error), or an invariant the driver
 * checks with assert().
 *
 * Coverage: the Lua interpreter is the system's, not instrumented, so a line
 * hook feeds libFuzzer's extra counters with (previous line, current line)
 * pairs; without it libFuzzer would see no new coverage at all. */
#ifndef FUZZ_LUA_HARNESS_H
#define FUZZ_LUA_HARNESS_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

#define LUA_COV_SIZE (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_cov[LUA_COV_SIZE];
static uintptr_t lua_prev_loc;
static lua_State *fuzz_L;
static int fuzz_fn_ref;

static void lua_line_hook(lua_State *L, lua_Debug *ar)
{
    (void)L;
    /* Only the line number, no lua_getinfo(): that call would cost more than
     * the code under test.  Lines of different files may share a counter;
     * the (previous, current) pairs still tell paths apart well enough. */
    uintptr_t loc = ((uintptr_t)ar->currentline * 2654435761u) >> 8;
    loc &= LUA_COV_SIZE - 1;
    lua_cov[(loc ^ lua_prev_loc) & (LUA_COV_SIZE - 1)]++;
    lua_prev_loc = loc >> 1;
}

static int lua_traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

static void lua_fail(lua_State *L, const char *what)
{
    fprintf(stderr, "\n==== %s: Lua error or failed check (a bug: moat modules must answer hostile text with nil, message) ====\n%s\n", what,
            lua_tostring(L, -1));
    abort();
}

static void lua_harness_init(const char *driver, const char *name)
{
    const char *root = getenv("MOAT_ROOT");
    if (!root || !*root)
        root = FUZZ_ROOT;
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/fuzz/drivers/?.lua", root, root, root);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
#ifdef FUZZ_LINESET
    /* the C matcher behind moat.banned, linked into this target */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_moat_lineset);
    lua_setfield(L, -2, "moat.lineset");
    lua_pop(L, 1);
#endif
    lua_pushcfunction(L, lua_traceback_handler);
    char path[4096];
    snprintf(path, sizeof path, "%s/fuzz/drivers/%s.lua", root, driver);
    if (luaL_loadfile(L, path) != LUA_OK)
        lua_fail(L, name);
    if (lua_pcall(L, 0, 1, -2) != LUA_OK)
        lua_fail(L, name);
    if (!lua_isfunction(L, -1)) {
        fprintf(stderr, "%s: the driver did not return a function\n", name);
        abort();
    }
    fuzz_fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    if (!getenv("FUZZ_LUA_NOHOOK"))
        lua_sethook(L, lua_line_hook, LUA_MASKLINE, 0);
    fuzz_L = L;
}

static void lua_harness_run(const uint8_t *data, size_t size, const char *name)
{
    lua_State *L = fuzz_L;
    lua_prev_loc = 0;
    lua_pushcfunction(L, lua_traceback_handler);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_fn_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, -3) != LUA_OK)
        lua_fail(L, name);
    lua_pop(L, 1);
}

#define LUA_FUZZ_TARGET(name, driver)                                              \
    int LLVMFuzzerInitialize(int *argc, char ***argv)                              \
    {                                                                              \
        (void)argc;                                                                \
        (void)argv;                                                                \
        lua_harness_init(driver, name);                                            \
        return 0;                                                                  \
    }                                                                              \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)                   \
    {                                                                              \
        lua_harness_run(data, size, name);                                         \
        return 0;                                                                  \
    }

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
