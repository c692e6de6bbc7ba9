/* fuzz_lua_spf.c - libFuzzer target: fuzz/drivers/spf.lua (see there and lua_harness.h). */
#include "lua_harness.h"

LUA_FUZZ_TARGET("fuzz_lua_spf", "spf")
