-- The upgraded tenants work as new ones do: writes, rules, audit and its chain, access, events.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
-- the fresh database's scenario made up_app again: it gets this database's tenants back
SELECT format('GRANT %I TO up_app', role_name) FROM udm_tenants() WHERE slug LIKE 'up\_%' \gexec
SELECT extversion = :'version' AS updated FROM pg_extension WHERE extname = 'udm' \gset
\if :updated
\else
  \echo 'the extension was not updated to' :'version'
  SELECT 1/0;
\endif
SET ROLE up_app;
SELECT udm_use('up_shop', 'ben') IS NOT NULL;
-- a plain write: stamped, audited, chained to the 0.1.0 rows; the lock of the other holder holds
DO $$ BEGIN
  BEGIN
    UPDATE up_shop.product SET price = 13;
    RAISE EXCEPTION 'the write lock did not hold';
  EXCEPTION WHEN lock_not_available THEN NULL;
  END;
END $$;
RESET ROLE;
SELECT udm_use('up_shop', 'loader');
SELECT udm_lock_release('product', (SELECT id FROM up_shop.product LIMIT 1)) IS NOT NULL;
SET ROLE up_app;
SELECT udm_use('up_shop', 'ben') IS NOT NULL;
UPDATE up_shop.product SET price = 14, status = 'active';
DO $$ BEGIN
  BEGIN
    UPDATE up_shop.product SET price = 0;
    RAISE EXCEPTION 'a rule did not hold';
  EXCEPTION WHEN check_violation THEN NULL;
  END;
  BEGIN
    UPDATE up_shop.category SET cap = 2;
    RAISE EXCEPTION 'a rule over related records did not hold';
  EXCEPTION WHEN check_violation THEN NULL;
  END;
  BEGIN
    INSERT INTO up_shop.product (name, owner) VALUES ('x', gen_random_uuid());
    RAISE EXCEPTION 'a user field took an unknown user';
  EXCEPTION WHEN foreign_key_violation THEN NULL;
  END;
END $$;
INSERT INTO up_shop.product__tags (source_id, target_id)
  SELECT p.id, t.id FROM up_shop.product p, up_shop.tag t ON CONFLICT DO NOTHING;
DELETE FROM up_shop.product__tags WHERE target_id = (SELECT id FROM up_shop.tag WHERE name = 'red');
DO $$ BEGIN
  ASSERT (SELECT (udm_audit_verify()->>'ok')::boolean), 'the audit chain verifies after the upgrade';
  ASSERT (SELECT count(*) FROM udm_history('product', (SELECT id FROM up_shop.product LIMIT 1)) WHERE 'tags' = ANY (changed_fields)) > 0,
         'link changes show in history';
  ASSERT (SELECT jsonb_array_length(udm_consume('w1', 100)->'events')) > 0, 'the consumer continues';
END $$;
-- access: ben sees the roadmap he was granted, may not write it
SELECT udm_use('up_plan', 'ben@up.test') IS NOT NULL;
DO $$ BEGIN
  ASSERT (SELECT count(*) FROM up_plan.roadmap) = 1, 'ben sees his roadmap';
  BEGIN
    UPDATE up_plan.roadmap SET name = 'Mine';
    RAISE EXCEPTION 'a viewer wrote';
  EXCEPTION WHEN insufficient_privilege THEN NULL;
  END;
END $$;
SELECT udm_use('up_plan', 'ann@up.test') IS NOT NULL;
SELECT udm_insert('roadmap', '{"name": "Software", "y_axis_values": ["SW"]}') IS NOT NULL;
SELECT udm_add_field('roadmap', '{"name": "notes", "type": "long_text"}') IS NOT NULL;
DO $$ BEGIN
  ASSERT (SELECT (udm_audit_verify()->>'ok')::boolean), 'the roadmap tenant verifies';
END $$;
RESET ROLE;
-- new tenants come
SELECT udm_drop_tenant(slug, slug) FROM (SELECT udm_create_tenant('up_new')->>'slug' AS slug) s;
-- the batched audit log (a setting of this version, no SQL object of the extension) in an
-- upgraded database: a tenant made with it audits, walks its history and verifies
SET udm.audit_batches = on;
SELECT udm_create_tenant('up_batched') IS NOT NULL;
RESET udm.audit_batches;
SELECT udm_use('up_batched') IS NOT NULL;
SELECT udm_define_entity('note', '{"fields": [{"name": "body", "type": "text"}]}') IS NOT NULL;
SELECT udm_insert('note', '{"body": "one"}') IS NOT NULL;
UPDATE up_batched.note SET body = 'two';
DO $$ BEGIN
  ASSERT (SELECT count(*) FROM up_batched._udm_audit_log) = 2, 'one log row per statement';
  ASSERT (SELECT string_agg(action, ',' ORDER BY version) FROM udm_history('note', (SELECT id FROM up_batched.note))) = 'INSERT,UPDATE',
         'the history of a batched tenant';
  ASSERT (SELECT (udm_audit_verify()->>'ok')::boolean), 'a batched tenant verifies';
END $$;
SELECT udm_drop_tenant('up_batched', 'up_batched') IS NOT NULL;
