-- Demo data for `make run`: tenant "acme" with two related entities (category, product) and a
-- few rows. Loaded only when the tenant does not exist yet, so running `make run` again keeps
-- whatever you changed.

SELECT NOT EXISTS (SELECT 1 FROM udm_tenants() WHERE slug = 'acme') AS udm_demo_missing \gset
\if :udm_demo_missing
\o /dev/null

SELECT udm_create_tenant('acme', 'Acme Corp');
SELECT udm_use('acme', 'demo-loader');

SELECT udm_define_entity('category', '{
  "label": "Category",
  "fields": [
    {"name": "name", "type": "text", "required": true, "unique": true, "max_length": 100},
    {"name": "parent_id", "type": "relation", "target": "category", "on_delete": "restrict"},
    {"name": "attributes", "type": "json"}]}');

SELECT udm_define_entity('product', '{
  "label": "Product",
  "fields": [
    {"name": "name", "type": "text", "required": true, "max_length": 200},
    {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
    {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
    {"name": "metadata", "type": "json"},
    {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
    {"name": "sample_date", "type": "date"},
    {"name": "release_date", "type": "date"}],
  "rules": [{"name": "sample_before_release", "check": "sample_date <= release_date",
             "message": "sample date must not be after release date"}]}');

-- Plain SQL works on entity tables: udm's constraints and triggers hold it to the rules.
INSERT INTO acme.category (name, attributes) VALUES
  ('Electronics', '{"color": "blue"}'),
  ('Furniture', '{"color": "brown"}');
INSERT INTO acme.category (name, parent_id, attributes)
  SELECT 'Phones', id, '{"color": "black"}' FROM acme.category WHERE name = 'Electronics';

INSERT INTO acme.product (name, price, status, metadata, category_id, sample_date, release_date)
SELECT p.name, p.price, p.status, p.metadata::jsonb, c.id, p.sample_date::date, p.release_date::date
FROM (VALUES
  ('iPhone 17', 999.00, 'active', '{"brand": "Apple", "storage": 256}', 'Phones', '2026-06-01', '2026-09-15'),
  ('Pixel 11', 799.00, 'active', '{"brand": "Google", "storage": 128}', 'Phones', '2026-05-01', '2026-08-20'),
  ('Galaxy S27', 899.00, 'draft', '{"brand": "Samsung", "storage": 256}', 'Phones', '2026-10-01', '2027-02-01'),
  ('Desk Pro', 349.50, 'active', '{"brand": "Fjord", "material": "oak"}', 'Furniture', NULL, NULL),
  ('Lamp 2', 49.99, 'retired', '{"brand": "Fjord"}', 'Furniture', NULL, NULL)
) AS p(name, price, status, metadata, category, sample_date, release_date)
JOIN acme.category c ON c.name = p.category;

\o
\echo 'demo loaded: tenant acme with entities category and product'
\else
\echo 'demo already loaded (tenant acme exists)'
\endif
