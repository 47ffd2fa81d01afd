#!/usr/bin/env bash
# Local PostgreSQL 15 clusters for udm: `make run` (demo), `make test` and `make bench` each use
# their own data directory under target/, their own port and their own socket directory.
#
#   tests/cluster.sh start DIR PORT [fresh] [extra postgresql.conf lines...]
#   tests/cluster.sh stop DIR
#   tests/cluster.sh psql DIR PORT [psql args...]
#
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
PGBIN=${PGBIN:-/usr/lib/postgresql/$PG_MAJOR/bin}

as_pg() {
    # the server must not inherit RUST_BACKTRACE: errors would carry a backtrace in their DETAIL
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
    else
        env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
    fi
}

cmd=${1:?usage: cluster.sh start|stop|psql DIR [PORT]}
dir=${2:?cluster directory}
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")

case "$cmd" in
start)
    port=${3:?port}
    fresh=${4:-}
    shift 4 || shift $#
    if [ "$fresh" = fresh ] && [ -d "$dir" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$dir"
    fi
    if [ ! -s "$dir/data/PG_VERSION" ]; then
        mkdir -p "$dir/data" "$dir/sock"
        if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$dir"; fi
        as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            exit 1
        }
        {
            echo "port = $port"
            echo "unix_socket_directories = '$dir/sock'"
            echo "listen_addresses = 'localhost'"
            echo "max_connections = 200"
            echo "shared_buffers = 512MB"
            echo "work_mem = 16MB"
            echo "maintenance_work_mem = 256MB"
            for line in "$@"; do echo "$line"; done
        } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    if ! as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 120 start >/dev/null || {
            tail -20 "$dir/server.log" >&2
            exit 1
        }
    fi
    ;;
stop)
    if [ -s "$dir/data/PG_VERSION" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
psql)
    port=${3:?port}
    shift 3
    exec "$PGBIN/psql" -X -h "$dir/sock" -p "$port" -U postgres "$@"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
