/* spool.c - durable message storage on writer threads (see spool.h).
 *
 * The event loop never touches the disk for a message: it hands the whole
 * message to a queue, writer threads write and fsync the two files in tmp/,
 * rename them into new/ and fsync new/ once for every batch they took (a
 * group commit: many messages, one directory fsync), then post the result
 * back through a pipe that the loop watches. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define BATCH_MAX 64
#define MAX_THREADS 64

struct spool_job {
    char id[32];
    struct evbuffer *msg;
    char *env;
    spool_done_cb cb;
    void *arg;
    int err;
    double start_ms;
    struct spool_job *next;
};

struct spool {
    char *dir;
    int tmp_fd, new_fd, lock_fd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct spool_job *queue, **queue_tail;
    struct spool_job *done;           /* finished, waiting for the loop */
    int stopping;
    int use_syncfs;                   /* spool_sync = "syncfs": one sync per batch */
    int nthreads;
    pthread_t threads[MAX_THREADS];
    int pipe_rd, pipe_wr;
    struct event *pipe_ev;
    unsigned long long free_bytes;    /* spool_free_bytes cache (loop thread only) */
    double free_at_ms;                /* when it was measured; 0 = never */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void spool_new_id(char id[32])
{
    static unsigned counter;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    /* Seconds, microseconds and a counter: sortable by arrival, unique across
     * restarts (time moves on) and within a process (the counter). */
    /* Atomic: the queue runner's thread makes ids (bounces) too. */
    unsigned n = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    snprintf(id, 32, "%09lX%05lX%04X", (unsigned long)tv.tv_sec, (unsigned long)tv.tv_usec, n & 0xffff);
}

/* ---- writer thread ---------------------------------------------------- */

