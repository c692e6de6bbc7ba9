/* test_tempblock.c - the temporary-block store (src/tempblock.c). */
#include "check.h"
#include "tempblock.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define T0 1700000000

static struct tb_settings base_settings(void)
{
    struct tb_settings s;
    memset(&s, 0, sizeof s);
    s.login_block_count = 5;  s.login_block_window = 60;
    s.proto_block_count = 10; s.proto_block_window = 60;
    s.block_time = 600;       s.block_limit = 100;
    s.unblock_time = 3600;    s.unblock_limit = 100;
    return s;
}

static tempblock *make(const struct tb_settings *s)
{
    tempblock *tb = tb_new();
    if (!tb) {
        fprintf(stderr, "tb_new failed\n");
        exit(2);
    }
    tb_configure(tb, s);
    return tb;
}

static void test_thresholds(void)
{
    struct tb_settings s = base_settings();
    tempblock *tb = make(&s);
    const char *ip = "192.0.2.1";
    int ok = 1;
    for (int i = 0; i < 5; i++)
        ok &= tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + i) == TB_NONE;
    CHECK(ok, "count (5) failed logins in the window: not blocked");
    CHECK(tb_blocked_str(tb, ip, T0 + 5) == 0, "not blocked after exactly count events");
    CHECK(tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + 5) == TB_BLOCKED, "count+1 blocks");
    CHECK(tb_blocked_str(tb, ip, T0 + 5) == 600, "blocked for block_time (%d)", tb_blocked_str(tb, ip, T0 + 5));
    CHECK(tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + 6) == TB_NONE, "further events do not re-block");
    CHECK(tb_blocked_str(tb, ip, T0 + 6) == 599, "nor extend the block");

    /* all in the same second */
    const char *ip2 = "192.0.2.2";
    for (int i = 0; i < 5; i++)
        tb_event_str(tb, ip2, TB_FAILED_LOGIN, T0);
    CHECK(tb_blocked_str(tb, ip2, T0) == 0, "5 in one second: not blocked");
    CHECK(tb_event_str(tb, ip2, TB_FAILED_LOGIN, T0) == TB_BLOCKED, "6th in the same second blocks");

    /* window edges: 5 at T0, 6th at T0+59 is inside, at T0+60 outside */
    const char *a = "192.0.2.3", *b = "192.0.2.4";
    for (int i = 0; i < 5; i++) {
        tb_event_str(tb, a, TB_FAILED_LOGIN, T0);
        tb_event_str(tb, b, TB_FAILED_LOGIN, T0);
    }
    CHECK(tb_event_str(tb, a, TB_FAILED_LOGIN, T0 + 59) == TB_BLOCKED, "event 59 s later is in the 60 s window");
    CHECK(tb_event_str(tb, b, TB_FAILED_LOGIN, T0 + 60) == TB_NONE, "events 60 s old are out of the window");
    CHECK(tb_blocked_str(tb, b, T0 + 60) == 0, "so not blocked");

    /* sliding: one event every 12 s never has more than 5 in 60 s */
    const char *c = "192.0.2.5";
    ok = 1;
    for (int i = 0; i < 100; i++)
        ok &= tb_event_str(tb, c, TB_FAILED_LOGIN, T0 + 12 * i) == TB_NONE;
    CHECK(ok && tb_blocked_str(tb, c, T0 + 1200) == 0, "5 per 60 s sliding, never blocked");
    CHECK(tb_event_str(tb, c, TB_FAILED_LOGIN, T0 + 12 * 99 + 1) == TB_BLOCKED,
          "one extra event in the window blocks");

    /* protocol errors counted separately with their own threshold */
    const char *d = "2001:db8::d";
    for (int i = 0; i < 5; i++)
        tb_event_str(tb, d, TB_FAILED_LOGIN, T0);
    ok = 1;
    for (int i = 0; i < 10; i++)
        ok &= tb_event_str(tb, d, TB_PROTOCOL_ERROR, T0) == TB_NONE;
    CHECK(ok && tb_blocked_str(tb, d, T0) == 0, "5 logins + 10 protocol errors: not blocked");
    CHECK(tb_event_str(tb, d, TB_PROTOCOL_ERROR, T0) == TB_BLOCKED, "11th protocol error blocks");
    tb_free(tb);
}

