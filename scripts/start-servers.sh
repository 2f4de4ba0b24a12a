#!/usr/bin/env bash
# For manual use without Docker: start ZooKeeper (2181) and two extra Redis servers
# (6380, 6381) in the background unless they already answer, then print the variables
# that point racebench and its tests at them. PostgreSQL, MariaDB and Redis on 6379 are
# expected to run as system services (scripts/install-servers.sh installs them).
set -euo pipefail

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

for port in 6380 6381; do
    if answers "$port" 'PING\r\n' '+PONG'; then
        echo "redis on $port: already running"
    else
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$state" --daemonize yes --logfile "$PWD/$state/redis-$port.log" \
            --pidfile "$PWD/$state/redis-$port.pid"
        echo "redis on $port: started (stop: redis-cli -p $port shutdown nosave)"
    fi
done

if answers 2181 'ruok' 'imok'; then
    echo "zookeeper on 2181: already running"
else
    mkdir -p "$state/zookeeper-2181/data"
    cfg="$state/zookeeper-2181/zoo.cfg"
    # tickTime 500: sessions as short as 1 s, expired within 0.5 s of their timeout.
    # maxClientCnxns=0: every client is on 127.0.0.1, and 60 per host (the default) is too
    # few for fault tests beside a second copy of the suite.
    printf '%s\n' "tickTime=500" "dataDir=$PWD/$state/zookeeper-2181/data" "clientPort=2181" \
        "clientPortAddress=127.0.0.1" "admin.enableServer=false" \
        "4lw.commands.whitelist=ruok,srvr,stat" "maxClientCnxns=0" >"$cfg"
    setsid java -Xmx256m -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
        org.apache.zookeeper.server.ZooKeeperServerMain "$cfg" \
        >"$state/zookeeper-2181.log" 2>&1 </dev/null &
    echo $! >"$state/zookeeper-2181.pid"
    for _ in $(seq 120); do
        answers 2181 'ruok' 'imok' && break
        sleep 0.5
    done
    if ! answers 2181 'ruok' 'imok'; then
        echo "zookeeper on 2181: did not start, see $state/zookeeper-2181.log" >&2
        exit 1
    fi
    echo "zookeeper on 2181: started (stop: kill \$(cat $state/zookeeper-2181.pid))"
fi

cat <<VARS
export RACEBENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres
export RACEBENCH_MYSQL_URL=mysql://root@127.0.0.1:3306/test
export RACEBENCH_REDIS_URL=redis://127.0.0.1:6379/0
export RACEBENCH_REDLOCK_URLS=redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0,redis://127.0.0.1:6381/0
export RACEBENCH_ZOOKEEPER_HOSTS=127.0.0.1:2181
VARS
