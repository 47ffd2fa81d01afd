#!/usr/bin/env bash
# Tier 5: udm on Citus (src/citus.rs). A coordinator and two workers, three PostgreSQL clusters
# of the copy of PostgreSQL that `make citus` made (PGBIN: its bin directory) on CITUS_PORT, +1
# and +2 (localhost; Citus connects to the workers over TCP), each with Citus and udm preloaded;
# then udm's checks on the coordinator. The clusters are stopped however the checks end.
#
#   PGBIN=<root>/usr/lib/postgresql/15/bin CITUS_DIR=target/citus-clusters CITUS_PORT=5485 tests/citus.sh
#   ... CITUS_BENCH=target/release/citus tests/citus.sh bench     (make citus-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PGBIN:?PGBIN: the bin directory of a PostgreSQL with Citus and udm}"
export PGBIN
DIR=${CITUS_DIR:-$PWD/target/citus-clusters}
PORT=${CITUS_PORT:-5485}
DB=udm_citus
CLUSTER=tests/cluster.sh
NAMES=(coordinator worker1 worker2)
started=$(date +%s)

stop_all() {
    # CITUS_KEEP=1: leave them running, to look around (stop with tests/cluster.sh stop DIR/<node>)
    [ -n "${CITUS_KEEP:-}" ] && return
    for n in "${NAMES[@]}"; do $CLUSTER stop "$DIR/$n"; done
}
trap stop_all EXIT

port_of() {
    case $1 in coordinator) echo "$PORT" ;; worker1) echo $((PORT + 1)) ;; worker2) echo $((PORT + 2)) ;; esac
}

# psql on a node: -At, stop at the first error
on() {
    local n=$1
    shift
    $CLUSTER psql "$DIR/$n" "$(port_of "$n")" -d $DB -At -q -v ON_ERROR_STOP=1 "$@"
}

# CITUS_KEY_FILE: the master key of field encryption, the same file for every node (each node's
# server reads it: values are sealed and opened on the tenant's node)
key_conf=()
[ -n "${CITUS_KEY_FILE:-}" ] && key_conf=("udm.encryption_key_file = '$CITUS_KEY_FILE'")
for n in "${NAMES[@]}"; do
    $CLUSTER start "$DIR/$n" "$(port_of "$n")" fresh "shared_buffers = 128MB" "max_connections = 100" \
        "fsync = off" "synchronous_commit = off" "shared_preload_libraries = 'citus,udm'" \
        "wal_level = logical" "max_wal_senders = 10" "max_replication_slots = 10" "udm.bcrypt_cost = 4" \
        "${key_conf[@]}"
    $CLUSTER psql "$DIR/$n" "$(port_of "$n")" -d postgres -q -c "CREATE DATABASE $DB"
    # Citus 12.1 does not propagate CREATE DATABASE: the database and Citus on every node
    on "$n" -c "CREATE EXTENSION citus"
done
on coordinator -c "SELECT citus_set_coordinator_host('localhost', $PORT)" >/dev/null
on coordinator -c "SELECT citus_add_node('localhost', $((PORT + 1)))" -c "SELECT citus_add_node('localhost', $((PORT + 2)))" >/dev/null
on coordinator -c "CREATE EXTENSION udm"

if [ "${1:-}" = bench ]; then
    # make citus-bench: bench/citus (CITUS_BENCH: its binary) against these clusters instead of
    # the checks; the clusters are stopped afterwards all the same
    BENCH_HOST="$DIR/coordinator/sock" BENCH_PORT=$PORT CITUS_DB=$DB "${CITUS_BENCH:?the bench/citus binary}"
    exit
fi

failed=0
check() {
    # check NAME EXPECTED SQL...: the coordinator's answer to the SQL (the last line of what the
    # commands print) must be EXPECTED; CHECK_ON=<node> asks that node instead
    local name=$1 expected=$2
    shift 2
    local got
    if ! got=$(on "${CHECK_ON:-coordinator}" "$@" 2>&1); then
        echo "   FAIL $name: $got"
        failed=$((failed + 1))
        return
    fi
    got=$(tail -n 1 <<<"$got")
    if [ "$got" != "$expected" ]; then
        echo "   FAIL $name"
        echo "     expected: $expected"
        echo "     got:      $got"
        failed=$((failed + 1))
    else
        echo "   ok   $name"
    fi
}

# refused: the statement fails with SQLSTATE $2 and a message containing $3
refused() {
    local name=$1 state=$2 text=$3
    shift 3
    local got
    # CHECK_ON=<node> asks that node instead of the coordinator
    got=$(on "${CHECK_ON:-coordinator}" -v VERBOSITY=verbose \
        -c '\set VERBOSITY verbose' "$@" 2>&1) && { echo "   FAIL $name: not refused ($got)"; failed=$((failed + 1)); return; }
    if grep -q "ERROR:  $state:" <<<"$got" && grep -qF -- "$text" <<<"$got"; then
        echo "   ok   $name"
    else
        echo "   FAIL $name: expected $state with \"$text\", got: $got"
        failed=$((failed + 1))
    fi
}

joined() {
    # joined SQL...: every line the coordinator prints for the SQL, errors too, joined by '|'
    on coordinator "$@" 2>&1 | paste -sd '|' || true
}

expect() {
    # expect NAME EXPECTED GOT
    if [ "$3" = "$2" ]; then echo "   ok   $1"; else
        echo "   FAIL $1"; echo "     expected: $2"; echo "     got:      $3"; failed=$((failed + 1)); fi
}

# every table of a tenant schema, and whether it is in the schema's colocation group
TABLES_OF="SELECT string_agg(c.relname || ':' || (p.colocationid IS NOT DISTINCT FROM d.colocationid AND d.colocationid IS NOT NULL), ',' ORDER BY c.relname)
           FROM pg_class c LEFT JOIN pg_dist_schema d ON d.schemaid = c.relnamespace
           LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
           WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind = 'r'"

echo "   Citus $(on coordinator -c "SELECT extversion FROM pg_extension WHERE extname = 'citus'"), udm $(on coordinator -c "SELECT extversion FROM pg_extension WHERE extname = 'udm'")"

check "udm on every node (CREATE EXTENSION propagated)" "t" \
    -c "SELECT bool_and(success AND result = 'udm') FROM run_command_on_workers(\$\$SELECT extname FROM pg_extension WHERE extname = 'udm'\$\$)"
check "global tables are reference tables" "udm.app_user,udm.node_key,udm.tenant,udm.user_tenant" \
    -c "SELECT string_agg(logicalrelid::text, ',' ORDER BY logicalrelid::text) FROM pg_dist_partition
        WHERE partmethod = 'n' AND repmodel = 't' AND logicalrelid::text LIKE 'udm.%'"
check "udm.citus_setup() again changes nothing" "{}" -c "SELECT udm.citus_setup()"
CHECK_ON=worker1 check "the database's key for udm's claims: on the workers too, one, not readable by PUBLIC" "1|32|f" \
    -c "SELECT count(*), max(octet_length(key)), has_table_privilege('public', 'udm.node_key', 'SELECT') FROM udm.node_key"

on coordinator -c "SELECT udm_create_tenant('shop', 'Shop')" >/dev/null
check "udm_create_tenant: a distributed schema" "shop" \
    -c "SELECT schemaid::regnamespace::text FROM pg_dist_schema WHERE schemaid = 'shop'::regnamespace"
check "udm_create_tenant: its catalog, audit log and the tables of first use (locks, subscriptions) colocated in it" "_udm_audit:true,_udm_consumer:true,_udm_entity:true,_udm_lock:true,_udm_subscription:true" -c "$TABLES_OF"
check "the tenant's shards on one worker" "1|t" \
    -c "SELECT count(DISTINCT nodeport), bool_and(nodeport IN ($((PORT + 1)), $((PORT + 2)))) FROM citus_shards WHERE table_name::text LIKE 'shop.%'"
check "workers read the tenant registry" "t" \
    -c "SELECT bool_and(success AND result = '1') FROM run_command_on_workers(\$\$SELECT count(*) FROM udm.tenant WHERE slug = 'shop'\$\$)"

on coordinator -c "SELECT udm_use('shop')" \
    -c "SELECT udm_define_entity('category', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\", \"required\": true, \"unique\": true}]}')" >/dev/null
check "udm_define_entity: the entity table distributed with the tenant" \
    "_udm_audit:true,_udm_consumer:true,_udm_entity:true,_udm_lock:true,_udm_subscription:true,category:true" -c "$TABLES_OF"

