/* privdrop.c - give up root after startup (DESIGN §10). */
#include "privdrop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* chown path, and when it is a directory, what it holds (one level: the spool
 * is spool_dir/{tmp,new}/FILE, so two calls cover it).  Symlinks are never
 * followed: a link planted in the spool must not hand a system file over. */
static int chown_tree(const char *path, int depth, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    if (lchown(path, uid, gid) != 0) {
        snprintf(err, errlen, "chown %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (depth == 0 || lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    DIR *d = opendir(path);
    if (!d)
        return 0;
    struct dirent *e;
    int rc = 0;
    char sub[4096];
    while (rc == 0 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        rc = chown_tree(sub, depth - 1, uid, gid, err, errlen);
    }
    closedir(d);
    return rc;
}

/* Keep CAP_NET_BIND_SERVICE in the calling (main) thread only: raw capset,
 * so no libcap dependency.  Called after setuid with PR_SET_KEEPCAPS set on
 * this thread, which kept the permitted set; the other threads had no
 * keep-caps flag and lost every capability in the setuid. */
static int keep_bind_cap(void)
{
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    d[0].effective = d[0].permitted = 1u << CAP_NET_BIND_SERVICE;
    return (int)syscall(SYS_capset, &h, d);
}

int privdrop_apply(const struct config *c, char *err, size_t errlen)
{
    if (geteuid() != 0)
        return 0;
    if (strcmp(c->user, "root") == 0) {
        log_kv(LOG_WARN, "running_as_root", "hint", "set user = \"moat\" (or another unprivileged user)", NULL);
        return 0;
    }
    errno = 0;
    struct passwd *pw = getpwnam(c->user);
    if (!pw) {
        snprintf(err, errlen, "user '%s': %s", c->user, errno ? strerror(errno) : "no such user");
        return -1;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (uid == 0) {
        snprintf(err, errlen, "user '%s' has uid 0: spell out user = \"root\" to stay root", c->user);
        return -1;
    }
    /* The spool (and messages a root run left there) and the control socket
     * belong to the user; the socket keeps its 0600 mode. */
    if (chown_tree(c->spool_dir, 2, uid, gid, err, errlen) != 0)
        return -1;
    if (c->control_socket && lchown(c->control_socket, uid, gid) != 0) {
        snprintf(err, errlen, "chown %s: %s", c->control_socket, strerror(errno));
        return -1;
    }
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setgroups(0, NULL) != 0 ||
        setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        snprintf(err, errlen, "dropping privileges to '%s': %s", c->user, strerror(errno));
        return -1;
    }
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    int cap = keep_bind_cap();
    /* No way back: check every id really moved. */
    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (getresuid(&r, &e, &s) != 0 || getresgid(&rg, &eg, &sg) != 0 || r != uid || e != uid || s != uid ||
        rg != gid || eg != gid || sg != gid || setuid(0) == 0 || getgroups(0, NULL) != 0) {
        snprintf(err, errlen, "dropping privileges to '%s': ids did not change", c->user);
        return -1;
    }
    char us[16], gs[16];
    snprintf(us, sizeof us, "%u", (unsigned)uid);
    snprintf(gs, sizeof gs, "%u", (unsigned)gid);
    log_kv(LOG_INFO, "privileges_dropped", "user", c->user, "uid", us, "gid", gs, "bind_cap",
           cap == 0 ? "yes" : "no", NULL);
    return 0;
}
