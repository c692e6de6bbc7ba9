/* privdrop.h - started as root, moat gives up root once its sockets are open.
 *
 * See README "Privileges".  The main thread keeps one capability,
 * CAP_NET_BIND_SERVICE, so that a reload can still bind a port below 1024;
 * every other thread has no capability at all. */
#ifndef MOAT_PRIVDROP_H
#define MOAT_PRIVDROP_H

#include <stddef.h>

struct config;

/* Called once, after every socket, key and spool directory is open and before
 * the event loop reads a byte from a client.  Not root: does nothing.
 * user = "root": stays root, logs a warning.  Otherwise chowns the spool and
 * the control socket to the user, then drops groups, gid and uid (real,
 * effective, saved; glibc applies them to every thread).  0, or -1 with err. */
int privdrop_apply(const struct config *c, char *err, size_t errlen);

#endif
