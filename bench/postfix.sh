#!/bin/sh
# bench/postfix.sh: a throwaway Postfix instance for the comparison.
#
#   bench/postfix.sh start DIR PORT [CPU]   make DIR/{etc,queue,data}, start Postfix
#                                           on 127.0.0.1:PORT (pinned to CPU)
#   bench/postfix.sh held DIR               how many messages sit in the hold queue
#   bench/postfix.sh stop DIR               stop it
#
# Needs Debian's postfix package (installed with debconf "No configuration",
# so nothing in /etc/postfix is configured or running), and root: master(8)
# starts as root and its daemons run as the postfix user.
#
# The instance has its own config_directory, queue_directory and
# data_directory under DIR and listens only on loopback.  smtpd receives as
# it always does: cleanup(8) writes each message to a queue file and fsyncs it
# before smtpd answers 250.  Every message is then put on HOLD (an access
# action at DATA), so it stays in the queue: Postfix does the same work as
# moat (receive, store durably, acknowledge) and no delivery work on top.
# That is Postfix's best case; with delivery (to discard:) it is slower.
# Postfix keeps its usual logging (to DIR/maillog through postlogd, instead
# of syslog); there is no quiet level for it.
set -eu
cmd=$1
dir=$2

pf() { postfix -c "$dir/etc" "$@"; }

case "$cmd" in
start)
    port=$3
    cpu=${4:-0}
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    chown postfix "$dir/data"
    cat > "$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = pf.bench.test
mydomain = bench.test
mydestination = example.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
local_transport = discard:
default_transport = discard:
relay_transport = discard:
smtpd_data_restrictions = check_client_access static:HOLD
biff = no
EOF
    cat > "$dir/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    pf check
    # master and every daemon it forks inherit the affinity
    taskset -c "$cpu" postfix -c "$dir/etc" start >/dev/null 2>&1
    ;;
held)
    find "$dir/queue/hold" -type f 2>/dev/null | wc -l
    ;;
stop)
    [ -f "$dir/etc/main.cf" ] || exit 0
    pf stop >/dev/null 2>&1 || true
    # wait for master to go (it signals its children on the way out)
    pidf="$dir/queue/pid/master.pid"
    for _ in $(seq 50); do
        [ -s "$pidf" ] || break
        kill -0 "$(tr -d ' ' < "$pidf")" 2>/dev/null || break
        sleep 0.1
    done
    ;;
*)
    echo "usage: $0 start DIR PORT [CPU] | held DIR | stop DIR" >&2
    exit 2
    ;;
esac
