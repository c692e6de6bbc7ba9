/* sdnotify.h - systemd's readiness protocol over $NOTIFY_SOCKET (no libsystemd).
 *
 * One datagram per call, "KEY=value\n..." as sd_notify(3) describes.  Without
 * $NOTIFY_SOCKET every call does nothing. */
#ifndef MOAT_SDNOTIFY_H
#define MOAT_SDNOTIFY_H

/* Connect to $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
 * Called at start while still root: the connected socket keeps working after
 * the privilege drop.  Unsets the variable so Lua and children never see it. */
void sdnotify_open(void);

/* Send one message (printf format; fields separated by '\n').  Never blocks:
 * a full or absent receiver loses the message, it does not stall the loop. */
void sdnotify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "RELOADING=1" with MONOTONIC_USEC= (systemd's Type=notify-reload wants it). */
void sdnotify_reloading(void);

void sdnotify_close(void);

#endif
