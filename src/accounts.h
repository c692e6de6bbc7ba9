/* accounts.h - the accounts table (DESIGN §4):
 *   address  hash  [roaming=no] [relay=no]
 * hash in crypt(3) form ($y$, $6$, $2b$, ...); services not named default to
 * the domain's setting (domains.X.roaming / relay), which defaults to yes. */
#ifndef MOAT_ACCOUNTS_H
#define MOAT_ACCOUNTS_H

#include <stddef.h>

struct config;

struct account {
    char *address;    /* lower case */
    char *hash;
    int roaming, relay;
};

struct accounts;

/* NULL with err = "file:line: problem" on a malformed table. */
struct accounts *accounts_load(const char *path, const struct config *c, char *err, size_t errlen);
void accounts_free(struct accounts *a);
const struct account *accounts_find(const struct accounts *a, const char *address);

/* crypt(3) check, constant-time compare; slow on purpose: call it off-loop. */
int accounts_check_password(const char *hash, const char *password);

#endif
