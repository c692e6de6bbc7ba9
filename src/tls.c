/* tls.c - certificates and TLS sessions (see tls.h). */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "iplist.h"
#include "log.h"

struct tls_domain {
    char *name;
    SSL_CTX *ctx;
};

struct tls_ctx {
    struct tls_domain *domains;
    int n;
};

static void ssl_error(char *err, size_t errlen, const char *path, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s: %s%s%s", path, what, buf[0] ? ": " : "", buf);
    ERR_clear_error();
}

static SSL_CTX *find_ctx(const struct tls_ctx *t, const char *domain)
{
    for (int i = 0; t && domain && i < t->n; i++)
        if (strcasecmp(t->domains[i].name, domain) == 0)
            return t->domains[i].ctx;
    return NULL;
}

/* SNI: switch to the named domain's certificate if we have one; otherwise
 * keep the default chosen by local address (clients often send no or odd names). */
static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const struct tls_ctx *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *ctx = find_ctx(t, name);
    if (ctx)
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *load_domain(const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_error(err, errlen, cert, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ssl_error(err, errlen, cert, "cannot load the certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        ssl_error(err, errlen, key, "cannot load the private key (or it does not match the certificate)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_load(const struct config *c, struct tls_ctx **out, char *err, size_t errlen)
{
    *out = NULL;
    struct tls_ctx *t = calloc(1, sizeof *t);
    t->domains = calloc((size_t)c->ndomains + 1, sizeof *t->domains);
    for (int i = 0; i < c->ndomains; i++) {
        const struct domain_conf *d = &c->domains[i];
        if (!d->certificate && !d->private_key)
            continue;
        if (!d->certificate || !d->private_key) {
            snprintf(err, errlen, "%s: domain '%s' needs both certificate and private_key", c->path, d->name);
            tls_free(t);
            return -1;
        }
        SSL_CTX *ctx = load_domain(d->certificate, d->private_key, err, errlen);
        if (!ctx) {
            tls_free(t);
            return -1;
        }
        SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
        SSL_CTX_set_tlsext_servername_arg(ctx, t);
        t->domains[t->n].name = strdup(d->name);
        t->domains[t->n].ctx = ctx;
        t->n++;
    }
    if (t->n == 0) {
        tls_free(t);
        return 0;
    }
    *out = t;
    return 0;
}

void tls_free(struct tls_ctx *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n; i++) {
        SSL_CTX_free(t->domains[i].ctx);
        free(t->domains[i].name);
    }
    free(t->domains);
    free(t);
}

const char *tls_domain_for(const struct config *c, const char *local_ip)
{
    for (int i = 0; i < c->ndomains; i++)
        if (iplist_contains_str(c->domains[i].addresses, local_ip))
            return c->domains[i].name;
    return c->main_domain;
}

int tls_available(const struct tls_ctx *t, const struct config *c, const char *local_ip)
{
    return find_ctx(t, tls_domain_for(c, local_ip)) != NULL;
}

SSL *tls_new_ssl(struct tls_ctx *t, const struct config *c, const char *local_ip)
{
    SSL_CTX *ctx = find_ctx(t, tls_domain_for(c, local_ip));
    return ctx ? SSL_new(ctx) : NULL;
}

void tls_describe(SSL *ssl, char *buf, size_t len)
{
    snprintf(buf, len, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}