static void test_large_count(void)
{
    struct tb_settings s = base_settings();
    s.proto_block_count = 40;
    s.proto_block_window = 100;
    tempblock *tb = make(&s);
    int ok = 1;
    for (int i = 0; i < 40; i++)   /* 40 distinct seconds > TB_SLOTS buckets */
        ok &= tb_event_str(tb, "198.51.100.1", TB_PROTOCOL_ERROR, T0 + i) == TB_NONE;
    CHECK(ok, "40 errors in 40 distinct seconds, count 40: not blocked");
    CHECK(tb_event_str(tb, "198.51.100.1", TB_PROTOCOL_ERROR, T0 + 40) == TB_BLOCKED,
          "41st blocks (merged buckets keep the total)");
    /* one error every 3 s: 34 in any 100 s window; never blocked */
    ok = 1;
    for (int i = 0; i < 400; i++)
        ok &= tb_event_str(tb, "198.51.100.2", TB_PROTOCOL_ERROR, T0 + 3 * i) == TB_NONE;
    CHECK(ok, "steady rate under a large count never blocks (no over-counting)");
    tb_free(tb);
}

static void test_debug(void)
{
    struct tb_settings s = base_settings();
    s.login_debug_count = 3;
    s.login_debug_window = 60;
    s.proto_debug_count = 2;
    s.proto_debug_window = 30;
    tempblock *tb = make(&s);
    const char *ip = "2001:db8::1";
    int ok = 1;
    for (int i = 0; i < 3; i++)
        ok &= tb_event_str(tb, ip, TB_FAILED_LOGIN, T0) == TB_NONE;
    CHECK(ok && !tb_debugged_str(tb, ip, T0), "3 failed logins: not debugged");
    CHECK(tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + 1) == TB_DEBUG, "4th: TB_DEBUG");
    CHECK(tb_debugged_str(tb, ip, T0 + 59) == 1, "debugged within the window");
    CHECK(tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + 2) == TB_DEBUG, "5th: still TB_DEBUG");
    CHECK(tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + 3) == TB_BLOCKED, "6th: blocked");
    CHECK(tb_debugged_str(tb, ip, T0 + 59) == 1, "T0+59: 6 in the window, debugged");
    CHECK(tb_debugged_str(tb, ip, T0 + 60) == 0, "T0+60: the T0 events left, 3 remain: not debugged");

    const char *p = "203.0.113.9";
    tb_event_str(tb, p, TB_PROTOCOL_ERROR, T0);
    CHECK(tb_event_str(tb, p, TB_PROTOCOL_ERROR, T0) == TB_NONE, "2 protocol errors: none");
    CHECK(tb_event_str(tb, p, TB_PROTOCOL_ERROR, T0 + 29) == TB_DEBUG, "3rd in 30 s: debug");
    CHECK(tb_debugged_str(tb, p, T0 + 30) == 0, "debug window of protocol errors is 30 s");
    CHECK(tb_debugged_str(tb, "203.0.113.10", T0) == 0, "unknown address not debugged");
    tb_free(tb);
}

