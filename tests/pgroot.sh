#!/usr/bin/env bash
# A private copy of the system PostgreSQL holding a build of udm, for work that must not replace
# the udm installed in the system PostgreSQL (parallel checkouts, the previous release, Citus).
# The copied binaries find their share/ and lib/ next to themselves.
#
#   tests/pgroot.sh make ROOT        copy /usr/lib/postgresql/15 and /usr/share/postgresql/15 into ROOT
#   tests/pgroot.sh install ROOT     build this checkout (cargo pgrx package) and install it into ROOT
#   tests/pgroot.sh bin ROOT         print ROOT's bin directory (PGBIN=$(tests/pgroot.sh bin ROOT))
#
# Then: PGBIN=$(tests/pgroot.sh bin ROOT) tests/cluster.sh start DIR PORT fresh
set -euo pipefail
cd "$(dirname "$0")/.."
PG_MAJOR=${PG_MAJOR:-15}
SYS_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
cmd=${1:?usage: pgroot.sh make|install|bin ROOT}
root=${2:?root directory}
mkdir -p "$root"
root=$(cd "$root" && pwd)
lib=$($SYS_BIN/pg_config --pkglibdir)
ext=$($SYS_BIN/pg_config --sharedir)/extension

make_root() {
    if [ ! -x "$root$SYS_BIN/postgres" ]; then
        mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
        cp -a "/usr/lib/postgresql/$PG_MAJOR" "$root/usr/lib/postgresql/"
        rm -rf "$root/usr/lib/postgresql/$PG_MAJOR/lib/bitcode"
        cp -a "/usr/share/postgresql/$PG_MAJOR" "$root/usr/share/postgresql/"
        rm -f "$root$lib"/udm.so "$root$ext"/udm[-.]*
    fi
}

case "$cmd" in
make) make_root ;;
install)
    make_root
    out=$root/.pkg
    rm -rf "$out"
    cargo pgrx package --pg-config "$SYS_BIN/pg_config" --out-dir "$out" ${PGROOT_DEBUG:+--debug}
    cp -a "$out$lib/udm.so" "$root$lib/"
    cp -a "$out$ext"/udm* "$root$ext/"
    cp -a sql/udm--*--*.sql "$root$ext/" 2>/dev/null || true
    ;;
bin) echo "$root$SYS_BIN" ;;
*) echo "usage: pgroot.sh make|install|bin ROOT" >&2; exit 2 ;;
esac
