/* lineset.h - '*' wildcard patterns matched against whole lines, fast with
 * thousands of patterns (Banned Header / Body Lines).  See lineset.c. */
#ifndef MOAT_LINESET_H
#define MOAT_LINESET_H

#include <stddef.h>

struct lua_State;
struct lineset;

/* n patterns (bytes, '*' = any run, possibly empty).  header tunes the index
 * for header fields.  NULL when out of memory. */
struct lineset *lineset_new(const char *const *pats, const size_t *lens, size_t n, int header);
void lineset_free(struct lineset *s);

/* The index (0-based) of a pattern matching the whole line, or -1.  Not
 * thread-safe: a set belongs to one Lua state. */
int lineset_match(struct lineset *s, const char *line, size_t len);

/* Patterns per index: exact, gram, prefix, suffix, scan; then the number of
 * full matches tried so far. */
void lineset_stats(const struct lineset *s, size_t out[6]);

/* require "moat.lineset": lineset.new(patterns [, "header"]) -> set,
 * set:match(line) -> 1-based index | nil; lineset.filter{...} -> a data_line
 * hook made of a header set and a body set (see lineset.c). */
int luaopen_moat_lineset(struct lua_State *L);

/* A filter as the core sees it, to run a chain of filters without Lua. */
struct line_filter {
    struct lineset *header, *body;   /* either may be NULL */
    char action[16];                 /* the verdict's action, code and text */
    int code;
    char text[200];
};

/* The filter at idx, or NULL when it is something else. */
const struct line_filter *lineset_filter_test(struct lua_State *L, int idx);

/* Push the log label of pattern (0-based) of the filter at idx, or nil. */
void lineset_filter_label(struct lua_State *L, int idx, int header, int pattern);

#endif