static void test_expiry_and_limit(void)
{
    struct tb_settings s = base_settings();
    s.block_limit = 2;
    tempblock *tb = make(&s);
    CHECK(tb_block_str(tb, "192.0.2.10", "spamtrap", T0) == TB_BLOCKED, "block a");
    CHECK(tb_block_str(tb, "192.0.2.11", "spamtrap", T0 + 100) == TB_BLOCKED, "block b");
    CHECK(tb_count_blocked(tb, T0 + 100) == 2, "2 blocked");
    CHECK(tb_block_str(tb, "192.0.2.12", "spamtrap", T0 + 100) == TB_REFUSED, "block_limit refuses c");
    CHECK(tb_blocked_str(tb, "192.0.2.12", T0 + 100) == 0, "c not blocked");
    CHECK(tb_block_str(tb, "192.0.2.10", "again", T0 + 150) == TB_BLOCKED, "re-blocking a blocked one at the limit works");
    CHECK(tb_blocked_str(tb, "192.0.2.10", T0 + 150) == 600, "and renews it");
    for (int i = 0; i < 5; i++)
        tb_event_str(tb, "192.0.2.13", TB_FAILED_LOGIN, T0 + 150);
    CHECK(tb_event_str(tb, "192.0.2.13", TB_FAILED_LOGIN, T0 + 150) == TB_REFUSED,
          "event crossing the threshold at the limit: TB_REFUSED");
    CHECK(tb_blocked_str(tb, "192.0.2.11", T0 + 699) == 1, "b: 1 s left at +599");
    CHECK(tb_blocked_str(tb, "192.0.2.11", T0 + 700) == 0, "b expired after block_time");
    CHECK(tb_count_blocked(tb, T0 + 700) == 1, "1 blocked after expiry");
    CHECK(tb_block_str(tb, "192.0.2.12", "spamtrap", T0 + 700) == TB_BLOCKED, "room again for c");
    CHECK(tb_count_blocked(tb, T0 + 700) == 2, "2 blocked");
    CHECK(tb_count_blocked(tb, T0 + 1300) == 0, "all expire by themselves");
    CHECK(tb_block_str(tb, "not-an-ip", "x", T0) == TB_REFUSED, "unparsable: TB_REFUSED");
    CHECK(tb_blocked_str(tb, "300.1.2.3", T0) == -1, "unparsable: -1");
    CHECK(tb_event_str(tb, "", TB_FAILED_LOGIN, T0) == TB_REFUSED, "empty: TB_REFUSED");

    s.block_time = 0;
    tb_configure(tb, &s);
    CHECK(tb_block_str(tb, "192.0.2.14", "x", T0 + 2000) == TB_REFUSED, "block_time 0: nothing is blocked");
    tb_free(tb);
}

static void test_unblockable(void)
{
    struct tb_settings s = base_settings();
    s.unblock_limit = 2;
    tempblock *tb = make(&s);
    const char *u = "192.0.2.20";
    CHECK(tb_make_unblockable_str(tb, u, T0) == 1, "login makes unblockable");
    CHECK(tb_unblockable_str(tb, u, T0) == 3600, "for unblock_time");
    int blocked = 0;
    for (int i = 0; i < 50; i++)
        blocked |= tb_event_str(tb, u, TB_FAILED_LOGIN, T0 + 1) == TB_BLOCKED;
    CHECK(!blocked && tb_blocked_str(tb, u, T0 + 1) == 0, "events never block an unblockable address");
    CHECK(tb_event_str(tb, u, TB_FAILED_LOGIN, T0 + 1) == TB_REFUSED, "crossing: TB_REFUSED");
    CHECK(tb_block_str(tb, u, "spamtrap", T0 + 1) == TB_REFUSED, "tb_block refused");
    CHECK(tb_unblockable_str(tb, u, T0 + 3599) == 1, "1 s left at +3599");
    CHECK(tb_unblockable_str(tb, u, T0 + 3600) == 0, "expired at +3600");
    CHECK(tb_block_str(tb, u, "spamtrap", T0 + 3600) == TB_BLOCKED, "blockable again");

    CHECK(tb_make_unblockable_str(tb, "192.0.2.21", T0 + 3600) == 1, "unblockable 1 of 2");
    CHECK(tb_make_unblockable_str(tb, "192.0.2.22", T0 + 3600) == 1, "unblockable 2 of 2");
    CHECK(tb_make_unblockable_str(tb, "192.0.2.23", T0 + 3610) == 0, "unblock_limit refuses the next");
    CHECK(tb_unblockable_str(tb, "192.0.2.23", T0 + 3610) == 0, "not unblockable");
    CHECK(tb_make_unblockable_str(tb, "192.0.2.21", T0 + 3610) == 1, "renewing an existing one works at the limit");
    CHECK(tb_unblockable_str(tb, "192.0.2.21", T0 + 3610) == 3600, "renewed");
    CHECK(tb_count_unblockable(tb, T0 + 3610) == 2, "2 unblockable");
    CHECK(tb_make_unblockable_str(tb, "192.0.2.23", T0 + 7200) == 1, "room once 192.0.2.22 expires");

    /* limit full: a login still lifts the block */
    const char *c = "2001:db8::21";
    tb_block_str(tb, c, "spamtrap", T0 + 7201);
    CHECK(tb_make_unblockable_str(tb, c, T0 + 7202) == 0, "limit full: not unblockable");
    CHECK(tb_blocked_str(tb, c, T0 + 7202) == 0, "but the block is lifted");
    tb_free(tb);

    /* a successful login lifts an existing block */
    tb = make(&s);
    const char *b = "2001:db8::20";
    tb_block_str(tb, b, "spamtrap", T0);
    CHECK(tb_blocked_str(tb, b, T0) == 600, "blocked");
    CHECK(tb_make_unblockable_str(tb, b, T0 + 1) == 1, "login");
    CHECK(tb_blocked_str(tb, b, T0 + 1) == 0, "block lifted by the login");
    CHECK(tb_unblockable_str(tb, b, T0 + 1) == 3600, "and unblockable");
    CHECK(tb_count_blocked(tb, T0 + 1) == 0, "blocked count updated");
    CHECK(tb_block_str(tb, b, "spamtrap", T0 + 2) == TB_REFUSED, "cannot be re-blocked");
    tb_free(tb);
}

