//! The database side of a request: one transaction on any pooled connection —
//! `udm_use(tenant, user, is_local => true)`, `udm_graphql(...)`, commit. Every value is a bound
//! parameter; the selection and the statement timeout are local to the transaction, so the
//! connection goes back to the pool holding nothing of the request.

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::GqlRequest;
use crate::App;
use axum::http::StatusCode;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

pub fn pool(c: &crate::config::Config) -> Result<Pool, String> {
    let mut pg: tokio_postgres::Config = c
        .database_url
        .parse()
        .map_err(|e| format!("database_url: {e}"))?;
    if pg.get_application_name().is_none() {
        pg.application_name("udm-server");
    }
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Duration::from_millis(c.pool_timeout_ms);
    Pool::builder(mgr)
        .max_size(c.pool_size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("pool: {e}"))
}

/// At most 100 characters of a caller's value, for the log.
fn clip(s: &str) -> &str {
    s.char_indices().nth(100).map_or(s, |(i, _)| &s[..i])
}

/// A database error as the caller sees it: the statement timeout, or nothing of it.
pub(crate) fn failure(what: &str, e: tokio_postgres::Error) -> ApiError {
    if e.code() == Some(&SqlState::QUERY_CANCELED) {
        tracing::warn!(error = %e, "{what}: statement timeout");
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "TIMEOUT",
            "the request took longer than the server's statement timeout",
        );
    }
    match e.as_db_error() {
        Some(db) => tracing::error!(
            sqlstate = db.code().code(),
            message = db.message(),
            detail = db.detail().unwrap_or(""),
            "{what}"
        ),
        None => tracing::error!(error = %e, "{what}"),
    }
    if e.is_closed() || e.as_db_error().is_none() {
        ApiError::unavailable()
    } else {
        ApiError::internal()
    }
}

/// A pooled connection that goes back to the pool only when its transaction ended: if the
/// request is dropped halfway (the client went away), the connection is closed instead, and
/// PostgreSQL rolls the transaction back.
struct Held(Option<deadpool_postgres::Object>);

impl Held {
    fn client(&self) -> &deadpool_postgres::Object {
        self.0.as_ref().expect("held until released")
    }

    /// The transaction ended: back to the pool.
    fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            drop(deadpool_postgres::Object::take(o));
        }
    }
}

const SELECT: &str =
    "SELECT set_config('statement_timeout', $1, true), udm_use($2, $3, is_local => true)";

/// One transaction on a pooled connection as `who`: the statement timeout and
/// `udm_use(tenant, user, is_local => true)`, then `sql` (one row, one jsonb column), commit.
/// The four messages (BEGIN, the selection, the statement, COMMIT) go out together, pipelined,
/// and are answered in order: one round trip instead of four. When a statement fails, the ones
/// after it fail too ("current transaction is aborted") and COMMIT rolls back; the first error
/// is the answer.
async fn in_tenant<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    app: &App,
    who: &Identity,
    read_only: bool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<T, ApiError> {
    in_tenant_as(app, who, read_only, sql, params, |e| {
        failure("statement", e)
    })
    .await
}

/// `in_tenant` of a read-only statement whose errors are udm's refusals (`statement_error`
/// gives their answer): the REST bridge's reads, in one round trip as GraphQL's.
pub async fn read_in_tenant(
    app: &App,
    who: &Identity,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    statement_error: fn(tokio_postgres::Error) -> ApiError,
) -> Result<RawJson, ApiError> {
    let v: Option<RawJson> = in_tenant_as(app, who, true, sql, params, statement_error).await?;
    Ok(v.unwrap_or_else(|| RawJson(b"null".to_vec())))
}

async fn in_tenant_as<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    app: &App,
    who: &Identity,
    read_only: bool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    statement_error: impl FnOnce(tokio_postgres::Error) -> ApiError,
) -> Result<T, ApiError> {
    let held = Held(Some(app.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "no pooled connection");
        ApiError::unavailable()
    })?));
    let client = held.client();
    let select = client
        .prepare_cached(SELECT)
        .await
        .map_err(|e| failure("prepare udm_use", e))?;
    let run = client
        .prepare_cached(sql)
        .await
        .map_err(|e| failure("prepare", e))?;
    let selection: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&app.statement_timeout, &who.tenant, &who.user];
    let (begun, selected, row, committed) = tokio::join!(
        client.batch_execute(if read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN"
        }),
        client.query_one(&select, &selection),
        client.query_one(&run, params),
        client.batch_execute("COMMIT"),
    );
    // COMMIT answered: the transaction ended (committed, or rolled back after an error), and
    // the connection holds nothing of the request
    if committed.is_ok() {
        held.release();
    }
    begun.map_err(|e| failure("BEGIN", e))?;
    if let Err(e) = selected {
        return Err(refused(e, who));
    }
    let row = row.map_err(statement_error)?;
    committed.map_err(|e| failure("COMMIT", e))?;
    row.try_get(0).map_err(|e| failure("result", e))
}

