//! Tenant onboarding: 1,000 tenants, each with the same 7 related entities, through udm, next to
//! the same tables written as plain DDL (schema, role, CREATE TABLE with the same columns,
//! constraints, foreign keys, indexes and grants), interleaved tenant by tenant in one database so
//! both see the same catalog growth. Each tenant is one transaction, one round trip.
//!
//! Goal (issue 2): udm <= 1.3x the plain DDL per tenant, and no growth from the first to the last
//! hundred beyond what plain DDL shows. Since udm audits every table (issue 4), a third variant
//! adds what a DBA writes for the same: an audit_log table and the seed's PL/pgSQL row trigger
//! on every table; its ratio is printed next to the goal's.

use udm_bench::*;

const ENTITIES: &[(&str, &str)] = &[
    (
        "customer",
        r#"{"label": "Customer", "fields": [
        {"name": "name", "type": "text", "required": true, "max_length": 200},
        {"name": "email", "type": "email", "unique": true},
        {"name": "tier", "type": "select", "values": ["free", "pro", "enterprise"], "default": "free"},
        {"name": "since", "type": "date"}]}"#,
    ),
    (
        "category",
        r#"{"label": "Category", "fields": [
        {"name": "name", "type": "text", "required": true, "max_length": 100},
        {"name": "parent_id", "type": "relation", "target": "category", "on_delete": "restrict"},
        {"name": "attributes", "type": "json"}]}"#,
    ),
    (
        "product",
        r#"{"label": "Product", "fields": [
        {"name": "name", "type": "text", "required": true, "max_length": 200},
        {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
        {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
        {"name": "metadata", "type": "json"},
        {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"}]}"#,
    ),
    (
        "sales_order",
        r#"{"label": "Order", "fields": [
        {"name": "number", "type": "text", "required": true, "unique": true},
        {"name": "customer_id", "type": "relation", "target": "customer", "required": true, "on_delete": "restrict"},
        {"name": "ordered_at", "type": "datetime", "default": "now"},
        {"name": "total", "type": "currency", "min": 0}]}"#,
    ),
    (
        "order_line",
        r#"{"label": "Order line", "fields": [
        {"name": "order_id", "type": "relation", "target": "sales_order", "required": true, "on_delete": "cascade"},
        {"name": "product_id", "type": "relation", "target": "product", "required": true, "on_delete": "restrict"},
        {"name": "quantity", "type": "integer", "min": 1, "default": 1},
        {"name": "unit_price", "type": "decimal", "precision": 12, "scale": 2, "min": 0}]}"#,
    ),
    (
        "invoice",
        r#"{"label": "Invoice", "fields": [
        {"name": "order_id", "type": "relation", "target": "sales_order", "required": true, "on_delete": "restrict"},
        {"name": "issued_on", "type": "date", "required": true},
        {"name": "due_on", "type": "date"},
        {"name": "amount", "type": "currency", "min": 0}],
      "rules": [{"name": "due_after_issue", "check": "due_on >= issued_on", "message": "an invoice is due on or after its issue date"}]}"#,
    ),
    (
        "payment",
        r#"{"label": "Payment", "fields": [
        {"name": "invoice_id", "type": "relation", "target": "invoice", "required": true, "on_delete": "cascade"},
        {"name": "paid_at", "type": "datetime", "default": "now"},
        {"name": "amount", "type": "currency", "min": 0},
        {"name": "method", "type": "select", "values": ["card", "transfer", "cash"]}]}"#,
    ),
];

fn udm_tenant_sql(slug: &str) -> String {
    let mut sql =
        format!("BEGIN; SELECT udm_create_tenant('{slug}'); SELECT udm_use('{slug}', NULL, true);");
    for (name, def) in ENTITIES {
        sql.push_str(&format!(" SELECT udm_define_entity('{name}', '{def}');"));
    }
    sql.push_str(" COMMIT;");
    sql
}

