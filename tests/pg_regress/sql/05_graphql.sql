-- GraphQL: the demo tenants' schemas (SDL), queries, mutations, errors with locations and
-- paths, schema changes through the API.
\set VERBOSITY default
\set ECHO none
\o /dev/null
-- roles of an earlier run's demo tenants (the database was dropped, they were not)
SELECT format('DROP ROLE %I', rolname) FROM pg_roles
 WHERE rolname IN ('tenant_acme@' || current_database(), 'tenant_studio@' || current_database()) \gexec
\i sql/demo.sql
\o
\set ECHO all
SELECT udm_use('acme', 'demo-loader') IS NOT NULL AS used;
SELECT udm_graphql_schema();

SELECT jsonb_pretty(udm_graphql($$
  { categoryCollection(orderBy: [{name: ASC}]) {
      totalCount
      nodes { name productCollection(orderBy: [{price: DESC}], first: 2) { totalCount nodes { name price status } } } } }$$));

SELECT jsonb_pretty(udm_graphql($$
  query Cheap($max: Decimal!) {
    productCollection(filter: {and: [{price: {lte: $max}}, {category: {name: {in: ["Phones", "Laptops"]}}}]}, orderBy: [{category: {name: ASC}}, {name: ASC}]) {
      nodes { name price category { name } } } }$$, '{"max": "900"}'));

SELECT jsonb_pretty(udm_graphql($$ { productAggregate(groupBy: [{status: VALUE}], filter: {price: {gt: "0"}}) { key count sum { price } max { name } } } $$));

-- errors: syntax, validation (located), a variable of the wrong type, a rule
SELECT jsonb_pretty(udm_graphql('{ productCollection { nodes { name } '));
SELECT jsonb_pretty(udm_graphql(E'{\n  productCollection {\n    nodes { nmae }\n  }\n}'));
SELECT jsonb_pretty(udm_graphql('query ($n: Int!) { productCollection(first: $n) { totalCount } }', '{"n": "ten"}'));
SELECT jsonb_pretty(udm_graphql($$ mutation { insertProduct(objects: [{name: "Early", sampleDate: "2030-01-02", releaseDate: "2030-01-01"}]) { affectedCount } } $$));

-- a schema change through the API, then the new entity in the schema
SELECT jsonb_pretty(udm_graphql($$ mutation { defineEntity(slug: "supplier", definition: {label: "Supplier", fields: [{name: "name", type: "text", required: true}, {name: "rating", type: "rating"}]}) } $$) #- '{data,defineEntity}');
SELECT (regexp_match(udm_graphql_schema(), E'type Supplier \\{[^}]*\\}'))[1] AS supplier_type;
SELECT jsonb_pretty(udm_graphql($$ mutation { insertSupplier(objects: [{name: "Parts Inc", rating: 4}]) { affectedCount records { name rating } } } $$));
