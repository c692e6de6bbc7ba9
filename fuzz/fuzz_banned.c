/* fuzz_banned.c - libFuzzer target: fuzz/drivers/banned.lua (see there and
 * lua_harness.h), with the C matcher src/lineset.c linked in and fuzzed. */
#define FUZZ_LINESET
#include "lineset.h"
#include "lua_harness.h"

LUA_FUZZ_TARGET("fuzz_banned", "banned")
