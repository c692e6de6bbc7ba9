/* fuzz_session.c - libFuzzer target: one whole SMTP session (src/smtp.c) per input.
 *
 * LLVMFuzzerInitialize builds what main.c builds: the event loop, a runtime
 * loaded from a config written to a temporary directory (accounts, router,
 * banned lines, rules, a site script with hooks in every phase), the spool,
 * the temporary-block store, one worker thread and a resolver that points at
 * a dead port.  Each input is then the byte stream a client sends:
 *
 *   socketpair -> smtp_session_new(server end, peer 192.0.2.1:1234, a socket
 *   with tls = "ext" so AUTH is offered; or, when the input contains
 *   STARTTLS, a plain socket where STARTTLS is offered with a self-signed
 *   certificate) -> the input is written in two parts
 *   (split at a point derived from the input, so commands and DATA lines get
 *   cut across reads) -> the loop runs until nothing moves -> the client end
 *   is closed -> the loop runs until the session has been freed.
 *
 * Replies are read and thrown away.  Besides the sanitizers it checks that a
 * session always ends once its client has gone, and that what reaches the
 * spool is sane (envelope: one line of JSON without control bytes; message:
 * starts with moat's Received: field).
 *
 * Determinism: the site script's asynchronous calls are moat.sleep(0) only
 * (no DNS), the temporary-block store is made afresh for every input (so one
 * input's protocol errors cannot block the next), and the harness knows when
 * a password check (worker thread) or a spool write (writer thread) is in
 * flight: worker_submit, spool_submit and spool_job_detach are wrapped at
 * link time (-Wl,--wrap=...) to count them, and the loop waits for them.
 * getsockname is wrapped too, so an AF_UNIX socket reads as 192.0.2.25:25
 * (smtp.c treats any non-IPv6 family as IPv4: see README "Notes").
 *
 * Every log line is checked to be one line (no control bytes: no log
 * injection) and then dropped.
 *
 * Environment: MOAT_ROOT (repository root, default: the build's),
 * FUZZ_SESSION_VERBOSE=1 prints the server's replies and the log. */
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <crypt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lua.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <strings.h>

#include "config.h"
#include "dns.h"
#include "iplist.h"
#include "listener.h"
#include "log.h"
#include "runtime.h"
#include "server.h"
#include "smtp.h"
#include "spool.h"
#include "tempblock.h"
#include "worker.h"

#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

struct server srv;

static char tmpdir[256];
static char spool_new[300];
static struct listener_sock lsock_ext, lsock_plain;
static unsigned char peer_key[16];
static struct sockaddr_in peer;
static int verbose;

/* ---- counting the asynchronous work (link-time wrappers) ------------------ */

static int pending;          /* worker jobs + spool jobs whose callback is still due */
static int spooled;          /* spool jobs submitted for the current input */

struct worker_job *__real_worker_submit(void (*work)(void *), void (*done)(void *), void *arg);
struct worker_job *__wrap_worker_submit(void (*work)(void *), void (*done)(void *), void *arg);

struct wjob {
    void (*work)(void *), (*done)(void *);
    void *arg;
};

static void wjob_work(void *p)
{
    struct wjob *w = p;
    w->work(w->arg);
}

static void wjob_done(void *p)
{
    struct wjob *w = p;
    void (*done)(void *) = w->done;
    void *arg = w->arg;
    free(w);
    pending--;
    done(arg);
}

struct worker_job *__wrap_worker_submit(void (*work)(void *), void (*done)(void *), void *arg)
{
    struct wjob *w = calloc(1, sizeof *w);
    w->work = work;
    w->done = done;
    w->arg = arg;
    pending++;
    return __real_worker_submit(wjob_work, wjob_done, w);
}

struct spool_job *__real_spool_submit(struct spool *sp, const char *id, struct evbuffer *msg, char *env,
                                      spool_done_cb cb, void *arg);
struct spool_job *__wrap_spool_submit(struct spool *sp, const char *id, struct evbuffer *msg, char *env,
                                      spool_done_cb cb, void *arg);
void __real_spool_job_detach(struct spool_job *job);
void __wrap_spool_job_detach(struct spool_job *job);

