/* delivery.h - passing accepted mail on (delivery = { mode = "relay", ... }).
 *
 * The queue runner lives in a thread of its own with its own event loop and
 * DNS channel, off the SMTP loop's critical path.  It scans spool/new/,
 * sends each message to the route's "via" host, else to next_hop, else (for
 * remote recipients) to the domain's MX hosts, records every recipient's
 * progress durably in ID.env (rewritten via tmp + fsync + rename), retries
 * with exponential backoff, bounces (RFC 3464) to the Return-Path after
 * max_age or a 5xx (never to <>), and removes a message only when every
 * recipient is sent or bounced.  A crash between the next hop's 250 and the
 * .env update may send a recipient twice; it never loses one. */
#ifndef MOAT_DELIVERY_H
#define MOAT_DELIVERY_H

#include <stddef.h>

struct config;
struct evbuffer;

int delivery_start(const struct config *c, char *err, size_t errlen);
void delivery_stop(void);
void delivery_poke(void);                       /* a message was spooled */
void delivery_dns_flush(void);                  /* the runner's DNS cache, from any thread */
void delivery_flush(void);                      /* retry everything now */
void delivery_queue_text(struct evbuffer *out); /* moatctl queue */
int delivery_running(void);

#endif
