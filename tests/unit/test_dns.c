/* test_dns.c - src/dns.c against a private dnsmasq and a silent UDP socket.
 *
 * The silent socket (bound, never read) is what a dead resolver looks like
 * from the client: no answer, no ICMP error, so only timeouts end queries. */
#include "../../src/dns.h"
#include "../../src/dnscache.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DNSMASQ "/usr/sbin/dnsmasq"

static int passed, failed;
static pid_t dnsmasq_pid;
static struct event_base *base;

static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s - ", ok ? "ok" : "not ok");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok)
        passed++;
    else
        failed++;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- processes and sockets -------------------------------------------- */

static void kill_dnsmasq(void)
{
    if (dnsmasq_pid <= 0)
        return;
    kill(dnsmasq_pid, SIGTERM);
    waitpid(dnsmasq_pid, NULL, 0);
    dnsmasq_pid = 0;
}

static void on_fatal_signal(int sig)
{
    if (dnsmasq_pid > 0)
        kill(dnsmasq_pid, SIGTERM);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int bind_udp(int *port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

static int tcp_connects(int port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void exec_dnsmasq(int port, int dead_port, pid_t parent, int log_fd)
{
    /* If the test dies (even by an ASan abort) dnsmasq must not linger. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0)
        dup2(devnull, STDOUT_FILENO);
    if (log_fd >= 0) /* startup chatter and errors, shown only if it fails */
        dup2(log_fd, STDERR_FILENO);
    char a_port[32], a_slow[64], many[80][48];
    snprintf(a_port, sizeof a_port, "--port=%d", port);
    snprintf(a_slow, sizeof a_slow, "--server=/slow.invalid/127.0.0.1#%d", dead_port);
    char *argv[128] = {
        DNSMASQ, "--no-daemon", a_port, "--listen-address=127.0.0.1", "--bind-interfaces",
        "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--user=root",
        "--log-facility=/dev/null", "--cache-size=0",
        "--local=/test/", /* .test answered locally only: unknown names NXDOMAIN */
        "--address=/a.test/127.0.0.5", "--address=/nx.test/",
        "--host-record=h.test,127.0.0.6,::6", "--host-record=v4.test,127.0.0.7",
        "--mx-host=mx.test,mail.mx.test,10", "--mx-host=mx.test,mail2.mx.test,20",
        "--ptr-record=5.0.0.127.in-addr.arpa,a.test", "--ptr-record=5.0.0.127.in-addr.arpa,b.test",
        /* commas split strings; quotes would be kept literally on the command line */
        "--txt-record=txt.test,v=spf1 ,-all", "--txt-record=txt.test,second",
        a_slow,
    };
    int n = 0;
    while (argv[n])
        n++;
    for (int i = 0; i < 80; i++) { /* 80 A records: > 512 bytes, so TC + TCP retry */
        snprintf(many[i], sizeof many[i], "--host-record=many.test,10.1.%d.%d", i / 250, i % 250 + 1);
        argv[n++] = many[i];
    }
    argv[n] = NULL;
    execv(DNSMASQ, argv);
    fprintf(stderr, "exec %s: %s\n", DNSMASQ, strerror(errno));
    _exit(127);
}

static void show_log(int log_fd)
{
    char buf[4096];
    ssize_t n;
    lseek(log_fd, 0, SEEK_SET);
    while ((n = read(log_fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stderr);
}

/* Picking a free port and handing it over is racy, so retry a few times. */
static int try_dnsmasq(int dead_port, int log_fd)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        int port, fd = bind_udp(&port);
        if (fd < 0)
            return -1;
        close(fd);
        pid_t parent = getpid(), pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0)
            exec_dnsmasq(port, dead_port, parent, log_fd);
        dnsmasq_pid = pid;
        for (double t0 = now_ms(); now_ms() - t0 < 3000;) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                dnsmasq_pid = 0;
                break;
            }
            if (tcp_connects(port)) /* TCP is bound after UDP: both ready */
                return port;
            usleep(10 * 1000);
        }
        kill_dnsmasq();
    }
    return -1;
}