struct sjob {
    spool_done_cb cb;
    void *arg;
    struct spool_job *job;
    struct sjob *next;
};
static struct sjob *sjobs;

static void sjob_unlink(struct sjob *j)
{
    for (struct sjob **p = &sjobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            return;
        }
}

static void sjob_done(void *p, int err, double latency_ms)
{
    struct sjob *j = p;
    spool_done_cb cb = j->cb;
    void *arg = j->arg;
    sjob_unlink(j);
    free(j);
    pending--;
    cb(arg, err, latency_ms);
}

struct spool_job *__wrap_spool_submit(struct spool *sp, const char *id, struct evbuffer *msg, char *env,
                                      spool_done_cb cb, void *arg)
{
    struct sjob *j = calloc(1, sizeof *j);
    j->cb = cb;
    j->arg = arg;
    j->next = sjobs;
    sjobs = j;
    pending++;
    spooled++;
    j->job = __real_spool_submit(sp, id, msg, env, sjob_done, j);
    return j->job;
}

void __wrap_spool_job_detach(struct spool_job *job)
{
    /* The callback will not run: stop waiting for it. */
    for (struct sjob *j = sjobs; j; j = j->next)
        if (j->job == job) {
            sjob_unlink(j);
            free(j);
            pending--;
            break;
        }
    __real_spool_job_detach(job);
}

/* An unnamed AF_UNIX socket has no address; smtp.c would read the bytes of
 * an uninitialised sockaddr_in.  Report a fixed local TCP address instead. */
int __real_getsockname(int fd, struct sockaddr *sa, socklen_t *len);
int __wrap_getsockname(int fd, struct sockaddr *sa, socklen_t *len);
int __wrap_getsockname(int fd, struct sockaddr *sa, socklen_t *len)
{
    socklen_t cap = *len;
    int rc = __real_getsockname(fd, sa, len);
    if (rc == 0 && sa->sa_family == AF_UNIX && cap >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in local = { .sin_family = AF_INET, .sin_port = htons(25) };
        inet_pton(AF_INET, "192.0.2.25", &local.sin_addr);
        memcpy(sa, &local, sizeof local);
        *len = sizeof local;
    }
    return rc;
}

/* log.c writes each event line to fd 2 with one write().  Every such line
 * must be exactly one line, whatever hostile text it quotes (log.h): a
 * newline, CR or other control byte inside it is log injection.  The lines
 * are checked, then dropped (FUZZ_SESSION_VERBOSE=1 shows them). */
ssize_t __real_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
    if (fd != STDERR_FILENO)
        return __real_write(fd, buf, n);
    const unsigned char *p = buf;
    if (n == 0 || p[n - 1] != '\n') {
        fprintf(stderr, "fuzz_session: a log line does not end in a newline: %.*s\n", (int)n, (const char *)buf);
        abort();
    }
    for (size_t i = 0; i + 1 < n; i++)
        if (p[i] < 0x20 || p[i] == 0x7f) {
            fprintf(stderr, "fuzz_session: control byte 0x%02x at %zu inside a log line: %.*s\n", p[i], i, (int)n,
                    (const char *)buf);
            abort();
        }
    if (verbose)
        return __real_write(fd, buf, n);
    return (ssize_t)n;
}

/* main.c is not linked (this harness is the main program); control.c and
 * watch.c call its reload and promote entry points, which no input can
 * reach here. */
int server_reload(char *err, size_t errlen);
__attribute__((weak)) int server_reload(char *err, size_t errlen)
{
    snprintf(err, errlen, "reload is not available in the fuzzer");
    return -1;
}

int server_promote(char *err, size_t errlen);
__attribute__((weak)) int server_promote(char *err, size_t errlen)
{
    snprintf(err, errlen, "promote is not available in the fuzzer");
    return -1;
}

/* ---- setup ------------------------------------------------------------------ */

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_session: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        die("cannot write", path);
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void cleanup_tmpdir(void)
{
    if (tmpdir[0])
        remove_tree(tmpdir);
}

