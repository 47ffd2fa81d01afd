#![allow(clippy::result_large_err, clippy::collapsible_match)] // GqlError carries locations, path, detail and hint
//! udm's GraphQL engine, pure: schema reflection from a tenant model, parsing and validation
//! with limits, a typed builder, and transpilation to udm's SQL (one statement per root field
//! for queries; a few statements or udm function calls for mutations). Nothing here touches
//! PostgreSQL: the surface (`src/`) runs the planned statements through SPI.
//!
//! # Pipeline
//!
//! ```text
//! model ──GqlSchema::build──▶ GqlSchema ─┐            (cache per model key + generation)
//! text ──Document::parse(schema, limits)─┴▶ Document  (cache per schema, Document::key, limits)
//! Document + operation + variables ──prepare(ctx)──▶ Prepared { fields: [FieldPlan] }
//! FieldPlan::next(last result) ──▶ Next::Run(Statement) … Next::Done(value)
//! ```
//!
//! # What the surface implements
//!
//! * `udm_graphql(query text, variables jsonb DEFAULT NULL, operation_name text DEFAULT NULL)
//!   RETURNS jsonb`:
//!   1. the session's [`Model`](crate::query::path::Model) (`TenantModel`, whose hidden fields
//!      are the role's), and [`Limits`] from the `udm.graphql_*` settings;
//!   2. the schema from its cache ([`CacheKeys::schema`]) or [`GqlSchema::build`];
//!   3. the document from its cache ([`CacheKeys::document`]) or [`Document::parse`]; errors →
//!      [`response`]`(None, errors, None)`;
//!   4. [`prepare`] with a [`Context`] (model, limits, the extension's schema, a UUIDv7 source);
//!   5. queries: each [`FieldPlan`] in its own subtransaction: loop `plan.next(last)`, running
//!      each [`Statement`] (prepared by its SQL text; its first column of its first row, as
//!      JSON, is `last`); a database error becomes [`GqlError::database`] through
//!      [`FieldPlan::error`] and `null` at the field's key. Mutations: all fields in one
//!      subtransaction, in order; any error rolls it back and the data is `null`;
//!   6. subscriptions: [`Prepared::subscription`] is validated and planned; `udm_graphql`
//!      answers `{"data": null, "extensions": {"subscription": "valid"}}`.
//! * `udm_graphql_schema() RETURNS text`: [`GqlSchema::sdl`].
//! * `udm_graphql_poll(query, variables, operation_name, after bigint, limit int) RETURNS
//!   jsonb`: prepares the subscription, reads `udm_events(after, limit)` as the caller, and for
//!   each event of [`SubscriptionPlan::wants`]: runs [`SubscriptionPlan::condition`] (the
//!   image read inside the statement), then [`SubscriptionPlan::record_statement`], and answers
//!   [`SubscriptionPlan::payload`] per event.
//!
//! # Caching
//!
//! No globals here: built objects are plain values the surface keeps in `Rc`s, with their
//! sizes ([`GqlSchema::approx_bytes`], [`Document::approx_bytes`]) for its memory budget.
//!
//! # Limits and errors
//!
//! Every recursion is bounded before it runs (see [`parse`]); every limit is a parameter
//! ([`Limits`]) whose error names its setting; every error is a [`GqlError`] with locations,
//! path and `extensions {code, sqlstate}`; nothing panics on input (property-tested).

mod aggregate;
pub(crate) mod builder;
pub mod error;
pub mod limits;
mod mutation;
pub mod names;
pub mod parse;
pub mod plan;
pub mod prepare;
pub mod schema;
pub(crate) mod sdl;
pub mod subscription;
pub(crate) mod transpile;
pub(crate) mod views;

#[cfg(test)]
mod tests;

pub use error::{response, Code, GqlError, Location, PathSeg};
pub use limits::Limits;
pub use parse::{Document, OperationKind};
pub use plan::{FieldPlan, Next, Planning, PointRead, RowPart, RowsShape, Statement, Wrap};
pub use prepare::{prepare, Context, Prepared};
pub use schema::GqlSchema;
pub use subscription::{Event, SubscriptionPlan};

/// Cache keys of the surface's per-backend caches.
pub struct CacheKeys;

impl CacheKeys {
    /// The schema of a model: the model's key (tenant and hidden-field set, `TenantModel.key`)
    /// and the tenant's catalog generation.
    pub fn schema(model_key: &str, generation: u64) -> String {
        format!("{generation}|{model_key}")
    }

    /// A parsed document: valid for one schema, checked under one set of limits.
    pub fn document(schema_key: &str, text: &str, limits: &Limits) -> String {
        format!(
            "{schema_key}|{}|{}",
            Document::key(text),
            limits.fingerprint()
        )
    }
}
