#!/usr/bin/env bash
# For manual use without Docker: start ZooKeeper (2181) and two extra Redis servers
# (6380, 6381) in the background unless they already answer, then print the variables
# that point racebench and its tests at them. PostgreSQL, MariaDB and Redis on 6379 are
# expected to run as system services (scripts/install-servers.sh installs them).
# ZOOKEEPER_PORT and REDIS_PORTS (space-separated, may be empty) change the ports.
set -euo pipefail

zk_port=${ZOOKEEPER_PORT:-2181}
redis_ports=${REDIS_PORTS-6380 6381}

cd "$(dirname "$0")/.."
state=.servers
mkdir -p "$state"

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

for port in $redis_ports; do
    if answers "$port" 'PING\r\n' '+PONG'; then
        echo "redis on $port: already running"
    else
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$state" --daemonize yes --logfile "$PWD/$state/redis-$port.log" \
            --pidfile "$PWD/$state/redis-$port.pid"
        echo "redis on $port: started (stop: redis-cli -p $port shutdown nosave)"
    fi
done

zk="zookeeper-$zk_port"
if zookeeper_answers "$zk_port"; then
    echo "zookeeper on $zk_port: already running"
elif port_open "$zk_port"; then
    echo "zookeeper on $zk_port: the port is taken by a server that does not answer as" \
        "ZooKeeper (ruok, srvr, nor a session request); free it or set ZOOKEEPER_PORT" >&2
    exit 1
else
    mkdir -p "$state/$zk/data"
    cfg="$state/$zk/zoo.cfg"
    # tickTime 500: sessions as short as 1 s, expired within 0.5 s of their timeout.
    printf '%s\n' "tickTime=500" "dataDir=$PWD/$state/$zk/data" "clientPort=$zk_port" \
        "clientPortAddress=127.0.0.1" "admin.enableServer=false" \
        "4lw.commands.whitelist=ruok,srvr,stat" >"$cfg"
    setsid java -Xmx256m -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
        org.apache.zookeeper.server.ZooKeeperServerMain "$cfg" \
        >"$state/$zk.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$state/$zk.pid"
    for _ in $(seq 120); do
        zookeeper_answers "$zk_port" && break
        kill -0 "$pid" 2>/dev/null || break # it exited: no use waiting
        sleep 0.5
    done
    if ! zookeeper_answers "$zk_port"; then
        echo "zookeeper on $zk_port: did not start, see $state/$zk.log" >&2
        exit 1
    fi
    echo "zookeeper on $zk_port: started (stop: kill \$(cat $state/$zk.pid))"
fi

cat <<VARS
export RACEBENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres
export RACEBENCH_MYSQL_URL=mysql://root@127.0.0.1:3306/test
export RACEBENCH_REDIS_URL=redis://127.0.0.1:6379/0
export RACEBENCH_REDLOCK_URLS=redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0,redis://127.0.0.1:6381/0
export RACEBENCH_ZOOKEEPER_HOSTS=127.0.0.1:$zk_port
VARS
