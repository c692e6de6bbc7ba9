/* smtp.h - one SMTP server session (RFC 5321) per accepted connection. */
#ifndef MOAT_SMTP_H
#define MOAT_SMTP_H

#include <sys/socket.h>

struct listener_sock;

/* Take over fd (already accepted and admitted by the listener). */
void smtp_session_new(int fd, const struct sockaddr *peer, socklen_t peerlen,
                      struct listener_sock *ls, const unsigned char key[16]);

/* moat --replay: told of every verdict a hook chain gives, before the
 * reply is sent (NULL in the daemon). */
extern void (*smtp_on_verdict)(const char *phase, const char *policy, const char *action, int code);

/* Sessions still open (for shutdown). */
int smtp_sessions_open(void);

/* Shutdown: end every session (no reply; the client will retry). */
void smtp_close_all(void);
/* SIGTERM: 421 to the sessions between commands; the others get theirs when
 * their current command is done.  The last session to go ends the loop. */
void smtp_drain(void);

#endif