static int start_dnsmasq(int dead_port)
{
    char path[] = "/tmp/test_dns_dnsmasq_XXXXXX";
    int log_fd = mkstemp(path);
    if (log_fd >= 0)
        unlink(path);
    int port = try_dnsmasq(dead_port, log_fd);
    if (port < 0 && log_fd >= 0)
        show_log(log_fd);
    if (log_fd >= 0)
        close(log_fd);
    return port;
}

/* ---- loop helpers ------------------------------------------------------ */

struct result {
    int calls, status, n;
    char text[80][128];
    int pref[80];
    double at_ms;
};

static void on_result(void *arg, int status, const dns_answer *ans)
{
    struct result *r = arg;
    r->calls++;
    r->status = status;
    r->at_ms = now_ms();
    r->n = ans ? ans->n : 0;
    for (int i = 0; ans && i < ans->n && i < 80; i++) {
        snprintf(r->text[i], sizeof r->text[i], "%s", ans->rr[i].text);
        r->pref[i] = ans->rr[i].pref;
    }
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Runs the loop until *flag (or limit_ms passes): the guard timer also keeps
 * EVLOOP_ONCE from returning at once when nothing else is pending. */
static void run_until(const int *flag, int limit_ms)
{
    int expired = 0;
    struct timeval tv = { limit_ms / 1000, (limit_ms % 1000) * 1000 };
    struct event *guard = evtimer_new(base, on_guard, &expired);
    evtimer_add(guard, &tv);
    while (!*flag && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(guard);
}

static void run_for(int ms)
{
    int never = 0;
    run_until(&never, ms);
}

static struct result query(dns *d, const char *name, enum dns_type type)
{
    struct result r;
    memset(&r, 0, sizeof r);
    if (!dns_query_start(d, name, type, on_result, &r))
        r.status = -1;
    else
        run_until(&r.calls, 5000);
    return r;
}

static int has(const struct result *r, const char *text, int pref)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->text[i], text) == 0 && r->pref[i] == pref)
            return 1;
    return 0;
}

static dns *mkdns(const char *servers, int timeout_ms, int tries)
{
    char err[256] = "";
    dns *d = dns_new(base, servers, timeout_ms, tries, err, sizeof err);
    if (!d)
        fprintf(stderr, "dns_new(%s): %s\n", servers ? servers : "NULL", err);
    return d;
}

/* ---- answers ----------------------------------------------------------- */

static void test_records(dns *d)
{
    struct result r = query(d, "a.test", DNS_A);
    check(r.status == DNS_OK && r.n == 1 && has(&r, "127.0.0.5", 0), "A a.test -> 127.0.0.5 (%s)", dns_status_str(r.status));
    r = query(d, "h.test", DNS_AAAA);
    check(r.status == DNS_OK && r.n == 1 && has(&r, "::6", 0), "AAAA h.test -> ::6 (%s)", dns_status_str(r.status));
    r = query(d, "mx.test", DNS_MX);
    check(r.status == DNS_OK && r.n == 2 && has(&r, "mail.mx.test", 10) && has(&r, "mail2.mx.test", 20),
          "MX mx.test -> mail.mx.test/10, mail2.mx.test/20 (%s, n=%d)", dns_status_str(r.status), r.n);
    char rev[128];
    dns_reverse_name("127.0.0.5", NULL, rev, sizeof rev);
    r = query(d, rev, DNS_PTR);
    check(r.status == DNS_OK && r.n == 2 && has(&r, "a.test", 0) && has(&r, "b.test", 0),
          "PTR %s -> a.test, b.test, no trailing dot (%s, n=%d)", rev, dns_status_str(r.status), r.n);
    r = query(d, "6.0.0.127.in-addr.arpa", DNS_PTR);
    check(r.status == DNS_OK && r.n == 1 && has(&r, "h.test", 0), "PTR from host-record -> h.test");
    r = query(d, "txt.test", DNS_TXT);
    check(r.status == DNS_OK && r.n == 2 && has(&r, "v=spf1 -all", 0) && has(&r, "second", 0),
          "TXT txt.test: two records, multi-string one joined (%s, n=%d: [%s] [%s])", dns_status_str(r.status), r.n,
          r.text[0], r.text[1]);
    r = query(d, "many.test", DNS_A);
    check(r.status == DNS_OK && r.n == DNS_MAX_RR && has(&r, "10.1.0.1", 0),
          "80-record A answer (truncated UDP, TCP retry) capped at %d (%s, n=%d)", DNS_MAX_RR,
          dns_status_str(r.status), r.n);
}