static void test_unblock(void)
{
    struct tb_settings s = base_settings();
    tempblock *tb = make(&s);
    const char *ip = "192.0.2.30";
    for (int i = 0; i < 6; i++)
        tb_event_str(tb, ip, TB_FAILED_LOGIN, T0);
    CHECK(tb_blocked_str(tb, ip, T0) > 0, "blocked by events");
    CHECK(tb_unblock_str(tb, ip) == 1, "tb_unblock removes it");
    CHECK(tb_blocked_str(tb, ip, T0) == 0, "no longer blocked");
    CHECK(tb_unblock_str(tb, ip) == 0, "second tb_unblock: 0");
    CHECK(tb_event_str(tb, ip, TB_FAILED_LOGIN, T0 + 1) == TB_NONE, "counters forgotten: next event does not re-block");
    CHECK(tb_unblock_str(tb, "192.0.2.31") == 0, "unknown address: 0");
    CHECK(tb_unblock_str(tb, "bogus") == -1, "unparsable: -1");
    tb_block_str(tb, "192.0.2.32", "x", T0);
    tb_blocked_str(tb, "192.0.2.33", T0 + 700);     /* the clock moves on */
    CHECK(tb_unblock_str(tb, "192.0.2.32") == 0, "an expired block is not 'removed'");
    CHECK(tb_count_blocked(tb, T0 + 700) == 0, "count 0");
    tb_free(tb);
}

/* The 16-byte key of a textual IPv4 address (IPv4-mapped IPv6). */
static void v4_key(const char *ip, unsigned char key[16])
{
    memset(key, 0, 10);
    key[10] = key[11] = 0xff;
    inet_pton(AF_INET, ip, key + 12);
}

/* Trusted (DESIGN §6 status "trusted"): a Relay-enabled login from the
 * address within temp_unblock.time. */
