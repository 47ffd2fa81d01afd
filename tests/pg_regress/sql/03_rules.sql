-- Rules hold plain SQL: each violation names entity, field and rule.
\set VERBOSITY default
SELECT udm_use('rg_shop') IS NOT NULL AS used;
INSERT INTO rg_shop.category (name) VALUES ('Phones');

INSERT INTO rg_shop.product (id, name, price, category_id)
  SELECT '00000000-0000-7000-8000-00000000000a', 'iPhone', 999, id FROM rg_shop.category WHERE name = 'Phones';
SELECT name, price, status, _version FROM rg_shop.product;

INSERT INTO rg_shop.product (name, price) VALUES ('bad', -1);
INSERT INTO rg_shop.product (name, status) VALUES ('bad', 'weird');
INSERT INTO rg_shop.product (name, sample_date, release_date) VALUES ('bad', '2025-02-01', '2025-01-01');
INSERT INTO rg_shop.product (name) VALUES (repeat('x', 201));
INSERT INTO rg_shop.product (price) VALUES (1);
UPDATE rg_shop.product SET name = NULL;
-- foreign keys and unique constraints keep PostgreSQL's own messages (terse: their details show ids)
\set VERBOSITY terse
INSERT INTO rg_shop.product (name, category_id) VALUES ('orphan', '00000000-0000-0000-0000-000000000000');
INSERT INTO rg_shop.category (name) VALUES ('Phones');
DELETE FROM rg_shop.category WHERE name = 'Phones';
\set VERBOSITY default
UPDATE rg_shop.product SET price = price * -1;
UPDATE rg_shop.product SET price = price + 1 RETURNING name, price, _version;

-- rules on the formatted types
SELECT udm_define_entity('contact', '{"fields": [
  {"name": "email", "type": "email"}, {"name": "site", "type": "url"}, {"name": "phone", "type": "phone"},
  {"name": "color", "type": "color"}, {"name": "stars", "type": "rating", "max": 3},
  {"name": "topics", "type": "multi_select", "values": ["sales", "support"]},
  {"name": "labels", "type": "tags", "max_items": 2}]}') ->> 'version' AS version;
INSERT INTO rg_shop.contact (email, site, phone, color, stars, topics, labels)
  VALUES ('ann@example.com', 'https://example.com/x', '+1 (555) 010-2030', '#A0B1C2', 3, '{sales}', '{vip}');
INSERT INTO rg_shop.contact (email) VALUES ('ann@');
INSERT INTO rg_shop.contact (site) VALUES ('example.com');
INSERT INTO rg_shop.contact (phone) VALUES ('12');
INSERT INTO rg_shop.contact (color) VALUES ('#12345G');
INSERT INTO rg_shop.contact (stars) VALUES (4);
INSERT INTO rg_shop.contact (topics) VALUES ('{sales,spam}');
INSERT INTO rg_shop.contact (labels) VALUES ('{a,b,c}');
INSERT INTO rg_shop.contact (labels) VALUES ('{a,a}');
SELECT count(*) AS contacts FROM rg_shop.contact;