static const char *const site_lua =
    "-- fuzz site script: a hook in every phase; magic names pick each verdict.\n"
    "local moat = require 'moat'\n"
    "local P = {}\n"
    "local function by_name(n, where)\n"
    "  if n == 'sleep' then moat.sleep(0)\n"
    "  elseif n == 'reject' then return moat.reject(550, '5.7.1 ' .. where .. ' refused')\n"
    "  elseif n == 'tempfail' then return moat.tempfail('4.7.1 ' .. where .. ' later')\n"
    "  elseif n == 'discard' then return moat.discard()\n"
    "  elseif n == 'drop' then return moat.drop(421, '4.7.0 bye')\n"
    "  elseif n == 'accept' then return moat.accept()\n"
    "  elseif n == 'error' then error(where .. ' hook error')\n"
    "  elseif n == 'bogus' then return { action = 'bogus' }\n"
    "  elseif n == 'badcode' then return { action = 'reject', code = 200 }\n"
    "  elseif n == 'spin' then while true do end\n"
    "  end\n"
    "end\n"
    "function P.helo(s, name) return by_name(name:match('^([^.]*)%.test$'), 'helo') end\n"
    "function P.auth(s, user, ok)\n"
    "  if user:find('^refuse') then return moat.reject(535, '5.7.8 refused') end\n"
    "  if user:find('^sleep') then moat.sleep(0) end\n"
    "end\n"
    "function P.mail_from(s, from) return by_name(from.localpart, 'sender') end\n"
    "function P.rcpt(s, rcpt)\n"
    "  local lp = rcpt.addr.localpart or ''\n"
    "  if lp == 'reroute' then rcpt.route = { kind = 'remote', address = 'x@remote.example', host = 'remote.example' } end\n"
    "  if lp == 'badroute' then rcpt.route = 42 end\n"
    "  return by_name(lp, 'recipient')\n"
    "end\n"
    "function P.data(s)\n"
    "  local lp = s.from and s.from.localpart or ''\n"
    "  if lp == 'datareject' then return moat.reject(554, '5.7.1 no data') end\n"
    "  if lp == 'datasleep' then moat.sleep(0) end\n"
    "end\n"
    "function P.data_line(s, line, part)\n"
    "  if line:find('X-Sleep', 1, true) then moat.sleep(0) end\n"
    "  if line:find('X-Reject', 1, true) then return moat.reject(550, '5.7.1 content refused') end\n"
    "  if line:find('X-Tempfail', 1, true) then return moat.tempfail() end\n"
    "  if line:find('X-Discard', 1, true) then return moat.discard() end\n"
    "  if line:find('X-Drop', 1, true) then return moat.drop() end\n"
    "  if line:find('X-Redirect', 1, true) then return moat.redirect('joe@example.test') end\n"
    "  if line:find('X-Error', 1, true) then error('data_line hook error') end\n"
    "  if line:find('X-Add', 1, true) then s:add_header('X-Seen-' .. part, 'yes') end\n"
    "  if line:find('X-Bad-Add', 1, true) then s:add_header('Bad Name', 'x') end\n"
    "end\n"
    "function P.data_end(s, info)\n"
    "  s:add_header('X-Fuzz-Size', tostring(info.size))\n"
    "  local lp = s.from and s.from.localpart or ''\n"
    "  if lp == 'endsleep' then moat.sleep(0) end\n"
    "  if lp == 'endreject' then return moat.reject(554, '5.7.1 end refused') end\n"
    "  if lp == 'endredirect' then return moat.redirect('joe@example.test') end\n"
    "end\n"
    "function P.disconnect(s) s.vars.done = true end\n"
    "return P\n";

/* A self-signed P-256 certificate for example.test, so that STARTTLS is
 * offered on the plain socket. */
static void write_certificate(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x)
        die("cannot make a test key", NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3650L * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"example.test", -1, -1, 0);
    X509_set_issuer_name(x, name);
    if (!X509_sign(x, key, EVP_sha256()))
        die("cannot sign the test certificate", NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/cert.pem", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f || !PEM_write_X509(f, x) || fclose(f) != 0)
        die("cannot write", path);
    snprintf(path, sizeof path, "%s/key.pem", tmpdir);
    f = fopen(path, "w");
    if (!f || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) || fclose(f) != 0)
        die("cannot write", path);
    X509_free(x);
    EVP_PKEY_free(key);
}