static int write_all_buf(int fd, struct evbuffer *b)
{
    while (evbuffer_get_length(b) > 0)
        if (evbuffer_write(b, fd) < 0 && errno != EINTR)
            return errno;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write one file in tmp/ and fsync it. */
static int write_tmp(struct spool *sp, const char *name, struct evbuffer *b, const char *text)
{
    int fd = openat(sp->tmp_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno;
    int err = b ? write_all_buf(fd, b) : write_all(fd, text, strlen(text));
    if (!err && !sp->use_syncfs && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    if (err)
        unlinkat(sp->tmp_fd, name, 0);
    return err;
}

static void job_names(const struct spool_job *j, char eml[48], char env[48])
{
    snprintf(eml, 48, "%s.eml", j->id);
    snprintf(env, 48, "%s.env", j->id);
}

/* Write both files into tmp/ (and fsync each, unless the batch is synced
 * as a whole with syncfs). */
static int write_files(struct spool *sp, struct spool_job *j)
{
    char eml[48], env[48];
    job_names(j, eml, env);
    int err = write_tmp(sp, eml, j->msg, NULL);
    if (!err)
        err = write_tmp(sp, env, NULL, j->env);
    if (err) {
        unlinkat(sp->tmp_fd, eml, 0);
        unlinkat(sp->tmp_fd, env, 0);
    }
    return err;
}

/* Move a durable pair into new/: .eml first, so a reader that sees ID.env
 * finds a complete ID.eml. */
static int publish_files(struct spool *sp, struct spool_job *j)
{
    char eml[48], env[48];
    job_names(j, eml, env);
    int err = 0;
    if (renameat(sp->tmp_fd, eml, sp->new_fd, eml) != 0)
        err = errno;
    if (!err && renameat(sp->tmp_fd, env, sp->new_fd, env) != 0) {
        err = errno;
        unlinkat(sp->new_fd, eml, 0);
    }
    if (err) {
        unlinkat(sp->tmp_fd, eml, 0);
        unlinkat(sp->tmp_fd, env, 0);
    }
    return err;
}

static void fail_batch(struct spool *sp, struct spool_job *batch, int e)
{
    for (struct spool_job *j = batch; j; j = j->next)
        if (!j->err) {
            j->err = e;
            char eml[48], env[48];
            job_names(j, eml, env);
            unlinkat(sp->tmp_fd, eml, 0);
            unlinkat(sp->tmp_fd, env, 0);
        }
}

/* One batch: write everything, make it durable (an fsync per file, or one
 * syncfs for the whole batch), rename into new/, fsync new/ once. */
static void commit_batch(struct spool *sp, struct spool_job *batch)
{
    int ok = 0;
    if (!sp->dir)
        return;       /* a dry spool (--replay): every job "succeeds", nothing is written */
    for (struct spool_job *j = batch; j; j = j->next)
        if ((j->err = write_files(sp, j)) == 0)
            ok++;
    if (ok && sp->use_syncfs && syncfs(sp->tmp_fd) != 0) {
        fail_batch(sp, batch, errno);
        return;
    }
    ok = 0;
    for (struct spool_job *j = batch; j; j = j->next)
        if (!j->err && (j->err = publish_files(sp, j)) == 0)
            ok++;
    /* The renames are durable only once new/ itself is on disk. */
    if (ok && fsync(sp->new_fd) != 0) {
        int e = errno;
        for (struct spool_job *j = batch; j; j = j->next)
            if (!j->err)
                j->err = e;
    }
}

static void post_done(struct spool *sp, struct spool_job *batch)
{
    pthread_mutex_lock(&sp->mu);
    while (batch) {
        struct spool_job *next = batch->next;
        batch->next = sp->done;
        sp->done = batch;
        batch = next;
    }
    pthread_mutex_unlock(&sp->mu);
    char c = 1;
    ssize_t w = write(sp->pipe_wr, &c, 1);   /* full pipe = a wakeup is already pending */
    (void)w;
}

static void *writer(void *arg)
{
    struct spool *sp = arg;
    for (;;) {
        pthread_mutex_lock(&sp->mu);
        while (!sp->queue && !sp->stopping)
            pthread_cond_wait(&sp->cv, &sp->mu);
        if (!sp->queue && sp->stopping) {
            pthread_mutex_unlock(&sp->mu);
            return NULL;
        }
        struct spool_job *batch = NULL, **tail = &batch;
        for (int n = 0; sp->queue && n < BATCH_MAX; n++) {
            struct spool_job *j = sp->queue;
            sp->queue = j->next;
            j->next = NULL;
            *tail = j;
            tail = &j->next;
        }
        if (!sp->queue)
            sp->queue_tail = &sp->queue;
        pthread_mutex_unlock(&sp->mu);

        commit_batch(sp, batch);
        post_done(sp, batch);
    }
}

/* ---- loop side ------------------------------------------------------------- */

static void free_job(struct spool_job *j)
{
    if (j->msg)
        evbuffer_free(j->msg);
    free(j->env);
    free(j);
}

static void on_pipe(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct spool *sp = arg;
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&sp->mu);
    struct spool_job *done = sp->done;
    sp->done = NULL;
    pthread_mutex_unlock(&sp->mu);
    double t = now_ms();
    while (done) {
        struct spool_job *next = done->next;
        if (done->cb && !sp->stopping)
            done->cb(done->arg, done->err, t - done->start_ms);
        else if (!done->err)
            log_kv(LOG_INFO, "spool_orphan", "qid", done->id, "note", "stored after the client left", NULL);
        free_job(done);
        done = next;
    }
}

struct spool_job *spool_submit(struct spool *sp, const char *id, struct evbuffer *msg, char *env,
                               spool_done_cb cb, void *arg)
{
    struct spool_job *j = calloc(1, sizeof *j);
    snprintf(j->id, sizeof j->id, "%s", id);
    j->msg = msg;
    j->env = env;
    j->cb = cb;
    j->arg = arg;
    j->start_ms = now_ms();
    pthread_mutex_lock(&sp->mu);
    *sp->queue_tail = j;
    sp->queue_tail = &j->next;
    pthread_cond_signal(&sp->cv);
    pthread_mutex_unlock(&sp->mu);
    return j;
}

unsigned long long spool_free_bytes(struct spool *sp)
{
    if (!sp || !sp->dir || sp->new_fd < 0)
        return ~0ULL;
    double t = now_ms();
    if (sp->free_at_ms == 0 || t - sp->free_at_ms >= 1000) {
        struct statvfs vfs;
        sp->free_bytes = fstatvfs(sp->new_fd, &vfs) == 0
            ? (unsigned long long)vfs.f_bavail * (unsigned long long)vfs.f_frsize : ~0ULL;
        sp->free_at_ms = t;
    }
    return sp->free_bytes;
}

int spool_err_is_full(int err)
{
    return err == ENOSPC || err == EDQUOT;
}

void spool_job_detach(struct spool_job *job)
{
    /* Only the loop thread reads cb (in on_pipe), so no lock is needed. */
    job->cb = NULL;
}

/* ---- open / close ---------------------------------------------------------- */

static int mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0750) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0750) != 0 && errno != EEXIST ? -1 : 0;
}