static void test_trusted(void)
{
    struct tb_settings s = base_settings();
    tempblock *tb = make(&s);
    unsigned char k[16];
    const char *t = "192.0.2.80";
    v4_key(t, k);
    CHECK(tb_trusted_str(tb, t, T0) == 0, "unknown address: not trusted");
    tb_block_str(tb, t, "spamtrap", T0);
    CHECK(tb_make_trusted(tb, k, T0 + 1) == 1, "Relay-enabled login makes trusted");
    CHECK(tb_trusted_str(tb, t, T0 + 1) == 3600, "trusted for unblock_time (%d)", tb_trusted_str(tb, t, T0 + 1));
    CHECK(tb_trusted(tb, k, T0 + 1) == 3600, "raw key: the same");
    CHECK(tb_trusted_str(tb, "::ffff:192.0.2.80", T0 + 1) == 3600, "v4-mapped form is the same address");
    CHECK(tb_unblockable_str(tb, t, T0 + 1) == 3600, "and unblockable");
    CHECK(tb_blocked_str(tb, t, T0 + 1) == 0, "the login lifted the block");
    CHECK(tb_block_str(tb, t, "spamtrap", T0 + 2) == TB_REFUSED, "a trusted address cannot be blocked");
    CHECK(tb_trusted_str(tb, t, T0 + 3600) == 1, "1 s left 3599 s after the login");
    CHECK(tb_trusted_str(tb, t, T0 + 3601) == 0, "expired unblock_time after the login");
    CHECK(tb_unblockable_str(tb, t, T0 + 3601) == 0, "unblockable expired with it");
    CHECK(tb_make_unblockable(tb, k, T0 + 4000) == 1 && tb_trusted_str(tb, t, T0 + 4000) == 0,
          "a later login without Relay does not bring the trust back");
    CHECK(tb_make_trusted(tb, k, T0 + 5000) == 1 && tb_trusted_str(tb, t, T0 + 5000) == 3600,
          "a later Relay-enabled login does");

    /* a login without Relay: unblockable, not trusted; on a trusted address
     * it renews the unblockable mark but not the trust */
    const char *n = "192.0.2.81";
    v4_key(n, k);
    CHECK(tb_make_unblockable(tb, k, T0) == 1, "login without Relay");
    CHECK(tb_trusted_str(tb, n, T0) == 0 && tb_unblockable_str(tb, n, T0) == 3600, "unblockable, not trusted");
    CHECK(tb_make_trusted(tb, k, T0 + 10) == 1 && tb_trusted_str(tb, n, T0 + 10) == 3600, "then a Relay-enabled login");
    CHECK(tb_make_unblockable(tb, k, T0 + 1000) == 1, "then one without Relay");
    CHECK(tb_unblockable_str(tb, n, T0 + 1000) == 3600, "renews the unblockable mark");
    CHECK(tb_trusted_str(tb, n, T0 + 1000) == 2610, "but not the trust (%d)", tb_trusted_str(tb, n, T0 + 1000));
    CHECK(tb_trusted_str(tb, n, T0 + 3610) == 0 && tb_unblockable_str(tb, n, T0 + 3610) == 990,
          "trusted until unblock_time after the Relay-enabled login, unblockable longer");
    CHECK(tb_make_trusted(tb, k, T0 + 3700) == 1 && tb_trusted_str(tb, n, T0 + 3700) == 3600,
          "a Relay-enabled login renews the trust");

    /* tb_unblock (moatctl unblock) lifts blocks and counters only: it does
     * not end the trust, which rides on the unblockable mark */
    const char *u = "192.0.2.82";
    v4_key(u, k);
    tb_make_trusted(tb, k, T0);
    CHECK(tb_unblock_str(tb, u) == 0, "tb_unblock on a trusted address: nothing was blocked");
    CHECK(tb_trusted_str(tb, u, T0 + 1) == 3599 && tb_unblockable_str(tb, u, T0 + 1) == 3599,
          "still trusted and unblockable");

    /* kept across a reload, with its old expiry */
    s.unblock_time = 10;
    tb_configure(tb, &s);
    CHECK(tb_trusted_str(tb, u, T0 + 100) == 3500, "trust kept (its old expiry) across reload");
    CHECK(tb_make_unblockable(tb, k, T0 + 150) == 1 && tb_unblockable_str(tb, u, T0 + 150) == 10,
          "a login without Relay renews the unblockable mark with the new, shorter time");
    CHECK(tb_trusted_str(tb, u, T0 + 159) == 1 && tb_trusted_str(tb, u, T0 + 160) == 0,
          "the trust ends with the unblockable mark");
    CHECK(tb_make_trusted(tb, k, T0 + 200) == 1 && tb_trusted_str(tb, u, T0 + 200) == 10,
          "renewed with the new unblock_time");
    CHECK(tb_trusted_str(tb, u, T0 + 210) == 0, "and expires by it");
    CHECK(tb_trusted_str(tb, "bogus", T0) == -1, "unparsable: -1");
    tb_free(tb);

    /* no room for another unblockable address, or unblocking off: no trust */
    s = base_settings();
    s.unblock_limit = 1;
    tb = make(&s);
    v4_key("192.0.2.83", k);
    CHECK(tb_make_trusted(tb, k, T0) == 1, "trusted 1 of 1");
    v4_key("192.0.2.84", k);
    CHECK(tb_make_trusted(tb, k, T0) == 0, "unblock_limit reached: tb_make_trusted refuses");
    CHECK(tb_trusted_str(tb, "192.0.2.84", T0) == 0, "not trusted");
    CHECK(tb_make_trusted(tb, k, T0 + 3600) == 1 && tb_trusted_str(tb, "192.0.2.84", T0 + 3600) == 3600,
          "room once the first one expires");
    CHECK(tb_trusted_str(tb, "192.0.2.83", T0 + 3600) == 0, "the first one is no longer trusted");
    s.unblock_time = 0;
    tb_configure(tb, &s);
    v4_key("192.0.2.85", k);
    CHECK(tb_make_trusted(tb, k, T0 + 4000) == 0 && tb_trusted_str(tb, "192.0.2.85", T0 + 4000) == 0,
          "unblock_time 0: nothing is trusted");
    tb_free(tb);
}