on coordinator -c "SELECT udm_use('shop')" \
    -c "SELECT udm_define_entity('product', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\", \"required\": true},
          {\"name\": \"price\", \"type\": \"decimal\", \"min\": 0},
          {\"name\": \"category_id\", \"type\": \"relation\", \"target\": \"category\", \"on_delete\": \"restrict\"},
          {\"name\": \"tags\", \"type\": \"relation\", \"target\": \"category\", \"many\": true}]}')" >/dev/null
check "a relation and a junction table: distributed with the tenant" \
    "_udm_audit:true,_udm_consumer:true,_udm_entity:true,_udm_lock:true,_udm_subscription:true,category:true,product:true,product__tags:true" -c "$TABLES_OF"
check "all of the tenant's shards on one worker" "1" \
    -c "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name::text LIKE 'shop.%'"

# records through plain SQL: udm's triggers fire on the worker, against the shards
check "plain SQL insert through the coordinator" "2" \
    -c "INSERT INTO shop.category (name) VALUES ('books'), ('games')" \
    -c "SELECT count(*) FROM shop.category"
check "the stamp trigger ran on the worker" "2|2" \
    -c "SELECT count(*) FILTER (WHERE _version = 1), count(*) FILTER (WHERE created_at IS NOT NULL) FROM shop.category"
check "the audit log has the inserts (written into the shard)" "2" \
    -c "SELECT count(*) FROM shop._udm_audit WHERE entity = 'category' AND action = 'INSERT'"
check "plain SQL update: version and audit" "2|3" \
    -c "UPDATE shop.category SET name = 'novels' WHERE name = 'books'" \
    -c "SELECT (SELECT _version FROM shop.category WHERE name = 'novels'), (SELECT count(*) FROM shop._udm_audit)"
refused "a broken rule is refused on the worker" 23505 "duplicate key" \
    -c "INSERT INTO shop.category (name) VALUES ('games')"

# udm's record functions on the coordinator (with values: see the refusal below)
toys=$(on coordinator -c "SELECT udm_use('shop')" -c "SELECT udm_insert('category', '{\"name\": \"toys\"}')->>'id'" | tail -n 1)
check "udm_insert, udm_get, udm_update, udm_query" "toys|puzzles|2|2" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT udm_get('category', '$toys')->>'name',
               udm_update('category', '$toys', '{\"name\": \"puzzles\"}')->>'name',
               udm_get('category', '$toys')->>'_version',
               jsonb_array_length(udm_query('category', '{\"filters\": {\"name\": {\"neq\": \"games\"}}}')->'rows')"
games=$(on coordinator -c "SELECT id FROM shop.category WHERE name = 'games'")
novels=$(on coordinator -c "SELECT id FROM shop.category WHERE name = 'novels'")
check "udm_insert of a record with a relation and links" "$games|2" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT v->>'category_id', jsonb_array_length(v->'tags') FROM udm_insert('product', '{\"name\": \"chess\", \"price\": 20,
          \"category_id\": \"$games\", \"tags\": [\"$games\", \"$novels\"]}') AS v"
check "udm_query through a relation" "chess" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT udm_query('product', '{\"filters\": {\"category_id.name\": \"games\"}}')->'rows'->0->>'name'"
refused "a restrict relation holds on the worker" 23503 "violates foreign key constraint" \
    -c "DELETE FROM shop.category WHERE name = 'games'"
# a constraint of a shard is reported by the name udm gave it (without the shard id)
got=$(on coordinator -c '\set VERBOSITY verbose' -c "SELECT udm_use('shop')" \
    -c "SELECT udm_insert('category', '{\"name\": \"games\"}')" 2>&1) || true
if grep -q "ERROR:  23505:" <<<"$got" && ! grep -qE "_[0-9]{6}" <<<"$(grep ERROR <<<"$got")"; then
    echo "   ok   a unique violation on the worker names the field, not the shard"
else
    echo "   FAIL a unique violation on the worker names the field, not the shard: $got"
    failed=$((failed + 1))
fi
check "the audit chain verifies" "true" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_audit_verify()->>'ok'"
check "the history of a record" "2" \
    -c "SELECT udm_use('shop')" -c "SELECT count(*) FROM udm_history('category', '$toys')"
# rollback writes through the worker's shard (one assignment per column: Citus cannot deparse a
# multiple-column sub-select assignment)
check "udm_rollback of a record" "jigsaws|2|puzzles" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT udm_update('category', '$toys', '{\"name\": \"jigsaws\"}')->>'name',
               udm_rollback('category', '$toys', 2)->>'restored_version',
               udm_get('category', '$toys')->>'name'"
check "udm_rollback_transaction" "1" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT udm_update('category', '$toys', '{\"name\": \"blocks\"}')->>'name'" \
    -c "SELECT udm_rollback_transaction((SELECT txid FROM udm_history('category', '$toys') ORDER BY event_id DESC LIMIT 1))->>'records'"
check "udm_rollback_transaction put the name back" "puzzles" \
    -c "SELECT name FROM shop.category WHERE id = '$toys'"
# the audit trigger on the worker learns that a write is a rollback from a claim udm signs
# (src/citus/claims.rs)
check "rollbacks on the worker are recorded as ROLLBACK" "2" \
    -c "SELECT count(*) FROM shop._udm_audit WHERE record_id = '$toys' AND action = 'ROLLBACK'"
temp=$(on coordinator -c "SELECT udm_use('shop')" -c "SELECT udm_insert('category', '{\"name\": \"temp\"}')->>'id'" | tail -n 1)
check "a deleted record restored on the worker goes on from its last version, recorded as ROLLBACK" "temp2|3|ROLLBACK" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT udm_update('category', '$temp', '{\"name\": \"temp2\"}') IS NOT NULL" \
    -c "SELECT udm_delete('category', '$temp') IS NOT NULL" \
    -c "SELECT udm_rollback('category', '$temp', 2) IS NOT NULL" \
    -c "SELECT name, _version, (SELECT action FROM shop._udm_audit WHERE record_id = '$temp' ORDER BY audit_id DESC LIMIT 1)
          FROM shop.category WHERE id = '$temp'"
refused "a claim set by hand is refused on the worker, not taken for a rollback" 42501 "holds no claim of udm for this transaction" \
    -c "BEGIN" -c "SET LOCAL citus.propagate_set_commands = 'local'" \
    -c "SET LOCAL udm.claim = 'rollback|0|1|2026-12-06 00:00:00+00|-|0|00'" \
    -c "UPDATE shop.category SET name = 'forged' WHERE id = '$toys'"
refused "without the database's key udm_rollback is refused, not recorded as a plain UPDATE" 55000 \
    "the database has no key in udm.node_key" \
    -c "BEGIN" -c "DELETE FROM udm.node_key" -c "SELECT udm_use('shop')" \
    -c "SELECT udm_rollback('category', '$toys', 2)"
check "the chain verifies after the rollbacks" "true" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_audit_verify()->>'ok'"
refused "a udm function pushed to a worker by Citus is refused, not confused" 0A000 "ran on a worker node" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_get('category', (SELECT id FROM shop.category WHERE name = 'games'))"

refused "adding an auto_number field is refused by udm" 0A000 "udm on Citus: cannot add auto_number field" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_add_field('category', '{\"name\": \"seq\", \"type\": \"auto_number\"}')"
# an archive of a tenant with a batched audit log (made in a database without Citus; this one is
# the smallest manifest that reaches the making of the tenant's tables)
BATCHED_MANIFEST='{"format": "udm-tenant", "format_version": 2, "udm_version": "0.2.0", "exported_at": null, "source": {}, "tenant": {"slug": "bx", "name": null, "access": false, "created_at": null, "created_by": null}, "entities": [], "sections": [{"name": "_udm_entity", "columns": [["entity", "text"]], "rows": 0}, {"name": "_udm_audit_heads", "columns": [["entity", "text"]], "rows": 0}, {"name": "_udm_audit_log", "columns": [["batch_id", "bigint"]], "rows": 0}], "sequences": []}'
refused "importing a tenant whose audit log is batched is refused by udm" 0A000 "its audit log is batched, which udm does not support on Citus" \
    -c "SELECT udm_import_begin('$BATCHED_MANIFEST')"
refused "udm.citus_lift_sequence lifts only the sequences of udm tenants" 22023 "is not a sequence of a udm tenant" \
    -c "CREATE SEQUENCE public.not_a_tenants" -c "SELECT udm.citus_lift_sequence('public.not_a_tenants', 10)"
# password fields: Citus refuses to propagate the column-level GRANT that hides their hashes from
# the tenant's role; udm makes it on the coordinator and, through udm.citus_column_grant, on the
# tenant's node (its shard and the worker's shell)
SHOP_ROLE=$(on coordinator -c "SELECT role_name FROM udm.tenant WHERE slug = 'shop'")
# through the coordinator, a login role in the tenant's role (Citus connects to the node as it)
on coordinator -c "CREATE ROLE shop_app LOGIN" -c "GRANT \"$SHOP_ROLE\" TO shop_app" >/dev/null
login_id=$(on coordinator -c "SELECT udm_use('shop')" \
    -c "SELECT udm_define_entity('login', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\"}, {\"name\": \"secret\", \"type\": \"password\"}]}')" \
    -c "SELECT udm_add_field('login', '{\"name\": \"pin\", \"type\": \"password\"}')" \
    -c "SELECT udm_insert('login', '{\"name\": \"ann\", \"secret\": \"hunter2hunter2\", \"pin\": \"12345678\"}')->>'id'" | tail -n 1)
check "a password field on Citus (an entity with one, then one added to it): hashes are stored" "t" \
    -c "SELECT secret LIKE '\$2%' AND pin LIKE '\$2%' FROM shop.login WHERE id = '$login_id'"
check "a password field on Citus: udm_get leaves the hashes out" "f" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_get('login', '$login_id') ?| ARRAY['secret', 'pin']"
# shop's node, and the shard of its login table there
shop_node=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
    FROM citus_shards WHERE table_name = 'shop.login'::regclass")
login_shard=$(on coordinator -c "SELECT shard_name('shop.login'::regclass, shardid) FROM pg_dist_shard WHERE logicalrelid = 'shop.login'::regclass")
password_hidden() {
    # $1: when (for the names of the checks)
    check "$1: the tenant's role reads a password entity's other columns through the coordinator" "ann" \
        -c "SET ROLE shop_app" -c "SELECT name FROM shop.login"
    refused "$1: the tenant's role cannot read the hashes through the coordinator" 42501 "permission denied" \
        -c "SET ROLE shop_app" -c "SELECT pin FROM shop.login"
    CHECK_ON=$shop_node check "$1: on the tenant's node, the tenant's role reads the shard's other columns" "ann" \
        -c "SET ROLE \"$SHOP_ROLE\"" -c "SELECT name FROM $login_shard"
    CHECK_ON=$shop_node refused "$1: on the tenant's node, the tenant's role cannot read the shard's hashes" 42501 "permission denied" \
        -c "SET ROLE \"$SHOP_ROLE\"" -c "SELECT secret FROM $login_shard"
}
password_hidden "password fields"
refused "udm.citus_column_grant is not for the tenant's roles (internal)" 42501 "permission denied for function citus_column_grant" \
    -c "SET ROLE shop_app" -c "SELECT udm.citus_column_grant('shop', 'login', '$SHOP_ROLE', ARRAY['name', 'secret'])"
refused "udm.citus_column_grant is refused on the coordinator" 0A000 "runs on a Citus worker only" \
    -c "SELECT udm.citus_column_grant('shop', 'login', '$SHOP_ROLE', ARRAY['name', 'secret'])"
CHECK_ON=$shop_node refused "udm.citus_column_grant on a worker: a table outside a udm tenant is refused" 22023 \
    "public.not_a_tenants is not a table of a udm tenant" \
    -c "CREATE TABLE public.not_a_tenants (x int)" \
    -c "SELECT udm.citus_column_grant('public', 'not_a_tenants', '$SHOP_ROLE', ARRAY['x'])"
check "udm_add_field of another type" "2" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_add_field('category', '{\"name\": \"code\", \"type\": \"text\"}')->>'version'"
check "the roadmap template: every table colocated with the tenant" "10|10" \
    -c "SELECT udm_create_tenant('road')" -c "SELECT udm_use('road')" -c "SELECT udm_install_template('roadmap')" \
    -c "SELECT count(*), count(*) FILTER (WHERE p.colocationid = d.colocationid) FROM pg_class c
          JOIN pg_dist_schema d ON d.schemaid = c.relnamespace LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
        WHERE c.relnamespace = 'road'::regnamespace AND c.relkind = 'r'"
check "the roadmap template on the worker: its rule triggers (named with the shard's suffix there) run" "Hardware" \
    -c "SELECT udm_use('road')" \
    -c "SELECT udm_insert('roadmap', '{\"name\": \"Hardware\", \"y_axis_values\": [\"HW\", \"SW\"]}')->>'name'"

# the session's rendering settings reach the workers, where rows are built: a time zone set for
# the session (no user selected), through udm_query and plain SQL
check "the session's time zone reaches the workers: udm_query's rows" "+05:30" \
    -c "SET TIME ZONE 'Asia/Kolkata'" -c "SELECT udm_use('shop')" \
    -c "SELECT right(udm_query('category', '{\"limit\": 1}')->'rows'->0->>'created_at', 6)"
check "the session's time zone, interval and date styles and float digits reach the workers: plain SQL" \
    "+05:30|P1D|true|0.333333333333333" \
    -c "SET TIME ZONE 'Asia/Kolkata'" -c "SET intervalstyle = 'iso_8601'" -c "SET datestyle = 'SQL, DMY'" \
    -c "SET extra_float_digits = 0" \
    -c "SELECT to_char(min(created_at), 'OF') || '|' || min((created_at - (created_at - interval '1 day'))::text)
          || '|' || bool_and(created_at::date::text ~ '^[0-9]{2}/[0-9]{2}/[0-9]{4}$')::text
          || '|' || min(((length(name) * 0 + 1)::float8 / 3)::text) FROM shop.category"

# a user field naming a registered user the tenant does not know yet: plain SQL runs on the
# tenant's worker, which cannot register the tenant with the user (udm.user_tenant is a reference
# table on every node; written from inside the change, Citus was seen to crash the worker at
# COMMIT PREPARED): refused, naming the user. udm_insert and udm_update make the tenant know the
# user first (udm.citus_know_user on the node, on the caller's connection, with a token signed for
# the transaction; the directory on the coordinator). A member is known, and their records go in.
dora=$(on coordinator -c "SELECT udm_create_user('dora@example.org', 'Dora', 'a long enough password')->>'id'")
eve=$(on coordinator -c "SELECT udm_create_user('eve@example.org', 'Eve', 'a long enough password')->>'id'")
fay=$(on coordinator -c "SELECT udm_create_user('fay@example.org', 'Fay', 'a long enough password')->>'id'")
road_node=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
    FROM citus_shards WHERE table_name = 'road._udm_entity'::regclass")
refused "plain SQL with a user the tenant does not know yet: refused on the worker, naming the user" 0A000 \
    'dora@example.org ('"$dora"'), whom tenant "road" does not know yet' \
    -c "INSERT INTO road.roadmap (name, y_axis_values, owner_id) VALUES ('Dora''s', ARRAY['HW'], '$dora')"
got=$(joined -c "SELECT udm_use('road') IS NOT NULL" \
    -c "SELECT udm_insert('roadmap', jsonb_build_object('name', 'By udm', 'y_axis_values', jsonb_build_array('HW'), 'owner_id', '$dora'))->>'owner_id'" \
    -c "SELECT email FROM road._udm_user WHERE id = '$dora'" \
    -c "SELECT count(*) FROM udm.user_tenant WHERE user_id = '$dora' AND tenant = 'road'")
expect "udm_insert with a user the tenant does not know yet: the record goes in, and the tenant knows the user" \
    "t|$dora|dora@example.org|1" "$got"
refused "udm_insert with an id that names no user: the node's trigger refuses it in the field's words" 23503 \
    "roadmap.owner_id refers to user 00000000-0000-4000-8000-000000000001, which does not exist" \
    -c "SELECT udm_use('road')" \
    -c "SELECT udm_insert('roadmap', '{\"name\": \"Nobody\", \"y_axis_values\": [\"HW\"], \"owner_id\": \"00000000-0000-4000-8000-000000000001\"}')"
byudm=$(on coordinator -c "SELECT id FROM road.roadmap WHERE name = 'By udm'")
on coordinator -c "CREATE ROLE road_app LOGIN" -c "GRANT \"$(on coordinator -c "SELECT role_name FROM udm.tenant WHERE slug = 'road'")\" TO road_app" >/dev/null
got=$(joined -c "SET ROLE road_app" -c "BEGIN" -c "SELECT udm_use('road', is_local => true) IS NOT NULL" \
    -c "SELECT udm_update('roadmap', '$byudm', jsonb_build_object('owner_id', '$eve'))->>'owner_id'" \
    -c "SELECT udm_get('roadmap', '$byudm')->>'owner_id'" \
    -c "INSERT INTO road.roadmap (name, y_axis_values, owner_id) VALUES ('Eve''s', ARRAY['HW'], '$eve')" \
    -c "SELECT count(*) FROM road.roadmap WHERE owner_id = '$eve'" -c "COMMIT" -c "RESET ROLE" \
    -c "SELECT count(*) FROM udm.user_tenant WHERE user_id = '$eve' AND tenant = 'road'")
expect "udm_update by an application role with a user the tenant does not know yet, then a read and plain SQL naming them in the same transaction" \
    "t|$eve|$eve|2|1" "$got"
CHECK_ON=$road_node refused "udm.citus_know_user on the node: a token made by hand is refused" 42501 \
    "the token of udm.citus_know_user holds no claim of udm for this transaction" \
    -c "SELECT udm.citus_know_user('know|0|1|2026-12-06 00:00:00+00|road|$(tr -d - <<<"$fay")|00')"
refused "udm.citus_know_user on the coordinator is refused" 0A000 "udm.citus_know_user runs on a Citus worker only" \
    -c "SELECT udm.citus_know_user('know')"
refused "udm.citus_know_user: a NULL token is refused" 22004 "udm.citus_know_user: the token may not be NULL" \
    -c "SELECT udm.citus_know_user(NULL)"
check "... the tenant does not know the user of the made-up token" "0" \
    -c "SELECT count(*) FROM road._udm_user WHERE id = '$fay'"
check "... once the user is a member, plain SQL puts the record in and the tenant knows them" "fay@example.org|1" \
    -c "SELECT udm_add_member('road', 'fay@example.org', 'viewer') IS NOT NULL" \
    -c "INSERT INTO road.roadmap (name, y_axis_values, owner_id) VALUES ('Fay''s', ARRAY['HW'], '$fay')" \
    -c "SELECT (SELECT email FROM road._udm_user WHERE id = '$fay') || '|' || (SELECT count(*) FROM udm.user_tenant WHERE user_id = '$fay' AND tenant = 'road')"
user_tenant_shard=$(on coordinator -c "SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'udm.user_tenant'::regclass")
copies_of_user_tenant=$(for n in coordinator worker1 worker2; do
    on $n -c "SELECT md5(string_agg(user_id::text || tenant, ',' ORDER BY user_id, tenant)) FROM udm.user_tenant_$user_tenant_shard"; done | sort -u | wc -l)
expect "... and the copies of udm.user_tenant on the three nodes are alike" "1" "$copies_of_user_tenant"

# SET CONSTRAINTS reaches the workers, where rules over related records are checked (udm sends it
# on as udm.citus_constraints, src/citus/constraints.rs): a product moved to a y value its roadmap
# gets later in the same transaction
R1=00000000-0000-4000-8000-000000000001
check "a rule over related records: a tenant for the SET CONSTRAINTS checks" "HW" \
    -c "SELECT udm_create_tenant('rules')" -c "SELECT udm_use('rules')" \
    -c "SELECT udm_define_entity('roadmap', '{\"fields\": [{\"name\": \"y_axis_values\", \"type\": \"array\", \"items\": \"text\"}]}') IS NOT NULL" \
    -c "SELECT udm_define_entity('product', '{\"fields\": [{\"name\": \"y_position\", \"type\": \"text\"},
          {\"name\": \"roadmap_id\", \"type\": \"relation\", \"target\": \"roadmap\", \"required\": true}],
          \"rules\": [{\"name\": \"y_in_axis\", \"check\": \"y_position in roadmap_id.y_axis_values\"}]}') IS NOT NULL" \
    -c "INSERT INTO rules.roadmap (id, y_axis_values) VALUES ('$R1', ARRAY['HW'])" \
    -c "INSERT INTO rules.product (y_position, roadmap_id) VALUES ('HW', '$R1')" \
    -c "SELECT y_position FROM rules.product"
refused "the rule is checked on the worker after each statement" 23514 \
    'product breaks rule "y_in_axis"' -c "UPDATE rules.product SET y_position = 'XX'"
check "SET CONSTRAINTS ALL DEFERRED reaches the worker: checked at commit" "XX" \
    -c "BEGIN" -c "SET CONSTRAINTS ALL DEFERRED" -c "UPDATE rules.product SET y_position = 'XX'" \
    -c "UPDATE rules.roadmap SET y_axis_values = ARRAY['HW', 'XX']" -c "COMMIT" \
    -c "SELECT y_position FROM rules.product"
check "SET CONSTRAINTS of a rule by name, found through the search path: its shard's trigger on the worker" "YY" \
    -c "BEGIN" -c "SET LOCAL search_path = rules" -c "SET CONSTRAINTS product__y_in_axis__rule DEFERRED" \
    -c "UPDATE rules.product SET y_position = 'YY'" \
    -c "UPDATE rules.roadmap SET y_axis_values = ARRAY['HW', 'YY']" -c "COMMIT" \
    -c "SELECT y_position FROM rules.product"
check "SET CONSTRAINTS run by a function, outside a transaction block, holds for the rest of its statement there too" "FN" \
    -c "DO \$\$ BEGIN SET CONSTRAINTS ALL DEFERRED; UPDATE rules.product SET y_position = 'FN';
          UPDATE rules.roadmap SET y_axis_values = ARRAY['HW', 'FN']; END \$\$" \
    -c "SELECT y_position FROM rules.product"
refused "SET CONSTRAINTS of another constraint by name leaves the rule checked after each statement" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "BEGIN" -c "SET CONSTRAINTS rules.product__y_in_axis__recheck DEFERRED" \
    -c "UPDATE rules.product SET y_position = 'NO'"
check "SET CONSTRAINTS in a released savepoint holds for worker connections opened later" "ZZ" \
    -c "BEGIN" -c "SAVEPOINT a" -c "SET CONSTRAINTS ALL DEFERRED" -c "RELEASE a" \
    -c "UPDATE rules.product SET y_position = 'ZZ'" \
    -c "UPDATE rules.roadmap SET y_axis_values = ARRAY['HW', 'ZZ']" -c "COMMIT" \
    -c "SELECT y_position FROM rules.product"
refused "SET CONSTRAINTS in a savepoint rolled back is gone on the worker too" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "BEGIN" -c "SAVEPOINT a" -c "SET CONSTRAINTS ALL DEFERRED" -c "ROLLBACK TO a" \
    -c "UPDATE rules.product SET y_position = 'NO'"
refused "a deferred rule still refuses the commit, with the rule's SQLSTATE (udm has the node check it before Citus prepares)" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "BEGIN" -c "SET CONSTRAINTS ALL DEFERRED" -c "UPDATE rules.product SET y_position = 'NO'" -c "COMMIT"
refused "udm.citus_check_deferred on the coordinator is refused" 0A000 "udm.citus_check_deferred runs on a Citus worker only" \
    -c "SELECT udm.citus_check_deferred('{\"deferred\": false}')"
refused "udm.citus_check_deferred: NULL is refused" 22004 "udm.citus_check_deferred: the constraints may not be NULL" \
    -c "SELECT udm.citus_check_deferred(NULL)"
rules_node=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
    FROM citus_shards WHERE table_name = 'rules.product'::regclass")
CHECK_ON=$rules_node check "udm.citus_check_deferred on a worker outside a transaction that deferred anything: nothing to check" "t" \
    -c "SELECT udm.citus_check_deferred('{\"deferred\": false}')"
CHECK_ON=$rules_node refused "udm.citus_check_deferred on a worker: a value that defers is refused" 22023 "it checks (IMMEDIATE), it does not defer" \
    -c "SELECT udm.citus_check_deferred('{\"deferred\": true}')"
CHECK_ON=$rules_node refused "udm.citus_check_deferred on a worker: a value udm does not make is refused" 22023 "not a SET CONSTRAINTS udm sent" \
    -c "SELECT udm.citus_check_deferred('ALL IMMEDIATE')"
refused "SET CONSTRAINTS ALL IMMEDIATE checks what the worker deferred at once, with the rule's SQLSTATE" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "BEGIN" -c "SET CONSTRAINTS ALL DEFERRED" -c "UPDATE rules.product SET y_position = 'NO'" \
    -c "SET CONSTRAINTS ALL IMMEDIATE"
check "... and a deferred change made right by ALL IMMEDIATE's time goes through" "IM" \
    -c "BEGIN" -c "SET CONSTRAINTS ALL DEFERRED" -c "UPDATE rules.product SET y_position = 'IM'" \
    -c "UPDATE rules.roadmap SET y_axis_values = ARRAY['HW', 'IM']" -c "SET CONSTRAINTS ALL IMMEDIATE" -c "COMMIT" \
    -c "SELECT y_position FROM rules.product"
refused "SET CONSTRAINTS of the rule by name IMMEDIATE: checked at once, with the rule's SQLSTATE" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "BEGIN" -c "SET CONSTRAINTS ALL DEFERRED" -c "UPDATE rules.product SET y_position = 'NO'" \
    -c "SET CONSTRAINTS rules.product__y_in_axis__rule IMMEDIATE"
printf 'CP\t%s\n' "$R1" | refused "a COPY deferred: refused at COMMIT with the rule's SQLSTATE" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "BEGIN" -c "SET CONSTRAINTS ALL DEFERRED" -c "COPY rules.product (y_position, roadmap_id) FROM STDIN" -c "COMMIT"
# Citus passes a worker's COPY error on as XX000 with its message and detail only: udm's worker
# tags the detail with the SQLSTATE and hint, the coordinator gives them back (copy_errors.rs)
printf 'CP\t%s\n' "$R1" | refused "a COPY that breaks a rule at once: the rule's SQLSTATE, from the worker" 23514 \
    'product breaks rule "y_in_axis"' -c "COPY rules.product (y_position, roadmap_id) FROM STDIN"
got=$(printf 'CP\t%s\n' "$R1" | joined -v VERBOSITY=verbose -c "COPY rules.product (y_position, roadmap_id) FROM STDIN")
expect "... with its hint, and without the worker's tag" "hint:yes tag:no" \
    "hint:$(grep -q 'HINT:' <<<"$got" && echo yes || echo no) tag:$(grep -qF '[udm: SQLSTATE' <<<"$got" && echo yes || echo no)"
refused "INSERT ... SELECT, which Citus sends to the worker by COPY: the rule's SQLSTATE too" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "INSERT INTO rules.product (y_position, roadmap_id) SELECT 'NO', '$R1'::uuid FROM generate_series(1, 2)"
printf 'CP\t%s\n' "$R1" > "$DIR/copy_rule.tsv"
chmod 644 "$DIR/copy_rule.tsv"
check "a handler of the COPY's error sees the rule's SQLSTATE (check_violation), not XX000" "caught" \
    -c "DO \$\$ BEGIN COPY rules.product (y_position, roadmap_id) FROM '$DIR/copy_rule.tsv';
          EXCEPTION WHEN check_violation THEN RAISE NOTICE 'caught'; END \$\$" \
    -c "SELECT 'caught'"
refused "... a handler of an INSERT ... SELECT's error still sees XX000 (as the README says): the error reaches the client, with the rule's SQLSTATE" 23514 \
    'product breaks rule "y_in_axis"' \
    -c "DO \$\$ BEGIN INSERT INTO rules.product (y_position, roadmap_id) SELECT 'NO', '$R1'::uuid FROM generate_series(1, 2);
          EXCEPTION WHEN check_violation THEN RAISE NOTICE 'caught'; END \$\$"
check "after the refusals the product is where the last commit put it" "IM" \
    -c "SELECT y_position FROM rules.product"
# renaming a field renames its constraints: Citus refuses to propagate that, so udm renames them
# on the coordinator and, through udm.citus_rename_constraint, on the tenant's node (its shard)
check "a field with a constraint renamed: its constraint follows on the tenant's node" "1" \
    -c "SELECT udm_use('rules')" \
    -c "SELECT udm_add_field('product', '{\"name\": \"label\", \"type\": \"text\", \"max_length\": 5}') IS NOT NULL" \
    -c "SELECT udm_alter_field('product', 'label', '{\"name\": \"tag\"}') IS NOT NULL" \
    -c "SELECT count(*) FROM pg_constraint WHERE conrelid = 'rules.product'::regclass AND conname = 'product__tag__max_length'"
rules_node=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
    FROM citus_shards WHERE table_name = 'rules.product'::regclass")
product_shard=$(on coordinator -c "SELECT shard_name('rules.product'::regclass, shardid) FROM pg_dist_shard WHERE logicalrelid = 'rules.product'::regclass")
CHECK_ON=$rules_node check "... on the node: the shard's constraint and the worker's copy renamed, none left of the old name" "2|0" \
    -c "SELECT count(*) FILTER (WHERE conname IN ('product__tag__max_length', 'product__tag__max_length_' || split_part('$product_shard', '_', 2)))
          || '|' || count(*) FILTER (WHERE conname LIKE 'product__label%')
        FROM pg_constraint WHERE conrelid IN ('rules.product'::regclass, '$product_shard'::regclass)"
refused "... and a value breaking it is refused in the renamed field's words" 23514 'field "tag", rule "max_length"' \
    -c "SELECT udm_use('rules')" -c "UPDATE rules.product SET tag = 'too long for it'"
long_field=a_rather_long_field_name_to_fill_the_row
refused "a field whose constraint's name would not fit with the shard id: its rename is refused, whole" 0A000 \
    "with the shard id its name would not fit in 63 bytes" \
    -c "SELECT udm_use('rules')" \
    -c "SELECT udm_add_field('product', '{\"name\": \"$long_field\", \"type\": \"text\", \"max_length\": 5}') IS NOT NULL" \
    -c "SELECT udm_alter_field('product', '$long_field', '{\"name\": \"${long_field}_2\"}')"
check "... the field keeps its name" "1|0" \
    -c "SELECT udm_use('rules')" \
    -c "SELECT count(*) FILTER (WHERE f->>'name' = '$long_field') || '|' || count(*) FILTER (WHERE f->>'name' = '${long_field}_2')
        FROM jsonb_array_elements(udm_describe('product')->'fields') f"
refused "udm.citus_rename_constraint on the coordinator: refused" 0A000 "runs on a Citus worker only" \
    -c "SELECT udm.citus_rename_constraint('rules', 'product', 'a', 'b')"
CHECK_ON=$rules_node refused "udm.citus_rename_constraint on a worker: a NULL name is refused" 22004 \
    "udm.citus_rename_constraint: no argument may be NULL" -c "SELECT udm.citus_rename_constraint('rules', 'product', NULL, 'b')"
CHECK_ON=$rules_node refused "udm.citus_rename_constraint on a worker: a table outside a udm tenant is refused" 22023 \
    "is not a table of a udm tenant" -c "SELECT udm.citus_rename_constraint('public', 'pg_class', 'a', 'b')"
check "udm.citus_rename_constraint is not for the tenant's role (nor PUBLIC)" "f" \
    -c "SELECT has_function_privilege((SELECT role_name FROM udm.tenant WHERE slug = 'rules'), 'udm.citus_rename_constraint(text, text, text, text)', 'EXECUTE')"

# the event stream reads the tenant's log on its node: its horizon (the last id given out there,
# below any writer still at work) comes from there too (udm.citus_event_horizon)
events=$(on coordinator -c "SELECT udm_use('rules')" -c "SELECT jsonb_array_length(udm_events(0, 1000)->'events')" | tail -n 1)
consumed=$(on coordinator -c "SELECT udm_use('rules')" -c "SELECT jsonb_array_length(udm_consume('rules_reader', 1000)->'events')" | tail -n 1)
logged=$(on coordinator -c "SELECT count(*) FROM rules._udm_audit WHERE audit_id > 0")
expect "udm_events and udm_consume on Citus: every event of the tenant's log on its node ($logged)" "$logged|$logged" "$events|$consumed"
[ "${logged:-0}" -ge 9 ] || { echo "   FAIL the rules tenant's log holds $logged events, expected at least 9"; failed=$((failed + 1)); }
newest=$(on coordinator -c "SELECT max(audit_id) FROM rules._udm_audit")
check "udm_events on Citus: after the newest event, none, and the horizon is not behind it" "0|true" \
    -c "SELECT udm_use('rules')" \
    -c "SELECT jsonb_array_length(e->'events') || '|' || ((e->>'horizon')::bigint >= ${newest:-0})::text
        FROM (SELECT udm_events(${newest:-0}, 1000) AS e) x"
check "udm.citus_event_horizon is not for the tenant's role (nor PUBLIC)" "f" \
    -c "SELECT has_function_privilege((SELECT role_name FROM udm.tenant WHERE slug = 'rules'), 'udm.citus_event_horizon(text)', 'EXECUTE')"
refused "udm.citus_event_horizon on the coordinator: refused" 0A000 \
    "udm.citus_event_horizon runs on a Citus worker only" -c "SELECT udm.citus_event_horizon('rules')"
CHECK_ON=worker1 refused "udm.citus_event_horizon on a worker: a schema that is not a tenant's is refused" 22023 \
    "is not a udm tenant's schema" -c "SELECT udm.citus_event_horizon('public')"
CHECK_ON=worker1 refused "udm.citus_event_horizon on a worker: NULL is refused" 22004 \
    "the schema may not be NULL" -c "SELECT udm.citus_event_horizon(NULL)"
CHECK_ON=worker1 refused "udm.citus_constraints set by hand on a worker: a value udm did not send is refused" 22023 \
    "not a SET CONSTRAINTS udm sent" -c "BEGIN" -c "SET LOCAL udm.citus_constraints = 'all deferred'"

# the transaction's settings reach the workers (udm_use(..., is_local => true) in a transaction)
check "udm_use(..., is_local => true): the worker's audit records the user" "alice" \
    -c "BEGIN" -c "SELECT udm_use('shop', 'alice', true)" \
    -c "INSERT INTO shop.category (name) VALUES ('by alice')" -c "COMMIT" \
    -c "SELECT user_id FROM shop._udm_audit WHERE new_data->>'name' = 'by alice'"

# a session-level udm_use reaches the workers too: udm sends the selection with every transaction
# that runs a statement without it (src/citus/selection.rs), statements outside a transaction
# block included
audit_user() {
    echo "SELECT string_agg(coalesce(user_id, '-'), ',' ORDER BY audit_id) FROM shop._udm_audit WHERE new_data->>'name' = '$1'"
}
check "udm_use for the session: plain SQL and udm functions outside a transaction block are recorded as the user" "bob|bob,bob" \
    -c "SELECT udm_use('shop', 'bob')" \
    -c "INSERT INTO shop.category (name) VALUES ('by bob')" \
    -c "SELECT udm_insert('category', '{\"name\": \"by bob too\"}') IS NOT NULL" \
    -c "UPDATE shop.category SET code = 'c1' WHERE name = 'by bob too'" \
    -c "SELECT ($(audit_user 'by bob')), ($(audit_user 'by bob too'))"
# a statement that only reads does not send the selection (its worker transaction would be two
# more round trips); one that writes does, whatever its form: Citus plans a data-modifying WITH,
# a SELECT ... FOR UPDATE and udm's own writes as SELECTs (src/citus/selection.rs)
check "udm_use for the session: a data-modifying WITH, after a read, is recorded as the user" "bob" \
    -c "SELECT udm_use('shop', 'bob')" -c "SELECT count(*) FROM shop.category" \
    -c "WITH w AS (INSERT INTO shop.category (name) VALUES ('with bob') RETURNING id) SELECT count(*) FROM w" \
    -c "SELECT ($(audit_user 'with bob'))"
check "... and so is a udm_update after a read in its transaction" "bob,bob" \
    -c "SELECT udm_use('shop', 'bob')" -c "BEGIN" -c "SELECT count(*) FROM shop.category" \
    -c "SELECT udm_update('category', (udm_query('category', '{\"filters\": {\"name\": \"with bob\"}}')->'rows'->0->>'id')::uuid, '{\"code\": \"w1\"}') IS NOT NULL" \
    -c "COMMIT" -c "SELECT string_agg(coalesce(user_id, '-'), ',' ORDER BY audit_id) FROM shop._udm_audit WHERE coalesce(new_data, old_data)->>'name' = 'with bob'"
printf 'copied by bob\ncopied by bob 2\n' | check "udm_use for the session: COPY outside a transaction block is recorded as the user" "bob,bob" \
    -c "SELECT udm_use('shop', 'bob') IS NOT NULL" -c "COPY shop.category (name) FROM STDIN" \
    -c "SELECT string_agg(coalesce(user_id, '-'), ',') FROM shop._udm_audit WHERE new_data->>'name' LIKE 'copied by bob%'"
check "udm_use for the session, changed in a savepoint: rolled back, the earlier user; released, the new one" "bob|bob|carl" \
    -c "SELECT udm_use('shop', 'bob')" -c "BEGIN" \
    -c "INSERT INTO shop.category (name) VALUES ('sp1')" \
    -c "SAVEPOINT a" -c "SELECT udm_use('shop', 'carl')" -c "INSERT INTO shop.category (name) VALUES ('sp2')" \
    -c "ROLLBACK TO SAVEPOINT a" -c "INSERT INTO shop.category (name) VALUES ('sp3')" \
    -c "SAVEPOINT b" -c "SELECT udm_use('shop', 'carl')" -c "RELEASE SAVEPOINT b" \
    -c "INSERT INTO shop.category (name) VALUES ('sp4')" -c "COMMIT" \
    -c "SELECT ($(audit_user sp1)), ($(audit_user sp3)), ($(audit_user sp4))"
# write locks: the lock guard on the worker knows the writer (the session's selection reaches it)
lockme=$(on coordinator -c "SELECT udm_use('shop')" -c "SELECT udm_set_lock_scope('category', 'self') IS NOT NULL" \
    -c "SELECT udm_insert('category', '{\"name\": \"lock: new\"}')->>'id'" | tail -n 1)
check "udm_lock_acquire on Citus, for the session's user" "true|alice" \
    -c "SELECT udm_use('shop', 'alice')" \
    -c "SELECT udm_lock_acquire('category', '$lockme')->>'acquired', udm_lock_status('category', '$lockme')->>'holder'"
refused "another user's plain UPDATE of the locked record is refused on the worker" 55P03 "is locked for editing by \"alice\"" \
    -c "SELECT udm_use('shop', 'bob')" -c "UPDATE shop.category SET name = 'not bob' WHERE id = '$lockme'"
check "the holder writes, releases, and then anybody may" "alice:lock: alice,bob:lock: bob" \
    -c "SELECT udm_use('shop', 'alice')" \
    -c "SELECT udm_update('category', '$lockme', '{\"name\": \"lock: alice\"}') IS NOT NULL" \
    -c "SELECT udm_lock_release('category', '$lockme')->>'released'" \
    -c "SELECT udm_use('shop', 'bob')" -c "UPDATE shop.category SET name = 'lock: bob' WHERE id = '$lockme'" \
    -c "SELECT string_agg(user_id || ':' || (new_data->>'name'), ',' ORDER BY audit_id) FROM shop._udm_audit
        WHERE record_id = '$lockme' AND action = 'UPDATE'"
# an application role takes a lock, then reads and writes the tenant in the same transaction
# (udm_lock_* run on the tenant's node on the caller's connection: written over a connection of
# udm's owner, the lock row made Citus refuse the next statement, "modified in this transaction
# by a different user")
got=$(joined -c "SET ROLE shop_app" -c "BEGIN" -c "SELECT udm_use('shop', 'alice', true) IS NOT NULL" \
    -c "SELECT udm_lock_acquire('category', '$lockme')->>'acquired'" \
    -c "SELECT udm_get('category', '$lockme') IS NOT NULL" \
    -c "SELECT udm_update('category', '$lockme', '{\"name\": \"lock: in one\"}') IS NOT NULL" \
    -c "SELECT udm_lock_status('category', '$lockme')->>'mine'" \
    -c "SELECT udm_lock_release('category', '$lockme')->>'released'" -c "COMMIT" -c "RESET ROLE" \
    -c "SELECT count(*) FROM shop.category WHERE id = '$lockme' AND name = 'lock: in one'")
expect "a lock taken by an application role, then a read, a write, the status and a release in the same transaction" \
    "t|true|t|t|true|true|1" "$got"
got=$(joined -c "SELECT string_agg(user_id || ':' || action, ',' ORDER BY audit_id) FROM (SELECT * FROM shop._udm_audit
        WHERE record_id = '$lockme' AND action LIKE 'LOCK%' ORDER BY audit_id DESC LIMIT 2) AS last" \
    -c "SELECT udm_use('shop') IS NOT NULL" -c "SELECT udm_audit_verify()->>'ok'")
expect "... its lock events are alice's, and the tenant's chain verifies" "alice:LOCK_ACQUIRE,alice:LOCK_RELEASE|t|true" "$got"
check "a lock held by alice: bob's acquire in his own transaction is refused, on the node" "false|alice" \
    -c "SET ROLE shop_app" -c "SELECT udm_use('shop', 'alice') IS NOT NULL" \
    -c "SELECT udm_lock_acquire('category', '$lockme') IS NOT NULL" \
    -c "BEGIN" -c "SELECT udm_use('shop', 'bob', true) IS NOT NULL" \
    -c "SELECT concat_ws('|', r->>'acquired', r->>'holder') FROM udm_lock_acquire('category', '$lockme') AS r" -c "COMMIT"
refused "... and bob's release names the holder" 55P03 "it is held by \"alice\"" \
    -c "SET ROLE shop_app" -c "SELECT udm_use('shop', 'bob') IS NOT NULL" \
    -c "SELECT udm_lock_release('category', '$lockme')"
on coordinator -c "SET ROLE shop_app" -c "SELECT udm_use('shop', 'alice')" -c "SELECT udm_lock_release('category', '$lockme')" >/dev/null
refused "udm.citus_lock on the coordinator is refused" 0A000 "udm.citus_lock runs on a Citus worker only" \
    -c "SELECT udm.citus_lock('status', 'shop', 'category', '$lockme')"
refused "udm.citus_lock: a NULL argument is refused" 22004 "udm.citus_lock: no argument may be NULL" \
    -c "SELECT udm.citus_lock('status', NULL, 'category', '$lockme')"
CHECK_ON=$shop_node refused "udm.citus_lock on the node: an unknown operation is refused" 22023 "\"steal\" is not a lock operation" \
    -c "SELECT udm.citus_lock('steal', 'shop', 'category', '$lockme')"
on coordinator -c "CREATE ROLE lock_road" -c "GRANT \"$(on coordinator -c "SELECT role_name FROM udm.tenant WHERE slug = 'road'")\" TO lock_road" \
    -c "CREATE ROLE lock_nobody" >/dev/null
CHECK_ON=$shop_node refused "udm.citus_lock on the node: another tenant's role is refused" 42501 "permission denied for tenant \"shop\": role \"lock_road\" is not a member" \
    -c "SET ROLE lock_road" -c "SELECT udm.citus_lock('acquire', 'shop', 'category', '$lockme')"
CHECK_ON=$shop_node refused "udm.citus_lock on the node: not executable by PUBLIC" 42501 "permission denied for function citus_lock" \
    -c "SET ROLE lock_nobody" -c "SELECT udm.citus_lock('status', 'shop', 'category', '$lockme')"

# a tenant made before Citus was installed (here: in another database of the coordinator, where
# Citus comes after udm and has no nodes): its new tables are refused, not left local
$CLUSTER psql "$DIR/coordinator" "$PORT" -d postgres -q -c "CREATE DATABASE udm_before"
$CLUSTER psql "$DIR/coordinator" "$PORT" -d udm_before -q -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION udm" -c "SELECT udm_create_tenant('early')" -c "SELECT udm_use('early')" \
    -c "SELECT udm_define_entity('vault', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\"}]}')" \
    -c "CREATE EXTENSION citus" >/dev/null
got=$($CLUSTER psql "$DIR/coordinator" "$PORT" -d udm_before -At -q -v ON_ERROR_STOP=1 -c '\set VERBOSITY verbose' \
    -c "SELECT udm_use('early')" -c "SELECT udm_define_entity('item', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\"}]}')" 2>&1) || true
if grep -q "ERROR:  0A000: udm on Citus: tenant schema \"early\" is not a distributed schema" <<<"$got"; then
    echo "   ok   a new table of a tenant made before Citus is refused"
else
    echo "   FAIL a new table of a tenant made before Citus is refused: $got"
    failed=$((failed + 1))
fi
# its tables stay the coordinator's own: a password field's column grant stays there too
got=$($CLUSTER psql "$DIR/coordinator" "$PORT" -d udm_before -At -q -v ON_ERROR_STOP=1 \
    -c "SELECT udm_use('early')" -c "SELECT udm_add_field('vault', '{\"name\": \"pin\", \"type\": \"password\"}')->>'version'" \
    -c "SELECT has_column_privilege(role_name, 'early.vault', 'name', 'SELECT') || '|' ||
               has_column_privilege(role_name, 'early.vault', 'pin', 'SELECT') FROM udm.tenant WHERE slug = 'early'" 2>&1 | tail -n 2 | paste -sd ' ')
expect "a password field in a tenant made before Citus (a table of the coordinator): its hash hidden there" "2 true|false" "$got"

# members, roles and relation tuples with row-level security, on a tenant living on a worker: its
# policies have no sub-selects on Citus (Citus refuses them) and call udm functions per row
on coordinator -c "SELECT udm_create_tenant('team')" -c "SELECT udm_use('team')" \
    -c "SELECT udm_define_entity('topic', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\"}]}')" \
    -c "SELECT udm_define_entity('board', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\", \"required\": true},
          {\"name\": \"owner_id\", \"type\": \"user\", \"on_delete\": \"cascade\"}], \"access\": {\"scope\": \"self\", \"owner\": \"owner_id\"}}')" \
    -c "SELECT udm_define_entity('card', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\", \"required\": true},
          {\"name\": \"board_id\", \"type\": \"relation\", \"target\": \"board\", \"required\": true, \"on_delete\": \"cascade\"},
          {\"name\": \"topics\", \"type\": \"relation\", \"target\": \"topic\", \"many\": true}], \"access\": {\"scope\": \"board_id\"}}')" \
    -c "SELECT udm_define_entity('note', '{\"fields\": [{\"name\": \"text\", \"type\": \"text\"},
          {\"name\": \"card_id\", \"type\": \"relation\", \"target\": \"card\", \"on_delete\": \"cascade\"}], \"access\": {\"scope\": \"card_id\"}}')" >/dev/null
topic=$(on coordinator -c "SELECT udm_use('team')" -c "SELECT udm_insert('topic', '{\"name\": \"t1\"}')->>'id'" | tail -n 1)
b1=$(on coordinator -c "SELECT udm_use('team')" -c "SELECT udm_insert('board', '{\"name\": \"B1\"}')->>'id'" | tail -n 1)
b2=$(on coordinator -c "SELECT udm_use('team')" -c "SELECT udm_insert('board', '{\"name\": \"B2\"}')->>'id'" | tail -n 1)
for b in "$b1" "$b2"; do
    c=$(on coordinator -c "SELECT udm_use('team')" \
        -c "SELECT udm_insert('card', '{\"name\": \"C\", \"board_id\": \"$b\", \"topics\": [\"$topic\"]}')->>'id'" | tail -n 1)
    on coordinator -c "SELECT udm_use('team')" -c "SELECT udm_insert('note', '{\"text\": \"N\", \"card_id\": \"$c\"}')" >/dev/null
done
check "the access tenant's shards on a worker" "1|t" \
    -c "SELECT count(DISTINCT nodeport), bool_and(nodeport IN ($((PORT + 1)), $((PORT + 2)))) FROM citus_shards WHERE table_name::text LIKE 'team.%'"
check "udm_add_member on Citus (access control switched on)" "alice@example.org:viewer,bob@example.org:viewer|t" \
    -c "SELECT udm_create_user('alice@example.org', 'Alice', 'password1')" \
    -c "SELECT udm_create_user('bob@example.org', 'Bob', 'password1')" \
    -c "SELECT udm_create_user('carol@example.org', 'Carol', 'password1')" \
    -c "SELECT udm_add_member('team', 'alice@example.org', 'viewer')" \
    -c "SELECT udm_add_member('team', 'bob@example.org', 'viewer')" \
    -c "SELECT udm_use('team')" -c "SELECT udm_grant('alice@example.org', 'viewer', 'board:$b1')" \
    -c "SELECT (SELECT string_agg(email || ':' || role, ',' ORDER BY email) FROM udm_members()), (SELECT access FROM udm.tenant WHERE slug = 'team')"
# access events (udm_add_member, udm_grant) go into the tenant's log on its worker
check "access events are in the tenant's audit log on its worker" "2|1" \
    -c "SELECT count(*) FILTER (WHERE action = 'MEMBER_ADD'), count(*) FILTER (WHERE action = 'GRANT') FROM team._udm_audit"
refused "udm.citus_record_event is refused on the coordinator" 0A000 "runs on a Citus worker only" \
    -c "SELECT udm.citus_record_event('team', 'x', 0, gen_random_uuid(), 'GRANT', '{}', 'u', 'r')"
CHECK_ON=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
    FROM citus_shards WHERE table_name = 'team._udm_audit'::regclass") \
    refused "udm.citus_record_event on the tenant's worker: an action udm does not record this way is refused" 22023 \
    "\"DROP\" is not an action udm records this way" \
    -c "SELECT udm.citus_record_event('team', 'x', 0, gen_random_uuid(), 'DROP', '{}', 'u', 'r')"
check "the policies have no sub-selects on Citus" "0" \
    -c "SELECT count(*) FROM pg_policies WHERE schemaname = 'team' AND (qual ILIKE '%SELECT%' OR qual ILIKE '%EXISTS%')"
# an application role (a member of the tenant's role, not a superuser), the user set per transaction
tenant_role=$(on coordinator -c "SELECT role_name FROM udm.tenant WHERE slug = 'team'")
on coordinator -c "CREATE ROLE team_app LOGIN" -c "GRANT \"$tenant_role\" TO team_app" >/dev/null
as_app() {
    $CLUSTER psql "$DIR/coordinator" "$PORT" -d $DB -U team_app -At -q -v ON_ERROR_STOP=1 "$@"
}
seen() {
    # what the user $1 sees through the coordinator: boards, cards, notes, card-topic links, topics,
    # audit rows of boards, boards through udm_query (one statement each: a statement reading a
    # tenant table runs whole on the worker, see the refusal above)
    as_app -c "BEGIN" -c "SELECT udm_use('team', '$1', true)" \
        -c "SELECT count(*) FROM team.board" -c "SELECT count(*) FROM team.card" \
        -c "SELECT count(*) FROM team.note" -c "SELECT count(*) FROM team.card__topics" \
        -c "SELECT count(*) FROM team.topic" \
        -c "SELECT count(DISTINCT record_id) FROM team._udm_audit WHERE entity = 'board'" \
        -c "SELECT jsonb_array_length(udm_query('board', '{}')->'rows')" \
        -c "COMMIT" 2>&1 | grep -vE '^(\{|BEGIN$|COMMIT$)' | paste -sd '|' || true
}
expect_seen() {
    expect "$1" "$2" "$(seen "$3")"
}
expect_seen "a member with a tuple on a board sees it, its cards, notes, links and audit (RLS on the worker)" \
    "1|1|1|1|1|1|1" alice@example.org
expect_seen "a member without tuples sees no scoped records, only the unscoped entity" \
    "0|0|0|0|1|0|0" bob@example.org
seen_in_session() {
    # the same, with the user selected for the session, each query a transaction of its own
    as_app -c "SELECT udm_use('team', '$1')" \
        -c "SELECT count(*) FROM team.board" -c "SELECT count(*) FROM team.card" \
        -c "SELECT count(*) FROM team.note" -c "SELECT count(*) FROM team.card__topics" \
        -c "SELECT count(*) FROM team.topic" \
        -c "SELECT count(DISTINCT record_id) FROM team._udm_audit WHERE entity = 'board'" \
        -c "SELECT jsonb_array_length(udm_query('board', '{}')->'rows')" 2>&1 | grep -vE '^\{' | paste -sd '|' || true
}
expect "udm_use for the session: the member sees on the worker what she sees in a transaction" \
    "1|1|1|1|1|1|1" "$(seen_in_session alice@example.org)"
# plain SQL in one transaction, in a new backend (nothing cached): a write, then a write to a
# junction table whose policy reads the definitions it needs after it (as the session: read as
# udm's owner, Citus refused it as "modified in this transaction by a different user"); by an
# editor of the board, who is removed afterwards
on coordinator -c "SELECT udm_create_user('dave@example.org', 'Dave', 'password1')" \
    -c "SELECT udm_add_member('team', 'dave@example.org', 'editor')" -c "SELECT udm_use('team')" \
    -c "SELECT udm_grant('dave@example.org', 'editor', 'board:$b1')" >/dev/null 2>&1
c1=$(on coordinator -c "SELECT id FROM team.card WHERE board_id = '$b1'")
got=$(as_app -c "BEGIN" -c "SELECT udm_use('team', 'dave@example.org', true) IS NOT NULL" \
    -c "UPDATE team.card SET name = 'C1' WHERE id = '$c1'" -c "DELETE FROM team.card__topics WHERE source_id = '$c1'" \
    -c "INSERT INTO team.card__topics (source_id, target_id) VALUES ('$c1', '$topic')" \
    -c "SELECT count(*) FROM team.card__topics WHERE source_id = '$c1'" -c "COMMIT" 2>&1 | tail -n 1) || true
expect "plain SQL: a member writes a record, then its links, in one transaction" "1" "$got"
on coordinator -c "SELECT udm_delete_user('dave@example.org', 'dave@example.org')" >/dev/null
# a failed udm_use leaves no user selected, on the workers too: alice's rows are not seen after it
got=$(as_app -c "SELECT udm_use('team', 'alice@example.org')" -c "BEGIN" \
    -c "SELECT count(*) FROM team.board" -c "SAVEPOINT a" -c '\set ON_ERROR_STOP 0' \
    -c "SELECT udm_use('team', 'carol@example.org')" -c "ROLLBACK TO SAVEPOINT a" \
    -c "SELECT count(*) FROM team.board" -c "COMMIT" -c "SELECT count(*) FROM team.board" 2>/dev/null | grep -vE '^\{' | paste -sd '|' || true)
expect "after a failed udm_use the workers see no user (in its transaction and after)" "1|0|0" "$got"
got=$(as_app -c '\set VERBOSITY verbose' -c "BEGIN" -c "SELECT udm_use('team', 'carol@example.org', true)" 2>&1) || true
if grep -q "ERROR:  42501: user \"carol@example.org\" is not a member of tenant \"team\"" <<<"$got"; then
    echo "   ok   a user who is not a member is refused"
else
    echo "   FAIL a user who is not a member is refused: $got"
    failed=$((failed + 1))
fi
got=$(as_app -c '\set VERBOSITY verbose' -c "BEGIN" -c "SELECT udm_use('team', 'bob@example.org', true)" \
    -c "UPDATE team.topic SET name = 'renamed'" 2>&1) || true
if grep -q "ERROR:  42501:" <<<"$got"; then
    echo "   ok   a viewer's write is refused by the access guard on the worker"
else
    echo "   FAIL a viewer's write is refused by the access guard on the worker: $got"
    failed=$((failed + 1))
fi
on coordinator -c "SET client_min_messages = warning" -c "SELECT udm_use('team')" -c "SELECT udm_revoke('alice@example.org', 'viewer', 'board:$b1')" >/dev/null
expect_seen "after udm_revoke the member sees no board (no stale cache on the worker)" "0|0|0|0|1|0|0" alice@example.org
# deleting a user releases the locks they hold (Citus refuses functions in a DELETE's RETURNING)
check "udm_delete_user of a member holding a lock: the lock is released" "false" \
    -c "SELECT udm_create_user('erin@example.org', 'Erin', 'password1') IS NOT NULL" \
    -c "SELECT udm_add_member('team', 'erin@example.org', 'editor') IS NOT NULL" \
    -c "SELECT udm_use('team')" -c "SELECT udm_set_lock_scope('topic', 'self') IS NOT NULL" \
    -c "SELECT udm_use('team', 'erin@example.org')" \
    -c "SELECT udm_lock_acquire('topic', '$topic')->>'acquired'" -c "SELECT udm_use('team')" \
    -c "SELECT udm_delete_user('erin@example.org', 'erin@example.org') IS NOT NULL" \
    -c "SELECT udm_lock_status('topic', '$topic')->>'locked'"
check "... and audited as released because of it" "1" \
    -c "SELECT count(*) FROM team._udm_audit WHERE action = 'LOCK_RELEASE' AND new_data ? 'released_because'"
check "the access tenant's audit chain verifies" "true" \
    -c "SELECT udm_use('team')" -c "SELECT udm_audit_verify()->>'ok'"

# udm_move_tenant: refusals first
refused "udm_move_tenant: udm admins only" 42501 "permission denied to move tenant \"shop\"" \
    -U team_app -c "SELECT udm_move_tenant('shop', 'localhost', $((PORT + 1)))"
refused "udm_move_tenant: an unknown tenant" 42704 "tenant \"nope\" does not exist" \
    -c "SELECT udm_move_tenant('nope', 'localhost', $((PORT + 1)))"
refused "udm_move_tenant: an unknown node" 42704 "cannot move tenant \"shop\" to localhost:1: no such active worker node" \
    -c "SELECT udm_move_tenant('shop', 'localhost', 1)"
refused "udm_move_tenant: NULL arguments" 22004 "slug, node_name and node_port must not be null" \
    -c "SELECT udm_move_tenant(NULL, 'localhost', $((PORT + 1)))"
refused "udm_move_tenant: an unknown transfer mode" 22023 "unknown transfer mode \"fast\"" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $((PORT + 1)), 'fast')"
refused "udm_move_tenant: logical replication is refused (udm writes were lost in its switch)" 0A000 \
    "cannot move tenant \"shop\" with transfer mode \"auto\": udm moves tenants with block_writes only" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $((PORT + 1)), 'auto')"
got=$($CLUSTER psql "$DIR/coordinator" "$PORT" -d udm_before -At -q -v ON_ERROR_STOP=1 -c '\set VERBOSITY verbose' \
    -c "SELECT udm_move_tenant('early', 'localhost', $((PORT + 1)))" 2>&1) || true
if grep -q "ERROR:  0A000: cannot move tenant \"early\": its schema \"early\" is not a distributed schema" <<<"$got"; then
    echo "   ok   udm_move_tenant: a tenant whose schema is not distributed is refused"
else
    echo "   FAIL udm_move_tenant: a tenant whose schema is not distributed is refused: $got"
    failed=$((failed + 1))
fi
$CLUSTER psql "$DIR/coordinator" "$PORT" -d postgres -q -c "CREATE DATABASE udm_plain"
got=$($CLUSTER psql "$DIR/coordinator" "$PORT" -d udm_plain -At -q -v ON_ERROR_STOP=1 -c '\set VERBOSITY verbose' \
    -c "CREATE EXTENSION udm" -c "SELECT udm_create_tenant('solo')" \
    -c "SELECT udm_move_tenant('solo', 'localhost', $((PORT + 1)))" 2>&1) || true
if grep -q "ERROR:  0A000: cannot move tenant \"solo\": Citus is not installed in this database" <<<"$got" && grep -q "HINT:" <<<"$got"; then
    echo "   ok   udm_move_tenant without Citus is refused, with a hint"
else
    echo "   FAIL udm_move_tenant without Citus is refused, with a hint: $got"
    failed=$((failed + 1))
fi

# udm_move_tenant of a tenant with records and audit entries, while a writer updates it
shop_port=$(on coordinator -c "SELECT DISTINCT nodeport FROM citus_shards WHERE table_name::text LIKE 'shop.%'")
other_port=$((shop_port == PORT + 1 ? PORT + 2 : PORT + 1))
audit_before=$(on coordinator -c "SELECT count(*) || ':' || max(audit_id) FROM shop._udm_audit")
stop_file=$(mktemp)
rm -f "$stop_file"
(
    ok=0 bad=0
    while [ ! -e "$stop_file" ]; do
        if on coordinator -c "SELECT udm_use('shop')" -c "SELECT udm_update('category', '$toys', '{\"code\": \"w$ok\"}')" >/dev/null 2>&1; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
        fi
    done
    echo "$ok $bad" >"$stop_file.writer"
) &
writer=$!
sleep 1
check "udm_move_tenant moves the tenant to the other worker (block_writes)" "true|localhost:$other_port|block_writes" \
    -c "SELECT v->>'moved', v->>'to', v->>'mode' FROM udm_move_tenant('shop', 'localhost', $other_port) AS v"
sleep 1
touch "$stop_file"
wait "$writer"
read -r writes_ok writes_bad <"$stop_file.writer"
rm -f "$stop_file" "$stop_file.writer"
if [ "$writes_ok" -gt 0 ] && [ "$writes_bad" -eq 0 ]; then
    echo "   ok   a writer kept writing through the move ($writes_ok updates, none failed)"
else
    echo "   FAIL a writer kept writing through the move: $writes_ok updates, $writes_bad failed"
    failed=$((failed + 1))
fi
check "all of the tenant's shards on the new worker" "$other_port" \
    -c "SELECT string_agg(DISTINCT nodeport::text, ',') FROM citus_shards WHERE table_name::text LIKE 'shop.%'"
check "after the move: reads and writes" "puzzles|after" \
    -c "SELECT udm_use('shop')" \
    -c "SELECT udm_get('category', '$toys')->>'name', udm_update('category', '$toys', '{\"code\": \"after\"}')->>'code'"
check "after the move: the audit log kept its rows and its ids keep growing" "t|t" \
    -c "SELECT (SELECT count(*) >= ${audit_before%%:*} + $writes_ok + 1 FROM shop._udm_audit),
               (SELECT audit_id FROM shop._udm_audit WHERE new_data->>'code' = 'after') = (SELECT max(audit_id) FROM shop._udm_audit)"
check "after the move: the history of a record" "t" \
    -c "SELECT udm_use('shop')" -c "SELECT count(*) >= $writes_ok + 3 FROM udm_history('category', '$toys')"
check "after the move: the audit chain verifies" "true" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_audit_verify()->>'ok'"
shop_node=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
    FROM citus_shards WHERE table_name = 'shop.login'::regclass")
password_hidden "after the move"
check "udm_move_tenant back (block_writes): moved, and the chain still verifies" "true|true" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $shop_port, 'block_writes')->>'moved'" -c "SELECT udm_use('shop')" \
    -c "SELECT udm_update('category', '$toys', '{\"code\": \"back\"}')->>'code'" \
    -c "SELECT 'true', udm_audit_verify()->>'ok'"
# a citus_schema_move by hand: Citus copies table-level privileges only, so the tenant's role is
# refused the password entity's table on the new node (never shown its hashes) until the
# entity's next definition change gives the node its column privileges again
on coordinator -c "SELECT citus_schema_move('shop', 'localhost', $other_port, shard_transfer_mode => 'block_writes')" >/dev/null
refused "after a citus_schema_move by hand, the tenant's role is refused the password entity's table" 42501 "permission denied" \
    -c "SET ROLE shop_app" -c "SELECT name FROM shop.login"
check "... until the entity's next definition change: then its other columns are readable again" "ann" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_add_field('login', '{\"name\": \"note\", \"type\": \"text\"}') IS NOT NULL" \
    -c "SET ROLE shop_app" -c "SELECT name FROM shop.login"
refused "... and its hashes are not" 42501 "permission denied" \
    -c "SET ROLE shop_app" -c "SELECT secret FROM shop.login"
check "udm_move_tenant back after the move by hand" "true" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $shop_port)->>'moved'"
check "udm_move_tenant to where it is: nothing moved" "false" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $shop_port)->>'moved'"
# a shard an earlier move left behind that Citus cannot drop yet (here: a session still reads it;
# also when its maintenance daemon is dropping it at that moment): udm_move_tenant waits and
# tries again instead of failing. The daemon's own drops are held off meanwhile.
on coordinator -c "ALTER SYSTEM SET citus.defer_shard_delete_interval = -1" -c "SELECT pg_reload_conf()" >/dev/null
shop_away=$((shop_port == PORT + 1 ? PORT + 2 : PORT + 1))
on coordinator -c "SELECT udm_move_tenant('shop', 'localhost', $shop_away)->>'moved'" >/dev/null
leftover=$(on coordinator -c "SELECT c.object_name FROM pg_dist_cleanup c JOIN pg_dist_node n ON n.groupid = c.node_group_id
    WHERE c.object_type = 1 AND c.object_name LIKE 'shop.%' AND n.nodeport = $shop_port ORDER BY 1 LIMIT 1")
shop_was=$([ "$shop_port" = $((PORT + 1)) ] && echo worker1 || echo worker2)
timeouts_before=$(grep -c "canceling statement due to lock timeout" "$DIR/$shop_was/server.log" || true)
on "$shop_was" -c "BEGIN" -c "SELECT count(*) FROM $leftover" -c "SELECT pg_sleep(3)" -c "COMMIT" >"$DIR/holder.log" 2>&1 &
holder=$!
sleep 0.5
check "udm_move_tenant back while a shard the last move left there ($leftover) cannot be dropped: it waits, then moves" "true" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $shop_port)->>'moved'"
wait $holder || { echo "   FAIL the session holding $leftover: $(cat "$DIR/holder.log")"; failed=$((failed + 1)); }
timeouts=$(grep -c "canceling statement due to lock timeout" "$DIR/$shop_was/server.log" || true)
expect "... Citus could not drop the leftover at first (its drop timed out on the lock there: $timeouts)" "yes" \
    "$([ "${timeouts:-0}" -gt "${timeouts_before:-0}" ] && echo yes || echo no)"
# ... and when the shard stays held past its tries, it refuses, naming the tenant, and moves
# nothing (the tenant stays where it was, its chain intact)
on coordinator -c "SELECT udm_move_tenant('shop', 'localhost', $shop_away)->>'moved'" >/dev/null
leftover=$(on coordinator -c "SELECT c.object_name FROM pg_dist_cleanup c JOIN pg_dist_node n ON n.groupid = c.node_group_id
    WHERE c.object_type = 1 AND c.object_name LIKE 'shop.%' AND n.nodeport = $shop_port ORDER BY 1 LIMIT 1")
on "$shop_was" -c "BEGIN" -c "SELECT count(*) FROM $leftover" -c "SELECT pg_sleep(12)" -c "COMMIT" >"$DIR/holder.log" 2>&1 &
holder=$!
sleep 0.5
move_started=$(date +%s)
refused "udm_move_tenant while the leftover ($leftover) stays held past its tries: refused, naming the tenant" 55000 \
    "cannot move tenant \"shop\" yet: a shard of it that an earlier move left on a node could not be dropped (5 tries" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $shop_port)"
echo "   --   (refused after $(($(date +%s) - move_started)) s)"
check "... the tenant is still where it was, and its chain verifies" "$shop_away|true" \
    -c "SELECT udm_use('shop') IS NOT NULL" \
    -c "SELECT (SELECT DISTINCT nodeport FROM citus_shards WHERE table_name::text LIKE 'shop.%') || '|' || (udm_audit_verify()->>'ok')"
wait $holder || { echo "   FAIL the session holding $leftover: $(cat "$DIR/holder.log")"; failed=$((failed + 1)); }
check "... once the shard is free, the move goes through" "true" \
    -c "SELECT udm_move_tenant('shop', 'localhost', $shop_port)->>'moved'"
on coordinator -c "ALTER SYSTEM RESET citus.defer_shard_delete_interval" -c "SELECT pg_reload_conf()" >/dev/null
team_port=$(on coordinator -c "SELECT DISTINCT nodeport FROM citus_shards WHERE table_name::text LIKE 'team.%'")
check "udm_move_tenant of a tenant with members" "true" \
    -c "SELECT udm_move_tenant('team', 'localhost', $((team_port == PORT + 1 ? PORT + 2 : PORT + 1)))->>'moved'"
expect_seen "after the move a member without tuples still sees no scoped records" "0|0|0|0|1|0|0" bob@example.org
on coordinator -c "SET client_min_messages = warning" -c "SELECT udm_use('team')" -c "SELECT udm_grant('alice@example.org', 'viewer', 'board:$b2')" >/dev/null
expect_seen "after the move a new tuple opens its board to the member" "1|1|1|1|1|1|1" alice@example.org

categories=$(on coordinator -c "ANALYZE shop.category" -c "SELECT count(*) FROM shop.category")
check "an estimated count is the worker's estimate (the coordinator's plan has none): $categories" "$categories" \
    -c "SELECT udm_use('shop')" -c "SELECT udm_query('category', '{\"count\": \"estimated\", \"limit\": 1}')->>'count'"

# how far a tenant's events have gone, where its worker numbers them (not the coordinator's copy
# of the sequence), after a change there
newest=$(on coordinator -c "SELECT max(audit_id) FROM shop._udm_audit")
check "udm_event_heads is the newest audit id the tenant's worker wrote ($newest)" "$newest" \
    -c "SELECT udm_use('shop')" -c "SELECT head FROM udm_event_heads(ARRAY['shop'])"
touched=$(on coordinator -c "SELECT id FROM shop.category ORDER BY name LIMIT 1")
on coordinator -c "BEGIN" -c "SELECT udm_use('shop', NULL, true)" \
    -c "UPDATE shop.category SET name = name || '.' WHERE id = '$touched'" -c "COMMIT" >/dev/null
newest=$(on coordinator -c "SELECT max(audit_id) FROM shop._udm_audit WHERE audit_id > $newest")
check "a change moves the tenant's event head to its audit id ($newest)" "$newest" \
    -c "SELECT udm_use('shop')" -c "SELECT head FROM udm_event_heads(ARRAY['shop'])"

# whether schema $1 is a distributed schema, and how many of its tables are not in its
# colocation group
whole() {
    echo "SELECT EXISTS (SELECT 1 FROM pg_dist_schema WHERE schemaid = '$1'::regnamespace),
                 count(*) FILTER (WHERE p.colocationid IS DISTINCT FROM d.colocationid)
          FROM pg_class c LEFT JOIN pg_dist_schema d ON d.schemaid = c.relnamespace
          LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
          WHERE c.relnamespace = '$1'::regnamespace AND c.relkind = 'r'"
}

# a copy of a tenant is a distributed schema too, with every table colocated (before, the clone's
# tables stayed local tables of the coordinator, silently); its rows and audit chain came along
check "udm_clone_tenant with data: the copy's audit log verifies" "true" \
    -c "SELECT udm_clone_tenant('shop', 'shopcopy', true)->'audit'->>'ok'"
check "the copy is a distributed schema, every table of it colocated" "t|0" -c "$(whole shopcopy)"
copy_port=$(on coordinator -c "SELECT DISTINCT nodeport FROM citus_shards WHERE table_name::text LIKE 'shopcopy.%'")
copy_node=$([ "$copy_port" = $((PORT + 1)) ] && echo worker1 || echo worker2)
copied_top=$(on coordinator -c "SELECT max(audit_id) FROM shopcopy._udm_audit")
CHECK_ON=$copy_node check "on the copy's node, its audit sequence is above the copied ids ($copied_top)" "t" \
    -c "SELECT pg_sequence_last_value('shopcopy._udm_audit_audit_id_seq') >= $copied_top"
# there, asked for less, the lift leaves the sequence where it is
CHECK_ON=$copy_node check "udm.citus_lift_sequence never lowers a sequence" "t" \
    -c "SELECT udm.citus_lift_sequence('shopcopy._udm_audit_audit_id_seq', 1) >= $copied_top \
               AND pg_sequence_last_value('shopcopy._udm_audit_audit_id_seq') >= $copied_top"
check "the copy holds the original's records" "t" \
    -c "SELECT (SELECT array_agg(name ORDER BY name) FROM shopcopy.category) = (SELECT array_agg(name ORDER BY name) FROM shop.category)"
# the record changed last in the original: the copy's next change of it is numbered above the
# ids the copy holds (they came from the original's node), else its chain would break
copied=$touched
check "a change to the copy is audited (on its worker)" "1" \
    -c "BEGIN" -c "SELECT udm_use('shopcopy', NULL, true)" \
    -c "UPDATE shopcopy.category SET name = name || '!' WHERE id = '$copied'" \
    -c "SELECT count(*) FROM shopcopy._udm_audit a JOIN shopcopy.category c ON c.id = a.record_id \
          AND a.record_version = c._version AND a.action = 'UPDATE' WHERE c.name LIKE '%!'" -c "COMMIT"
check "the copy's newest audit row is that change (numbered above the copied ones)" "t" \
    -c "SELECT record_id = '$copied' FROM shopcopy._udm_audit ORDER BY audit_id DESC LIMIT 1"
check "the copy's chain verifies with the change" "true" \
    -c "SELECT udm_use('shopcopy')" -c "SELECT udm_audit_verify()->>'ok'"
check "the original is as it was" "0" -c "SELECT count(*) FROM shop.category WHERE name LIKE '%!'"
on coordinator -c "SELECT udm_drop_tenant('shopcopy', 'shopcopy')" >/dev/null
# a tenant import on Citus, by COPY, as udm-tenant does it: the sections exported in one
# REPEATABLE READ transaction, loaded into the tenant udm_import_begin made (its statements, read
# from a first call rolled back), checked and finished in one transaction
arch="$DIR/archive"
# the COPY statements of an export's or an import's answer, numbered: "<n> <statement>"
copies() {
    jq -r '.statements | to_entries[] | "\(.key) \(.value.copy)"' "$1"
}
rm -rf "$arch" && mkdir -p "$arch"
on coordinator -c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" -c "SELECT udm_export('shop')" \
    -c "COMMIT" > "$arch/first.json"
{
    echo "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
    echo "\\o $arch/export.json"
    echo "SELECT udm_export('shop');"
    while read -r i copy; do
        echo "\\o $arch/s$i.copy"
        echo "$copy;"
    done < <(copies "$arch/first.json")
    echo "\\o"
    echo "COMMIT;"
} > "$arch/export.sql"
on coordinator -f "$arch/export.sql"
begin="SELECT udm_import_begin(\$m\$$(jq -c .manifest "$arch/export.json")\$m\$::jsonb, 'shopimp')"
on coordinator -c "BEGIN" -c "$begin" -c "ROLLBACK" > "$arch/begin.json"
{
    echo "BEGIN;"
    echo "$begin \\g /dev/null"
    while read -r i copy; do
        echo "$copy;"
        cat "$arch/s$i.copy"
        echo "\\."
    done < <(copies "$arch/begin.json")
    echo "SELECT udm_import_finish('shopimp')->'audit'->>'ok';"
    echo "COMMIT;"
} > "$arch/import.sql"
check "tenant import by COPY: the imported audit log verifies" "true" -f "$arch/import.sql"
check "the imported tenant is a distributed schema, every table of it colocated" "t|0" -c "$(whole shopimp)"
check "the imported tenant holds the original's records and audit rows" "t|t" \
    -c "SELECT (SELECT array_agg(name ORDER BY name) FROM shopimp.category) = (SELECT array_agg(name ORDER BY name) FROM shop.category), \
               (SELECT count(*) FROM shopimp._udm_audit) = (SELECT count(*) FROM shop._udm_audit)"
on coordinator -c "SELECT udm_drop_tenant('shopimp', 'shopimp')" >/dev/null
check "udm_drop_tenant on Citus" "0|0|0" \
    -c "SELECT udm_create_tenant('gone')" -c "SELECT udm_drop_tenant('gone', 'gone')" \
    -c "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'gone'),
               (SELECT count(*) FROM udm.tenant WHERE slug = 'gone'),
               (SELECT count(*) FROM pg_dist_schema WHERE schemaid::text = 'gone')"

# Field encryption (src/crypto.rs): every node reads the same master key file (CITUS_KEY_FILE).
# A tenant's keys (_udm_keys) are a table of its distributed schema, on its node, where its triggers
# seal and its queries open the values; the coordinator reads them there, on the caller's own
# connection (udm.citus_tenant_keys, with a token signed for the transaction).
if [ -n "${CITUS_KEY_FILE:-}" ]; then
    on coordinator -c "SELECT udm_create_tenant('vault') IS NOT NULL" -c "SELECT udm_use('vault') IS NOT NULL" \
        -c "SELECT udm_define_entity('secret', '{\"fields\": [{\"name\": \"name\", \"type\": \"text\"},
              {\"name\": \"code\", \"type\": \"text\", \"encrypted\": true, \"index\": true},
              {\"name\": \"born\", \"type\": \"date\", \"encrypted\": true}]}') IS NOT NULL" >/dev/null
    on coordinator -c "CREATE ROLE vault_app LOGIN" \
        -c "GRANT \"$(on coordinator -c "SELECT role_name FROM udm.tenant WHERE slug = 'vault'")\" TO vault_app" >/dev/null
    vault_node=$(on coordinator -c "SELECT CASE WHEN nodeport = $((PORT + 1)) THEN 'worker1' ELSE 'worker2' END
        FROM citus_shards WHERE table_name = 'vault._udm_entity'::regclass")
    check "an encrypted field on Citus: the tenant's keys are in its colocation group, on its node" "1|true" \
        -c "SELECT count(DISTINCT nodeport) || '|' || bool_and(colocation_id = (SELECT colocation_id FROM citus_shards
              WHERE table_name = 'vault._udm_entity'::regclass))
            FROM citus_shards WHERE table_name IN ('vault._udm_entity'::regclass, 'vault._udm_keys'::regclass)"
    # as an application role, in one transaction: written through udm and plain SQL (sealed by the
    # trigger on the node), then read and filtered by equality (the keys read on the node over
    # the role's own connection: over udm's owner's, Citus refuses them after the write)
    got=$(joined -c "SET ROLE vault_app" -c "BEGIN" -c "SELECT udm_use('vault', is_local => true) IS NOT NULL" \
        -c "SELECT udm_insert('secret', '{\"name\": \"a\", \"code\": \"c-1\", \"born\": \"1990-01-02\"}')->>'code'" \
        -c "INSERT INTO vault.secret (name, code, born) VALUES ('b', 'c-2', '1985-05-05')" \
        -c "SELECT udm_query('secret', '{\"columns\": [\"name\", \"born\"], \"filters\": {\"code\": \"c-2\"}}')->'rows'" \
        -c "SELECT count(*) FROM vault.secret WHERE starts_with(code, 'udm1:') AND starts_with(born, 'udm1:')" \
        -c "SELECT string_agg(Udm_Decrypt('secret', 'code', id, code), ',' ORDER BY name) FROM vault.secret" \
        -c "COMMIT" -c "RESET ROLE")
    expect "an application role writes encrypted fields and reads them back in one transaction (udm_insert, plain SQL, a filter by equality, udm_decrypt on the node, named in any case)" \
        "t|c-1|[{\"born\": \"1985-05-05\", \"name\": \"b\"}]|2|c-1,c-2" "$got"
    # a backend that has not read the definitions yet reads them after the role's write as the
    # role (over udm's owner's connection Citus refuses a read of placements the role changed)
    id_a=$(on coordinator -c "SELECT id FROM vault.secret WHERE name = 'a'")
    got=$(joined -c "SET ROLE vault_app" -c "BEGIN" -c "SELECT udm_use('vault', is_local => true) IS NOT NULL" \
        -c "INSERT INTO vault.secret (name) VALUES ('d')" \
        -c "SELECT udm_get('secret', '$id_a')->>'code'" \
        -c "SELECT udm_update('secret', '$id_a', '{\"name\": \"a2\"}')->>'name'" -c "ROLLBACK" -c "RESET ROLE")
    expect "an application role's udm_get and udm_update after its own INSERT in one transaction, in a new backend" \
        "t|c-1|a2" "$got"
    check "a SET, a write and a RESET in one query string: Citus passes the SET on alone, not the whole string" "1" \
        -c "SELECT udm_use('vault') IS NOT NULL; SET DateStyle = 'SQL, DMY'; INSERT INTO vault.secret (name, born) VALUES ('c', '10/12/1915'); RESET DateStyle" \
        -c "SELECT count(*) FROM vault.secret WHERE name = 'c'"
    refused "udm_decrypt inside a view on Citus: the selection is not sent, and the error says why" 55000 \
        "must be named in the statement's own text" \
        -c "CREATE VIEW public.vault_codes AS SELECT udm_decrypt('secret', 'code', id, code) AS code FROM vault.secret" \
        -c "SELECT udm_use('vault') IS NOT NULL" -c "SELECT * FROM public.vault_codes"
    check "udm_rotate_data_key on Citus: a new data key" "2" \
        -c "SELECT udm_use('vault') IS NOT NULL" -c "SELECT udm_rotate_data_key()->>'data_key'"
    got=$(joined -c "SELECT udm_use('vault') IS NOT NULL" -c "SELECT udm_reencrypt('secret')->>'reencrypted'" \
        -c "SELECT count(*) FROM vault.secret WHERE split_part(code, ':', 2) = '1' OR split_part(born, ':', 2) = '1'")
    expect "udm_reencrypt on Citus: every value goes under the new key" "t|3|0" "$got"
    CHECK_ON=$vault_node refused "udm.citus_tenant_keys on the node: a token made by hand is refused" 42501 \
        "the token of udm.citus_tenant_keys holds no claim of udm for this transaction" \
        -c "SELECT udm.citus_tenant_keys('keys|0|1|2026-12-07 00:00:00+00|vault|00')"
    refused "udm.citus_tenant_keys on the coordinator is refused" 0A000 "udm.citus_tenant_keys runs on a Citus worker only" \
        -c "SELECT udm.citus_tenant_keys('keys')"
    refused "udm.citus_tenant_keys: a NULL token is refused" 22004 "udm.citus_tenant_keys: the token may not be NULL" \
        -c "SELECT udm.citus_tenant_keys(NULL)"
fi

# the coordinator's tables of a tenant are Citus's shells: nothing udm writes may land in them
check "nothing was written into the coordinator's shell tables of the tenants' logs, locks and members" "0" \
    -c "SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_dist_partition p ON p.logicalrelid = c.oid
        WHERE c.relname IN ('_udm_audit', '_udm_lock', '_udm_member')"

# Driver test suites (tests/tests/*.rs) that run against the coordinator as they do on a single
# node. The others start servers of their own (README, "Scaling out with Citus").
suites=${CITUS_SUITES-changes messages isolation caches tenants records links_history locks access related_rules events_race users graphql roadmap entities hostile openapi audit queries graphql_js encryption}
# tests of those suites that Citus fails (README): PostgreSQL's generic plan of a prepared
# statement (Citus plans a query of a distributed table for each call's values on the
# coordinator, and the worker plans the query it is sent); and the encryption tests that start
# servers of their own (one without the key file, one with a new key) from a dump of this database
skips=${CITUS_SKIP-a_query_planned_alike_for_every_value_keeps_its_generic_plan a_server_without_the_key_file_refuses_encrypted_fields a_new_master_key_rewraps_the_tenant_keys}
args=() skip=()
for s in $suites; do args+=(--test "$s"); done
for s in $skips; do skip+=(--skip "$s"); done
if [ ${#args[@]} -eq 0 ]; then
    echo "   --   no driver test suites (CITUS_SUITES is empty)"
elif UDM_TEST_HOST="$DIR/coordinator/sock" UDM_TEST_PORT=$PORT UDM_TEST_DB=$DB \
    cargo test -q -p udm-tests --no-fail-fast "${args[@]}" -- --test-threads=1 "${skip[@]}" >"$DIR/driver-tests.log" 2>&1; then
    echo "   ok   driver test suites against the coordinator: $suites ($(grep -c '^test result: ok' "$DIR/driver-tests.log") of $(wc -w <<<"$suites") passed; skipped: ${skips:-none})"
else
    echo "   FAIL driver test suites against the coordinator ($suites):"
    grep -E "^test result|panicked at|FAILED" "$DIR/driver-tests.log" | head -20 | sed 's/^/        /'
    failed=$((failed + 1))
fi

elapsed=$(($(date +%s) - started))
if [ "$failed" -gt 0 ]; then
    echo "   $failed Citus check(s) failed (${elapsed}s; logs in $DIR/*/server.log)"
    exit 1
fi
echo "   all Citus checks passed (${elapsed}s)"
