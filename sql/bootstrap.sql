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
    created_by  text NOT NULL
);
REVOKE ALL ON udm.tenant FROM PUBLIC;
COMMENT ON TABLE udm.tenant IS 'udm: registry of tenants (each has a schema and a role)';

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

CREATE FUNCTION udm.reference_check() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_reference_check';

CREATE FUNCTION udm.reference_on_delete() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'udm_reference_on_delete';
