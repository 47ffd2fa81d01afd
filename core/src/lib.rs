//! udm-core: the pure logic of udm, with no PostgreSQL dependency, tested with plain `cargo test`.
//!
//! The extension (`udm` crate) reads and writes the catalog through SPI and runs what this crate
//! plans; everything that can be decided without a database is decided here.

pub mod access;
pub mod audit;
pub mod budget;
pub mod checks;
pub mod claims;
pub mod crypto;
pub mod ddl;
pub mod definition;
pub mod error;
pub mod graphql;
pub mod ident;
pub mod ids;
pub mod json;
pub mod jsonb;
pub mod locks;
pub mod openapi;
pub mod query;
pub mod records;
pub mod related_rules;
pub mod rules;
pub mod templates;
pub mod transfer;
pub mod types;
pub mod values;

#[cfg(test)]
mod properties;

pub use error::{Result, SqlState, UdmError};
