-- udm bootstrap: the registry of tenants, the types and helper functions entity tables use,
-- and the udm_admin role. Runs before the udm_* functions are created.

CREATE SCHEMA udm;
COMMENT ON SCHEMA udm IS 'udm internals: tenant registry, helper types and functions';
GRANT USAGE ON SCHEMA udm TO PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'udm_admin') THEN
        CREATE ROLE udm_admin NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE udm_admin IS 'udm: may create and drop tenants and use every tenant';

CREATE TABLE udm.tenant (
    slug        text PRIMARY KEY,
    name        text,
    schema_name text NOT NULL UNIQUE,
    role_name   text NOT NULL UNIQUE,
    created_at  timestamp with time zone NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    -- LISTEN channel of the tenant's change events; its random part keeps other tenants from
    -- guessing it (PostgreSQL does not check privileges on LISTEN)
    channel     text NOT NULL UNIQUE,
    -- whether application users' access is controlled (set when the first member is added)
    access      boolean NOT NULL DEFAULT false
);
REVOKE ALL ON udm.tenant FROM PUBLIC;
COMMENT ON TABLE udm.tenant IS 'udm: registry of tenants (each has a schema and a role)';

-- Application users, shared by all tenants (a person may belong to several). Only the
-- extension's owner reads this table: passwords are bcrypt hashes that no udm function returns.
CREATE TABLE udm.app_user (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL UNIQUE,
    name          text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamp with time zone NOT NULL DEFAULT now(),
    updated_at    timestamp with time zone NOT NULL DEFAULT now(),
    created_by    text NOT NULL
);
REVOKE ALL ON udm.app_user FROM PUBLIC;
COMMENT ON TABLE udm.app_user IS 'udm: application users (global; members of tenants through <tenant>._udm_member)';

-- The registry and the users are the extension's own tables: pg_dump dumps their rows only when
-- told to (without them a restored database has tenant schemas that udm does not know).
SELECT pg_catalog.pg_extension_config_dump('udm.tenant', '');
SELECT pg_catalog.pg_extension_config_dump('udm.app_user', '');

-- Which tenants know which users (each tenant has its own table of the users it knows,
-- <tenant>._udm_user, which its user fields, members and relation tuples reference): renaming,
-- deleting or erasing a user touches only those tenants. No foreign keys: nothing of a tenant
-- references a global table.
CREATE TABLE udm.user_tenant (
    user_id uuid NOT NULL,
    tenant  text NOT NULL,
    PRIMARY KEY (user_id, tenant)
);
CREATE INDEX user_tenant__tenant__idx ON udm.user_tenant (tenant);
REVOKE ALL ON udm.user_tenant FROM PUBLIC;
COMMENT ON TABLE udm.user_tenant IS 'udm: the tenants that know each user';
SELECT pg_catalog.pg_extension_config_dump('udm.user_tenant', '');

-- A polymorphic reference: a record of one of several entities.
CREATE TYPE udm.ref AS (entity text, id uuid);

CREATE FUNCTION udm.array_is_unique(anyarray) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT count(DISTINCT x) = count(x) FROM unnest($1) AS x $$;

-- Body of every udm CHECK constraint: true, or an ERROR naming entity, field and rule.
CREATE FUNCTION udm.check_rule(ok boolean, schema_name text, entity text, rule_key text) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_check_rule';

-- Sets system columns and hashes password fields on every write.
CREATE FUNCTION udm.stamp_row() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_stamp_row';

-- The native audit: buffers each row change, and writes a statement's changes at its end.
CREATE FUNCTION udm.audit_row() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_audit_row';
CREATE FUNCTION udm.audit_flush() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_audit_flush';
-- The hash an audit row must carry (chained to the previous row of the same record).
CREATE FUNCTION udm.audit_hash(prev bytea, entity text, record_id uuid, action text,
                               record_version integer, entity_version integer, old_data jsonb,
                               new_data jsonb, changed_fields text, user_id text, db_role text,
                               txid bigint, changed_at timestamp with time zone) RETURNS bytea
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_audit_hash';

CREATE FUNCTION udm.reference_check() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_reference_check';

CREATE FUNCTION udm.reference_on_delete() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_reference_on_delete';

-- A new record id: UUID version 7, time-ordered, so an entity's primary key (and the audit's
-- record index) grows at its right edge instead of touching a random index page per record.
CREATE FUNCTION udm.uuid_v7() RETURNS uuid
    LANGUAGE c VOLATILE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_uuid_v7';

-- Constraint trigger of a rule over related records (on its table and the tables it reads).
CREATE FUNCTION udm.rule_trigger() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_rule_trigger';

-- Refuses UPDATE/DELETE of records whose write-lock scope someone else holds.
CREATE FUNCTION udm.lock_guard() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_lock_guard';

-- Field encryption (src/crypto.rs): the plaintext of a stored value of an encrypted field, as
-- udm's reads project it (NULL for a reader whose role keeps the field back), and the blind index
-- an equality filter compares with. Both answer only members of the tenant.
CREATE FUNCTION udm.decrypt_field(schema_name text, entity text, field integer, id uuid, stored text) RETURNS text
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_decrypt_field';
CREATE FUNCTION udm.blind_index(schema_name text, entity text, field integer, plaintext text) RETURNS text
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_blind_index';

