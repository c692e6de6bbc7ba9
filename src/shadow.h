/* shadow.h - the shadow chain (DESIGN.md §12): a second, complete policy set
 * run beside the live one on live sessions, on its own Lua state.
 *
 * Each hook the SMTP layer runs on the live chain is started on the shadow
 * session first (same arguments), so the two run concurrently and the live
 * reply never waits for the shadow.  When both verdicts of a hook are known
 * they are compared; a difference is logged (event=shadow_diff) and counted
 * per phase and verdict pair.  The shadow's verdict is never given to the
 * client and never changes what is stored.  A shadow still busy with an
 * earlier hook when the next one starts skips that hook (counted): the
 * shadow may fall behind, never hold the live session up. */
#ifndef MOAT_SHADOW_H
#define MOAT_SHADOW_H

#include "lua_bridge.h"

struct evbuffer;
struct shadow_sess;

/* A shadow session for a new live session on rt, or NULL when rt has no
 * shadow or this session is not in the sample. */
struct shadow_sess *shadow_open(struct runtime *rt, const char *id, const char *ip);
void shadow_close(struct shadow_sess *sh);        /* NULL is fine */

/* The shadow's lb_session for hook ph, or NULL to skip it (no shadow, or
 * still busy). */
struct lb_session *shadow_begin(struct shadow_sess *sh, enum phase ph);
/* The shadow hook started by shadow_begin finished synchronously. */
void shadow_done_now(struct shadow_sess *sh, const struct verdict *v);
/* The live chain's verdict for ph. */
void shadow_live(struct shadow_sess *sh, enum phase ph, const struct verdict *v);
/* data_line runs on the shadow line by line like the live chain (a busy
 * shadow skips a line); the first verdict it gives is kept and compared
 * with the live chain's kept verdict (NULL: none) once, at the final dot. */
void shadow_data_line(struct shadow_sess *sh, const char *line, size_t len, int header);
void shadow_data_lines_end(struct shadow_sess *sh, const struct verdict *live);
int shadow_wants_data_line(const struct shadow_sess *sh);
/* Session-state mirroring (a NULL sh does nothing). */
struct lb_session *shadow_lb(struct shadow_sess *sh);

/* moat --replay --shadow: called with both verdicts of every compared hook
 * (same or not), and the number of comparisons still waiting for a verdict. */
extern void (*shadow_on_pair)(enum phase ph, const struct verdict *live, const struct verdict *shadow);
int shadow_pending(void);
/* "550 5.7.1 text" (or "none") and "policies/relay.lua" of a verdict. */
void shadow_verdict_text(const struct verdict *v, char *buf, size_t len);
void shadow_policy_file(const struct verdict *v, char *buf, size_t len);

/* moatctl shadow; Prometheus counters. */
void shadow_report(struct evbuffer *out);
void shadow_prometheus(struct evbuffer *out);
/* The same figures for `moatctl stats` (name value lines, diffs labelled). */
void shadow_stats_text(struct evbuffer *out);

#endif
