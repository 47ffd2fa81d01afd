-- Citus (src/citus.rs): on a Citus coordinator, udm's global tables are reference tables, a copy
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
    FOREACH t IN ARRAY ARRAY['udm.tenant', 'udm.app_user', 'udm.user_tenant'] LOOP
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
