/* control.h - the control socket moatctl talks to (UNIX socket, mode 0600).
 *
 * Protocol: the client sends one command line; moat answers with text and
 * closes.  The first line of the answer is "ok" or "error: ...". */
#ifndef MOAT_CONTROL_H
#define MOAT_CONTROL_H

#include <stddef.h>

int control_open(const char *path, char *err, size_t errlen);
void control_close(void);

/* Implemented by main.c: reload everything; 0 or -1 with err. */
int server_reload(char *err, size_t errlen);
/* moatctl promote: reload with the shadow lists as the live chain. */
int server_promote(char *err, size_t errlen);

#endif
