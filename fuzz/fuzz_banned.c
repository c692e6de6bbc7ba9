/* fuzz_banned.c - libFuzzer target: fuzz/drivers/banned.lua (see there and lua_harness.h). */
#include "lua_harness.h"

LUA_FUZZ_TARGET("fuzz_banned", "banned")
