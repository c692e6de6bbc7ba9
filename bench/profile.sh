#!/usr/bin/env bash
# bench/profile.sh: where moat's time goes (the analysis in bench/README.md).
#
#   bench/profile.sh [spool] [policies] [perf]      (default: all three)
#
# Same setup as bench/run (rbldnsd, bench/conf/moat.conf.in, moat on CPU 0,
# smtp-source on CPU 1, 20 sessions, 1 KB, one message per connection unless
# said otherwise), one moat per line, fresh spool each time:
#
#   spool     the same moat several ways: durable (as shipped: an fsync per
#             file); spool_sync = "syncfs" (when this moat has the setting);
#             the "syncfs shim": an LD_PRELOAD library that skips the
#             per-file fsyncs and turns the one directory fsync per batch into
#             syncfs(2), which makes every file of the batch durable with one
#             flush (durable, on a file system of its own; the experiment that
#             preceded the setting); and fsync(2) turned into a no-op (NOT
#             durable: the ceiling without disk waits).
#   policies  no policies; stock; stock without banned; for 100 KB messages
#             also a data_line hook that does nothing (the cost of the hook
#             call itself, per line).
#   perf      perf record (DWARF call graphs) of moat's event-loop thread on
#             the reference workload (fsync shimmed away, so the loop is the
#             bottleneck) and on 100 KB messages; prints the inclusive share
#             of moat's phases and the split by library.
#
# Each line: msg/s, moat CPU (all threads) per message, the loop thread's
# share, and the average spool commit latency (moatctl stats).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
WORK=${BENCH_DIR:-$ROOT/build/bench-profile}
N=${PROFILE_MSGS:-8000}
NBIG=${PROFILE_BIG_MSGS:-1000}
. bench/lib.sh
check_prerequisites
bench_init
start_dns

what=("$@")
[ ${#what[@]} -gt 0 ] || what=(spool policies perf)

# The LD_PRELOAD shims (built here, used only by this script).
cat > "$WORK/nofsync.c" <<'EOF'
int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
EOF
cat > "$WORK/syncfs.c" <<'EOF'
#define _GNU_SOURCE
#include <sys/stat.h>
#include <unistd.h>
/* Group commit by syncfs(2): the per-file fsyncs are skipped; the one
 * directory fsync a writer thread makes per batch flushes the whole
 * filesystem instead (data, inodes, the directory), so every message of the
 * batch is durable before its 250, with one flush. */
int fsync(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
        return syncfs(fd);
    return 0;
}
EOF
cc -shared -fPIC -O2 -o "$WORK/nofsync.so" "$WORK/nofsync.c" || die "cannot build the shim"
cc -shared -fPIC -O2 -o "$WORK/syncfs.so" "$WORK/syncfs.c" || die "cannot build the shim"

thread_ticks() { awk '{print $14 + $15}' "/proc/$1/task/$1/stat" 2>/dev/null || echo 0; }

# variant LABEL N SIZE [smtp-source mode]; MOAT_SED / MOAT_PRELOAD from the caller
variant() {
    local label=$1 n=$2 size=$3 mode=${4:-one} c0 c1 l0 l1 rate sum cnt
    start_moat "v$RANDOM" "127.0.0.1:$DNS_PORT"
    c0=$(proc_cpu "$MOAT_PID"); l0=$(thread_ticks "$MOAT_PID")
    rate=$(load "$MOAT_PORT" "$n" "$size" "$mode" 20)
    c1=$(proc_cpu "$MOAT_PID"); l1=$(thread_ticks "$MOAT_PID")
    sum=$(stat_of "$MOAT_SOCK" spool_commit_seconds_sum); cnt=$(stat_of "$MOAT_SOCK" spool_commits_total)
    stop_moat
    printf '  %-44s %6s msg/s  moat CPU %5d us/msg (loop thread %5d)  spool commit %5.1f ms\n' "$label" "$rate" \
        $(( (c1 - c0) * 1000000 / HZ / n )) $(( (l1 - l0) * 1000000 / HZ / n )) \
        "$(awk -v s="${sum:-0}" -v c="${cnt:-0}" 'BEGIN {print c ? 1000 * s / c : 0}')"
}

NOPOL='s/^policies = .*/policies = {}/'
NOBANNED='s/"spamtrap", "banned" }/"spamtrap" }/'
printf 'local P = {}\nfunction P.data_line(s, line, part) end\nreturn P\n' > "$WORK/noop_hook.lua"
NOOPHOOK="s|\"spamtrap\", \"banned\" }|\"spamtrap\" }\nscripts = { \"$WORK/noop_hook.lua\" }|"

say "profile: $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
for w in "${what[@]}"; do
case $w in
spool)
    echo "spool ($N messages, 1 KB, 1 msg/conn, stock policies):"
    MOAT_SED='' MOAT_PRELOAD='' variant "durable (as shipped)" "$N" 1024
    if grep -q spool_sync lua/moat/config.lua; then
        MOAT_SED='s/^log_level = /spool_sync = "syncfs"\nlog_level = /' MOAT_PRELOAD='' variant "spool_sync = \"syncfs\" (durable)" "$N" 1024
    fi
    MOAT_SED='' MOAT_PRELOAD=$WORK/syncfs.so variant "syncfs shim (durable)" "$N" 1024
    MOAT_SED='' MOAT_PRELOAD=$WORK/nofsync.so variant "no fsync at all (not durable)" "$N" 1024
    MOAT_SED='' MOAT_PRELOAD='' variant "durable, many/conn" "$N" 1024 many
    MOAT_SED='' MOAT_PRELOAD=$WORK/nofsync.so variant "no fsync at all, many/conn" "$N" 1024 many
    ;;
policies)
    echo "policies (fsync shimmed away, so the CPU cost shows):"
    MOAT_SED=$NOPOL MOAT_PRELOAD=$WORK/nofsync.so variant "1 KB, no policies" "$N" 1024
    MOAT_SED='' MOAT_PRELOAD=$WORK/nofsync.so variant "1 KB, stock policies" "$N" 1024
    MOAT_SED=$NOBANNED MOAT_PRELOAD=$WORK/nofsync.so variant "1 KB, stock without banned" "$N" 1024
    MOAT_SED=$NOPOL MOAT_PRELOAD=$WORK/nofsync.so variant "100 KB, no policies" "$NBIG" 102400
    MOAT_SED='' MOAT_PRELOAD=$WORK/nofsync.so variant "100 KB, stock policies" "$NBIG" 102400
    MOAT_SED=$NOBANNED MOAT_PRELOAD=$WORK/nofsync.so variant "100 KB, stock without banned" "$NBIG" 102400
    MOAT_SED=$NOOPHOOK MOAT_PRELOAD=$WORK/nofsync.so variant "100 KB, banned -> empty data_line hook" "$NBIG" 102400
    ;;
