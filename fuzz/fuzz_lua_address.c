/* fuzz_lua_address.c - libFuzzer target: fuzz/drivers/address.lua (see there and lua_harness.h). */
#include "lua_harness.h"

LUA_FUZZ_TARGET("fuzz_lua_address", "address")
