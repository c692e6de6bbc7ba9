/* tempblock.h - Temporarily Blocked / UnBlockable IP Addresses (CommuniGate
 * Pro "temporary Blacklist"; DESIGN.md section 3 protection.temp_block and
 * temp_unblock, section 6 "Temporary blocking").
 *
 * Process-wide state that survives config reloads (tb_configure keeps every
 * block, unblockable address and counter). Single-threaded: the event loop
 * owns it. The clock is passed in explicitly (now, in seconds) on every
 * call, so tests control time; expired blocks simply stop counting (every
 * check compares with now) and are reclaimed lazily.
 *
 * Addresses are 16-byte keys, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), the
 * same keys as iplist.h's ip_key_from_str / ip_key_from_sa; the _str wrappers
 * take textual addresses (an IPv4 address and its ::ffff: form are equal).
 *
 * Counting semantics (one rule = {count, seconds}):
 *   An event at time t is "in the window" at time now when now - t < seconds.
 *   A rule fires when MORE than count events are in the window, so count
 *   events are tolerated and event number count+1 within the window blocks
 *   (or debugs). A rule with count <= 0 or seconds <= 0 is off. Failed logins
 *   and protocol errors are counted separately, each against its own rules.
 *   Counting is exact for counts up to TB_SLOTS-1 (15); for larger counts it
 *   is exact while the events fall into at most TB_SLOTS distinct seconds,
 *   and otherwise may count an old event as leaving the window early (never
 *   late), i.e. it can block slightly later than exact, never earlier.
 *
 * Blocking: an event that makes the block rule fire on an address that is
 * not blocked blocks it for block_time seconds (reason "more than 5 failed
 * logins in 60s"). Events on an address that is already blocked are counted
 * but neither extend nor renew the block; once the block expires, the next
 * event blocks again if the rule still fires. At most block_limit addresses
 * are blocked at a time; block_time <= 0 or block_limit <= 0 means nothing
 * is ever blocked.
 *
 * Debugging: an address is "debugged" while either debug rule fires
 * (more than debug count events of that kind in the debug window).
 *
 * Unblockable: a successful login makes the address unblockable for
 * unblock_time seconds (renewed by each login), up to unblock_limit
 * addresses at a time, and lifts any block on it (even when the limit is
 * full). Unblockable addresses are still counted (and can be debugged) but
 * are never blocked, neither by events nor by tb_block.
 *
 * Memory: at most TB_TRACK_MAX + block_limit + unblock_limit addresses are
 * tracked, about 320 bytes each. An address with nothing blocked, nothing
 * unblockable and no event within the longest configured window is idle and
 * is freed lazily (a few per call, from the least-recently-active end). When
 * the table is full, a new address evicts the least-recently-active address
 * that is neither blocked nor unblockable (losing its counters); blocks and
 * unblockable addresses are never evicted. If nothing can be evicted the new
 * address is not tracked (its event returns TB_NONE; tb_block and
 * tb_make_unblockable refuse). Hashing is keyed with a random SipHash key, so
 * hostile addresses cannot be chosen to collide. */
#ifndef MOAT_TEMPBLOCK_H
#define MOAT_TEMPBLOCK_H

#include <stddef.h>
#include <time.h>

#define TB_TRACK_MAX  100000  /* tracked addresses, beyond the two limits */
#define TB_REASON_MAX 64      /* reasons are cut to 63 bytes */
#define TB_SLOTS      16      /* counting buckets per address and event kind */

typedef struct tempblock tempblock;

struct tb_settings {                 /* from protection.temp_block / temp_unblock; 0 count = rule off */
    int login_block_count, login_block_window;      /* failed_logins = {count, seconds} */
    int proto_block_count, proto_block_window;      /* protocol_errors */
    int login_debug_count, login_debug_window;      /* debug_failed_logins */
    int proto_debug_count, proto_debug_window;      /* debug_protocol_errors */
    int block_time, block_limit;                    /* seconds; max blocked addresses */
    int unblock_time, unblock_limit;                /* temp_unblock = {time, limit} */
};

/* The DESIGN.md defaults: logins {5,60}, protocol errors {10,60}, debug
 * {3,60} and {5,60}, block 600 s / 10000, unblock 3600 s / 10000. */