static void write_config(void)
{
    const char *base = "/dev/shm";
    struct stat st;
    if (stat(base, &st) != 0 || !S_ISDIR(st.st_mode) || access(base, W_OK) != 0)
        base = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    /* moat-fuzz-PID-XXXXXX; an interrupted fuzzer (libFuzzer _Exit()s on
     * SIGINT, so atexit does not run) leaves one: remove those of dead PIDs. */
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int pid;
        if (sscanf(e->d_name, "moat-fuzz-%d-", &pid) == 1 && pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) {
            char stale[512];
            snprintf(stale, sizeof stale, "%s/%s", base, e->d_name);
            remove_tree(stale);
        }
    }
    if (d)
        closedir(d);
    snprintf(tmpdir, sizeof tmpdir, "%s/moat-fuzz-%d-XXXXXX", base, (int)getpid());
    if (!mkdtemp(tmpdir))
        die("mkdtemp", strerror(errno));
    atexit(cleanup_tmpdir);
    snprintf(spool_new, sizeof spool_new, "%s/spool/new", tmpdir);

    /* Cheap hashes: SHA-256-crypt with the minimum 1000 rounds. */
    char hash[256], line[1024], accounts[2048] = "; fuzz accounts, password 'secret'\n";
    struct crypt_data cd;
    memset(&cd, 0, sizeof cd);
    const char *h = crypt_r("secret", "$5$rounds=1000$fuzzsalt$", &cd);
    if (!h || h[0] != '$')
        die("crypt_r failed", NULL);
    snprintf(hash, sizeof hash, "%s", h);
    snprintf(line, sizeof line,
             "joe@example.test %s\n"
             "norelay@example.test %s relay=no\n"
             "noroam@example.test %s roaming=no\n"
             "refuse@example.test %s\n"
             "sleep@example.test %s\n",
             hash, hash, hash, hash, hash);
    strcat(accounts, line);
    write_file("accounts", accounts);
    write_file("client.ips", "; clients\n10.0.0.0/8\n2001:db8:c::/48\n");
    write_file("unblacklistable.ips", "198.51.100.7\n");
    write_file("router",
               "; fuzz router\n"
               "<info> = joe\n"
               "<trap> = spamtrap\n"
               "<gone> = error\n"
               "<void> = null\n"
               "<list-*> = joe+*\n"
               "Relay:<fwd> = friend@remote.example\n"
               "<loop1> = loop2\n"
               "<loop2> = loop1\n"
               "alias.test = example.test\n"
               "via.test = example.test@mx.example\n");
    write_file("banned_headers", "Subject: *BANNED*\nX-Mailer: Bulk*\\r\\n *spam*\n");
    write_file("banned_body", "*viagra*\nexact banned line\n*free money*now*\n");
    write_file("rules",
               "; fuzz rules\n"
               "if header \"X-Rules\" matches \"*reject*\" then reject 550 \"5.7.1 rules said no\"\n"
               "if header \"X-Rules\" matches \"*discard*\" then discard\n"
               "if header \"X-Rules\" matches \"*redirect*\" then redirect \"joe@example.test\"\n"
               "if from matches \"addhdr@*\" then add_header \"X-Rules-Added: yes\"\n"
               "if header \"Subject\" missing and rcpt matches \"strict@*\" then reject 554\n");
    write_file("site.lua", site_lua);
    write_certificate();
    write_file("moat.conf",
               "server_name = \"mx.fuzz.test\"\n"
               "main_domain = \"example.test\"\n"
               "domains = { [\"example.test\"] = { certificate = \"cert.pem\", private_key = \"key.pem\" } }\n"
               "local_domains = { \"example.test\", \"local.test\" }\n"
               "spool_dir = \"spool\"\n"
               "log_level = \"debug\"\n"
               "dns = { servers = { \"127.0.0.1:9\" }, timeout_ms = 10, tries = 1 }\n"
               "listener \"smtp\" { { port = 2525, address = \"127.0.0.1\", tls = \"ext\" } }\n"
               "tables = {\n"
               "  accounts = \"accounts\", client_ips = \"client.ips\",\n"
               "  unblacklistable_ips = \"unblacklistable.ips\", router = \"router\",\n"
               "  banned_headers = \"banned_headers\", banned_body = \"banned_body\", rules = \"rules\",\n"
               "}\n"
               "smtp = { max_message_size = 65536, max_line_length = 1000, timeout = 5, max_errors = 1000,\n"
               "         max_recipients = 20 }\n"
               "lua = { budget = 200000 }\n"
               "protection = { temp_block = { failed_logins = { 3, 60 }, protocol_errors = { 200, 60 },\n"
               "  debug_failed_logins = { 1, 60 }, debug_protocol_errors = { 3, 60 }, block_time = 60, limit = 100 } }\n"
               "policies = { \"router\", \"banned\", \"rules\", \"spamtrap\", \"relay\" }\n"
               "scripts = { \"site.lua\" }\n");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    verbose = getenv("FUZZ_SESSION_VERBOSE") != NULL;
    if (!getenv("MOAT_ROOT"))
        setenv("MOAT_ROOT", FUZZ_ROOT, 1);
    write_config();

    evthread_use_pthreads();
    srv.base = event_base_new();
    char err[4096], conf[512];
    snprintf(conf, sizeof conf, "%s/moat.conf", tmpdir);
    srv.rt = runtime_load(conf, err, sizeof err);
    if (!srv.rt)
        die("runtime_load", err);
    log_set_level(LOG_DEBUG);   /* every log line is built and checked (see __wrap_write) */
    const struct config *c = &srv.rt->cfg;
    srv.tempblock = tb_new();
    tb_configure(srv.tempblock, &c->tb);
    if (worker_init(srv.base, 1) != 0)
        die("worker_init failed", NULL);
    srv.spool = spool_open(srv.base, c->spool_dir, c->spool_threads, c->spool_syncfs, err, sizeof err);
    if (!srv.spool)
        die("spool_open", err);
    srv.dns = dns_new(srv.base, c->dns_servers, c->dns_timeout_ms, c->dns_tries, err, sizeof err);
    if (!srv.dns)
        die("dns_new", err);
    srv.dns_once = dns_new(srv.base, c->dns_servers, c->dns_timeout_ms, 1, err, sizeof err);
    if (!srv.dns_once)
        die("dns_new", err);

    /* listener.c keeps struct listener_state private; a session only hands
     * it back to listener_conn_closed, which looks the address up in its
     * hash buckets and finds nothing in a zeroed state.  1 MiB is far more
     * than sizeof(struct listener_state) (about 33 KiB). */
    lsock_ext.tls = TLS_EXT;
    snprintf(lsock_ext.desc, sizeof lsock_ext.desc, "fuzz-ext");
    lsock_ext.state = calloc(1, 1u << 20);
    lsock_plain.tls = TLS_OFF;
    snprintf(lsock_plain.desc, sizeof lsock_plain.desc, "fuzz-plain");
    lsock_plain.state = calloc(1, 1u << 20);

    peer.sin_family = AF_INET;
    peer.sin_port = htons(1234);
    inet_pton(AF_INET, "192.0.2.1", &peer.sin_addr);
    ip_key_from_str("192.0.2.1", peer_key);
    return 0;
}