/* Files left in tmp/ by a crash were never acknowledged: remove them. */
static void clean_tmp(struct spool *sp)
{
    int fd = dup(sp->tmp_fd);
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && unlinkat(sp->tmp_fd, e->d_name, 0) == 0)
            n++;
    closedir(d);
    if (n) {
        char cnt[16];
        snprintf(cnt, sizeof cnt, "%d", n);
        log_kv(LOG_INFO, "spool_cleanup", "dir", sp->dir, "removed", cnt, NULL);
    }
}

static int open_dirs(struct spool *sp, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tmp", sp->dir);
    if (mkdir_p(path) != 0)
        goto fail;
    sp->tmp_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    snprintf(path, sizeof path, "%s/new", sp->dir);
    if (sp->tmp_fd < 0 || mkdir_p(path) != 0)
        goto fail;
    sp->new_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->new_fd < 0)
        goto fail;
    /* One moat per spool: two would clean each other's tmp/. */
    snprintf(path, sizeof path, "%s/.lock", sp->dir);
    sp->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (sp->lock_fd < 0)
        goto fail;
    if (flock(sp->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "%s: spool is in use by another moat process", sp->dir);
        return -1;
    }
    return 0;
fail:
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
}

struct spool *spool_open(struct event_base *base, const char *dir, int threads, int use_syncfs,
                         char *err, size_t errlen)
{
    struct spool *sp = calloc(1, sizeof *sp);
    sp->use_syncfs = use_syncfs;
    sp->dir = dir ? strdup(dir) : NULL;
    sp->tmp_fd = sp->new_fd = sp->lock_fd = -1;
    sp->queue_tail = &sp->queue;
    if (dir && open_dirs(sp, err, errlen) != 0) {
        spool_close(sp);
        return NULL;
    }
    if (dir)
        clean_tmp(sp);
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        spool_close(sp);
        return NULL;
    }
    sp->pipe_rd = p[0];
    sp->pipe_wr = p[1];
    sp->pipe_ev = event_new(base, sp->pipe_rd, EV_READ | EV_PERSIST, on_pipe, sp);
    event_add(sp->pipe_ev, NULL);
    pthread_mutex_init(&sp->mu, NULL);
    pthread_cond_init(&sp->cv, NULL);
    /* With syncfs one thread commits everything queued while its previous
     * sync ran: batches grow with the load and one flush covers them all.
     * Several threads would each sync small batches (measured: 2,430 msg/s
     * with 4 threads, 2,960 with 1, 1 KB mail, 20 sessions). */
    if (threads < 1 || use_syncfs)
        threads = 1;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&sp->threads[sp->nthreads], NULL, writer, sp) == 0)
            sp->nthreads++;
    return sp;
}

void spool_close(struct spool *sp)
{
    if (!sp)
        return;
    if (sp->nthreads) {
        pthread_mutex_lock(&sp->mu);
        sp->stopping = 1;
        pthread_cond_broadcast(&sp->cv);
        pthread_mutex_unlock(&sp->mu);
        for (int i = 0; i < sp->nthreads; i++)
            pthread_join(sp->threads[i], NULL);
        /* Jobs finished after the loop stopped: stored, nobody to tell. */
        on_pipe(sp->pipe_rd, 0, sp);
    }
    if (sp->pipe_ev) {
        event_free(sp->pipe_ev);
        close(sp->pipe_rd);
        close(sp->pipe_wr);
        pthread_mutex_destroy(&sp->mu);
        pthread_cond_destroy(&sp->cv);
    }
    if (sp->tmp_fd >= 0)
        close(sp->tmp_fd);
    if (sp->new_fd >= 0)
        close(sp->new_fd);
    if (sp->lock_fd >= 0)
        close(sp->lock_fd);
    free(sp->dir);
    free(sp);
}
