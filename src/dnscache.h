/* dnscache.h - a bounded, TTL-honouring cache of DNS answers (DESIGN.md §13).
 *
 * Keys are (name, type), the name compared case-insensitively.  A positive
 * entry lives for the smallest TTL of its answer's records, a negative one
 * (NXDOMAIN, NODATA) for min(SOA TTL, SOA MINIMUM) of the authority section
 * (RFC 2308 §5), and not at all when the reply had no SOA (§5 again);
 * both capped at max_ttl.  SERVFAIL, timeouts and local errors are never
 * stored: they describe the path to the server, not the data.  When full,
 * the least recently used entry goes.
 *
 * Single-threaded, like dns: one owner loop.  The only cross-thread entry
 * point is dnscache_request_flush(), which a control thread may call on a
 * cache another loop owns. */
#ifndef MOAT_DNSCACHE_H
#define MOAT_DNSCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "dns.h"

typedef struct dnscache dnscache;

/* An answer bigger than this (text plus per-record overhead) is not kept,
 * so a full cache holds at most about cache_size * 4 KB whatever the zones
 * it met put in their TXT records. */
#define DNSCACHE_MAX_ENTRY_BYTES 4096

/* max_entries 0 means "no cache": dnscache_new returns NULL, and every
 * function below accepts NULL as an empty, disabled cache. */
dnscache *dnscache_new(size_t max_entries, unsigned max_ttl);
void dnscache_free(dnscache *c);

/* 1 and a fresh copy of the answer in *ans (NULL unless DNS_OK; the caller
 * frees it like dns.c frees answers) on a fresh hit, 0 on a miss. */
int dnscache_get(dnscache *c, const char *name, enum dns_type type, int *status, dns_answer **ans);

/* Stores a copy.  status must be DNS_OK (ans non-NULL), DNS_NXDOMAIN or
 * DNS_NODATA; anything else, and ttl 0, is ignored. */
void dnscache_put(dnscache *c, const char *name, enum dns_type type, int status,
                  const dns_answer *ans, unsigned ttl);

void dnscache_flush(dnscache *c);
/* Safe from any thread: the owner flushes before its next get or put. */
void dnscache_request_flush(dnscache *c);

/* The TTL to cache a raw reply for: positive = min over answer records,
 * negative = RFC 2308.  The reply is untrusted; a malformed one gives 0
 * (not cached). */
unsigned dnscache_reply_ttl(const unsigned char *buf, int len, int negative);

/* hits: answered from the cache; misses: had to ask (a question joined to
 * one already in flight counts in joined, not misses). */
struct dnscache_stats { unsigned long hits, misses, joined, entries; };
void dnscache_count_miss(dnscache *c);
void dnscache_count_join(dnscache *c);
void dnscache_get_stats(const dnscache *c, struct dnscache_stats *out);

/* The key's hash (FNV-1a of the lower-cased name, then the type); dns.c
 * files its in-flight questions under the same one. */
uint32_t dnscache_key_hash(const char *name, enum dns_type type);

/* Frees an answer built by dns.c or copied by this module. */
void dnscache_answer_free(dns_answer *a);
/* A deep copy, or NULL when memory is short. */
dns_answer *dnscache_copy_answer(const dns_answer *a);

#endif