void tb_default_settings(struct tb_settings *s);

tempblock *tb_new(void);             /* with the defaults; NULL when out of memory */
void tb_free(tempblock *tb);         /* NULL is fine */
void tb_configure(tempblock *tb, const struct tb_settings *s);   /* on reload; keeps all state */

enum tb_event { TB_FAILED_LOGIN, TB_PROTOCOL_ERROR };
enum tb_result { TB_NONE = 0, TB_DEBUG = 1, TB_BLOCKED = 2, TB_REFUSED = 3 };

/* Count one event. TB_BLOCKED when this event blocked the address (see
 * above); TB_REFUSED when the block rule fired but the address could not be
 * blocked (it is unblockable, or block_limit addresses are already blocked:
 * log-worthy, the caller logs; tb_debugged still tells the debug state);
 * otherwise TB_DEBUG while the address is past a debug threshold, else
 * TB_NONE. */
enum tb_result tb_event(tempblock *tb, const unsigned char key[16], enum tb_event ev, time_t now);

/* Block explicitly (spamtrap etc.) for block_time; reason may be NULL.
 * An address already blocked gets its block renewed to now + block_time and
 * the new reason. TB_BLOCKED, or TB_REFUSED when the address is unblockable,
 * block_limit is reached, or blocking is off. */
enum tb_result tb_block(tempblock *tb, const unsigned char key[16], const char *reason, time_t now);

int tb_blocked(tempblock *tb, const unsigned char key[16], time_t now);     /* seconds left, 0 = not blocked */
int tb_debugged(tempblock *tb, const unsigned char key[16], time_t now);    /* 1 while past a debug threshold */

/* A successful login: lifts any block, and makes the address unblockable
 * for unblock_time. 1 when the address is now unblockable, 0 when not
 * (unblock_limit reached or unblocking off; the block is lifted anyway). */
int tb_make_unblockable(tempblock *tb, const unsigned char key[16], time_t now);
int tb_unblockable(tempblock *tb, const unsigned char key[16], time_t now); /* seconds left */
/* A Relay-enabled login: unblockable and "trusted" (a client for temp_unblock.time). */
int tb_make_trusted(tempblock *tb, const unsigned char key[16], time_t now);
int tb_trusted(tempblock *tb, const unsigned char key[16], time_t now);     /* seconds left */
int tb_trusted_str(tempblock *tb, const char *ip, time_t now);

/* moatctl unblock: lift the block and forget the address's counted events.
 * 1 if a block was in force (judged by the latest now seen by any call). */
int tb_unblock(tempblock *tb, const unsigned char key[16]);

/* Current blocks and unblockable addresses, in no particular order:
 * cb(arg, ip_text, "blocked"|"unblockable", seconds_left, reason) with
 * reason "" for unblockable ones. IPv4 is shown dotted ("192.0.2.1"). The
 * callback must not call tb_* functions on the same store. */
void tb_foreach(tempblock *tb, time_t now,
                void (*cb)(void *arg, const char *ip, const char *kind, int left, const char *reason),
                void *arg);
size_t tb_count_blocked(tempblock *tb, time_t now);
size_t tb_count_unblockable(tempblock *tb, time_t now);
size_t tb_tracked(const tempblock *tb);   /* addresses held now (idle ones may linger) */
size_t tb_capacity(const tempblock *tb);  /* TB_TRACK_MAX + block_limit + unblock_limit */

/* Textual-address wrappers ("192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1",
 * optionally in [brackets]); an unparsable address gives TB_REFUSED for the
 * enum-returning ones and -1 for the others. */
enum tb_result tb_event_str(tempblock *tb, const char *ip, enum tb_event ev, time_t now);
enum tb_result tb_block_str(tempblock *tb, const char *ip, const char *reason, time_t now);
int tb_blocked_str(tempblock *tb, const char *ip, time_t now);
int tb_debugged_str(tempblock *tb, const char *ip, time_t now);
int tb_unblock_str(tempblock *tb, const char *ip);
int tb_make_unblockable_str(tempblock *tb, const char *ip, time_t now);
int tb_unblockable_str(tempblock *tb, const char *ip, time_t now);

#endif