struct seen {
    int n, blocked4, unblock6, other;
};

static void collect(void *arg, const char *ip, const char *kind, int left, const char *reason)
{
    struct seen *s = arg;
    s->n++;
    if (!strcmp(ip, "192.0.2.40") && !strcmp(kind, "blocked") && left == 500 && !strcmp(reason, "spamtrap hit"))
        s->blocked4++;
    else if (!strcmp(ip, "2001:db8::40") && !strcmp(kind, "unblockable") && left == 3500 && !strcmp(reason, ""))
        s->unblock6++;
    else {
        s->other++;
        printf("# unexpected: %s %s %d %s\n", ip, kind, left, reason);
    }
}

static void test_foreach(void)
{
    struct tb_settings s = base_settings();
    tempblock *tb = make(&s);
    tb_block_str(tb, "192.0.2.40", "spamtrap hit", T0);
    tb_make_unblockable_str(tb, "2001:db8::40", T0);
    tb_block_str(tb, "192.0.2.41", "old", T0 - 1000);   /* already expired */
    tb_event_str(tb, "192.0.2.42", TB_FAILED_LOGIN, T0); /* counted only */
    struct seen seen = {0, 0, 0, 0};
    tb_foreach(tb, T0 + 100, collect, &seen);
    CHECK(seen.n == 2 && seen.blocked4 == 1 && seen.unblock6 == 1 && seen.other == 0,
          "tb_foreach lists the block and the unblockable with seconds left (%d %d %d %d)",
          seen.n, seen.blocked4, seen.unblock6, seen.other);

    /* long reasons are cut, not overflowed */
    char longr[200];
    memset(longr, 'r', sizeof longr - 1);
    longr[sizeof longr - 1] = '\0';
    tb_block_str(tb, "192.0.2.43", longr, T0);
    tb_block_str(tb, "192.0.2.44", NULL, T0);
    CHECK(tb_blocked_str(tb, "192.0.2.43", T0) == 600, "long reason accepted");
    tb_free(tb);
}

