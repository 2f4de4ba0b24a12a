#!/usr/bin/env bash
# Install the servers racebench's tests talk to, from Debian's packages.
# Idempotent: installs only what is missing. As root it runs apt-get (update once);
# otherwise it prints the command to run and carries on, so tests can skip what is absent.
set -euo pipefail

# Debian package -> command (or file) that proves it is installed.
declare -A probe=(
    [postgresql]="/usr/lib/postgresql/*/bin/initdb"
    [mariadb-server]="mariadbd"
    [redis-server]="redis-server"
    [zookeeper]="/usr/share/java/zookeeper.jar"
    [default-jre-headless]="java"
    [chromium]="chromium"
)
order=(postgresql mariadb-server redis-server zookeeper default-jre-headless chromium)

is_present() {
    local what="$1"
    if [[ "$what" == /* ]]; then
        compgen -G "$what" >/dev/null
    else
        command -v "$what" >/dev/null 2>&1 || [[ -x "/usr/sbin/$what" ]]
    fi
}

missing=()
for pkg in "${order[@]}"; do
    if is_present "${probe[$pkg]}"; then
        echo "install-servers: $pkg present"
    else
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
    echo "install-servers: missing ${missing[*]}; as root run:" \
        "apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    exit 0
fi

log="${TMPDIR:-/tmp}/racebench-install-servers.log"
: >"$log"
export DEBIAN_FRONTEND=noninteractive
echo "install-servers: apt-get update (log: $log)"
if ! apt-get update >>"$log" 2>&1; then
    echo "install-servers: apt-get update failed, see $log" >&2
    exit 1
fi
echo "install-servers: installing ${missing[*]}"
if ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    echo "install-servers: installing ${missing[*]} failed, see $log" >&2
    exit 1
fi
echo "install-servers: done"
