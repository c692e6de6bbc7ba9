/* tls.h - certificates and TLS sessions (seed 000 "Secure Sockets").
 *
 * Each configuration generation loads the certificates of its domains into
 * one SSL_CTX per domain.  The certificate for a connection is the one of
 * the domain named by SNI, else of the domain that owns the local address
 * (domains.X.addresses), else of the main domain.  TLS 1.2 or later only. */
#ifndef MOAT_TLS_H
#define MOAT_TLS_H

#include <stddef.h>

struct config;
typedef struct ssl_st SSL;
struct tls_ctx;

/* Load every configured certificate; NULL (no error) when none is set.
 * Errors name the file: "tls/x.pem: no such file". */
int tls_load(const struct config *c, struct tls_ctx **out, char *err, size_t errlen);
void tls_free(struct tls_ctx *t);

/* The domain a connection to local_ip belongs to, and whether it has a
 * certificate (STARTTLS is announced only then). */
const char *tls_domain_for(const struct config *c, const char *local_ip);
int tls_available(const struct tls_ctx *t, const struct config *c, const char *local_ip);

/* A server-side SSL for a connection to local_ip (SNI may switch the
 * certificate during the handshake); NULL when that domain has no
 * certificate. */
SSL *tls_new_ssl(struct tls_ctx *t, const struct config *c, const char *local_ip);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384" for logs and Received: headers. */
void tls_describe(SSL *ssl, char *buf, size_t len);

#endif
