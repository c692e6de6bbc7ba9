/* spool.h - durable message storage.
 *
 * A message is written to spool_dir/tmp/, fsync'd, and renamed into
 * spool_dir/new/ as ID.eml (message) and ID.env (envelope JSON), the
 * directory fsync'd, all on writer threads; the loop is told when both files
 * are durable and only then does the client hear 250.  ID.env is renamed
 * last: a reader that sees ID.env can rely on ID.eml being complete. */
#ifndef MOAT_SPOOL_H
#define MOAT_SPOOL_H

#include <stddef.h>

struct event_base;
struct evbuffer;
struct spool;
struct spool_job;

/* err = 0 on success, an errno value otherwise; latency_ms = submit..durable. */
typedef void (*spool_done_cb)(void *arg, int err, double latency_ms);

/* use_syncfs: make each batch durable with one syncfs(2) of the spool's
 * file system instead of an fsync per file (spool_sync = "syncfs").
 * dir NULL: a dry spool (moat --replay) that completes every job at once
 * and writes nothing. */
struct spool *spool_open(struct event_base *base, const char *dir, int threads, int use_syncfs,
                         char *err, size_t errlen);
/* Finish every queued job, then stop the threads. */
void spool_close(struct spool *sp);

/* Make a new queue id (unique across restarts: time + counter). */
void spool_new_id(char id[32]);

/* Takes ownership of msg and env.  cb runs on the loop thread. */
struct spool_job *spool_submit(struct spool *sp, const char *id, struct evbuffer *msg,
                               char *env, spool_done_cb cb, void *arg);
/* Bytes an unprivileged writer may still use on the spool's file system
 * (statvfs f_bavail), refreshed at most once a second: MAIL FROM asks on
 * every transaction and must stay cheap even on a busy or slow disk.
 * UINT64_MAX for a dry spool or when statvfs fails (never refuse on a guess). */
unsigned long long spool_free_bytes(struct spool *sp);

/* The error means the disk (or the user's quota) is full: 452 4.3.1. */
int spool_err_is_full(int err);

/* The waiter went away: the job still completes, the callback is not run. */
void spool_job_detach(struct spool_job *job);

#endif
