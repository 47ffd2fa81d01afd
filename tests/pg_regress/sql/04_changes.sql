-- Changing definitions: add, alter, remove, restore, purge; indexes and rules; drop and
-- restore entities; every change is a version.
\set VERBOSITY default
SELECT udm_use('rg_shop') IS NOT NULL AS used;

SELECT udm_add_field('product', '{"name": "stock", "type": "integer", "min": 0, "default": 0, "required": true}') -> 'version' AS version;
SELECT name, stock FROM rg_shop.product;
SELECT udm_add_field('product', '{"name": "stock", "type": "integer"}');
SELECT udm_add_field('product', '{"name": "sku", "type": "text", "required": true}');
SELECT udm_add_field('product', '{"name": "rank", "type": "integer", "min": 10, "default": 1}');
SELECT udm_add_field('product', '{"name": "launch", "type": "date", "min": "2020-02-30"}');

SELECT udm_alter_field('product', 'sample_date', '{"name": "sampled_on", "label": "Sampled on"}') -> 'rules' AS rules;
SELECT udm_alter_field('product', 'name', '{"min_length": 10}');
SELECT udm_alter_field('product', 'name', '{"type": "integer"}');
SELECT udm_alter_field('product', 'metadata', '{"type": "integer"}');
SELECT udm_alter_field('product', 'category_id', '{"target": "product"}');
SELECT udm_alter_field('product', 'stock', '{"type": "bigint"}') -> 'fields' -> 7 ->> 'pg_type' AS stock_type;

SELECT udm_remove_field('product', 'price') -> 'removed_fields' -> 0 ->> 'column' AS hidden_as;
SELECT price FROM rg_shop.product;
SELECT _removed_f2_price FROM rg_shop.product;
SELECT udm_remove_field('product', 'sampled_on');
SELECT udm_purge_field('product', 'status');
SELECT udm_restore_field('product', 'price') -> 'fields' -> -1 ->> 'name' AS restored;
SELECT name, price FROM rg_shop.product;

SELECT udm_add_index('product', ARRAY['status', 'stock']) -> 'indexes' AS indexes;
SELECT udm_add_index('product', ARRAY['nope']);
-- a new rule is checked against the existing rows (the iPhone is a draft costing 1000)
SELECT udm_add_rule('product', '{"name": "cheap_drafts", "check": "status != ''draft'' or price < 100", "message": "drafts must cost less than 100"}') ->> 'version' AS version;
UPDATE rg_shop.product SET status = 'active';
SELECT udm_add_rule('product', '{"name": "cheap_drafts", "check": "status != ''draft'' or price < 100", "message": "drafts must cost less than 100"}') ->> 'version' AS version;
INSERT INTO rg_shop.product (name, price, status) VALUES ('expensive draft', 500, 'draft');
SELECT udm_add_rule('product', '{"name": "bad", "check": "price > ''cheap''"}');
SELECT udm_add_rule('product', '{"name": "bad", "check": "nosuch = 1"}');
SELECT udm_drop_rule('product', 'cheap_drafts') ->> 'version' AS version;
SELECT udm_drop_rule('product', 'cheap_drafts');

SELECT version, change ->> 'op' AS op FROM udm_entity_history('product');

-- entities: soft drop, refused while referenced, restore, purge
SELECT udm_drop_entity('category');
SELECT udm_define_entity('scratch', '{"fields": [{"name": "n", "type": "integer"}]}') ->> 'version' AS version;
INSERT INTO rg_shop.scratch (n) VALUES (1);
SELECT udm_drop_entity('scratch') ->> 'status' AS status;
SELECT udm_add_field('scratch', '{"name": "m", "type": "integer"}');
SELECT udm_restore_entity('scratch') ->> 'status' AS status;
SELECT n FROM rg_shop.scratch;
SELECT udm_drop_entity('scratch') ->> 'status' AS status;
SELECT udm_purge_entity('scratch', 'scratch') ->> 'purged' AS purged;
SELECT to_regclass('rg_shop.scratch') AS gone;
SELECT udm_drop_tenant('rg_shop', 'rg_shop') ->> 'dropped' AS dropped;
SELECT udm_drop_tenant('rg_acme', 'rg_acme') ->> 'dropped' AS dropped;
