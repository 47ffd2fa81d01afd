//! Small helpers over pgrx's SPI for the shapes udm needs.

use crate::error::{spi_err, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row, or None when there is no row (or it is NULL).
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Option<T>> {
    Spi::connect(|c| {
        let mut rows = c.select(sql, Some(1), args)?;
        match rows.next() {
            Some(row) => row.get::<T>(1),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}
