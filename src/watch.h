/* watch.h - watch = true: reload when a loaded file changes (inotify).
 *
 * The directories holding the config, its tables, certificates, policies and
 * scripts are watched (editors replace files by renaming, so watching the
 * files themselves would lose track); events for those names are debounced
 * (WATCH_DEBOUNCE_MS after the last one) and trigger the same reload as
 * SIGHUP, with the same rollback on error. */
#ifndef MOAT_WATCH_H
#define MOAT_WATCH_H

struct runtime;

#define WATCH_DEBOUNCE_MS 300

/* (Re)build the watch set from a runtime's files; 0 or -1 (logged). */
int watch_update(struct runtime *rt);
void watch_stop(void);

#endif
