-- A database with tenants using everything a release offers, made through its API only (the same
-- script runs on the previous release, which is then upgraded, and on a fresh install of this
-- one: their objects must come out the same).
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SELECT udm_create_tenant('up_shop', 'Shop') IS NOT NULL;
SELECT udm_create_tenant('up_plan', 'Plan') IS NOT NULL;
DROP ROLE IF EXISTS up_app;
CREATE ROLE up_app LOGIN;
SELECT format('GRANT %I TO up_app', role_name) FROM udm_tenants() WHERE slug LIKE 'up\_%' \gexec

-- up_shop: no access control; relations, many-to-many, references, users, rules, locks, audit
SELECT udm_use('up_shop', 'loader');
SELECT udm_create_user('ann@up.test', 'Ann', 'a-long-password') IS NOT NULL;
SELECT udm_create_user('ben@up.test', 'Ben', 'a-long-password') IS NOT NULL;
SELECT udm_define_entity('category', '{"fields": [
  {"name": "name", "type": "text", "required": true, "unique": true},
  {"name": "parent_id", "type": "relation", "target": "category"},
  {"name": "cap", "type": "integer", "default": 100}]}') IS NOT NULL;
SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}') IS NOT NULL;
SELECT udm_define_entity('product', '{"fields": [
  {"name": "name", "type": "text", "required": true, "max_length": 50},
  {"name": "price", "type": "decimal", "precision": 10, "scale": 2, "min": 0},
  {"name": "status", "type": "select", "values": ["draft", "active"], "default": "draft"},
  {"name": "pin", "type": "password"},
  {"name": "no", "type": "auto_number"},
  {"name": "owner", "type": "user", "on_delete": "set_null"},
  {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
  {"name": "tags", "type": "relation", "target": "tag", "many": true},
  {"name": "about", "type": "reference", "targets": ["category", "tag"]},
  {"name": "meta", "type": "json"}],
  "rules": [{"name": "priced", "check": "status = ''draft'' or price > 0", "message": "active products have a price"},
            {"name": "fits", "check": "length(name) <= category_id.cap"}],
  "indexes": [{"fields": ["status", "price"]}],
  "lock": "self"}') IS NOT NULL;
INSERT INTO up_shop.category (name) VALUES ('Phones');
INSERT INTO up_shop.tag (name) VALUES ('red'), ('blue');
INSERT INTO up_shop.product (name, price, status, owner, category_id, meta)
  SELECT 'Phone', 10, 'active', (SELECT id FROM udm.app_user WHERE email = 'ann@up.test'), id, '{"a": 1}'
  FROM up_shop.category;
INSERT INTO up_shop.product__tags (source_id, target_id)
  SELECT p.id, t.id FROM up_shop.product p, up_shop.tag t;
UPDATE up_shop.product SET price = 12;
SELECT udm_subscribe('product', ARRAY['UPDATE'], 'review') IS NOT NULL;
SELECT udm_ack('w1', (udm_events(0, 2)->>'last_event')::bigint) IS NOT NULL;
SELECT udm_lock_acquire('product', (SELECT id FROM up_shop.product LIMIT 1)) IS NOT NULL;

-- up_plan: access control, roles, relation tuples, the roadmap template
SELECT udm_use('up_plan');
SELECT udm_install_template('roadmap') IS NOT NULL;
SELECT udm_add_member('up_plan', 'ann@up.test', 'admin') IS NOT NULL;
SELECT udm_use('up_plan', 'ann@up.test');
SELECT udm_add_member('up_plan', 'ben@up.test', 'viewer') IS NOT NULL;
SELECT udm_define_role('auditor', 'viewer', '{"entities": {"product": {"fields": {"description": {"read": false}}}}}') IS NOT NULL;
SELECT udm_insert('roadmap', '{"name": "Hardware", "y_axis_values": ["HW"]}') IS NOT NULL;
SELECT udm_grant('ben@up.test', 'viewer', 'roadmap:' || (SELECT id FROM up_plan.roadmap LIMIT 1)) IS NOT NULL;
RESET udm.tenant;
RESET udm.user_id;
