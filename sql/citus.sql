-- Citus (src/citus/claims.rs): the key udm signs what its coordinator tells the triggers on the
-- workers with (that a write is a rollback), so that a setting made by hand is not taken for it.
-- One row, made by udm.citus_setup on a Citus coordinator, a reference table there; read by udm
-- only (no privilege for PUBLIC).
CREATE TABLE udm.node_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL CHECK (octet_length(key) >= 16));
REVOKE ALL ON udm.node_key FROM PUBLIC;

-- Citus (src/citus/mod.rs): on a Citus coordinator, udm's global tables are reference tables, a copy
-- on every node, so that what runs on a worker (the triggers of a tenant's tables, which fire
-- against the tenant's shards there) reads the tenant registry and the users. CREATE EXTENSION
-- and ALTER EXTENSION UPDATE run it; an admin runs it again after adding Citus to a database that
-- has udm. Without Citus, and on a worker (which replays the extension script Citus sends it), it
-- does nothing. Returns the tables it made reference tables. Internal: not executable by PUBLIC.
CREATE FUNCTION udm.citus_setup() RETURNS text[]
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t text;
    coordinator boolean;
    done text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN done;
    END IF;
    -- the coordinator only (group 0), once it is in the cluster's node list
    EXECUTE 'SELECT l.groupid = 0 AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n WHERE n.groupid = 0)
             FROM pg_catalog.pg_dist_local_group l' INTO coordinator;
    IF NOT coalesce(coordinator, false) THEN
        RETURN done;
    END IF;
    -- 244 random bits (gen_random_uuid uses the strong random source)
    INSERT INTO udm.node_key (key)
        SELECT pg_catalog.decode(pg_catalog.replace(
            pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', ''), 'hex')
        WHERE NOT EXISTS (SELECT 1 FROM udm.node_key);
    FOREACH t IN ARRAY ARRAY['udm.tenant', 'udm.app_user', 'udm.user_tenant', 'udm.node_key'] LOOP
        IF to_regclass(t) IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = to_regclass(t)) THEN
            EXECUTE 'SELECT pg_catalog.create_reference_table($1::regclass)' USING t;
            done := done || t;
        END IF;
    END LOOP;
    RETURN done;
END
$$;
SELECT udm.citus_setup();

-- Citus: lifts a sequence of a tenant's table, on the node this runs on, to at least `floor`
-- (each node's copy of a sequence has its own range: a tenant cloned or imported onto a worker
-- holds ids of other nodes' ranges, and its new rows must be numbered above them). udm runs it
-- on the tenant's node as a query of the tenant's table, which Citus sends there in the
-- transaction of the import. Never lowers a sequence. Internal: not executable by PUBLIC.
CREATE FUNCTION udm.citus_lift_sequence(seq text, floor bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s regclass := pg_catalog.to_regclass(seq);
    now_at bigint;
BEGIN
    IF s IS NULL OR floor IS NULL OR NOT EXISTS (
        -- a tenant schema holds its catalog table (udm.tenant, a reference table, is not read
        -- here: this runs inside a query Citus sent to the node)
        SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_class k
            ON k.relnamespace = c.relnamespace AND k.relname = '_udm_entity' AND k.relkind IN ('r', 'p')
        WHERE c.oid = s AND c.relkind = 'S') THEN
        RAISE EXCEPTION 'udm.citus_lift_sequence: % is not a sequence of a udm tenant', seq
            USING ERRCODE = '22023';
    END IF;
    now_at := coalesce(pg_catalog.pg_sequence_last_value(s),
                       (SELECT q.seqstart FROM pg_catalog.pg_sequence q WHERE q.seqrelid = s));
    IF now_at >= floor THEN
        RETURN now_at;
    END IF;
    -- this node only: the other nodes keep their copies
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    EXECUTE pg_catalog.format('ALTER SEQUENCE %s MAXVALUE 9223372036854775807', s);
    RETURN pg_catalog.setval(s, floor);
END
$$;

-- Citus (src/citus/events.rs): on a tenant's worker, appends an access or lock event to the
-- tenant's audit log (the coordinator has only the log's shell table, and sends the event there
-- as a query of the tenant's catalog). Refused anywhere but on a worker. Internal: not executable
-- by PUBLIC.
CREATE FUNCTION udm.citus_record_event(schema_name text, entity text, entity_version integer,
    record_id uuid, action text, data jsonb, user_id text, db_role text) RETURNS boolean
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_citus_record_event';

-- Citus (src/citus/events.rs): on a tenant's worker, the horizon of the tenant's event stream
-- there (the last audit id its log's sequence gave out, or below it the smallest a writer still
-- holds): the coordinator has only the log's shell and not its sequence or writers, and asks
-- the node as a query of the tenant's catalog. Refused anywhere but on a worker. Internal: not
-- executable by PUBLIC.
CREATE FUNCTION udm.citus_event_horizon(schema_name text) RETURNS bigint
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_citus_event_horizon';

-- Citus (src/access/locks.rs): on a tenant's worker, a udm_lock_* call the coordinator sends
-- there as a query of the tenant's catalog, on the caller's own connection (written by the
-- coordinator as udm's owner, the lock row would make Citus refuse the caller's next statement
-- on the tenant in that transaction). It makes every check udm_lock_<op> makes, the caller's
-- membership of the tenant first. Refused anywhere but on a worker. Executable by
-- udm_tenant_roles: udm_lock_* call it as the caller.
CREATE FUNCTION udm.citus_lock(op text, tenant text, entity text, id uuid) RETURNS jsonb
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_citus_lock';

-- Citus (src/access/users.rs): on a tenant's worker, the tenant's users table learns a registered
-- user that udm_insert or udm_update on the coordinator is about to write into a `user` field
-- (the trigger that checks the field there cannot: that would write udm.user_tenant, a reference
-- table, from inside the change). Sent as a query of the tenant's catalog on the caller's own
-- connection, with a token the coordinator signs for this transaction (udm.node_key); a token
-- made by hand, changed or of another transaction is refused (42501), as anywhere but on a
-- worker (0A000). Executable by udm_tenant_roles: udm_insert and udm_update call it as the caller.
CREATE FUNCTION udm.citus_know_user(token text) RETURNS boolean
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_citus_know_user';

-- Citus (src/citus/constraints.rs): on a tenant's worker, a SET CONSTRAINTS ... IMMEDIATE (as
-- udm.citus_constraints carries one) for the rest of the transaction. udm sends it, as a query of
-- the tenant's catalog, to the tenants a transaction that deferred constraints wrote: at the
-- coordinator's commit (ALL) and when the session sets them IMMEDIATE, so that a rule failing
-- then fails with its own SQLSTATE (failing in the worker's commit or in a SET Citus passes on,
-- Citus reports XX000). Refused anywhere but on a worker (0A000), for NULL (22004), for a value
-- udm does not make or one that defers (22023). Executable by udm_tenant_roles: the session's
-- commit and SET CONSTRAINTS run it as the session.
CREATE FUNCTION udm.citus_check_deferred(constraints text) RETURNS boolean
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_citus_check_deferred';

-- Citus (src/crypto.rs): on a tenant's worker, the tenant's encryption keys as stored (wrapped by
-- the master key, never opened here) for the coordinator, which opens them with its master key:
-- read there on the caller's own connection as a query of the tenant's catalog (read over a
-- connection of udm's owner, Citus would refuse them once the caller wrote to the tenant in the
-- transaction), with a token the coordinator signs for this transaction (udm.node_key); a token
-- made by hand, changed or of another transaction is refused (42501), as anywhere but on a worker
-- (0A000) and a NULL token (22004). Executable by udm_tenant_roles: udm's reads of encrypted
-- fields run it as the caller.
CREATE FUNCTION udm.citus_tenant_keys(token text) RETURNS jsonb
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_citus_tenant_keys';

-- Citus: the tenant's table `schema_name`.`tbl` that `caller` (a udm.citus_* function udm sends to
-- a tenant's node) was asked to change on this node; refused anywhere but on a worker (0A000),
-- with `args_ok` false (its other arguments hold a NULL: 22004), and for a table outside a udm
-- tenant's schema (22023). Internal: not executable by PUBLIC.
CREATE FUNCTION udm.citus_node_table(caller text, schema_name text, tbl text, args_ok boolean)
    RETURNS regclass
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    rel regclass := pg_catalog.to_regclass(pg_catalog.format('%I.%I', schema_name, tbl));
BEGIN
    IF pg_catalog.current_setting('citus.enable_ddl_propagation', true) IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_dist_local_group WHERE groupid <> 0) THEN
        RAISE EXCEPTION '%: runs on a Citus worker only', caller
            USING ERRCODE = '0A000';
    END IF;
    IF NOT coalesce(args_ok, false) THEN
        RAISE EXCEPTION '%: no argument may be NULL', caller
            USING ERRCODE = '22004';
    END IF;
    -- a tenant schema holds its catalog table (udm.tenant, a reference table, is not read here:
    -- this runs inside a query Citus sent to the node)
    IF rel IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_class k
            ON k.relnamespace = c.relnamespace AND k.relname = '_udm_entity' AND k.relkind IN ('r', 'p')
        WHERE c.oid = rel AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION '%: %.% is not a table of a udm tenant', caller, schema_name, tbl
            USING ERRCODE = '22023';
    END IF;
    RETURN rel;
END
$$;

-- Citus (src/citus/mod.rs): on a tenant's worker, renames the constraint `old_name` of the
-- tenant's table `tbl` to `new_name` on this node: on the worker's copy of the table and on its
-- shards here (`<name>_<shard id>`). Citus refuses to propagate a constraint's rename, which udm
-- makes when a field is renamed: udm renames it on the coordinator without propagation, then
-- runs this on the tenant's node as a query of the tenant's catalog, which Citus sends there in
-- the same transaction. A shard's name that would not fit in 63 bytes is refused (Citus would
-- have shortened it its own way). Refused anywhere but on a worker, and for a table outside a
-- udm tenant's schema. Internal: not executable by PUBLIC.
CREATE FUNCTION udm.citus_rename_constraint(schema_name text, tbl text, old_name text, new_name text)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    rel regclass := udm.citus_node_table('udm.citus_rename_constraint', schema_name, tbl,
        old_name IS NOT NULL AND new_name IS NOT NULL);
    propagation text := pg_catalog.current_setting('citus.enable_ddl_propagation', true);
    target regclass;
    suffix text;
    n integer := 0;
BEGIN
    -- this node only, for this function only
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    FOR target, suffix IN
        SELECT rel, ''
        UNION ALL
        SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid)), '_' || s.shardid
          FROM pg_catalog.pg_dist_shard s
         WHERE s.logicalrelid = rel
           AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid)) IS NOT NULL
    LOOP
        IF pg_catalog.octet_length(old_name || suffix) > 63 OR pg_catalog.octet_length(new_name || suffix) > 63 THEN
            RAISE EXCEPTION 'udm on Citus: cannot rename constraint "%" of %.% to "%": with the shard id its name would not fit in 63 bytes',
                old_name, schema_name, tbl, new_name
                USING ERRCODE = '0A000';
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                   WHERE c.conrelid = target AND c.conname = old_name || suffix) THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I',
                target, old_name || suffix, new_name || suffix);
            n := n + 1;
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagation, true);
    RETURN n;
