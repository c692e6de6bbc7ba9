/* address.h - RFC 5321 reverse-path / forward-path parsing for MAIL and RCPT.
 *
 * Input is hostile: everything is bounded (path 256, local part 64, domain
 * 255 octets) and the result says exactly what was found, including a source
 * route, so that the policies (not this parser) decide what to do with it. */
#ifndef MOAT_ADDRESS_H
#define MOAT_ADDRESS_H

#include <stddef.h>

#define PATH_MAX_LEN 256
#define LOCAL_MAX_LEN 64
#define DOMAIN_MAX_LEN 255

struct smtp_path {
    char raw[PATH_MAX_LEN + 1];       /* between < and >, as sent */
    char local[PATH_MAX_LEN + 1];     /* local part as sent (quotes kept) */
    char domain[DOMAIN_MAX_LEN + 1];  /* domain or [literal] as sent */
    int null;                         /* <> */
    int routed;                       /* had a source route <@h1,@h2:...> */
    int has_8bit;                     /* non-ASCII (needs SMTPUTF8) */
    int literal;                      /* domain is an address literal */
};

enum path_error {
    PATH_OK = 0,
    PATH_SYNTAX,        /* 501 5.1.7 / 5.1.3 */
    PATH_TOO_LONG,      /* 501 5.1.7 (RFC 5321 4.5.3.1) */
    PATH_BAD_UTF8,      /* 501 5.6.7 */
};

/* Parse "<...>" at the start of s; *rest points after '>'.  Requires the
 * angle brackets but tolerates spaces before '<'. */
enum path_error parse_path(const char *s, struct smtp_path *p, const char **rest);

/* Is s valid UTF-8 (no overlongs, no surrogates)? */
int utf8_valid(const char *s, size_t len);

#endif
