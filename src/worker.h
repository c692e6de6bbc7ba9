/* worker.h - run CPU-heavy jobs (password hashing) off the event loop.
 *
 * work(arg) runs on a pool thread; done(arg) then runs on the loop thread.
 * A job whose requester went away is cancelled with worker_cancel: work may
 * still run, done will not. */
#ifndef MOAT_WORKER_H
#define MOAT_WORKER_H

struct event_base;
struct worker_job;

int worker_init(struct event_base *base, int threads);
void worker_shutdown(void);
struct worker_job *worker_submit(void (*work)(void *), void (*done)(void *), void *arg);
void worker_cancel(struct worker_job *job);

#endif