END
$$;

-- Citus (src/citus/mod.rs): on a tenant's worker, gives `role` SELECT on the columns `cols` of
-- the tenant's table `tbl`, and on no other column, on this node: the shard of it here and the
-- worker's shell of it. Citus refuses to propagate a column-level GRANT, which hides a password
-- field's hashes from the tenant's role: udm makes it on the coordinator without propagation,
-- then runs this on the tenant's node as a query of the tenant's catalog, which Citus sends there
-- in the same transaction (and again after udm_move_tenant: Citus copies table-level privileges
-- only). Refused anywhere but on a worker, and for a table outside a udm tenant's schema.
-- Returns the relations changed. Internal: not executable by PUBLIC.
CREATE FUNCTION udm.citus_column_grant(schema_name text, tbl text, role text, cols text[])
    RETURNS integer
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    rel regclass := udm.citus_node_table('udm.citus_column_grant', schema_name, tbl,
        role IS NOT NULL AND cols IS NOT NULL);
    propagation text := pg_catalog.current_setting('citus.enable_ddl_propagation', true);
    target text;
    n integer := 0;
BEGIN
    -- this node only, for this function only
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    FOR target IN
        SELECT rel::text
        UNION ALL
        SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid) FROM pg_catalog.pg_dist_shard s
         WHERE s.logicalrelid = rel
           AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid)) IS NOT NULL
    LOOP
        -- a table-level REVOKE takes the column-level privileges with it
        EXECUTE pg_catalog.format('REVOKE SELECT ON %s FROM %I', target, role);
        IF pg_catalog.cardinality(cols) > 0 THEN
            EXECUTE pg_catalog.format('GRANT SELECT (%s) ON %s TO %I',
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(cols) c),
                target, role);
        END IF;
        n := n + 1;
    END LOOP;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagation, true);
    RETURN n;
END
$$;
