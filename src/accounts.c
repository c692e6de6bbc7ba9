/* accounts.c - the accounts table and password checks. */
#include "accounts.h"

#include <crypt.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"

struct accounts {
    struct account *v;
    size_t n;
};

static int by_address(const void *a, const void *b)
{
    return strcmp(((const struct account *)a)->address, ((const struct account *)b)->address);
}

static int parse_flag(const char *tok, struct account *acc)
{
    if (strcasecmp(tok, "roaming=no") == 0) acc->roaming = 0;
    else if (strcasecmp(tok, "roaming=yes") == 0) acc->roaming = 1;
    else if (strcasecmp(tok, "relay=no") == 0) acc->relay = 0;
    else if (strcasecmp(tok, "relay=yes") == 0) acc->relay = 1;
    else return -1;
    return 0;
}

static int parse_line(char *line, struct account *acc, const struct config *c, const char **problem)
{
    char *save = NULL;
    char *addr = strtok_r(line, " \t", &save);
    char *hash = strtok_r(NULL, " \t", &save);
    if (!addr || !hash) {
        *problem = "expected 'address hash [roaming=no] [relay=no]'";
        return -1;
    }
    const char *at = strchr(addr, '@');
    if (!at || at == addr || !at[1]) {
        *problem = "the address must be user@domain";
        return -1;
    }
    if (hash[0] != '$') {
        *problem = "the hash must be in crypt(3) form ($y$..., $6$..., $2b$...)";
        return -1;
    }
    const struct domain_conf *d = config_domain(c, at + 1);
    acc->roaming = d ? d->roaming : 1;
    acc->relay = d ? d->relay : 1;
    for (char *tok; (tok = strtok_r(NULL, " \t", &save));)
        if (parse_flag(tok, acc) != 0) {
            *problem = "unknown option (roaming=yes|no, relay=yes|no)";
            return -1;
        }
    acc->address = strdup(addr);
    for (char *p = acc->address; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    acc->hash = strdup(hash);
    return 0;
}

struct accounts *accounts_load(const char *path, const struct config *c, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %m", path);
        return NULL;
    }
    struct accounts *a = calloc(1, sizeof *a);
    size_t cap = 0;
    char line[2048];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *semi = strchr(line, ';');
        if (semi)
            *semi = '\0';
        line[strcspn(line, "\r\n")] = '\0';
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            continue;
        if (a->n == cap) {
            cap = cap ? cap * 2 : 64;
            a->v = realloc(a->v, cap * sizeof *a->v);
        }
        const char *problem = NULL;
        if (parse_line(p, &a->v[a->n], c, &problem) != 0) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, problem);
            rc = -1;
        } else {
            a->n++;
        }
    }
    fclose(f);
    if (rc != 0) {
        accounts_free(a);
        return NULL;
    }
    qsort(a->v, a->n, sizeof *a->v, by_address);
    for (size_t i = 1; i < a->n; i++)
        if (strcmp(a->v[i - 1].address, a->v[i].address) == 0) {
            snprintf(err, errlen, "%s: account '%s' is listed twice", path, a->v[i].address);
            accounts_free(a);
            return NULL;
        }
    return a;
}

void accounts_free(struct accounts *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].address);
        free(a->v[i].hash);
    }
    free(a->v);
    free(a);
}

const struct account *accounts_find(const struct accounts *a, const char *address)
{
    if (!a || !address)
        return NULL;
    char key[512];
    size_t i = 0;
    for (; address[i] && i < sizeof key - 1; i++)
        key[i] = (char)tolower((unsigned char)address[i]);
    key[i] = '\0';
    struct account probe = { .address = key };
    return bsearch(&probe, a->v, a->n, sizeof *a->v, by_address);
}

int accounts_check_password(const char *hash, const char *password)
{
    struct crypt_data *cd = calloc(1, sizeof *cd);
    const char *out = crypt_r(password, hash, cd);
    int ok = 0;
    if (out && out[0] != '*') {
        size_t n = strlen(hash);
        if (strlen(out) == n) {
            unsigned char diff = 0;
            for (size_t i = 0; i < n; i++)
                diff |= (unsigned char)(out[i] ^ hash[i]);
            ok = diff == 0;
        }
    }
    free(cd);
    return ok;
}
