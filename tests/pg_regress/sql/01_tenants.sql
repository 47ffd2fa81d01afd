-- Tenants: registry, schema, role; udm_use and its errors.
\set VERBOSITY default
SELECT udm_create_tenant('rg_acme', 'Acme Corp');
SELECT slug, name, schema_name, role_name FROM udm_tenants() WHERE slug LIKE 'rg\_%';
SELECT nspname FROM pg_namespace WHERE nspname = 'rg_acme';
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'tenant_rg_acme@' || current_database();
SELECT tablename FROM pg_tables WHERE schemaname = 'rg_acme' ORDER BY 1;

-- bad slugs
SELECT udm_create_tenant('Rg Acme');
SELECT udm_create_tenant('rg_acme');
SELECT udm_create_tenant('information_schema');
SELECT udm_create_tenant('rg__x');

-- no tenant selected yet
SELECT udm_describe('product');
SELECT udm_use('rg_nobody');
SELECT udm_use('rg_acme') ->> 'tenant' AS tenant;
SELECT udm_current_tenant();

-- dropping needs the slug twice
SELECT udm_drop_tenant('rg_acme', 'yes');
SELECT udm_create_tenant('rg_tmp');
SELECT udm_drop_tenant('rg_tmp', 'rg_tmp');
SELECT count(*) FROM pg_roles WHERE rolname = 'tenant_rg_tmp@' || current_database();
SELECT udm_drop_tenant('rg_tmp', 'rg_tmp');