/// The same seven tables as a DBA would write them by hand.
fn plain_tenant_sql(s: &str) -> String {
    let sys = "id uuid PRIMARY KEY DEFAULT gen_random_uuid(), created_at timestamptz NOT NULL DEFAULT now(), \
               updated_at timestamptz NOT NULL DEFAULT now(), created_by text, updated_by text, _version integer NOT NULL DEFAULT 1";
    format!(
        r#"BEGIN;
CREATE ROLE "{s}_role" NOLOGIN;
CREATE SCHEMA "{s}";
GRANT USAGE ON SCHEMA "{s}" TO "{s}_role";
CREATE TABLE "{s}".customer ({sys}, name text NOT NULL CHECK (char_length(name) <= 200),
  email text UNIQUE CHECK (email ~* '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  tier text DEFAULT 'free' CHECK (tier IN ('free', 'pro', 'enterprise')), since date);
CREATE TABLE "{s}".category ({sys}, name text NOT NULL CHECK (char_length(name) <= 100),
  parent_id uuid REFERENCES "{s}".category (id) ON DELETE RESTRICT, attributes jsonb);
CREATE INDEX ON "{s}".category (parent_id);
CREATE TABLE "{s}".product ({sys}, name text NOT NULL CHECK (char_length(name) <= 200),
  price numeric(12,2) CHECK (price >= 0), status text DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'retired')),
  metadata jsonb, category_id uuid REFERENCES "{s}".category (id) ON DELETE RESTRICT);
CREATE INDEX ON "{s}".product (category_id);
CREATE TABLE "{s}".sales_order ({sys}, number text NOT NULL UNIQUE,
  customer_id uuid NOT NULL REFERENCES "{s}".customer (id) ON DELETE RESTRICT,
  ordered_at timestamptz DEFAULT now(), total numeric(19,2) CHECK (total >= 0));
CREATE INDEX ON "{s}".sales_order (customer_id);
CREATE TABLE "{s}".order_line ({sys}, order_id uuid NOT NULL REFERENCES "{s}".sales_order (id) ON DELETE CASCADE,
  product_id uuid NOT NULL REFERENCES "{s}".product (id) ON DELETE RESTRICT,
  quantity integer DEFAULT 1 CHECK (quantity >= 1), unit_price numeric(12,2) CHECK (unit_price >= 0));
CREATE INDEX ON "{s}".order_line (order_id);
CREATE INDEX ON "{s}".order_line (product_id);
CREATE TABLE "{s}".invoice ({sys}, order_id uuid NOT NULL REFERENCES "{s}".sales_order (id) ON DELETE RESTRICT,
  issued_on date NOT NULL, due_on date, amount numeric(19,2) CHECK (amount >= 0), CHECK (due_on >= issued_on));
CREATE INDEX ON "{s}".invoice (order_id);
CREATE TABLE "{s}".payment ({sys}, invoice_id uuid NOT NULL REFERENCES "{s}".invoice (id) ON DELETE CASCADE,
  paid_at timestamptz DEFAULT now(), amount numeric(19,2) CHECK (amount >= 0),
  method text CHECK (method IN ('card', 'transfer', 'cash')));
CREATE INDEX ON "{s}".payment (invoice_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON "{s}".customer, "{s}".category, "{s}".product, "{s}".sales_order,
  "{s}".order_line, "{s}".invoice, "{s}".payment TO "{s}_role";
COMMIT;"#
    )
}

/// The seed's audit (an audit_log table and its PL/pgSQL row trigger on every table), added to
/// the hand-written tenant: what a DBA writes to get the same tables audited.
fn audited_tenant_sql(s: &str) -> String {
    let plain = plain_tenant_sql(s);
    let mut audit = format!(
        r#"CREATE TABLE "{s}".audit_log (id bigserial PRIMARY KEY, table_name text, record_id uuid, action text,
  old_data jsonb, new_data jsonb, user_id text, "timestamp" timestamptz);
GRANT SELECT ON "{s}".audit_log TO "{s}_role";
"#
    );
    for t in [
        "customer",
        "category",
        "product",
        "sales_order",
        "order_line",
        "invoice",
        "payment",
    ] {
        audit.push_str(&format!(
            "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON \"{s}\".{t} FOR EACH ROW EXECUTE FUNCTION public.audit_trigger();\n"
        ));
    }
    plain.replace("COMMIT;", &format!("{audit}COMMIT;"))
}

