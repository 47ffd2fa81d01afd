-- Demo data for `make run`: tenant "acme" with two related entities (category, product) and a
-- few rows; tenant "studio" with a roadmap team (users, roles, relations, write locks). Loaded only when the tenant does not exist yet, so running `make run` again keeps
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

-- Tenant "studio": a roadmap team with users, roles, relations and write locks.
SELECT udm_create_tenant('studio', 'Studio Roadmaps');
SELECT udm_use('studio');
SELECT udm_install_template('roadmap');
SELECT udm_create_user('alice@studio.test', 'Alice Admin', 'alice-demo-password');
SELECT udm_create_user('bob@studio.test', 'Bob Editor', 'bob-demo-password');
SELECT udm_create_user('carol@studio.test', 'Carol Viewer', 'carol-demo-password');
SELECT udm_add_member('studio', 'alice@studio.test', 'admin');
SELECT udm_use('studio', 'alice@studio.test');
SELECT udm_add_member('studio', 'bob@studio.test', 'editor');
SELECT udm_add_member('studio', 'carol@studio.test', 'viewer');
SELECT udm_insert('roadmap', '{"name": "Hardware 2027", "y_axis_values": ["Phones", "Tablets", "Wearables"]}');
SELECT udm_grant('bob@studio.test', 'editor', 'roadmap:' || id),
       udm_grant('carol@studio.test', 'viewer', 'roadmap:' || id)
  FROM studio.roadmap WHERE name = 'Hardware 2027';
SELECT udm_lock_acquire('roadmap', id) FROM studio.roadmap WHERE name = 'Hardware 2027';
INSERT INTO studio.product (codename, part_number, description, sample_date, release_date, roadmap_id, x_position, y_position)
SELECT p.codename, p.part_number, p.description, p.sample_date::date, p.release_date::date, r.id, p.x, p.y
FROM (VALUES
  ('Falcon', 'HW-1001', 'Flagship phone with a folding display', '2027-01-15', '2027-04-01', '2027-Q2', 'Phones'),
  ('Heron', 'HW-1002', 'Ten-inch tablet for field technicians', '2027-03-01', '2027-07-01', '2027-Q3', 'Tablets'),
  ('Wren', 'HW-1003', 'Fitness band with a week of battery', '2027-05-01', '2027-10-01', '2027-Q4', 'Wearables')
) AS p(codename, part_number, description, sample_date, release_date, x, y)
CROSS JOIN studio.roadmap r WHERE r.name = 'Hardware 2027';
SELECT udm_lock_release('roadmap', id) FROM studio.roadmap WHERE name = 'Hardware 2027';

SELECT udm_insert('roadmap', '{"name": "Services 2027", "x_axis_mode": "phase", "y_axis_type": "investment", "y_axis_values": ["Grow", "Sustain"]}');
SELECT udm_lock_acquire('roadmap', id) FROM studio.roadmap WHERE name = 'Services 2027';
INSERT INTO studio.phase (roadmap_id, name, sort_order, color)
SELECT r.id, p.name, p.ord, p.color
FROM (VALUES ('Concept', 0, '#9AA5B1'), ('Development', 1, '#3E7BFA'), ('Testing', 2, '#F7B500'),
             ('Launch', 3, '#2EB67D'), ('Production', 4, '#6C5CE7')) AS p(name, ord, color)
CROSS JOIN studio.roadmap r WHERE r.name = 'Services 2027';
SELECT udm_insert('product', jsonb_build_object('codename', 'Care+', 'part_number', 'SV-2001',
    'description', 'Extended care plan for all devices', 'sample_date', '2027-02-01', 'release_date', '2027-03-01',
    'roadmap_id', id, 'x_position', 'Development', 'y_position', 'Grow'))
  FROM studio.roadmap WHERE name = 'Services 2027';
SELECT udm_insert('dashboard_link', jsonb_build_object('product_id', p.id, 'dashboard_type', 'sales',
    'dashboard_id', 'sales-care-plus', 'label', 'Care+ sales'))
  FROM studio.product p WHERE p.part_number = 'SV-2001';
SELECT udm_lock_release('roadmap', id) FROM studio.roadmap WHERE name = 'Services 2027';
\o
\echo 'demo loaded: tenant acme (category, product) and tenant studio (the roadmap template: roadmap, phase, product, dashboard_link; users alice, bob, carol @studio.test)'
\else
\echo 'demo already loaded (tenant acme exists)'
\endif