/// A `json`/`jsonb` result as PostgreSQL wrote it, not parsed: the text of the JSON (jsonb's
/// binary form on the wire is a version byte and that text). A GraphQL response goes to the
/// client as it is unless it has errors to look at.
pub struct RawJson(pub Vec<u8>);

impl RawJson {
    pub fn parse(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.0).map_err(|e| {
            tracing::error!(error = %e, "the database's JSON does not parse");
            ApiError::internal()
        })
    }
}

impl<'a> tokio_postgres::types::FromSql<'a> for RawJson {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == tokio_postgres::types::Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("unsupported jsonb version".into()),
            }
        } else {
            raw
        };
        Ok(RawJson(text.to_vec()))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSON || *ty == tokio_postgres::types::Type::JSONB
    }
}

/// `udm_use` failed. The database decides whether this user may use this tenant: an unknown
/// tenant, one the server's role is not a member of, and a user who is not a member get the same
/// 403.
fn refused(e: tokio_postgres::Error, who: &Identity) -> ApiError {
    match e.code() {
        Some(c)
            if *c == SqlState::INSUFFICIENT_PRIVILEGE
                || *c == SqlState::UNDEFINED_OBJECT
                || *c == SqlState::INVALID_PARAMETER_VALUE =>
        {
            tracing::info!(
                tenant = clip(&who.tenant),
                user = clip(&who.user),
                code = c.code(),
                "udm_use refused"
            );
            ApiError::forbidden()
        }
        _ => failure("udm_use", e),
    }
}

/// The statement timeout and `udm_use(tenant, user, is_local => true)` in the open transaction
/// of `client`.
async fn select_tenant(
    client: &impl GenericClient,
    app: &App,
    who: &Identity,
) -> Result<(), ApiError> {
    let select = client
        .prepare_cached(SELECT)
        .await
        .map_err(|e| failure("prepare udm_use", e))?;
    client
        .query_one(&select, &[&app.statement_timeout, &who.tenant, &who.user])
        .await
        .map_err(|e| refused(e, who))?;
    Ok(())
}

/// How a REST request's transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `READ ONLY` (GET and HEAD, views and aggregates)
    Read,
    Write,
    /// `REPEATABLE READ`: statements that check and then act see one snapshot, and a row changed
    /// by another transaction since is a serialization failure (a `DELETE` with `If-Match`)
    Snapshot,
}

/// A request's transaction that may run several statements (the REST bridge): begun with the
/// statement timeout and `udm_use(tenant, user, is_local => true)` like [`in_tenant`], ended by
/// [`Tx::finish`]. A transaction dropped before it ended (the client went away) takes its
/// connection out of the pool instead of returning it with the transaction open.
pub struct Tx {
    client: Option<deadpool_postgres::Object>,
}

