/* fuzz_rules.c - libFuzzer target: fuzz/drivers/rules.lua (see there and lua_harness.h). */
#include "lua_harness.h"

LUA_FUZZ_TARGET("fuzz_rules", "rules")
