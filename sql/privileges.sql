-- udm privileges, run at the end of CREATE EXTENSION (and by every upgrade script that adds a
-- function to schema udm).
--
-- The udm_* functions are udm's API: every role may call them, and each checks the caller's
-- membership of the tenant it acts on. The functions in schema udm are internal: nobody but the
-- extension's owner may call them, except those that a tenant's own policies, constraints,
-- defaults and queries call as the writing or reading role, and udm.citus_lock,
-- udm.citus_know_user, udm.citus_check_deferred and udm.citus_tenant_keys, which udm_lock_*,
-- udm_insert, udm_update, the commit and udm's reads of encrypted fields send to a tenant's Citus
-- worker as the caller. Those go to udm_tenant_roles, a NOLOGIN role every tenant role is a
-- member of, and each of them answers only about tenants the caller is a member of (or, for
-- udm.citus_know_user and udm.citus_tenant_keys, with a token udm's coordinator signed). Trigger functions need no EXECUTE
-- to fire; CREATE TRIGGER needs it, so only the owner (and superusers) can attach them.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'udm_tenant_roles') THEN
        CREATE ROLE udm_tenant_roles NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE udm_tenant_roles IS 'udm: every tenant role is a member; may execute the udm.* helpers tenant tables call';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA udm FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    udm.check_rule(boolean, text, text, text),
    udm.array_is_unique(anyarray),
    udm.uuid_v7(),
    udm.json_date(jsonb),
    udm.json_timestamp(jsonb),
    udm.decrypt_field(text, text, integer, uuid, text),
    udm.blind_index(text, text, integer, text),
    udm.id_in(uuid, uuid[]),
    udm.may_read_all(text, text),
    udm.may_read_scoped(text, text),
    udm.tuple_objects(text, text),
    udm.visible_ids(text, text),
    udm.access_user(text),
    udm.may_read_audit(text),
    udm.audit_visible(text, text, uuid),
    udm.audit_hash(bytea, text, uuid, text, integer, integer, jsonb, jsonb, text, text, text, bigint, timestamp with time zone),
    udm.citus_lock(text, text, text, uuid),
    udm.citus_know_user(text),
    udm.citus_check_deferred(text),
    udm.citus_tenant_keys(text)
    TO udm_tenant_roles;

-- udm admins export tenants (udm_export writes the statements that call it).
GRANT EXECUTE ON FUNCTION udm.export_rows(text, text) TO udm_admin;
