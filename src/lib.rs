//! udm: the Universal Data Model as a PostgreSQL extension.
//!
//! Tenants are schemas guarded by roles; entities are real tables whose definitions live in the
//! tenant's own catalog and change at runtime through `udm_*` functions. The pure logic (parsing,
//! validation, DDL planning, rule compilation) is in the `udm-core` crate; this crate is the thin
//! SQL surface, the catalog I/O and the per-row functions attached to entity tables.

use pgrx::prelude::*;

/// `PG_FUNCTION_INFO_V1` for functions written against the C interface.
macro_rules! finfo_v1 {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $name() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

mod access;
mod audit;
mod cache;
mod catalog;
mod citus;
mod crypto;
mod entities;
mod error;
mod graphql;
mod guc;
mod json;
mod limits;
mod query;
mod records;
mod spi;
mod templates;
mod tenants;
mod transfer;
mod triggers;
mod trust;
mod upgrade;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/citus.sql", name = "citus", requires = ["bootstrap"]);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    crypto::init();
    graphql::init();
    catalog::init();
    audit::init();
    transfer::init();
    citus::selection::init();
    citus::constraints::init();
    citus::copy_errors::init();
    access::users::init();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
