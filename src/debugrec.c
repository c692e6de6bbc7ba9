/* debugrec.c - replayable files of debugged sessions (see debugrec.h). */
#include "debugrec.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "worker.h"

int debugrec_off;

struct debugrec {
    char id[64];
    char *path;                  /* set by debugrec_finish */
    struct evbuffer *buf;
    int cut;                     /* DEBUGREC_MAX reached */
};

struct debugrec *debugrec_new(const char *id, const char *ip, int port, int tls, int mid_session)
{
    if (debugrec_off)
        return NULL;
    struct debugrec *r = calloc(1, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    r->buf = evbuffer_new();
    evbuffer_add_printf(r->buf, "# moat session %s of a debugged address (replay: moat -c CONFIG --replay FILE)\n", id);
    if (mid_session)
        evbuffer_add_printf(r->buf, "# debugging began during the session: the lines before it are not here\n");
    evbuffer_add_printf(r->buf, "# ip=%s port=%d tls=%s\n", ip, port, tls ? "on" : "off");
    return r;
}

/* One line with its prefix; control characters other than tab become '?'
 * so that a line is always one line of the file. */
static void add(struct debugrec *r, const char *prefix, const char *line, size_t len)
{
    if (!r || r->cut)
        return;
    if (evbuffer_get_length(r->buf) + len + 8 > DEBUGREC_MAX) {
        evbuffer_add_printf(r->buf, "# (cut: the record reached %u bytes)\n", DEBUGREC_MAX);
        r->cut = 1;
        return;
    }
    evbuffer_add(r->buf, prefix, strlen(prefix));
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c < 0x20 && c != '\t') {
            evbuffer_add(r->buf, line + start, i - start);
            evbuffer_add(r->buf, "?", 1);
            start = i + 1;
        }
    }
    evbuffer_add(r->buf, line + start, len - start);
    evbuffer_add(r->buf, "\n", 1);
}

void debugrec_client(struct debugrec *r, const char *line, size_t len) { add(r, "C: ", line, len); }
void debugrec_server(struct debugrec *r, const char *line) { add(r, "S: ", line, strlen(line)); }
void debugrec_comment(struct debugrec *r, const char *text) { add(r, "# ", text, strlen(text)); }

/* On a worker thread: write a temporary name, rename into place, free. */
static void write_rec(void *arg)
{
    struct debugrec *r = arg;
    char tmp[4200], dir[4200];
    snprintf(dir, sizeof dir, "%s", r->path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    if (mkdir(dir, 0750) != 0 && errno != EEXIST)
        log_kv(LOG_WARN, "debug_file_error", "file", dir, "error", strerror(errno), NULL);
    snprintf(tmp, sizeof tmp, "%s.tmp", r->path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    int ok = fd >= 0;
    while (ok && evbuffer_get_length(r->buf) > 0)
        if (evbuffer_write(r->buf, fd) < 0 && errno != EINTR)
            ok = 0;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (!ok || rename(tmp, r->path) != 0) {
        log_kv(LOG_WARN, "debug_file_error", "file", r->path, "error", strerror(errno), NULL);
        unlink(tmp);
    }
    evbuffer_free(r->buf);
    free(r->path);
    free(r);
}

/* Everything is done (and freed) by write_rec: it also runs for jobs queued
 * at shutdown, when done callbacks no longer do. */
static void nothing(void *arg) { (void)arg; }

void debugrec_finish(struct debugrec *r, const char *spool_dir)
{
    if (!r)
        return;
    size_t n = strlen(spool_dir) + strlen(r->id) + 16;
    r->path = malloc(n);
    snprintf(r->path, n, "%s/debug/%s.smtp", spool_dir, r->id);
    worker_submit(write_rec, nothing, r);
}