static void test_addresses(void)
{
    struct tb_settings s = base_settings();
    tempblock *tb = make(&s);
    tb_block_str(tb, "192.0.2.7", "x", T0);
    CHECK(tb_blocked_str(tb, "192.0.2.7", T0) == 600, "IPv4 blocked");
    CHECK(tb_blocked_str(tb, "::ffff:192.0.2.7", T0) == 600, "v4-mapped form is the same address");
    CHECK(tb_blocked_str(tb, "::FFFF:c000:207", T0) == 600, "hex v4-mapped form too");
    CHECK(tb_blocked_str(tb, "[192.0.2.7]", T0) == 600, "bracketed");
    CHECK(tb_blocked_str(tb, "::192.0.2.7", T0) == 0, "v4-compatible ::a.b.c.d is a different address");
    CHECK(tb_blocked_str(tb, "192.0.2.8", T0) == 0, "neighbour not blocked");
    tb_block_str(tb, "2001:db8::7", "x", T0);
    CHECK(tb_blocked_str(tb, "2001:DB8:0:0::7", T0) == 600, "IPv6 in another spelling");
    CHECK(tb_blocked_str(tb, "[2001:db8::7]", T0) == 600, "bracketed IPv6");
    CHECK(tb_blocked_str(tb, "2001:db8::8", T0) == 0, "other IPv6 not blocked");

    unsigned char key[16];
    memset(key, 0, 10);
    key[10] = key[11] = 0xff;
    inet_pton(AF_INET, "192.0.2.7", key + 12);
    CHECK(tb_blocked(tb, key, T0) == 600, "raw v4-mapped key matches");
    CHECK(tb_unblock(tb, key) == 1, "raw key unblock");
    CHECK(tb_blocked_str(tb, "192.0.2.7", T0) == 0, "gone");
    tb_free(tb);
}

static void test_reconfigure(void)
{
    struct tb_settings s = base_settings();
    tempblock *tb = make(&s);
    tb_block_str(tb, "192.0.2.50", "x", T0);
    tb_make_unblockable_str(tb, "192.0.2.51", T0);
    for (int i = 0; i < 4; i++)
        tb_event_str(tb, "192.0.2.52", TB_FAILED_LOGIN, T0);
    s.login_block_count = 3;
    s.block_time = 60;
    s.unblock_time = 10;
    tb_configure(tb, &s);
    CHECK(tb_blocked_str(tb, "192.0.2.50", T0 + 1) == 599, "block kept (its old expiry) across reload");
    CHECK(tb_unblockable_str(tb, "192.0.2.51", T0 + 1) == 3599, "unblockable kept");
    CHECK(tb_event_str(tb, "192.0.2.52", TB_FAILED_LOGIN, T0 + 1) == TB_BLOCKED,
          "counters kept: 5th event > new count 3 blocks");
    CHECK(tb_blocked_str(tb, "192.0.2.52", T0 + 1) == 60, "with the new block_time");
    tb_free(tb);
}

static void test_rule_off(void)
{
    struct tb_settings s = base_settings();
    s.login_block_count = 0;
    tempblock *tb = make(&s);
    int ok = 1;
    for (int i = 0; i < 10000; i++)
        ok &= tb_event_str(tb, "192.0.2.60", TB_FAILED_LOGIN, T0) == TB_NONE;
    CHECK(ok && tb_blocked_str(tb, "192.0.2.60", T0) == 0, "login rule off: never blocked");
    CHECK(tb_tracked(tb) == 0, "and nothing tracked for it");
    s.login_block_count = 5;
    s.login_block_window = 0;
    tb_configure(tb, &s);
    for (int i = 0; i < 100; i++)
        tb_event_str(tb, "192.0.2.60", TB_FAILED_LOGIN, T0);
    CHECK(tb_blocked_str(tb, "192.0.2.60", T0) == 0, "window 0: rule off");
    ok = 1;
    for (int i = 0; i < 10; i++)
        ok &= tb_event_str(tb, "192.0.2.60", TB_PROTOCOL_ERROR, T0) == TB_NONE;
    CHECK(ok && tb_event_str(tb, "192.0.2.60", TB_PROTOCOL_ERROR, T0) == TB_BLOCKED,
          "the other rule still works");
    tb_free(tb);
}

