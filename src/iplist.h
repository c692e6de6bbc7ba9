/* iplist.h - IP address tables in the CommuniGate Pro format.
 *
 * One entry a line: an address (192.0.2.7, 2001:db8::7), a range
 * (192.0.2.10-192.0.2.99) or a CIDR block (192.0.2.0/24, 2001:db8::/32).
 * ';' starts a comment. In inline mode (config strings) commas separate
 * entries as well. Any malformed entry is an error: nothing is skipped.
 *
 * Every address is kept as a 16-byte key, IPv4 as IPv4-mapped IPv6
 * (::ffff:a.b.c.d), so one sorted array of intervals serves both families
 * and a v4-mapped peer address matches the IPv4 entries.
 *
 * Life cycle: iplist_new, one or more iplist_parse, iplist_finish (sorts and
 * merges), then lookups. After iplist_finish the list is never written, so
 * any number of threads may look up concurrently. */
#ifndef MOAT_IPLIST_H
#define MOAT_IPLIST_H

#include <stddef.h>

struct sockaddr;

typedef struct iplist iplist;

/* Longest line accepted, without its newline. */
#define IPLIST_LINE_MAX 1024

iplist *iplist_new(void);                 /* NULL when out of memory */
void iplist_free(iplist *l);              /* NULL is fine */

/* Parse text (file contents or an inline string). name is used in error
 * messages (a file path, or e.g. "conf/moat.conf:12 remote"); first_line is
 * the line number of the first line of text (1 for files). inline_mode
 * accepts commas as separators. Returns 0, or -1 with err filled
 * ("name:line: problem"); on error the entries of this call are dropped and
 * the list is as it was before the call. */
int iplist_parse(iplist *l, const char *text, size_t len, const char *name,
                 int first_line, int inline_mode, char *err, size_t errlen);

/* Reads the file, calls iplist_parse, finishes. */
int iplist_load_file(iplist *l, const char *path, char *err, size_t errlen);

/* Sort and merge; must be called before lookups. A list that was parsed
 * into again must be finished again; until then lookups find nothing. */
void iplist_finish(iplist *l);

/* Number of merged intervals after iplist_finish (raw entries before it). */
size_t iplist_count(const iplist *l);

/* 1 when the address is in the list, else 0. A NULL list contains nothing.
 * iplist_contains_sa handles AF_INET and AF_INET6 (v4-mapped included);
 * iplist_contains_str returns 0 for text that is not an IP address. */
int iplist_contains_sa(const iplist *l, const struct sockaddr *sa);
int iplist_contains_str(const iplist *l, const char *ip);

/* Parse a textual IPv4 or IPv6 address into the 16-byte key (network byte
 * order, IPv4 as ::ffff:a.b.c.d). Returns 0 ok, -1 bad. */
int ip_key_from_str(const char *ip, unsigned char key[16]);

/* 16-byte key of a socket address; returns 0 ok, -1 for other families. */
int ip_key_from_sa(const struct sockaddr *sa, unsigned char key[16]);

/* 1 when the 16-byte key is in the list, else 0. */
int iplist_contains_key(const iplist *l, const unsigned char key[16]);

#endif
