#!/usr/bin/env bash
# Upgrade tier: the previous release (v0.1.0 by default, from its source archive in
# tests/upgrade/releases) is built and installed into a
# copy of PostgreSQL under target/upgrade (never into the system PostgreSQL), a cluster of that
# copy gets tenants using everything the release offers, then this version's files replace the
# old ones and `ALTER EXTENSION udm UPDATE` runs. Checked:
#   (a) the extension's objects, and each tenant's objects (pg_dump --schema-only, role names
#       aside), equal those of a fresh install of this version given the same tenants;
#   (b) the upgraded tenants work as new ones do (tests/upgrade/check.sql).
# This version must be installed first (`make install`; with UDM_BUILD_ROOT=<dir>, into the copy
# of PostgreSQL under <dir> made by tests/pgroot.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FROM=${UDM_UPGRADE_FROM:-v0.1.0}
PG_MAJOR=${PG_MAJOR:-15}
SYS_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
SYS_LIB=$($SYS_BIN/pg_config --pkglibdir)
SYS_EXT=$($SYS_BIN/pg_config --sharedir)/extension
W=$ROOT/target/upgrade
R=$W/root-$FROM
PORT=${UPGRADE_PORT:-5495}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# the previous release's source: its archive in tests/upgrade/releases (git archive of the tag) (a clone need not carry
# tags or history); where the tag is in the clone, the archive must hold exactly the tag's files
V=${FROM#v}
ARCHIVE=$ROOT/tests/upgrade/releases/udm-$V.tar.gz
if [ ! -f "$ARCHIVE" ]; then
    echo "   no source archive of release $V ($ARCHIVE)"; exit 1
fi
if git rev-parse -q --verify "$FROM^{commit}" >/dev/null 2>&1; then
    if ! cmp -s <(tar -xzOf "$ARCHIVE" | sha256sum) \
        <(git archive --prefix="udm-$V/" "$FROM" | tar -xO | sha256sum); then
        echo "   $ARCHIVE does not hold the files of tag $FROM"; exit 1
    fi
fi
SUM=$(sha256sum "$ARCHIVE" | cut -c1-16)
# built once per archive into its own target dir
if [ ! -e "$W/pkg-$FROM/.done-$SUM" ]; then
    echo "   building $FROM (once)"
    rm -rf "$W/src-$FROM" "$W/pkg-$FROM"
    mkdir -p "$W/src-$FROM" "$W/pkg-$FROM"
    tar -xzf "$ARCHIVE" -C "$W/src-$FROM" --strip-components=1
    (cd "$W/src-$FROM" && CARGO_TARGET_DIR=$W/target-$FROM cargo pgrx package \
        --pg-config "$SYS_BIN/pg_config" --out-dir "$W/pkg-$FROM" >"$W/build-$FROM.log" 2>&1) || {
        tail -30 "$W/build-$FROM.log"; exit 1; }
    touch "$W/pkg-$FROM/.done-$SUM"
fi

# a copy of PostgreSQL holding the old release
rm -rf "$R"
mkdir -p "$R/usr/lib/postgresql" "$R/usr/share/postgresql"
cp -a "/usr/lib/postgresql/$PG_MAJOR" "$R/usr/lib/postgresql/"
rm -rf "$R/usr/lib/postgresql/$PG_MAJOR/lib/bitcode"
cp -a "/usr/share/postgresql/$PG_MAJOR" "$R/usr/share/postgresql/"
rm -f "$R$SYS_LIB"/udm.so "$R$SYS_EXT"/udm*
cp -a "$W/pkg-$FROM$SYS_LIB/udm.so" "$R$SYS_LIB/"
cp -a "$W/pkg-$FROM$SYS_EXT"/udm* "$R$SYS_EXT/"
BIN=$R$SYS_BIN
CL=$W/cluster
export PGBIN=$BIN
psql() { "$BIN/psql" -X -q -h "$CL/sock" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
tests/cluster.sh start "$CL" "$PORT" fresh "udm.bcrypt_cost = 4" >/dev/null
trap 'PGBIN=$BIN tests/cluster.sh stop "$CL"' EXIT

psql -d postgres -c "CREATE DATABASE upgraded" -c "CREATE DATABASE fresh"
psql -d upgraded -c "CREATE EXTENSION udm VERSION '${FROM#v}'" -f tests/upgrade/scenario.sql >/dev/null
echo "   tenants made with udm ${FROM#v}"

# this version's files replace the old ones; a new backend loads the new library
tests/cluster.sh stop "$CL"
cp -a "${UDM_BUILD_ROOT:-}$SYS_LIB/udm.so" "$R$SYS_LIB/"
cp -a "${UDM_BUILD_ROOT:-}$SYS_EXT"/udm* "$R$SYS_EXT/"
tests/cluster.sh start "$CL" "$PORT" >/dev/null
psql -d upgraded -c "ALTER EXTENSION udm UPDATE"
psql -d fresh -c "CREATE EXTENSION udm" -f tests/upgrade/scenario.sql >/dev/null
echo "   updated to $VERSION; a fresh install made the same tenants"

# (a) the same objects
normalize() { sed -E 's/"?tenant_[a-z0-9_]+(@[A-Za-z0-9_~]+)?"?/TENANT_ROLE/g; /^-- Dumped/d; /^\\(un)?restrict/d'; }
for db in upgraded fresh; do
    psql -d "$db" -At -f tests/upgrade/objects.sql >"$W/objects-$db.txt"
    for s in up_shop up_plan; do
        "$BIN/pg_dump" -h "$CL/sock" -p "$PORT" -U postgres --schema-only -n "$s" "$db" | normalize >"$W/$s-$db.sql"
    done
done
fail=0
for f in objects-%s.txt up_shop-%s.sql up_plan-%s.sql; do
    a=$(printf "$f" upgraded); b=$(printf "$f" fresh)
    if ! diff -u "$W/$b" "$W/$a" >"$W/$a.diff"; then
        echo "   DIFFERENT after the upgrade: $a (fresh install on the - side)"; head -40 "$W/$a.diff"; fail=1
    fi
done
[ $fail = 0 ] || exit 1
echo "   the upgraded extension and tenants equal a fresh install's"

# (b) the upgraded tenants work
psql -d upgraded -v version="$VERSION" -f tests/upgrade/check.sql >/dev/null
echo "   the upgraded tenants work: writes, rules, locks, audit chain, history, events, access, definitions"