perf)
    command -v perf >/dev/null || { say "profile: perf is not installed (linux-perf)"; continue; }
    for spec in "1024 $N" "102400 $NBIG"; do
        # shellcheck disable=SC2086  # "SIZE COUNT" split on purpose
        set -- $spec
        MOAT_SED='' MOAT_PRELOAD=$WORK/nofsync.so start_moat "perf$1" "127.0.0.1:$DNS_PORT"
        perf record -q --call-graph dwarf,16384 -F 499 -t "$MOAT_PID" -o "$WORK/perf.$1.data" \
            >/dev/null 2>&1 &
        PERF=$!
        PIDS+=("$PERF")
        sleep 0.5
        load "$MOAT_PORT" "$2" "$1" one 20 >/dev/null
        kill -INT "$PERF" 2>/dev/null; wait "$PERF" 2>/dev/null
        stop_pid "$PERF"
        stop_moat
        echo "perf: loop thread, $(($1 / 1024)) KB messages, inclusive share of moat's phases:"
        perf report -i "$WORK/perf.$1.data" --children --sort sym -g none 2>/dev/null |
            grep -E '\] (smtp_session_new|cmd_ehlo_helo|cmd_mail|cmd_rcpt|cmd_data|data_step|feed_line|store_message|spool_done|session_free|l_dns_query_all|lua_resume|__GI___writev|evbuffer_read|epoll_wait|on_pipe)( |$)' |
            awk '{p = $1; sub(/^.*\] /, ""); printf "    %-8s %s\n", p, $0}' | sort -rn
        echo "  by library (self):"
        perf report -i "$WORK/perf.$1.data" --no-children --sort dso -g none 2>/dev/null |
            grep '%' | head -6 | awk '{printf "    %-8s %s\n", $1, $2}'
    done
    ;;
*) die "unknown: $w (spool, policies, perf)" ;;
esac
done
