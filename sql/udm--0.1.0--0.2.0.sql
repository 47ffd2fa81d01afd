-- udm 0.1.0 -> 0.2.0

-- Security: internal functions are no longer executable by PUBLIC; tenant roles get the helpers
-- their tables call through udm_tenant_roles (see sql/privileges.sql).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'udm_tenant_roles') THEN
        CREATE ROLE udm_tenant_roles NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE udm_tenant_roles IS 'udm: every tenant role is a member; may execute the udm.* helpers tenant tables call';
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT role_name FROM udm.tenant LOOP
        EXECUTE format('GRANT udm_tenant_roles TO %I', r.role_name);
    END LOOP;
END
$$;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA udm FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    udm.check_rule(boolean, text, text, text),
    udm.array_is_unique(anyarray),
    udm.uuid_v7(),
    udm.json_date(jsonb),
    udm.json_timestamp(jsonb),
    udm.id_in(uuid, uuid[]),
    udm.may_read_all(text, text),
    udm.may_read_scoped(text, text),
    udm.tuple_objects(text, text),
    udm.access_user(text),
    udm.may_read_audit(text),
    udm.audit_visible(text, text, uuid),
    udm.audit_hash(bytea, text, uuid, text, integer, integer, jsonb, jsonb, text, text, text, bigint, timestamp with time zone)
    TO udm_tenant_roles;

-- Backups: pg_dump dumps the rows of the tenant registry and the users (0.1.0 left them out, so a
-- restored database had tenant schemas udm did not know; udm_register_tenant lists them again).
SELECT pg_catalog.pg_extension_config_dump('udm.tenant', '');
SELECT pg_catalog.pg_extension_config_dump('udm.app_user', '');

-- Lists a tenant schema the registry lost (a restore from a 0.1.0 dump) again.
CREATE FUNCTION "udm_register_tenant"(
	"slug" TEXT /* & str */
) RETURNS jsonb /* JsonB */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'udm_register_tenant_wrapper';
