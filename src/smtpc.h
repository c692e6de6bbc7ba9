/* smtpc.h - an asynchronous SMTP/LMTP client (for delivery and proxy mode).
 *
 * Commands are queued with a callback each; with PIPELINING they are all
 * written at once and the replies are matched in order (RFC 2920), without
 * it each waits for the previous reply.  After EHLO/LHLO, STARTTLS is used
 * when offered (opportunistic: the peer's certificate is not verified, as
 * MTAs do without DANE/MTA-STS).  Every reply is bounded (REPLY_MAX bytes,
 * 100 lines). */
#ifndef MOAT_SMTPC_H
#define MOAT_SMTPC_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct smtpc;

#define SMTPC_REPLY_MAX 512

/* code 0 = the connection failed or closed; text says why. */
typedef void (*smtpc_cb)(void *arg, int code, const char *text);

/* Connect to ip:port (a literal address), read the greeting, say EHLO (LHLO
 * with lmtp), STARTTLS when offered, EHLO again; then ready(arg, 250, ...)
 * or ready(arg, code, reply) on failure (the client is then dead: free it). */
struct smtpc *smtpc_open(struct event_base *base, const char *ip, int port, int lmtp,
                         const char *helo_name, int timeout_s, smtpc_cb ready, void *arg);
/* Queue a command line (without CRLF). */
void smtpc_cmd(struct smtpc *c, const char *line, smtpc_cb cb, void *arg);
/* Send the message (dot-stuffed here, CRLF . CRLF added) after a 354; cb
 * gets the final reply.  For LMTP, cb runs once per accepted recipient
 * (nreplies = how many). */
void smtpc_data(struct smtpc *c, struct evbuffer *msg, int nreplies, smtpc_cb cb, void *arg);
int smtpc_pipelining(const struct smtpc *c);
int smtpc_tls(const struct smtpc *c);
/* Send QUIT (if alive) and free once written; callbacks never run after this. */
void smtpc_close(struct smtpc *c);
/* Free now, without a word to the server (shutdown); NULL is fine. */
void smtpc_abort(struct smtpc *c);

#endif