static void test_negative(dns *d)
{
    struct result r = query(d, "nx.test", DNS_A);
    check(r.status == DNS_NXDOMAIN && r.calls == 1, "nx.test -> nxdomain (%s)", dns_status_str(r.status));
    r = query(d, "nosuch.test", DNS_MX);
    check(r.status == DNS_NXDOMAIN, "unknown name under --local zone -> nxdomain (%s)", dns_status_str(r.status));
    r = query(d, "h.test", DNS_TXT);
    check(r.status == DNS_NODATA, "TXT for host-record name -> nodata (%s)", dns_status_str(r.status));
    r = query(d, "v4.test", DNS_AAAA);
    check(r.status == DNS_NODATA, "AAAA for v4-only host-record -> nodata (%s)", dns_status_str(r.status));
    r = query(d, "a.test", DNS_AAAA);
    check(r.status == DNS_NXDOMAIN, "AAAA for --address v4 name under --local -> nxdomain (dnsmasq quirk) (%s)",
          dns_status_str(r.status));
    r = query(d, "example.com", DNS_A);
    check(r.status == DNS_SERVFAIL, "REFUSED (no upstream) -> servfail (%s)", dns_status_str(r.status));
    r = query(d, "bad..name", DNS_A);
    check(r.status == DNS_ERROR && r.calls == 1, "empty label -> error, via the loop (%s)", dns_status_str(r.status));
}

/* ---- callbacks that re-enter ------------------------------------------- */

static void count_call(void *arg, int status, const dns_answer *ans)
{
    (void)status;
    (void)ans;
    (*(int *)arg)++;
}

static void test_never_synchronous(dns *d)
{
    int calls = 0;
    dns_query *q = dns_query_start(d, "bad..name", DNS_A, count_call, &calls);
    check(q != NULL && calls == 0, "failing query: handle returned, callback not yet run");
    run_for(50);
    check(calls == 1, "failing query: callback ran once from the loop");
    q = dns_query_start(d, "bad..name", DNS_A, count_call, &calls);
    dns_cancel(q);
    run_for(50);
    check(calls == 1, "failing query cancelled before the loop ran: no callback");
}

struct chain {
    dns *d;
    struct result second;
    dns_query *victim;
    int victim_calls;
};

static void on_chain_first(void *arg, int status, const dns_answer *ans)
{
    (void)ans;
    struct chain *c = arg;
    c->second.status = status == DNS_OK ? -2 : -3;
    dns_cancel(c->victim); /* a query still inside c-ares */
    if (!dns_query_start(c->d, "mx.test", DNS_MX, on_result, &c->second))
        c->second.calls = -1;
}

static void test_reentry(dns *d)
{
    struct chain c;
    memset(&c, 0, sizeof c);
    c.d = d;
    c.victim = dns_query_start(d, "x.slow.invalid", DNS_A, count_call, &c.victim_calls);
    dns_query_start(d, "a.test", DNS_A, on_chain_first, &c);
    run_until(&c.second.calls, 3000);
    check(c.second.calls == 1 && c.second.status == DNS_OK && has(&c.second, "mail.mx.test", 10),
          "query started from inside a callback completes (%s)", dns_status_str(c.second.status));
    run_for(700); /* well past the victim's 200 ms x 2 tries */
    check(c.victim_calls == 0, "query cancelled from another query's callback never calls back");
}