static void key_of(unsigned i, unsigned char key[16])
{
    static const unsigned char pre[8] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0};
    memcpy(key, pre, 8);
    memset(key + 8, 0, 4);
    key[12] = (unsigned char)(i >> 24);
    key[13] = (unsigned char)(i >> 16);
    key[14] = (unsigned char)(i >> 8);
    key[15] = (unsigned char)i;
}

static void test_flood(void)
{
    struct tb_settings s = base_settings();
    s.block_limit = 1000;
    s.unblock_limit = 1000;
    tempblock *tb = make(&s);
    size_t cap = tb_capacity(tb);
    CHECK(cap == TB_TRACK_MAX + 2000, "capacity = TB_TRACK_MAX + limits (%zu)", cap);
    tb_block_str(tb, "192.0.2.70", "spamtrap", T0);
    tb_make_unblockable_str(tb, "192.0.2.71", T0);
    /* a slow attacker near the threshold before the flood */
    for (int i = 0; i < 5; i++)
        tb_event_str(tb, "192.0.2.72", TB_FAILED_LOGIN, T0);

    unsigned char key[16];
    size_t maxseen = 0;
    int bad = 0;
    for (unsigned i = 0; i < 1000000; i++) {   /* all in one second: none idle */
        key_of(i, key);
        if (tb_event(tb, key, TB_FAILED_LOGIN, T0 + 1) != TB_NONE)
            bad++;
        if (tb_tracked(tb) > maxseen)
            maxseen = tb_tracked(tb);
    }
    CHECK(!bad, "one event each: no block, no debug");
    CHECK(maxseen <= cap, "tracked addresses stay under the cap (max %zu, cap %zu)", maxseen, cap);
    CHECK(tb_blocked_str(tb, "192.0.2.70", T0 + 1) > 0, "a block survives the flood");
    CHECK(tb_unblockable_str(tb, "192.0.2.71", T0 + 1) > 0, "an unblockable address survives the flood");
    key_of(999999, key);
    CHECK(tb_event(tb, key, TB_FAILED_LOGIN, T0 + 1) == TB_NONE, "recent address still counted");
    for (int i = 0; i < 3; i++)   /* the flood's one + 1 + 3 = 5 */
        tb_event(tb, key, TB_FAILED_LOGIN, T0 + 1);
    CHECK(tb_event(tb, key, TB_FAILED_LOGIN, T0 + 1) == TB_BLOCKED, "and can be blocked after the flood");

    /* blocks at the limit cannot be evicted; the table still works */
    int blocked = 0;
    for (unsigned i = 0; i < 2000; i++) {
        key_of(2000000 + i, key);
        blocked += tb_block(tb, key, "flood", T0 + 2) == TB_BLOCKED;
    }
    CHECK(blocked == 1000 - 2, "block_limit caps explicit blocks during a flood (%d)", blocked);
    CHECK(tb_tracked(tb) <= cap, "still under the cap");

    /* time moving on: idle entries are freed lazily */
    tempblock *tb2 = make(&s);
    maxseen = 0;
    for (unsigned i = 0; i < 1000000; i++) {   /* 1000 new addresses a second, 60 s window */
        key_of(i, key);
        tb_event(tb2, key, TB_PROTOCOL_ERROR, T0 + (time_t)(i / 1000));
        if (tb_tracked(tb2) > maxseen)
            maxseen = tb_tracked(tb2);
    }
    CHECK(maxseen <= 62000, "idle addresses expire lazily: at most ~60 s worth tracked (max %zu)", maxseen);
    tb_free(tb2);
    tb_free(tb);
}

int main(void)
{
    test_thresholds();
    test_large_count();
    test_debug();
    test_expiry_and_limit();
    test_unblockable();
    test_unblock();
    test_trusted();
    test_foreach();
    test_addresses();
    test_reconfigure();
    test_rule_off();
    test_flood();
    return check_done();
}
