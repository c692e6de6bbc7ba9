/* debugrec.h - sessions of debugged addresses as replayable files.
 *
 * A session of an address past a temp_block debug threshold is, besides the
 * verbatim log lines, written to spool_dir/debug/ID.smtp in the format of
 * moat --replay (DESIGN.md §12): "# ip=... port=... tls=..." header, "C: "
 * client lines (commands and DATA lines), "S: " replies.  The file is
 * written when the session ends, on a worker thread (no disk I/O on the
 * loop).  A record is bounded (DEBUGREC_MAX bytes; the rest is cut and
 * says so). */
#ifndef MOAT_DEBUGREC_H
#define MOAT_DEBUGREC_H

#include <stddef.h>

#define DEBUGREC_MAX (4u << 20)

struct debugrec;

/* moat --replay sets this: a replay writes nothing. */
extern int debugrec_off;

/* NULL when debugrec_off.  mid_session: debugging began after the start. */
struct debugrec *debugrec_new(const char *id, const char *ip, int port, int tls, int mid_session);
void debugrec_client(struct debugrec *r, const char *line, size_t len);
void debugrec_server(struct debugrec *r, const char *line);
void debugrec_comment(struct debugrec *r, const char *text);
/* Write spool_dir/debug/ID.smtp (off the loop) and free r. */
void debugrec_finish(struct debugrec *r, const char *spool_dir);

#endif
