/* sdnotify.c - READY/RELOADING/STOPPING/STATUS datagrams to systemd. */
#include "sdnotify.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int nfd = -1;

void sdnotify_open(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sun.sun_path) {
        log_kv(LOG_WARN, "notify_socket_unusable", "path", path, NULL);
        unsetenv("NOTIFY_SOCKET");
        return;
    }
    memcpy(sun.sun_path, path, len);
    if (path[0] == '@')
        sun.sun_path[0] = '\0';   /* abstract namespace: the name is not NUL-terminated */
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
    nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (nfd >= 0 && connect(nfd, (struct sockaddr *)&sun, alen) != 0) {
        log_kv(LOG_WARN, "notify_socket_unusable", "path", path, NULL);
        close(nfd);
        nfd = -1;
    }
    unsetenv("NOTIFY_SOCKET");
}

void sdnotify(const char *fmt, ...)
{
    if (nfd < 0)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = (int)sizeof buf - 1;
    /* MSG_DONTWAIT on a non-blocking socket: a stalled systemd loses a
     * status line, it never stalls the SMTP loop. */
    ssize_t w = send(nfd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)w;
}

void sdnotify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sdnotify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)(ts.tv_nsec / 1000));
}

void sdnotify_close(void)
{
    if (nfd >= 0)
        close(nfd);
    nfd = -1;
}
