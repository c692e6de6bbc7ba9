/* watch.c - inotify-driven reloads (see watch.h). */
#include "watch.h"

#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "control.h"
#include "log.h"
#include "lua_bridge.h"
#include "runtime.h"
#include "server.h"

struct watched {
    int wd;
    char dir[PATH_MAX];
    char **names;
    int nnames;
};

static int ifd = -1;
static struct event *ev, *debounce;
static struct watched *dirs;
static int ndirs;

static void clear_dirs(void)
{
    for (int i = 0; i < ndirs; i++) {
        inotify_rm_watch(ifd, dirs[i].wd);
        for (int j = 0; j < dirs[i].nnames; j++)
            free(dirs[i].names[j]);
        free(dirs[i].names);
    }
    free(dirs);
    dirs = NULL;
    ndirs = 0;
}

static void add_file(void *arg, const char *path)
{
    (void)arg;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *name = slash ? path + (slash - dir) + 1 : path;
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    struct watched *w = NULL;
    for (int i = 0; i < ndirs && !w; i++)
        if (strcmp(dirs[i].dir, dir) == 0)
            w = &dirs[i];
    if (!w) {
        int wd = inotify_add_watch(ifd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB);
        if (wd < 0) {
            log_kv(LOG_WARN, "watch_failed", "dir", dir, "error", strerror(errno), NULL);
            return;
        }
        dirs = realloc(dirs, (size_t)(ndirs + 1) * sizeof *dirs);
        w = &dirs[ndirs++];
        memset(w, 0, sizeof *w);
        w->wd = wd;
        snprintf(w->dir, sizeof w->dir, "%s", dir);
    }
    for (int j = 0; j < w->nnames; j++)
        if (strcmp(w->names[j], name) == 0)
            return;
    w->names = realloc(w->names, (size_t)(w->nnames + 1) * sizeof *w->names);
    w->names[w->nnames++] = strdup(name);
}

static int relevant(const struct inotify_event *e)
{
    for (int i = 0; i < ndirs; i++)
        if (dirs[i].wd == e->wd)
            for (int j = 0; e->len && j < dirs[i].nnames; j++)
                if (strcmp(dirs[i].names[j], e->name) == 0)
                    return 1;
    return 0;
}

static void on_debounce(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    log_kv(LOG_INFO, "watch_reload", NULL);
    char err[2048];
    server_reload(err, sizeof err);   /* logs success or the error; rebuilds the watch set */
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int hit = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            hit |= relevant(e);
            p += sizeof *e + e->len;
        }
    if (hit) {
        struct timeval tv = { 0, WATCH_DEBOUNCE_MS * 1000 };
        evtimer_add(debounce, &tv);   /* re-arming pushes the reload back: debounce */
    }
}

int watch_update(struct runtime *rt)
{
    if (ifd < 0) {
        ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (ifd < 0) {
            log_kv(LOG_ERR, "watch_failed", "error", strerror(errno), NULL);
            return -1;
        }
        ev = event_new(srv.base, ifd, EV_READ | EV_PERSIST, on_inotify, NULL);
        event_add(ev, NULL);
        debounce = evtimer_new(srv.base, on_debounce, NULL);
    }
    clear_dirs();
    lb_config_files(rt, add_file, NULL);
    char n[16];
    snprintf(n, sizeof n, "%d", ndirs);
    log_kv(LOG_DEBUG, "watching", "dirs", n, NULL);
    return 0;
}

void watch_stop(void)
{
    if (ifd < 0)
        return;
    clear_dirs();
    event_free(ev);
    event_free(debounce);
    close(ifd);
    ifd = -1;
}