-- Access control (tenants with members). Row-level security policies call these once per
-- query (each inside a sub-select).
CREATE FUNCTION udm.may_read_all(schema_name text, entity text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_may_read_all';
-- Whether an id is in a list: the per-row test of the policies (the list, the scope records the
-- reader may see, is an InitPlan; it is put in a hash set once per query, each row is one lookup).
CREATE FUNCTION udm.id_in(id uuid, ids uuid[]) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_id_in';
CREATE FUNCTION udm.may_read_scoped(schema_name text, entity text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_may_read_scoped';
-- The records of an entity the session's member has a relation tuple on (read through the tuple
-- index for that member: a user with a few tuples among a user with thousands is one index range).
CREATE FUNCTION udm.tuple_objects(schema_name text, entity text) RETURNS uuid[]
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_tuple_objects';
-- On Citus, where policies may have no sub-selects: the records of an entity the session sees,
-- as the entity's own policy decides (its table read as the session), once per command.
CREATE FUNCTION udm.visible_ids(schema_name text, entity text) RETURNS uuid[]
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'udm_visible_ids';
CREATE FUNCTION udm.access_user(schema_name text) RETURNS uuid
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_access_user';
-- The audit log's policy: whether the session reads the whole log (once per query), else
-- whether it may read one row (its role reads the entity and its fields, and it sees the record).
-- The row test reads the record's entity table as the session: PARALLEL RESTRICTED.
CREATE FUNCTION udm.may_read_audit(schema_name text) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'udm_may_read_audit';
CREATE FUNCTION udm.audit_visible(schema_name text, entity text, record_id uuid) RETURNS boolean
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'udm_audit_visible';
-- Refuses writes the application user may not make (42501 naming the permission).
CREATE FUNCTION udm.access_guard() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_access_guard';
-- The same for links of a many-to-many field (junction tables): a link change is a change of the
-- source record's field.
CREATE FUNCTION udm.link_guard() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_link_guard';

-- Brings tenants made by an earlier udm to what this version makes (the upgrade scripts call
-- it; an admin may, as a repair). Internal: not executable by PUBLIC.
CREATE FUNCTION udm.upgrade_tenant(slug text) RETURNS jsonb
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_upgrade_tenant';
CREATE FUNCTION udm.upgrade_tenants() RETURNS jsonb
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_upgrade_tenants';

-- Moving tenants: a section of a tenant's export read as the extension's owner (tables the
-- exporting udm admin may not read whole: password columns, dropped entities, users' hashes).
-- Internal: only udm admins (and the owner) may execute it, and it checks again.
CREATE FUNCTION udm.export_rows(slug text, section text) RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'udm_export_rows';

-- Query engine helpers. SQL functions whose declared volatility matches their body, so the
-- planner inlines them into the queries udm generates.

-- A json value read as a date, or NULL when it is not an ISO date string (YYYY-MM-DD...).
-- (STABLE like the casts in its body, so the planner inlines it.)
CREATE FUNCTION udm.json_date(v jsonb) RETURNS date
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'string'
                 AND (v #>> '{}') ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])'
           THEN CASE WHEN substr(v #>> '{}', 9, 2)::int
                          <= extract(day from make_date(substr(v #>> '{}', 1, 4)::int, substr(v #>> '{}', 6, 2)::int, 1)
                                              + interval '1 month - 1 day')
                     THEN substr(v #>> '{}', 1, 10)::date END
           END $$;

-- A json value read as a timestamptz, or NULL when it is not an ISO 8601 date-time string.
CREATE FUNCTION udm.json_timestamp(v jsonb) RETURNS timestamp with time zone
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN udm.json_date(v) IS NOT NULL
                 AND (v #>> '{}') ~ '^.{10}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]+)?)?(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)?)?$'
           THEN (v #>> '{}')::timestamptz END $$;

-- Records and queries (udm's C functions; see the README for each).
CREATE FUNCTION udm_insert(entity text, data jsonb) RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'udm_insert';
CREATE FUNCTION udm_get(entity text, id uuid, columns text[] DEFAULT NULL) RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'udm_get';
CREATE FUNCTION udm_update(entity text, id uuid, patch jsonb, expected_version integer DEFAULT NULL) RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'udm_update';
CREATE FUNCTION udm_replace(entity text, id uuid, fields jsonb, expected_version integer DEFAULT NULL) RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'udm_replace';
CREATE FUNCTION udm_delete(entity text, id uuid) RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'udm_delete';
CREATE FUNCTION udm_insert_many(entity text, rows jsonb) RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'udm_insert_many';
CREATE FUNCTION udm_upsert_many(entity text, rows jsonb, key text[]) RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'udm_upsert_many';
CREATE FUNCTION udm_query(entity text, spec jsonb DEFAULT '{}') RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'udm_query';
CREATE FUNCTION udm_aggregate(entity text, spec jsonb DEFAULT '{}') RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'udm_aggregate';
CREATE FUNCTION udm_view(entity text, kind text, spec jsonb DEFAULT '{}') RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'udm_view';