const AUDIT_FUNCTION: &str = r#"CREATE FUNCTION public.audit_trigger() RETURNS trigger AS $$
BEGIN
  EXECUTE format('INSERT INTO %I.audit_log (table_name, record_id, action, old_data, new_data, user_id, "timestamp") VALUES ($1, $2, $3, $4, $5, $6, now())', TG_TABLE_SCHEMA)
    USING TG_TABLE_NAME, COALESCE(NEW.id, OLD.id), TG_OP,
          CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
          CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
          current_setting('app.current_user_id', true);
  RETURN COALESCE(NEW, OLD);
END;
$$ LANGUAGE plpgsql"#;

fn main() {
    let tenants: usize = setting("TENANTS", 1000);
    let mut c = fresh_db("bench_onboarding");
    // roles are cluster-wide: clear those of earlier runs
    let mut pg = connect("postgres");
    for r in pg
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^(tenant_ob[0-9]+|p[la][0-9]+_role)$'",
            &[],
        )
        .unwrap()
    {
        let name: String = r.get(0);
        pg.batch_execute(&format!("DROP ROLE \"{name}\"")).unwrap();
    }
    header(&format!(
        "tenant onboarding: {tenants} tenants x 7 related entities, udm vs plain DDL, interleaved"
    ));
    c.batch_execute(AUDIT_FUNCTION).unwrap();
    let mut udm = Vec::with_capacity(tenants);
    let mut plain = Vec::with_capacity(tenants);
    let mut audited = Vec::with_capacity(tenants);
    for i in 0..tenants {
        let (d, r) = time(|| c.batch_execute(&udm_tenant_sql(&format!("ob{i}"))));
        r.unwrap();
        udm.push(d);
        let (d, r) = time(|| c.batch_execute(&plain_tenant_sql(&format!("pl{i}"))));
        r.unwrap();
        plain.push(d);
        let (d, r) = time(|| c.batch_execute(&audited_tenant_sql(&format!("pa{i}"))));
        r.unwrap();
        audited.push(d);
        if (i + 1) % 200 == 0 {
            eprintln!("  ... {} tenants", i + 1);
        }
    }
    let hundred = 100.min(tenants);
    let (uf, ul) = (stats(&udm[..hundred]), stats(&udm[tenants - hundred..]));
    let (pf, pl) = (stats(&plain[..hundred]), stats(&plain[tenants - hundred..]));
    row("udm, first 100 tenants", uf);
    row("plain DDL, first 100 tenants", pf);
    row("udm, last 100 tenants", ul);
    row("plain DDL, last 100 tenants", pl);
    ratio(
        "udm / plain DDL, first 100 (mean)",
        uf.mean_ms,
        pf.mean_ms,
        Some(1.3),
    );
    ratio(
        "udm / plain DDL, last 100 (mean)",
        ul.mean_ms,
        pl.mean_ms,
        Some(1.3),
    );
    let (af, al) = (
        stats(&audited[..hundred]),
        stats(&audited[tenants - hundred..]),
    );
    row("plain DDL + seed audit trigger, first 100", af);
    row("plain DDL + seed audit trigger, last 100", al);
    ratio(
        "udm / plain DDL with the same audit, first 100",
        uf.mean_ms,
        af.mean_ms,
        None,
    );
    ratio(
        "udm / plain DDL with the same audit, last 100",
        ul.mean_ms,
        al.mean_ms,
        None,
    );
    let ug = ratio("growth last/first 100, udm", ul.mean_ms, uf.mean_ms, None);
    let pg_growth = ratio(
        "growth last/first 100, plain DDL",
        pl.mean_ms,
        pf.mean_ms,
        None,
    );
    println!(
        "  udm growth beyond plain DDL growth: {:.2}x ({})",
        ug / pg_growth,
        if ug <= pg_growth * 1.1 {
            "no extra growth"
        } else {
            "GROWS FASTER"
        }
    );
    let one: f64 = udm.iter().map(|d| d.as_secs_f64()).sum::<f64>() / tenants as f64 * 1000.0;
    println!("  one tenant with 7 entities through udm takes {one:.1} ms on average");
}
