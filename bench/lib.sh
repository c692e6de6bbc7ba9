# bench/lib.sh: shared by bench/run and bench/profile.sh (sourced, not run).
# Expects ROOT (the repository) and WORK (a scratch directory) to be set;
# runs from ROOT.  Everything started goes into PIDS and is stopped by
# cleanup (installed as the EXIT trap by bench_init).
SCPU=${BENCH_SERVER_CPU:-0}     # moat, smtp-sink, Postfix
CCPU=${BENCH_CLIENT_CPU:-1}     # smtp-source, the DNS servers, the idle-connection helper
CONF=$ROOT/bench/conf
HZ=$(getconf CLK_TCK)           # /proc/PID/stat ticks per second (used by run and profile.sh)
export HZ

FROM=bench@sender.example     # verified by return_path: MX + A in the DNS zone
RCPT=bench@example.test       # local domain, no Router record
HELO=client.bench.test

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

# ---- prerequisites -----------------------------------------------------------

# Installs what is missing when root (Postfix with debconf "No configuration":
# nothing of it is configured or started); otherwise prints the command.
check_prerequisites() {
    local c need_pkgs=()
    for c in smtp-source:postfix smtp-sink:postfix postfix:postfix rbldnsd:rbldnsd taskset:util-linux \
             lua5.4:lua5.4 cc:build-essential; do
        command -v "${c%%:*}" >/dev/null 2>&1 || need_pkgs+=("${c#*:}")
    done
    lua5.4 -e 'require "socket"' 2>/dev/null || need_pkgs+=(lua-socket)
    if [ ${#need_pkgs[@]} -gt 0 ]; then
        mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
        if [ "$(id -u)" = 0 ]; then
            say "bench: installing ${need_pkgs[*]} (Postfix with debconf \"No configuration\")"
            echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null ||
                { apt-get update -q >/dev/null &&
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null; } ||
                die "could not install ${need_pkgs[*]}"
        else
            say "bench: missing packages; as root run:"
            say "  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections"
            say "  DEBIAN_FRONTEND=noninteractive apt-get install -y ${need_pkgs[*]}"
            exit 1
        fi
    fi
    [ "$(id -u)" = 0 ] || die "run as root: Postfix's master and rbldnsd's user switch need it"
    if [ ! -x ./moat ] || [ ! -x ./moatctl ]; then die "build moat first (make)"; fi
    [ "$(nproc)" -ge 2 ] || say "bench: warning: one CPU only; server and client share it"
}

# ---- bookkeeping -------------------------------------------------------------

PIDS=()          # everything we started (killed at exit)
POSTFIX_DIR=""
cleanup() {
    local p
    [ -n "$POSTFIX_DIR" ] && bench/postfix.sh stop "$POSTFIX_DIR" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    if [ "${BENCH_KEEP:-}" != 1 ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
}
# Stop one process we started and forget it (a finished pid may be reused).
stop_pid() {
    local p keep=()
    kill "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
bench_init() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    rm -rf "$WORK"
    mkdir -p "$WORK"
}

# A free port on 127.0.0.1 (tcp or udp).
free_port() {
    lua5.4 - "$1" <<'EOF'
local socket = require "socket"
local s = arg[1] == "udp" and socket.udp() or socket.tcp()
if arg[1] == "udp" then s:setsockname("127.0.0.1", 0) else s:bind("127.0.0.1", 0) end
local _, port = s:getsockname()
print(port)
s:close()
EOF
}

# Wait until 127.0.0.1:PORT answers SMTP with 220 (or give up after 10 s).
wait_smtp() {
    lua5.4 - "$1" <<'EOF'
local socket = require "socket"
for _ = 1, 100 do
  local c = socket.tcp()
  c:settimeout(2)
  if c:connect("127.0.0.1", tonumber(arg[1])) then
    local l = c:receive("*l")
    c:send("QUIT\r\n")
    c:close()
    if l and l:sub(1, 3) == "220" then os.exit(0) end
  end
  socket.sleep(0.1)
end
os.exit(1)
EOF
}

# Wait until a DNS server on PORT answers NAME TYPE.
wait_dns() {
    lua5.4 - "$ROOT" "$1" "$2" "$3" <<'EOF'
package.path = arg[1] .. "/spec/?.lua;" .. arg[1] .. "/spec/?/init.lua;" .. package.path
local dns = require "helpers.dns"
local socket = require "socket"
for _ = 1, 100 do
  if dns.query(tonumber(arg[2]), arg[3], arg[4], 0.2) then os.exit(0) end
  socket.sleep(0.1)
end
os.exit(1)
EOF
}

proc_cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }   # ticks, all threads
proc_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
stat_of() { ./moatctl -s "$1" stats 2>/dev/null | awk -v k="$2" '$1 == k {print $2}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
udp_drops() { awk '/^Udp:/ {if (!h) {for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1} else print $c}' /proc/net/snmp; }
raise_fd_limit() { ulimit -n "$(ulimit -Hn)" 2>/dev/null; ulimit -n; }

# start_dns -> DNS_PORT: rbldnsd serving the RBL zone and the Return-Path
# domain (bench/conf/rbl.zone, sender.zone), pinned to the client CPU.
start_dns() {
    mkdir -p "$WORK/dns"
    cp "$CONF/rbl.zone" "$CONF/sender.zone" "$WORK/dns/"
    chmod 755 "$WORK/dns"; chmod 644 "$WORK/dns/"*
    DNS_PORT=$(free_port udp)
    local user
    user=$(getent passwd rbldns >/dev/null && echo rbldns || echo nobody)   # it will not run as root
    taskset -c "$CCPU" rbldnsd -n -e -u "$user" -b "127.0.0.1/$DNS_PORT" -w "$WORK/dns" \
        bl.bench.test:ip4set:rbl.zone sender.example:generic:sender.zone >"$WORK/dns/log" 2>&1 &
    PIDS+=($!)
    wait_dns "$DNS_PORT" sender.example MX || die "rbldnsd did not start: $(cat "$WORK/dns/log")"
}

# ---- moat --------------------------------------------------------------------

# start_moat NAME DNS_SERVER -> sets MOAT_PID MOAT_PORT MOAT_SOCK MOAT_DIR.
# A fresh spool each time.  MOAT_SED: one more sed expression for the config
# (profile.sh's variants); MOAT_PRELOAD: an LD_PRELOAD library.
start_moat() {
    MOAT_DIR=$WORK/$1
    MOAT_PORT=$(free_port tcp)
    MOAT_SOCK=$MOAT_DIR/moat.sock
    mkdir -p "$MOAT_DIR"
    sed -e "s|@PORT@|$MOAT_PORT|; s|@DNS@|$2|; s|@SPOOL@|$MOAT_DIR/spool|; s|@SOCKET@|$MOAT_SOCK|" \
        -e "s|@CONF@|$CONF|g" -e "${MOAT_SED:-}" "$CONF/moat.conf.in" > "$MOAT_DIR/moat.conf"
    ( raise_fd_limit >/dev/null
      [ -n "${MOAT_PRELOAD:-}" ] && export LD_PRELOAD=$MOAT_PRELOAD
      exec taskset -c "$SCPU" ./moat -c "$MOAT_DIR/moat.conf" ) 2>"$MOAT_DIR/log" &
    MOAT_PID=$!
    PIDS+=("$MOAT_PID")
    wait_smtp "$MOAT_PORT" || die "moat did not start: $(tail -5 "$MOAT_DIR/log")"
}

stop_moat() { stop_pid "$MOAT_PID"; }


# ---- one smtp-source run ---------------------------------------------------------

# load PORT COUNT SIZE MODE SESSIONS -> prints msg/s (0 when smtp-source failed)
load() {
    local port=$1 n=$2 size=$3 mode=$4 sessions=$5 opt=() t0 t1
    [ "$mode" = many ] && opt=(-d)
    t0=$(date +%s.%N)
    if ! taskset -c "$CCPU" smtp-source -s "$sessions" -m "$n" -l "$size" "${opt[@]}" \
            -M "$HELO" -f "$FROM" -t "$RCPT" "127.0.0.1:$port" >"$WORK/source.log" 2>&1; then
        say "  smtp-source failed: $(tail -2 "$WORK/source.log")"
        echo 0
        return
    fi
    t1=$(date +%s.%N)
    awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f\n", n / (b - a)}'
}

