/* worker.c - a small thread pool whose results come back to the loop. */
#include "worker.h"

#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_WORKERS 16

struct worker_job {
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
    int cancelled;
    struct worker_job *next;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct worker_job *queue, **tail, *finished;
    pthread_t threads[MAX_WORKERS];
    int nthreads, stopping;
    int pipe_rd, pipe_wr;
    struct event *ev;
} W = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static void *run(void *unused)
{
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&W.mu);
        while (!W.queue && !W.stopping)
            pthread_cond_wait(&W.cv, &W.mu);
        struct worker_job *j = W.queue;
        if (!j) {
            pthread_mutex_unlock(&W.mu);
            return NULL;
        }
        W.queue = j->next;
        if (!W.queue)
            W.tail = &W.queue;
        pthread_mutex_unlock(&W.mu);
        j->work(j->arg);
        pthread_mutex_lock(&W.mu);
        j->next = W.finished;
        W.finished = j;
        pthread_mutex_unlock(&W.mu);
        char c = 1;
        ssize_t w = write(W.pipe_wr, &c, 1);
        (void)w;
    }
}

static void on_done(evutil_socket_t fd, short what, void *unused)
{
    (void)what;
    (void)unused;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&W.mu);
    struct worker_job *j = W.finished;
    W.finished = NULL;
    pthread_mutex_unlock(&W.mu);
    while (j) {
        struct worker_job *next = j->next;
        /* cancelled is only written on the loop thread, read here on it too */
        if (!j->cancelled)
            j->done(j->arg);
        free(j);
        j = next;
    }
}

int worker_init(struct event_base *base, int threads)
{
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
        return -1;
    W.pipe_rd = p[0];
    W.pipe_wr = p[1];
    W.tail = &W.queue;
    W.ev = event_new(base, W.pipe_rd, EV_READ | EV_PERSIST, on_done, NULL);
    event_add(W.ev, NULL);
    for (int i = 0; i < threads && i < MAX_WORKERS; i++)
        if (pthread_create(&W.threads[W.nthreads], NULL, run, NULL) == 0)
            W.nthreads++;
    return W.nthreads ? 0 : -1;
}

void worker_shutdown(void)
{
    if (!W.ev)
        return;
    pthread_mutex_lock(&W.mu);
    W.stopping = 1;
    pthread_cond_broadcast(&W.cv);
    pthread_mutex_unlock(&W.mu);
    for (int i = 0; i < W.nthreads; i++)
        pthread_join(W.threads[i], NULL);
    /* Free what finished; nobody waits for it any more. */
    for (struct worker_job *j = W.finished, *n; j; j = n) {
        n = j->next;
        free(j);
    }
    for (struct worker_job *j = W.queue, *n; j; j = n) {
        n = j->next;
        free(j);
    }
    event_free(W.ev);
    close(W.pipe_rd);
    close(W.pipe_wr);
    W.ev = NULL;
}

struct worker_job *worker_submit(void (*work)(void *), void (*done)(void *), void *arg)
{
    struct worker_job *j = calloc(1, sizeof *j);
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&W.mu);
    *W.tail = j;
    W.tail = &j->next;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
    return j;
}

void worker_cancel(struct worker_job *job) { job->cancelled = 1; }
