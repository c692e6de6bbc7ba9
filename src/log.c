/* log.c - key=value event lines on stderr (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static enum log_level min_level = LOG_INFO;
static const char *level_names[] = { "debug", "info", "warn", "error" };

void log_set_level(enum log_level lvl) { min_level = lvl; }

static int needs_quotes(const char *v)
{
    if (*v == '\0')
        return 1;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            return 1;
    return 0;
}

size_t log_append(char *buf, size_t len, size_t cap, const char *key, const char *val)
{
    /* Keep one byte for the newline and the terminator. */
    if (len + 4 >= cap)
        return len;
    int n = snprintf(buf + len, cap - len, "%s%s=", len ? " " : "", key);
    if (n < 0 || (size_t)n >= cap - len)
        return cap - 2;
    len += (size_t)n;
    int quote = needs_quotes(val);
    if (quote && len < cap - 2)
        buf[len++] = '"';
    for (const unsigned char *p = (const unsigned char *)val; *p && len < cap - 6; p++) {
        if (*p == '"' || *p == '\\') {
            buf[len++] = '\\';
            buf[len++] = (char)*p;
        } else if (*p < ' ' || *p == 0x7f) {
            len += (size_t)snprintf(buf + len, cap - len, "\\x%02x", *p);
        } else {
            buf[len++] = (char)*p;
        }
    }
    if (quote && len < cap - 2)
        buf[len++] = '"';
    buf[len] = '\0';
    return len;
}

void log_kv(enum log_level lvl, const char *event, ...)
{
    if (lvl < min_level)
        return;
    char line[LOG_LINE_MAX];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof ts - tl, ".%03dZ", (int)(tv.tv_usec / 1000));

    size_t len = 0;
    len = log_append(line, len, sizeof line, "ts", ts);
    len = log_append(line, len, sizeof line, "level", level_names[lvl]);
    len = log_append(line, len, sizeof line, "event", event);
    va_list ap;
    va_start(ap, event);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (v)
            len = log_append(line, len, sizeof line, k, v);
    }
    va_end(ap);
    line[len++] = '\n';
    /* One write per line so concurrent writers (spool threads) never interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
