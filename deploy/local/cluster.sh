#!/usr/bin/env bash
# Kiroku's local multi-node cluster: three NATS servers forming one JetStream cluster
# (node-1.conf … node-3.conf: clients on 127.0.0.1:4311, 127.0.0.2:4312, 127.0.0.3:4313),
# and optionally two gateways and three workers on top of them, every stream and bucket
# replicated on all three servers (KIROKU_NATS_REPLICAS=3).
#
#   deploy/local/cluster.sh up [--kiroku]    start what is not running; wait until it serves
#   deploy/local/cluster.sh status           processes, JetStream meta leader, stream leaders
#   deploy/local/cluster.sh down             stop everything (Kiroku drains first); data stays
#
# Everything it writes (NATS stores, logs, pid files, the local Kiroku's keys and login)
# goes under KIROKU_LOCAL_RUN_DIR (default deploy/local/.run); `rm -rf` it to start over.
# `up --kiroku` runs `kiroku up --workers 3` (account, audit and storage services, gateway
# 1, three workers) and a second `kiroku serve gateway`; it needs PostgreSQL and Redis as
# `kiroku up` does (`make services`) and target/debug/kiroku (`make build`). Kiroku's
# streams live under the cluster root KIROKU_CLUSTER (default `local`), so they never mix
# with `make demo`'s. See README.md here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUN=${KIROKU_LOCAL_RUN_DIR:-$HERE/.run}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
KIROKU=${KIROKU_BIN:-$ROOT/target/debug/kiroku}

NODES=(1 2 3)
node_host() { echo "127.0.0.$1"; }
node_monitor() { echo "http://127.0.0.$1:831$1"; }
NATS_URLS=nats://127.0.0.1:4311,nats://127.0.0.2:4312,nats://127.0.0.3:4313

# Kiroku's addresses: away from `kiroku up`'s defaults, so `make demo` can run beside it.
GATEWAY_URLS=http://127.0.0.1:50061,http://127.0.0.1:50062
GATEWAY_ADMINS=(127.0.0.1:9471 127.0.0.1:9472)
ACCOUNT_LISTEN=127.0.0.1:50063
AUDIT_LISTEN=127.0.0.1:50064
STORAGE_LISTEN=127.0.0.1:50065

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*"; }

# The pid in $RUN/$1.pid when that process is alive.
alive_pid() {
    local pid
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

http_ok() { curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; }

# Polls `$2 ARGS…` every 200 ms until it succeeds or $1 seconds passed.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

meta_leader() {
    curl -fsS -m 2 "$(node_monitor "$1")/jsz" 2>/dev/null \
        | python3 -c 'import json,sys; print((json.load(sys.stdin).get("meta_cluster") or {}).get("leader",""))' 2>/dev/null
}

has_meta_leader() { [ -n "$(meta_leader "$1")" ]; }

start_node() {
    local n=$1 conf=$RUN/node-$1.conf
    if alive_pid "node-$n" >/dev/null; then
        say "NATS node $n already running"
        return
    fi
    # The run directory's copy of the config; sync_interval: always when this nats-server
    # knows the key (2.9.10 refuses it, see node-1.conf).
    sed 's/^  # sync_interval: always$/  sync_interval: always/' "$HERE/node-$n.conf" > "$conf"
    if ! (cd "$RUN" && "$NATS_SERVER" -c "$conf" -t >/dev/null 2>&1); then
        cp "$HERE/node-$n.conf" "$conf"
        [ "$n" = 1 ] && say "$("$NATS_SERVER" --version) has no sync_interval: writes reach the disk within 2 minutes (development only)"
    fi
    mkdir -p "$RUN/node-$n"
    (cd "$RUN" && nohup "$NATS_SERVER" -c "$conf" -P "$RUN/node-$n.pid" -l "$RUN/node-$n.log" \
        >/dev/null 2>&1 &)
    say "NATS node $n starting: nats://$(node_host "$n"):431$n (log $RUN/node-$n.log)"
}

start_kiroku() {
    [ -x "$KIROKU" ] || die "$KIROKU not found: make build (or set KIROKU_BIN)"
    export KIROKU_NATS_URL=$NATS_URLS KIROKU_NATS_REPLICAS=3
    export KIROKU_CLUSTER=${KIROKU_CLUSTER:-local}
    # The local cluster's CLI login, not the one of `make demo` (~/.config/kiroku).
    export KIROKU_CONFIG_DIR=$RUN/config
    # Both gateways sign and accept the same resume tokens (a client moves between them).
    if [ ! -s "$RUN/resume-secret" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/resume-secret")
    fi
    KIROKU_RESUME_SECRET=$(cat "$RUN/resume-secret")
    export KIROKU_RESUME_SECRET
    if alive_pid kiroku-up >/dev/null; then
        say "kiroku up already running"
    else
        mkdir -p "$RUN/kiroku"
        nohup "$KIROKU" up --workers 3 --run-dir "$RUN/kiroku" \
            --listen 127.0.0.1:50061 --admin-listen "${GATEWAY_ADMINS[0]}" \
            --account-listen "$ACCOUNT_LISTEN" --audit-listen "$AUDIT_LISTEN" \
            --storage-listen "$STORAGE_LISTEN" > "$RUN/kiroku-up.log" 2>&1 < /dev/null &
        echo $! > "$RUN/kiroku-up.pid"
        say "kiroku up starting: account, audit, storage, gateway 1, 3 workers (log $RUN/kiroku-up.log, services' logs in $RUN/kiroku)"
    fi
    # Gateway 2 needs the account, audit and storage services: after gateway 1 serves.
    wait_for 180 gateway_ready 0 kiroku-up \
        || die "gateway 1 not ready after 3 minutes: see $RUN/kiroku-up.log and $RUN/kiroku/*.log"
    if alive_pid gateway-2 >/dev/null; then
        say "gateway 2 already running"
    else
        nohup "$KIROKU" serve gateway --listen 127.0.0.1:50062 --admin-listen "${GATEWAY_ADMINS[1]}" \
            --account-url "http://$ACCOUNT_LISTEN" --audit-url "http://$AUDIT_LISTEN" \
            --storage-url "http://$STORAGE_LISTEN" > /dev/null 2> "$RUN/gateway-2.log" < /dev/null &
        echo $! > "$RUN/gateway-2.pid"
        say "gateway 2 starting (log $RUN/gateway-2.log)"
    fi
    wait_for 60 gateway_ready 1 gateway-2 || die "gateway 2 not ready after 1 minute: see $RUN/gateway-2.log"
}

# Gateway $1 (0 or 1) answers /readyz; fails at once when its process ($2) is gone.
gateway_ready() {
    alive_pid "$2" >/dev/null || die "$2 exited: see $RUN/$2.log"
    http_ok "http://${GATEWAY_ADMINS[$1]}/readyz"
}

up() {
    local with_kiroku=no
    case ${1:-} in
        --kiroku) with_kiroku=yes ;;
        "") ;;
        *) die "up takes only --kiroku" ;;
    esac
    [ -x "$NATS_SERVER" ] || die "nats-server not found: make deps (apt-get install nats-server) or set NATS_SERVER"
    mkdir -p "$RUN"
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do
        wait_for 30 http_ok "$(node_monitor "$n")/healthz" \
            || die "NATS node $n does not answer $(node_monitor "$n")/healthz: see $RUN/node-$n.log"
    done
    wait_for 30 has_meta_leader 1 || die "no JetStream meta leader after 30 s: see $RUN/node-*.log"
    say "NATS cluster kiroku-local up, JetStream meta leader $(meta_leader 1)"
    say "  KIROKU_NATS_URL=$NATS_URLS KIROKU_NATS_REPLICAS=3"
    if [ $with_kiroku = yes ]; then
        start_kiroku
        say "Kiroku up: gateways $GATEWAY_URLS (admin ${GATEWAY_ADMINS[*]})"
        say "  stream: KIROKU_CONFIG_DIR=$RUN/config $KIROKU stream FILE.wav --gateway $GATEWAY_URLS"
    fi
}