static void test_cancel(dns *d, dns *dead)
{
    int live = 0, slow = 0;
    dns_cancel(dns_query_start(d, "a.test", DNS_A, count_call, &live));
    dns_cancel(dns_query_start(dead, "a.test", DNS_A, count_call, &slow));
    run_for(800);
    check(live == 0, "dns_cancel: answered query never calls back");
    check(slow == 0, "dns_cancel: timed-out query never calls back");
    dns_cancel(NULL);
}

struct freer {
    dns *d;
    int first, second, second_status, restart_null;
};

static void on_free_first(void *arg, int status, const dns_answer *ans)
{
    (void)status;
    (void)ans;
    struct freer *f = arg;
    f->first++;
    dns_free(f->d);
    f->restart_null = dns_query_start(f->d, "a.test", DNS_A, count_call, &f->first) == NULL;
}

static void on_free_second(void *arg, int status, const dns_answer *ans)
{
    (void)ans;
    struct freer *f = arg;
    f->second++;
    f->second_status = status;
}

static void test_free_in_callback(const char *servers)
{
    struct freer f;
    memset(&f, 0, sizeof f);
    f.d = mkdns(servers, 200, 2);
    if (!f.d) {
        check(0, "dns_new for free-in-callback");
        return;
    }
    dns_query_start(f.d, "y.slow.invalid", DNS_A, on_free_second, &f);
    dns_query_start(f.d, "a.test", DNS_A, on_free_first, &f);
    run_until(&f.second, 3000);
    check(f.first == 1 && f.second == 1 && f.second_status == DNS_ERROR && f.restart_null,
          "dns_free inside a callback: others get error once, new queries refused (first=%d second=%d %s)",
          f.first, f.second, dns_status_str(f.second_status));
}

struct outstanding {
    dns *d;
    int calls, errors, restart_null;
};

static void on_outstanding(void *arg, int status, const dns_answer *ans)
{
    (void)ans;
    struct outstanding *o = arg;
    o->calls++;
    o->errors += status == DNS_ERROR;
    o->restart_null += dns_query_start(o->d, "a.test", DNS_A, count_call, &o->calls) == NULL;
}

static void test_free_outstanding(const char *dead_servers, const char *live_servers)
{
    struct outstanding o = { 0 };
    int cancelled = 0;
    o.d = mkdns(dead_servers, 200, 2);
    if (!o.d) {
        check(0, "dns_new for free-outstanding");
        return;
    }
    for (int i = 0; i < 100; i++)
        dns_query_start(o.d, "a.test", DNS_A, on_outstanding, &o);
    dns_cancel(dns_query_start(o.d, "a.test", DNS_A, count_call, &cancelled));
    run_for(20);
    dns_query_start(o.d, "bad..name", DNS_A, on_outstanding, &o); /* parked for the loop */
    dns_free(o.d);
    check(o.calls == 101 && o.errors == 101 && o.restart_null == 101 && cancelled == 0,
          "dns_free with 101 outstanding: each called once with error inside dns_free, cancelled one silent "
          "(calls=%d errors=%d)", o.calls, o.errors);

    dns *d = mkdns(live_servers, 200, 2); /* free while an answer may be on the wire */
    int live = 0;
    if (d) {
        dns_query_start(d, "a.test", DNS_A, count_call, &live);
        dns_free(d);
    }
    run_for(50);
    check(d && live == 1, "dns_free right after start: one error callback, nothing after");
}

/* ---- timeouts and loop latency ----------------------------------------- */