/* ---- one session -------------------------------------------------------------- */

#define SETTLE_MAX 20000     /* loop turns while input is still moving */
#define IDLE_TURNS 3         /* turns without progress that mean "done" */

static int client_eof;

/* Read and discard what the server sent; returns the byte count. */
static size_t drain(int fd)
{
    char buf[16384];
    size_t total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            if (verbose)
                fwrite(buf, 1, (size_t)n, stderr);
            total += (size_t)n;
            continue;
        }
        if (n == 0)
            client_eof = 1;
        return total;
    }
}

static void turn(int fd, int *idle)
{
    event_base_loop(srv.base, EVLOOP_NONBLOCK);
    size_t got = fd >= 0 ? drain(fd) : 0;
    if (got > 0) {
        *idle = 0;
    } else if (pending > 0) {
        /* A password check or spool write is running: wait for its wakeup. */
        event_base_loop(srv.base, EVLOOP_ONCE);
        *idle = 0;
    } else {
        (*idle)++;
    }
}

static void settle(int fd)
{
    int idle = 0;
    for (int i = 0; i < SETTLE_MAX && idle < IDLE_TURNS; i++) {
        turn(fd, &idle);
        if (smtp_sessions_open() == 0 && pending == 0)
            break;
    }
}

/* Write all of p (or until the server has gone), running the loop meanwhile. */
static void feed(int fd, const uint8_t *p, size_t n)
{
    int idle = 0;
    while (n > 0 && !client_eof) {
        ssize_t w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return;            /* EPIPE / ECONNRESET: the session closed */
        turn(fd, &idle);
        if (smtp_sessions_open() == 0)
            return;
    }
}

