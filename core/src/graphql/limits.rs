//! Limits of a request, each named after the setting the surface reads it from.

/// The limits a request is held to. Every one is checked before the work it bounds, and
/// exceeding one is a `LIMIT_EXCEEDED` error (SQLSTATE 54000) naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limits {
    /// `udm.graphql_max_document_bytes`: size of the document text.
    pub max_document_bytes: usize,
    /// `udm.graphql_max_depth`: selection depth of the operation, fragments expanded. The
    /// document's nesting of `{ [ (` may be twice this plus 8 (arguments and inputs nest too).
    pub max_depth: usize,
    /// `udm.graphql_max_tokens`: lexical tokens of the document.
    pub max_tokens: usize,
    /// `udm.graphql_max_fields`: fields selected by the operation, fragments expanded (a
    /// fragment used n times counts n times; counted without expanding).
    pub max_fields: u64,
    /// `udm.graphql_max_root_fields`: root fields (aliases included) of one operation; each is
    /// a statement.
    pub max_root_fields: usize,
    /// `udm.graphql_max_page_size`: `first`/`last` of a connection, `first` of other lists.
    pub max_page_size: i64,
    /// `udm.graphql_default_page_size`: page size when neither `first` nor `last` is given.
    pub default_page_size: i64,
    /// `udm.graphql_max_list_items`: items of a list argument or variable (`in`, `objects`).
    pub max_list_items: usize,
    /// `udm.graphql_max_variable_values`: JSON values (nodes) in the variables.
    pub max_variable_values: usize,
    /// Nesting of the variables' JSON.
    pub max_variable_depth: usize,
    /// `udm.graphql_introspection`: whether `__schema` and `__type` are answered.
    pub introspection: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_document_bytes: 100_000,
            max_depth: 15,
            max_tokens: 20_000,
            max_fields: 2_000,
            max_root_fields: 20,
            max_page_size: crate::query::MAX_LIMIT,
            default_page_size: crate::query::DEFAULT_LIMIT,
            max_list_items: 1_000,
            max_variable_values: 100_000,
            max_variable_depth: 64,
            introspection: true,
        }
    }
}

impl Limits {
    /// Nesting of `{ [ (` the pre-scan lets through.
    pub fn max_nesting(&self) -> usize {
        self.max_depth * 2 + 8
    }

    /// A text naming these limits, for cache keys of documents checked under them.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}/{}/{}/{}/{}/{}/{}",
            self.max_document_bytes,
            self.max_depth,
            self.max_tokens,
            self.max_fields,
            self.max_root_fields,
            self.max_page_size,
            self.default_page_size,
            self.max_list_items,
            self.max_variable_values,
            self.max_variable_depth,
            self.introspection
        )
    }
}