static void test_timeout(const char *dead, int tries, double expect_ms)
{
    dns *d = mkdns(dead, 200, tries);
    if (!d) {
        check(0, "dns_new for timeout");
        return;
    }
    double t0 = now_ms();
    struct result r = query(d, "a.test", DNS_A);
    double el = r.at_ms - t0;
    struct dns_stats st;
    dns_get_stats(d, &st);
    check(r.status == DNS_TIMEOUT && el >= expect_ms - 10 && el <= expect_ms + 100,
          "timeout 200 ms x %d tries: %s after %.0f ms (expect ~%.0f)", tries, dns_status_str(r.status), el,
          expect_ms);
    check(st.queries == 1 && st.timeouts == 1 && st.failures == 0, "stats after timeout: q=%lu t=%lu f=%lu",
          st.queries, st.timeouts, st.failures);
    dns_free(d);
}

struct ticker {
    double last, worst;
    int ticks;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct ticker *t = arg;
    double n = now_ms();
    if (t->ticks++ && n - t->last - 5 > t->worst)
        t->worst = n - t->last - 5;
    t->last = n;
}

struct flood {
    dns *d;
    int started, done, timeouts;
    double start_ms;
};

static void on_flood_done(void *arg, int status, const dns_answer *ans)
{
    (void)ans;
    struct flood *f = arg;
    f->timeouts += status == DNS_TIMEOUT;
    f->done++;
}

static void on_flood_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct flood *f = arg;
    double t0 = now_ms();
    for (int i = 0; i < 1000; i++) {
        char name[64];
        snprintf(name, sizeof name, "n%d.flood.test", i);
        f->started += dns_query_start(f->d, name, i % 2 ? DNS_A : DNS_MX, on_flood_done, f) != NULL;
    }
    f->start_ms = now_ms() - t0;
}

/* Timers alone can be several ms late on a busy or virtualised host, so
 * the flood is judged against the same ticker on an otherwise idle loop. */
static double idle_lateness(int ms)
{
    struct ticker t = { 0 };
    struct timeval five = { 0, 5000 };
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, &t);
    event_add(tick, &five);
    run_for(ms);
    event_free(tick);
    return t.worst;
}

static void test_no_blocking(const char *dead)
{
    double idle = idle_lateness(700);
    struct flood f = { .d = mkdns(dead, 200, 2) };
    struct ticker t = { 0 };
    struct timeval five = { 0, 5000 }, twenty = { 0, 20000 };
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, &t);
    struct event *go = evtimer_new(base, on_flood_start, &f);
    if (!f.d || !tick || !go) {
        check(0, "setup for 1000-query flood");
        return;
    }
    event_add(tick, &five);
    evtimer_add(go, &twenty);
    double t0 = now_ms();
    int all = 0;
    while (!all && now_ms() - t0 < 5000) {
        run_until(&all, 50);
        all = f.done == 1000;
    }
    double el = now_ms() - t0;
    event_free(tick);
    event_free(go);
    check(f.started == 1000 && f.done == 1000 && f.timeouts == 1000,
          "1000 concurrent queries to a dead server all time out (started=%d done=%d timeouts=%d, %.0f ms)",
          f.started, f.done, f.timeouts, el);
    check(t.worst < idle + 10,
          "5 ms timer on the same loop: worst lateness %.2f ms over %d ticks, idle loop %.2f ms "
          "(starting 1000 took %.2f ms)", t.worst, t.ticks, idle, f.start_ms);
    dns_free(f.d);
}

/* ---- helpers without a server ----------------------------------------- */

