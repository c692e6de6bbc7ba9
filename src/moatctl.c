/* moatctl - talk to a running moat over its control socket. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: moatctl [-s SOCKET] reload | promote | stats | shadow | test-address IP | spf IP SENDER [HELO] | blocked | unblock IP | queue | flush | dns flush\n"
               "  SOCKET defaults to $MOAT_SOCKET, else var/moat.sock\n");
}

int main(int argc, char **argv)
{
    const char *path = getenv("MOAT_SOCKET");
    if (!path || !*path)
        path = "var/moat.sock";
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "-s") == 0) {
        path = argv[i + 1];
        i += 2;
    }
    if (i >= argc || strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
        usage(i >= argc ? stderr : stdout);
        return i >= argc ? 2 : 0;
    }
    /* Arguments are joined with spaces; when one of them holds a space
     * (an SPF sender's quoted local part, an odd HELO), with tabs, so the
     * daemon can tell them apart. */
    const char *sep = " ";
    for (int k = i; k < argc; k++)
        if (strchr(argv[k], ' '))
            sep = "\t";
    char cmd[1024] = "";
    int first = i;
    for (; i < argc; i++) {
        if (strlen(cmd) + strlen(argv[i]) + 2 >= sizeof cmd) {
            fprintf(stderr, "moatctl: command too long\n");
            return 2;
        }
        if (i > first)
            strcat(cmd, sep);
        strcat(cmd, argv[i]);
    }
    strcat(cmd, "\n");

    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sun.sun_path) {
        fprintf(stderr, "moatctl: %s: path too long\n", path);
        return 2;
    }
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        fprintf(stderr, "moatctl: cannot connect to %s: %s (is moat running? use -s SOCKET)\n", path,
                strerror(errno));
        return 1;
    }
    if (write(fd, cmd, strlen(cmd)) < 0) {
        fprintf(stderr, "moatctl: write: %s\n", strerror(errno));
        return 1;
    }
    /* The answer: "ok" or "error: ..." on the first line, then the body. */
    char buf[8192];
    size_t have = 0;
    ssize_t n;
    int first_done = 0, ok = 0;
    while ((n = read(fd, buf + have, sizeof buf - 1 - have)) > 0) {
        have += (size_t)n;
        buf[have] = '\0';
        if (!first_done) {
            char *nl = strchr(buf, '\n');
            if (!nl && have < sizeof buf - 1)
                continue;
            first_done = 1;
            ok = strncmp(buf, "ok", 2) == 0;
            if (!ok) {
                fputs(buf, stderr);
                have = 0;
                continue;
            }
            fputs(nl ? nl + 1 : "", stdout);
        } else {
            fputs(buf, ok ? stdout : stderr);
        }
        have = 0;
    }
    if (!first_done && have) {
        buf[have] = '\0';
        fputs(buf, stderr);
    }
    close(fd);
    return ok ? 0 : 1;
}