static void check_spool(void)
{
    DIR *d = opendir(spool_new);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", spool_new, e->d_name);
        FILE *f = fopen(p, "rb");
        if (f) {
            static char buf[1 << 18];
            size_t n = fread(buf, 1, sizeof buf, f);
            fclose(f);
            size_t len = strlen(e->d_name);
            if (len > 4 && strcmp(e->d_name + len - 4, ".env") == 0) {
                if (n < 2 || buf[0] != '{' || buf[n - 1] != '\n' || buf[n - 2] != '}') {
                    fprintf(stderr, "fuzz_session: envelope %s is not one JSON object line\n", e->d_name);
                    abort();
                }
                for (size_t i = 0; i + 1 < n; i++)
                    if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
                        fprintf(stderr, "fuzz_session: envelope %s holds control byte 0x%02x at %zu\n", e->d_name,
                                (unsigned char)buf[i], i);
                        abort();
                    }
            } else if (len > 4 && strcmp(e->d_name + len - 4, ".eml") == 0) {
                if (n < 10 || memcmp(buf, "Received: ", 10) != 0) {
                    fprintf(stderr, "fuzz_session: message %s does not start with Received:\n", e->d_name);
                    abort();
                }
            }
        }
        unlink(p);
    }
    closedir(d);
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Every input starts with a clean record for its address. */
    tb_free(srv.tempblock);
    srv.tempblock = tb_new();
    tb_configure(srv.tempblock, &srv.rt->cfg.tb);
    spooled = 0;
    client_eof = 0;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0)
        die("socketpair", strerror(errno));
    int client = sv[0];
    /* tls = "ext" (AUTH offered) unless the input says STARTTLS: then a plain
     * socket, where STARTTLS is offered and the rest of the input becomes
     * the client's side of the TLS handshake. */
    struct listener_sock *ls = &lsock_ext;
    for (size_t i = 0; i + 8 <= size; i++)
        if (strncasecmp((const char *)data + i, "STARTTLS", 8) == 0) {
            ls = &lsock_plain;
            break;
        }
    smtp_session_new(sv[1], (const struct sockaddr *)&peer, sizeof peer, ls, peer_key);

    size_t split = size ? fnv1a(data, size) % (size + 1) : 0;
    settle(client);
    feed(client, data, split);
    settle(client);
    feed(client, data + split, size - split);
    settle(client);
    close(client);

    /* The client has gone: the session must end (at the latest when its
     * idle timeout fires, smtp.timeout = 5 s). */
    int idle = 0;
    for (int i = 0; i < 2000 && (smtp_sessions_open() > 0 || pending > 0); i++)
        turn(-1, &idle);
    for (int i = 0; i < 20 && (smtp_sessions_open() > 0 || pending > 0); i++)
        event_base_loop(srv.base, EVLOOP_ONCE);     /* blocks until the next event */
    if (smtp_sessions_open() > 0) {
        fprintf(stderr, "fuzz_session: the session was not freed after its client closed the connection\n");
        abort();
    }
    if (pending > 0) {
        fprintf(stderr, "fuzz_session: %d asynchronous jobs never completed\n", pending);
        abort();
    }
    if (spooled)
        check_spool();
    /* Collect the session's Lua garbage now: keeps libFuzzer's malloc/free
     * balance (it re-runs unbalanced inputs to look for leaks) and frees
     * anything a dangling reference would point to while ASan watches. */
    lua_gc(srv.rt->L, LUA_GCCOLLECT);
    return 0;
}
