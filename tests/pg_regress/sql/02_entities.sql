-- Defining entities: the table udm makes, describe, and the errors of bad definitions.
\set VERBOSITY default
SELECT udm_create_tenant('rg_shop') IS NOT NULL AS created;
SELECT udm_use('rg_shop') IS NOT NULL AS used;

SELECT udm_define_entity('category', '{"label": "Category", "fields": [
  {"name": "name", "type": "text", "required": true, "unique": true},
  {"name": "parent_id", "type": "relation", "target": "category", "on_delete": "cascade"},
  {"name": "attributes", "type": "json"}]}') ->> 'version' AS version;

SELECT jsonb_pretty(udm_define_entity('product', '{"label": "Product",
   "fields": [
     {"name": "name", "type": "text", "required": true, "max_length": 200},
     {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
     {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
     {"name": "metadata", "type": "json"},
     {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
     {"name": "sample_date", "type": "date"},
     {"name": "release_date", "type": "date"}],
   "rules": [{"name": "sample_before_release", "check": "sample_date <= release_date",
              "message": "sample date must not be after release date"}]}'));

\d rg_shop.product

SELECT slug, label, version, status, fields, table_name FROM udm_entities();

-- errors: each names what is wrong and hints at what to do
SELECT udm_define_entity('product', '{}');
SELECT udm_define_entity('Product', '{}');
SELECT udm_define_entity('order', '{}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "strnig"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "text", "max_lenght": 5}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "text"}, {"name": "a", "type": "integer"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "created_at", "type": "datetime"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "select"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "relation", "target": "ghost"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "integer", "default": "five"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "date", "default": "soon"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "text"}], "rules": [{"name": "r", "check": "a > 1"}]}');
SELECT udm_define_entity('x', '{"fields": [{"name": "a", "type": "text"}], "rules": [{"name": "r", "check": "a = ''x'' or"}]}');
SELECT udm_define_entity('x', '{"fields": "name"}');
SELECT udm_describe('nothing');
SELECT count(*) AS entities_after_errors FROM udm_entities();