impl Tx {
    pub async fn begin(app: &App, who: &Identity, mode: Mode) -> Result<Tx, ApiError> {
        let client = app.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "no pooled connection");
            ApiError::unavailable()
        })?;
        let begin = match mode {
            Mode::Read => "BEGIN READ ONLY",
            Mode::Write => "BEGIN",
            Mode::Snapshot => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        };
        client
            .batch_execute(begin)
            .await
            .map_err(|e| failure("BEGIN", e))?;
        let tx = Tx {
            client: Some(client),
        };
        if let Err(e) = select_tenant(tx.client(), app, who).await {
            tx.end("ROLLBACK").await;
            return Err(e);
        }
        Ok(tx)
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.client.as_ref().expect("an open transaction")
    }

    /// One statement answering one row with one `jsonb` column (`null` for SQL NULL); udm's
    /// refusals become errors with their SQLSTATE (`rest::problem::from_db`).
    pub async fn json(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Value, ApiError> {
        self.raw(sql, params).await?.parse()
    }

    /// `json`, the result as PostgreSQL wrote it (SQL NULL: `null`).
    pub async fn raw(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<RawJson, ApiError> {
        let c = self.client();
        let st = c
            .prepare_cached(sql)
            .await
            .map_err(crate::rest::problem::from_db)?;
        let row = c
            .query_one(&st, params)
            .await
            .map_err(crate::rest::problem::from_db)?;
        let v: Option<RawJson> = row.get(0);
        Ok(v.unwrap_or_else(|| RawJson(b"null".to_vec())))
    }

    /// Commits when `result` is a success (a failing commit is the answer then), rolls back
    /// when it is not.
    pub async fn finish<T>(self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        match result {
            Ok(v) => {
                let r = self
                    .client()
                    .batch_execute("COMMIT")
                    .await
                    .map_err(crate::rest::problem::from_db);
                self.end_ok(r.is_ok());
                r.map(|_| v)
            }
            Err(e) => {
                self.end("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn end(self, sql: &str) {
        let ok = self.client().batch_execute(sql).await.is_ok();
        self.end_ok(ok);
    }

    /// The connection goes back to the pool when its transaction ended, else it is closed.
    fn end_ok(mut self, ok: bool) {
        if let Some(c) = self.client.take() {
            if !ok {
                drop(deadpool_postgres::Object::take(c));
            }
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

/// `udm_graphql` as `who`.
pub async fn graphql(
    app: &App,
    who: &Identity,
    req: &GqlRequest,
    read_only: bool,
) -> Result<RawJson, ApiError> {
    in_tenant(
        app,
        who,
        read_only,
        "SELECT udm_graphql($1, $2::jsonb, $3)",
        &[&req.query, &req.variables, &req.operation_name],
    )
    .await
}

/// Whether `who` may use their tenant (403 if not).
pub async fn check(app: &App, who: &Identity) -> Result<(), ApiError> {
    in_tenant::<Value>(app, who, true, "SELECT '{}'::jsonb", &[])
        .await
        .map(|_| ())
}

/// The event id a new subscription of `who` starts after: the horizon of their tenant's events
/// (every event at or below it is committed or never will be).
pub async fn horizon(app: &App, who: &Identity) -> Result<i64, ApiError> {
    let v: Value = in_tenant(app, who, true, "SELECT udm_events(0, 1)", &[]).await?;
    v["horizon"].as_i64().ok_or_else(|| {
        tracing::error!(response = %v, "udm_events has no horizon");
        ApiError::internal()
    })
}

/// `udm_graphql_events`: the payloads of a subscription of `who` for the events after `after`.
pub async fn events(
    app: &App,
    who: &Identity,
    req: &GqlRequest,
    after: i64,
    limit: i32,
) -> Result<Value, ApiError> {
    in_tenant(
        app,
        who,
        true,
        "SELECT udm_graphql_events($1, $2::jsonb, $3, $4, $5)",
        &[
            &req.query,
            &req.variables,
            &req.operation_name,
            &after,
            &limit,
        ],
    )
    .await
}

/// `/readyz`: a pooled connection answers.
pub async fn ready(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// `udm-server setup-role <admin-url> <role> [tenant ...]`: the server's database role, made
/// or brought up to date in one command run by a superuser: a LOGIN role (no password is set;
/// set one, or use peer/cert authentication), `udm.require_local_selection = on` for it, and
/// membership of each named tenant's role (all tenants when none is named). Idempotent: run it
/// again after creating tenants. Names are bound as parameters and quoted by PostgreSQL's
/// `format('%I')`.
pub async fn setup_role(admin_url: &str, role: &str, tenants: &[String]) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let e = |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {e}");
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(e("role lookup"))?
        .is_some();
    let mut statements = Vec::new();
    if !exists {
        statements.push(
            client
                .query_one("SELECT format('CREATE ROLE %I LOGIN', $1::text)", &[&role])
                .await
                .map_err(e("format"))?
                .get::<_, String>(0),
        );
    }
    statements.push(
        client
            .query_one(
                "SELECT format('ALTER ROLE %I SET udm.require_local_selection = on', $1::text)",
                &[&role],
            )
            .await
            .map_err(e("format"))?
            .get(0),
    );
    let grants = client
        .query(
            "SELECT t.slug, format('GRANT %I TO %I', t.role_name, $1::text) FROM udm_tenants() t \
             WHERE cardinality($2::text[]) = 0 OR t.slug = ANY($2::text[]) ORDER BY t.slug",
            &[&role, &tenants],
        )
        .await
        .map_err(e("udm_tenants"))?;
    let found: Vec<String> = grants.iter().map(|r| r.get(0)).collect();
    if let Some(missing) = tenants.iter().find(|t| !found.contains(t)) {
        return Err(format!("no tenant \"{missing}\""));
    }
    statements.extend(grants.iter().map(|r| r.get::<_, String>(1)));
    for s in &statements {
        client
            .batch_execute(s)
            .await
            .map_err(|err| format!("{s}: {err}"))?;
        println!("{s}");
    }
    Ok(())
}