# SIGTERM, then SIGKILL after $2 seconds.
stop() {
    local name=$1 grace=$2 pid
    pid=$(alive_pid "$name") || { rm -f "$RUN/$name.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for "$grace" eval "! kill -0 $pid 2>/dev/null"; then
        say "$name (pid $pid) still running after ${grace} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
    say "$name stopped"
}

down() {
    [ -d "$RUN" ] || { say "nothing runs ($RUN does not exist)"; return; }
    # Gateways and workers first (workers hand their sessions back), NATS last.
    stop gateway-2 15
    stop kiroku-up 60
    for n in "${NODES[@]}"; do stop "node-$n" 15; done
}

# /jsz?accounts=true&streams=true&config=true on stdin: the meta leader, each stream's
# replicas and leader.
STREAMS_PY='
import json, sys
jsz = json.load(sys.stdin)
print("cluster.sh: JetStream meta leader:", (jsz.get("meta_cluster") or {}).get("leader") or "NONE")
for account in jsz.get("account_details") or []:
    for stream in sorted(account.get("stream_detail") or [], key=lambda s: s["name"]):
        leader = (stream.get("cluster") or {}).get("leader") or "NONE"
        replicas = (stream.get("config") or {}).get("num_replicas", "?")
        messages = (stream.get("state") or {}).get("messages", 0)
        print("cluster.sh:   stream %s: %s replicas, leader %s, %d messages"
              % (stream["name"], replicas, leader, messages))
'

status() {
    local n pid
    for n in "${NODES[@]}"; do
        if pid=$(alive_pid "node-$n"); then
            if http_ok "$(node_monitor "$n")/healthz"; then
                say "NATS node $n: running (pid $pid), healthy, nats://$(node_host "$n"):431$n"
            else
                say "NATS node $n: running (pid $pid), NOT healthy ($(node_monitor "$n")/healthz)"
            fi
        else
            say "NATS node $n: stopped"
        fi
    done
    for n in "${NODES[@]}"; do
        alive_pid "node-$n" >/dev/null || continue
        curl -fsS -m 2 "$(node_monitor "$n")/jsz?accounts=true&streams=true&config=true" 2>/dev/null \
            | python3 -c "$STREAMS_PY" || true
        break
    done
    if pid=$(alive_pid kiroku-up); then
        say "kiroku up: running (pid $pid), gateway 1 $(http_ok "http://${GATEWAY_ADMINS[0]}/readyz" && echo ready || echo NOT ready)"
    else
        say "kiroku up: stopped"
    fi
    if pid=$(alive_pid gateway-2); then
        say "gateway 2: running (pid $pid), $(http_ok "http://${GATEWAY_ADMINS[1]}/readyz" && echo ready || echo NOT ready)"
    else
        say "gateway 2: stopped"
    fi
}

case ${1:-} in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up [--kiroku] | down | status" >&2; exit 2 ;;
esac
