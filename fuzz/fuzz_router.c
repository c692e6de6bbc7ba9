/* fuzz_router.c - libFuzzer target: fuzz/drivers/router.lua (see there and lua_harness.h). */
#include "lua_harness.h"

LUA_FUZZ_TARGET("fuzz_router", "router")
