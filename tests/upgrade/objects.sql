-- What the extension owns, each object with its definition and privileges, one line each and
-- sorted: two databases with the same udm have the same lines.
SELECT line FROM (
  SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(pg_get_functiondef(p.oid))
         || ' acl ' || coalesce(p.proacl::text, '-') AS line
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
  WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
    AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'udm')
  UNION ALL
  SELECT 'table ' || c.oid::regclass::text || ' ' || string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
         || ' acl ' || coalesce(c.relacl::text, '-')
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
    AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'udm')
  GROUP BY c.oid
  UNION ALL
  SELECT 'index ' || i.indexrelid::regclass::text || ' ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'udm'
  UNION ALL
  SELECT 'type ' || t.oid::regtype::text
  FROM pg_depend d JOIN pg_type t ON t.oid = d.objid
  WHERE d.classid = 'pg_type'::regclass AND d.deptype = 'e'
    AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'udm')
  UNION ALL
  SELECT 'dumped ' || extconfig::regclass[]::text FROM pg_extension WHERE extname = 'udm'
) x ORDER BY line;