static void test_reverse(void)
{
    char out[128];
    int rc = dns_reverse_name("192.0.2.1", "bl.example", out, sizeof out);
    check(rc == 0 && !strcmp(out, "1.2.0.192.bl.example"), "reverse v4 + zone: %s", out);
    rc = dns_reverse_name("192.0.2.1", NULL, out, sizeof out);
    check(rc == 0 && !strcmp(out, "1.2.0.192.in-addr.arpa"), "reverse v4 default zone: %s", out);
    rc = dns_reverse_name("192.0.2.1", "bl.example.", out, sizeof out);
    check(rc == 0 && !strcmp(out, "1.2.0.192.bl.example"), "reverse zone trailing dot dropped: %s", out);
    rc = dns_reverse_name("2001:db8::567:89ab", "", out, sizeof out);
    check(rc == 0 && !strcmp(out, "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"),
          "reverse v6 default zone: %s", out);
    rc = dns_reverse_name("::1", "bl6.example", out, sizeof out);
    check(rc == 0 && !strcmp(out, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.bl6.example"),
          "reverse v6 + zone: %s", out);
    rc = dns_reverse_name("::ffff:198.51.100.7", NULL, out, sizeof out);
    check(rc == 0 && !strcmp(out, "7.100.51.198.in-addr.arpa"), "reverse v4-mapped v6 as v4: %s", out);
    check(dns_reverse_name("1.2.3", NULL, out, sizeof out) == -1 && out[0] == '\0', "reverse bad address -> -1");
    check(dns_reverse_name("10.0.0.1", "x", out, 8) == -1 && out[0] == '\0', "reverse short buffer -> -1");
    check(dns_reverse_name(NULL, NULL, out, sizeof out) == -1, "reverse NULL -> -1");
}

static void test_api_edges(int port)
{
    char err[256] = "", csv[128];
    dns *d = dns_new(base, "not-an-address", 200, 1, err, sizeof err);
    check(d == NULL && err[0], "dns_new rejects bad server list (%s)", err);
    snprintf(csv, sizeof csv, "[::1]:%d,127.0.0.1:%d", port, port);
    d = dns_new(base, csv, 200, 1, err, sizeof err);
    check(d != NULL, "dns_new accepts \"%s\"", csv);
    dns_free(d);
    d = dns_new(base, NULL, 0, 0, err, sizeof err);
    check(d != NULL, "dns_new with resolv.conf defaults");
    check(dns_query_start(d, NULL, DNS_A, on_result, NULL) == NULL, "NULL name refused");
    check(dns_query_start(d, "a.test", (enum dns_type)42, on_result, NULL) == NULL, "bad type refused");
    dns_free(d);
    dns_free(NULL);
    check(!strcmp(dns_status_str(DNS_OK), "ok") && !strcmp(dns_status_str(DNS_NODATA), "nodata") &&
              !strcmp(dns_status_str(DNS_TIMEOUT), "timeout") && !strcmp(dns_status_str(99), "?"),
          "dns_status_str");
}

static void test_stats(dns *d)
{
    struct dns_stats st;
    dns_get_stats(d, &st);
    /* the one timeout is the cancelled victim in test_reentry: cancelled
     * queries still count, the stats describe the resolver */
    check(st.queries >= 15 && st.timeouts == 1 && st.failures >= 2,
          "stats on live server: q=%lu t=%lu f=%lu", st.queries, st.timeouts, st.failures);
}

/* ---- with a cache (dnscache.h) ------------------------------------------ */

static void test_cache(const char *live, const char *dead)
{
    dnscache *c = dnscache_new(100, 3600);
    dns *d = mkdns(live, 200, 2), *dd = mkdns(dead, 200, 1);
    if (!c || !d || !dd) {
        check(0, "cache test setup");
        return;
    }
    dns_set_cache(d, c);
    dns_set_cache(dd, c);
    struct dns_stats st0, st;
    dns_get_stats(d, &st0);

    dns_answer a = { 1, (struct dns_rr[]){ { (char *)"192.0.2.9", 0 } } };
    dnscache_put(c, "cached.test", DNS_A, DNS_OK, &a, 60);
    struct result r;
    memset(&r, 0, sizeof r);
    dns_query_start(d, "CACHED.test", DNS_A, on_result, &r);
    check(r.calls == 0, "cache hit: the callback has not run when dns_query_start returns");
    run_until(&r.calls, 1000);
    dns_get_stats(d, &st);
    check(r.calls == 1 && r.status == DNS_OK && has(&r, "192.0.2.9", 0) && st.queries == st0.queries,
          "cache hit: answered from the loop, nothing sent (%s)", dns_status_str(r.status));
    int cancelled = 0;
    dns_cancel(dns_query_start(d, "cached.test", DNS_A, count_call, &cancelled));
    run_for(50);
    check(cancelled == 0, "cache hit cancelled before the loop ran: no callback");

    struct result r1, r2;
    memset(&r1, 0, sizeof r1);
    memset(&r2, 0, sizeof r2);
    dns_query_start(d, "mx.test", DNS_MX, on_result, &r1);
    dns_query_start(d, "mx.test", DNS_MX, on_result, &r2);
    run_until(&r2.calls, 2000);
    run_until(&r1.calls, 2000);
    dns_get_stats(d, &st);
    check(r1.calls == 1 && r2.calls == 1 && r1.n == 2 && r2.n == 2 && has(&r2, "mail.mx.test", 10) &&
              st.queries == st0.queries + 1,
          "two askers of one question: one query, both answered (queries +%lu)", st.queries - st0.queries);

    /* TTL 0 from this dnsmasq: nothing was cached, the next asker asks */
    r = query(d, "mx.test", DNS_MX);
    dns_get_stats(d, &st);
    check(r.status == DNS_OK && st.queries == st0.queries + 2, "TTL 0 answer not cached: asked again");

    int kept = 0, dropped = 0;
    struct dns_stats sd0, sd;
    dns_get_stats(dd, &sd0);
    dns_query_start(dd, "x.test", DNS_A, count_call, &kept);
    dns_cancel(dns_query_start(dd, "x.test", DNS_A, count_call, &dropped));
    run_for(400);
    dns_get_stats(dd, &sd);
    check(kept == 1 && dropped == 0 && sd.queries == sd0.queries + 1 && sd.timeouts == sd0.timeouts + 1,
          "a cancelled waiter is skipped, the other gets the timeout; one query");
    int e1 = 0, e2 = 0;
    dns_query_start(dd, "y.test", DNS_A, count_call, &e1);
    dns_query_start(dd, "y.test", DNS_A, count_call, &e2);
    dns_query_start(dd, "y.test", DNS_A, count_call, &e2);
    dns_get_stats(dd, &sd0);
    check(sd0.queries == sd.queries + 1, "three askers while one is in flight: one query");
    dns_free(dd);
    check(e1 == 1 && e2 == 2, "dns_free: every waiter of a shared question called back");
    struct dnscache_stats cs;
    dnscache_get_stats(c, &cs);
    check(cs.entries == 1, "timeouts were not cached (entries %lu)", cs.entries);
    dns_free(d);
    dnscache_free(c);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    signal(SIGSEGV, on_fatal_signal);
    signal(SIGABRT, on_fatal_signal);
    base = event_base_new();
    test_reverse();

    int dead_port, dead_fd = bind_udp(&dead_port);
    char dead[64], live[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", dead_port);
    if (access(DNSMASQ, X_OK) != 0) {
        check(0, "dnsmasq not found at %s (apt-get install dnsmasq-base)", DNSMASQ);
    } else {
        int port = start_dnsmasq(dead_port);
        check(port > 0, "dnsmasq started on 127.0.0.1:%d", port);
        snprintf(live, sizeof live, "127.0.0.1:%d", port);
        dns *d = port > 0 ? mkdns(live, 200, 2) : NULL;
        if (d) {
            test_api_edges(port);
            test_records(d);
            test_negative(d);
            test_never_synchronous(d);
            test_reentry(d);
            test_stats(d);
            dns *dd = mkdns(dead, 200, 2);
            test_cancel(d, dd);
            dns_free(dd);
            test_free_in_callback(live);
            test_free_outstanding(dead, live);
            test_cache(live, dead);
            dns_free(d);
        }
    }
    test_timeout(dead, 1, 200);
    test_timeout(dead, 2, 600);
    test_no_blocking(dead);

    kill_dnsmasq();
    close(dead_fd);
    event_base_free(base);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
