#!/usr/bin/env bash
# For manual use without Docker: start ZooKeeper (2181) and two extra Redis servers
# (6380, 6381) in the background unless they already answer, then print the variables
# that point racebench and its tests at them. PostgreSQL, MariaDB and Redis on 6379 are
# expected to run as system services (scripts/install-servers.sh installs them).
#
#   scripts/start-servers.sh --cluster   also start the multi-node targets of
#                                        scenarios/cluster/: five Redis servers (6390-6394)
#                                        and a 3-node ZooKeeper ensemble (2191-2193)
#   scripts/start-servers.sh --stop      stop every server this script started
#
# Every server gets a pid file in .servers/ (redis-PORT.pid, zookeeper-PORT.pid): server
# faults (kill_server, pause_server, restart_server) find the processes through them.
# RACEBENCH_SERVERS_DIR moves that directory (scenarios/cluster/ follow it too).
# ZOOKEEPER_PORT and REDIS_PORTS (space-separated, may be empty) change the single-node ports.
set -euo pipefail

zk_port=${ZOOKEEPER_PORT:-2181}
redis_ports=${REDIS_PORTS-6380 6381}

cd "$(dirname "$0")/.."
state=${RACEBENCH_SERVERS_DIR:-.servers}
mkdir -p "$state"
state=$(cd "$state" && pwd)

cluster=no
case "${1:-}" in
"") ;;
--cluster) cluster=yes ;;
--stop)
    for pid_file in "$state"/redis-*.pid "$state"/zookeeper-*.pid; do
        [[ -e "$pid_file" ]] || continue
        pid=$(cat "$pid_file")
        # A server racebench restarted runs under the pid it wrote; a stale file names nobody.
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            echo "stopped $(basename "$pid_file" .pid) (pid $pid)"
        fi
        rm -f "$pid_file"
    done
    exit 0
    ;;
*)
    echo "usage: $0 [--cluster | --stop]" >&2
    exit 2
    ;;
esac

answers() {  # answers PORT REQUEST EXPECTED: the reply to REQUEST starts with EXPECTED
    local reply=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf '%b' "$2" >&3
    read -r -t 2 -n "${#3}" reply <&3 || true
    exec 3<&-
    [[ "$reply" == "$3" ]]
}

# A ZooKeeper answers one of: `ruok` (imok), `srvr` (its version), or, when neither four-letter
# word is whitelisted (4lw.commands.whitelist), a session request: a ConnectRequest (protocol
# version, last zxid, timeout 30000 ms, session 0, an empty 16-byte password) gets a
# ConnectResponse of 36 bytes (37 with the read-only flag) after its 4-byte length.
zookeeper_answers() {  # zookeeper_answers PORT
    answers "$1" 'ruok' 'imok' && return 0
    answers "$1" 'srvr' 'Zookeeper version' && return 0
    local reply=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf '\x00\x00\x00\x2c\x00\x00\x00\x00%b\x00\x00\x75\x30%b\x00\x00\x00\x10%b' \
        '\x00\x00\x00\x00\x00\x00\x00\x00' '\x00\x00\x00\x00\x00\x00\x00\x00' \
        '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' >&3
    reply=$(timeout 2 head -c 4 <&3 | od -An -tx1 | tr -d ' \n') || true
    exec 3<&-
    [[ "$reply" == "00000024" || "$reply" == "00000025" ]]
}

port_open() {  # port_open PORT: something accepts connections there
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    exec 3<&-
}

start_redis() {  # start_redis PORT: a non-persistent Redis (no RDB, no AOF)
    local port=$1
    if answers "$port" 'PING\r\n' '+PONG'; then
        echo "redis on $port: already running"
        return
    fi
    # --set-proc-title no keeps the command line, so racebench can start it again.
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$state" --daemonize yes --logfile "$state/redis-$port.log" \
        --pidfile "$state/redis-$port.pid" --set-proc-title no
    echo "redis on $port: started (stop: $0 --stop)"
}

zookeeper_config() {  # zookeeper_config PORT [MYID]: zoo.cfg, an ensemble member with MYID
    local port=$1 myid=${2:-} dir="$state/zookeeper-$1"
    mkdir -p "$dir/data"
    # tickTime 500: sessions as short as 1 s, expired within 0.5 s of their timeout.
    printf '%s\n' "tickTime=500" "dataDir=$dir/data" "clientPort=$port" \
        "clientPortAddress=127.0.0.1" "admin.enableServer=false" \
        "4lw.commands.whitelist=ruok,srvr,stat" "maxClientCnxns=0" >"$dir/zoo.cfg"
    if [[ -n "$myid" ]]; then
        echo "$myid" >"$dir/data/myid"
        printf '%s\n' "initLimit=10" "syncLimit=5" \
            "server.1=127.0.0.1:2891:3891" "server.2=127.0.0.1:2892:3892" \
            "server.3=127.0.0.1:2893:3893" >>"$dir/zoo.cfg"
    fi
    echo "$dir/zoo.cfg"
}

start_zookeeper() {  # start_zookeeper PORT MAIN_CLASS CONFIG: in the background, with a pid file
    local port=$1 main=$2 cfg=$3
    if zookeeper_answers "$port"; then
        echo "zookeeper on $port: already running"
        return
    fi
    if port_open "$port"; then
        echo "zookeeper on $port: the port is taken by a server that does not answer as" \
            "ZooKeeper (ruok, srvr, nor a session request); free it or set ZOOKEEPER_PORT" >&2
        exit 1
    fi
    setsid java -Xmx256m -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
        "$main" "$cfg" >"$state/zookeeper-$port.log" 2>&1 </dev/null &
    echo $! >"$state/zookeeper-$port.pid"
    echo "zookeeper on $port: starting (stop: $0 --stop)"
}

wait_zookeeper() {  # wait_zookeeper PORT: until it serves requests (a member: in a quorum)
    local port=$1
    local pid_file="$state/zookeeper-$port.pid"
    for _ in $(seq 120); do
        zookeeper_answers "$port" && return
        # It exited (e.g. the port was taken meanwhile): no use waiting.
        [[ -e "$pid_file" ]] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null && break
        sleep 0.5
    done
    echo "zookeeper on $port: not serving, see $state/zookeeper-$port.log" >&2
    exit 1
}

if [[ "$cluster" == yes ]]; then
    for port in 6390 6391 6392 6393 6394; do start_redis "$port"; done
    for myid in 1 2 3; do
        port=$((2190 + myid))
        start_zookeeper "$port" org.apache.zookeeper.server.quorum.QuorumPeerMain \
            "$(zookeeper_config "$port" "$myid")"
    done
    for port in 2191 2192 2193; do wait_zookeeper "$port"; done
    # scenarios/cluster/ names these servers and pid files itself: no variables to set.
    echo "zookeeper ensemble on 2191-2193: serving; run scenarios/cluster/*.yaml from $PWD"
    exit 0
fi

for port in $redis_ports; do start_redis "$port"; done

start_zookeeper "$zk_port" org.apache.zookeeper.server.ZooKeeperServerMain \
    "$(zookeeper_config "$zk_port")"
wait_zookeeper "$zk_port"

cat <<VARS
export RACEBENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres
export RACEBENCH_MYSQL_URL=mysql://root@127.0.0.1:3306/test
export RACEBENCH_REDIS_URL=redis://127.0.0.1:6379/0
export RACEBENCH_REDLOCK_URLS=redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0,redis://127.0.0.1:6381/0
export RACEBENCH_ZOOKEEPER_HOSTS=127.0.0.1:$zk_port
VARS
