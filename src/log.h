/* log.h - one key=value line per event on stderr.
 *
 * Every line starts with ts= and event=; values containing spaces, quotes or
 * control bytes are quoted and escaped so a line is always one line, whatever
 * a hostile client put into a HELO or an address. */
#ifndef MOAT_LOG_H
#define MOAT_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERR };

void log_set_level(enum log_level lvl);

/* log_kv(LOG_INFO, "connect", "ip", ip, "port", port_str, NULL):
 * key/value pairs of strings, terminated by NULL; a NULL value is skipped. */
void log_kv(enum log_level lvl, const char *event, ...);

/* Append key=value (quoted as needed) to buf; used to build lines by hand. */
size_t log_append(char *buf, size_t len, size_t cap, const char *key, const char *val);

#endif
