//! Parsing and validation of a request document, with every bound checked before the work it
//! bounds (nothing here recurses deeper than the limits allow, whatever the input):
//!
//! 1. byte size (`udm.graphql_max_document_bytes`);
//! 2. a linear, non-recursive pre-scan: nesting of `{ [ (` outside strings and comments, so
//!    neither parser nor validator recurse deeper than we chose, whatever the stack;
//! 3. apollo-compiler's parser with a recursion limit and a token limit;
//! 4. every rule of the spec's Validation section (apollo-compiler), plus 5.6.3 (input object
//!    field uniqueness), which apollo-compiler 1.33 does not check;
//! 5. per operation: its size with fragments expanded (each fragment measured once, so a
//!    "fragment bomb" is counted, never expanded): depth and field count; then variables (size
//!    first, then coercion by the spec's CoerceVariableValues).

use super::error::{location, Code, GqlError, Location};
use super::limits::Limits;
use super::schema::GqlSchema;
use crate::error::SqlState;
use apollo_compiler::ast::Value as AstValue;
use apollo_compiler::executable::{
    DirectiveList, Operation, OperationType, Selection, SelectionSet,
};
use apollo_compiler::parser::Parser;
use apollo_compiler::request::coerce_variable_values;
use apollo_compiler::response::{JsonMap, JsonValue};
use apollo_compiler::validation::{Valid, WithErrors};
use apollo_compiler::{ExecutableDocument, Node};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// A parsed document, valid against one schema (cache it per (schema key, [`Document::key`],
/// [`Limits::fingerprint`])).
#[derive(Debug, Clone)]
pub struct Document {
    pub(crate) doc: Valid<ExecutableDocument>,
    bytes: usize,
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

impl From<OperationType> for OperationKind {
    fn from(t: OperationType) -> Self {
        match t {
            OperationType::Query => OperationKind::Query,
            OperationType::Mutation => OperationKind::Mutation,
            OperationType::Subscription => OperationKind::Subscription,
        }
    }
}

impl Document {
    /// Parses and validates a document against a schema.
    pub fn parse(
        schema: &GqlSchema,
        text: &str,
        limits: &Limits,
    ) -> Result<Document, Vec<GqlError>> {
        prescan(text, limits).map_err(|e| vec![e])?;
        let doc = Parser::new()
            .recursion_limit(limits.max_nesting() + 8)
            .token_limit(limits.max_tokens)
            .parse_executable(&schema.schema, text, "request.graphql")
            .map_err(|e| diagnostics(e, limits))?;
        nesting_with_fragments(&doc, limits)?;
        let doc = doc
            .validate(&schema.schema)
            .map_err(|e| diagnostics(e, limits))?;
        let mut errs = Vec::new();
        unique_input_fields(&doc, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Document {
            doc,
            bytes: text.len(),
        })
    }

    /// The cache key of a document text: its SHA-256, hex.
    pub fn key(text: &str) -> String {
        crate::ids::hex(&Sha256::digest(text.as_bytes()))
    }

    /// A rough size in bytes of the parsed document, for the surface's cache budget.
    pub fn approx_bytes(&self) -> usize {
        1024 + self.bytes * 24
    }

    /// The kind of the operation a request names (None: no such operation).
    pub fn operation_kind(&self, name: Option<&str>) -> Option<OperationKind> {
        self.doc
            .operations
            .get(name)
            .ok()
            .map(|o| o.operation_type.into())
    }
}

fn nesting_error(limits: &Limits, at: Location) -> GqlError {
    GqlError::limit(format!(
        "the document nests deeper than {} levels (udm.graphql_max_depth is {})",
        limits.max_nesting(),
        limits.max_depth
    ))
    .at(Some(at))
}

/// Linear pre-scan: size, then the deepest nesting of `{`, `[`, `(` outside strings, block
/// strings and comments.
pub fn prescan(src: &str, limits: &Limits) -> Result<(), GqlError> {
    if src.len() > limits.max_document_bytes {
        return Err(GqlError::limit(format!(
            "the document has {} bytes; udm.graphql_max_document_bytes allows {}",
            src.len(),
            limits.max_document_bytes
        )));
    }
    let max = limits.max_nesting();
    let b = src.as_bytes();
    let (mut i, mut depth, mut line, mut line_start) = (0usize, 0usize, 1usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    if b[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                        continue;
                    }
                    if b[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
                i += 3;
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    let column = src[line_start..i].chars().count() + 1;
                    return Err(nesting_error(limits, Location { line, column }));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn diagnostics<T>(e: WithErrors<T>, limits: &Limits) -> Vec<GqlError> {
    let mut out: Vec<GqlError> = Vec::new();
    for err in diagnostics_all(e, limits) {
        // the parser reports one syntax error once per pass over the document
        if !out.contains(&err) {
            out.push(err);
        }
    }
    out
}

fn diagnostics_all<T>(e: WithErrors<T>, limits: &Limits) -> Vec<GqlError> {
    e.errors
        .iter()
        .take(100)
        .map(|d| {
            let loc = d
                .line_column_range()
                .map(|r| Location { line: r.start.line, column: r.start.column });
            let msg = d.error.to_string();
            let mut err = if msg.contains("token limit") {
                GqlError::limit(format!(
                    "the document has more than {} tokens (udm.graphql_max_tokens)",
                    limits.max_tokens
                ))
            } else if msg.contains("recursion limit") {
                GqlError::limit(format!(
                    "the document nests deeper than the parser allows (udm.graphql_max_depth is {})",
                    limits.max_depth
                ))
            } else if msg.starts_with("syntax error") {
                GqlError::new(Code::ParseFailed, SqlState::SyntaxError, msg)
            } else {
                // apollo-compiler reports unknown fields and types while building the
                // document: validation errors, whichever step found them
                GqlError::validation(msg)
            };
            err.locations.extend(loc);
            err
        })
        .collect()
}

/// Spec 5.6.3 (Input Object Field Uniqueness): `{eq: 1, eq: 2}` is refused.
fn unique_input_fields(doc: &Valid<ExecutableDocument>, errs: &mut Vec<GqlError>) {
    let mut values: Vec<&Node<AstValue>> = Vec::new();
    let mut sets: Vec<&SelectionSet> = Vec::new();
    // an explicit stack of selection sets and values: no recursion, whatever the document
    let dirs = directive_values;
    for op in doc.operations.iter() {
        values.extend(op.variables.iter().filter_map(|v| v.default_value.as_ref()));
        dirs(&op.directives, &mut values);
        sets.push(&op.selection_set);
    }
    for f in doc.fragments.values() {
        dirs(&f.directives, &mut values);
        sets.push(&f.selection_set);
    }
    while let Some(set) = sets.pop() {
        for sel in &set.selections {
            match sel {
                Selection::Field(f) => {
                    values.extend(f.arguments.iter().map(|a| &a.value));
                    dirs(&f.directives, &mut values);
                    sets.push(&f.selection_set);
                }
                Selection::InlineFragment(i) => {
                    dirs(&i.directives, &mut values);
                    sets.push(&i.selection_set);
                }
                Selection::FragmentSpread(s) => dirs(&s.directives, &mut values),
            }
        }
    }
    while let Some(v) = values.pop() {
        match v.as_ref() {
            AstValue::Object(fields) => {
                for (i, (k, fv)) in fields.iter().enumerate() {
                    if fields[..i].iter().any(|(p, _)| p == k) {
                        errs.push(
                            GqlError::validation(format!(
                                "input object field `{k}` is given more than once (5.6.3)"
                            ))
                            .at(location(fv.location(), &doc.sources)),
                        );
                    }
                    values.push(fv);
                }
            }
            AstValue::List(items) => values.extend(items.iter()),
            _ => {}
        }
    }
}

fn directive_values<'a>(d: &'a DirectiveList, values: &mut Vec<&'a Node<AstValue>>) {
    for d in d.iter() {
        values.extend(d.arguments.iter().map(|a| &a.value));
    }
}

/// Fields and depth of an operation's selections with fragments expanded (each fragment
/// measured once). Validation has refused fragment cycles; `guard` is a second fence.
struct Measure<'d> {
    doc: &'d ExecutableDocument,
    memo: HashMap<&'d str, (u64, usize)>,
    /// Fragments being measured: a spread of one of them is a cycle, left to validation.
    visiting: std::collections::HashSet<&'d str>,
    limit: usize,
}

/// Before validation (whose rules recurse through fragment spreads): the nesting of every
/// operation and fragment with spreads followed, bounded like the document's own nesting.
fn nesting_with_fragments(doc: &ExecutableDocument, limits: &Limits) -> Result<(), Vec<GqlError>> {
    let mut m = Measure {
        doc,
        memo: HashMap::new(),
        visiting: Default::default(),
        limit: limits.max_nesting(),
    };
    let sets = doc
        .operations
        .iter()
        .map(|o| &o.selection_set)
        .chain(doc.fragments.values().map(|f| &f.selection_set));
    for set in sets {
        if m.set(set, 0).is_none() {
            return Err(vec![GqlError::limit(format!(
                "the document nests deeper than {} levels with its fragments expanded (udm.graphql_max_depth is {})",
                limits.max_nesting(),
                limits.max_depth
            ))]);
        }
    }
    Ok(())
}

impl<'d> Measure<'d> {
    fn set(&mut self, set: &'d SelectionSet, guard: usize) -> Option<(u64, usize)> {
        if guard > self.limit {
            return None;
        }
        let (mut n, mut d) = (0u64, 0usize);
        for sel in &set.selections {
            let (sn, sd) = match sel {
                Selection::Field(f) => {
                    let (cn, cd) = self.set(&f.selection_set, guard + 1)?;
                    (cn.saturating_add(1), cd.saturating_add(1))
                }
                Selection::InlineFragment(i) => self.set(&i.selection_set, guard + 1)?,
                Selection::FragmentSpread(s) => {
                    let name = s.fragment_name.as_str();
                    match (self.memo.get(name), self.doc.fragments.get(name)) {
                        (Some(m), _) => *m,
                        (None, Some(fr)) if self.visiting.insert(name) => {
                            let m = self.set(&fr.selection_set, guard + 1);
                            self.visiting.remove(name);
                            let m = m?;
                            self.memo.insert(name, m);
                            m
                        }
                        _ => (0, 0),
                    }
                }
            };
            n = n.saturating_add(sn);
            d = d.max(sd);
        }
        Some((n, d))
    }
}

/// Whether a root field is an introspection meta-field.
pub fn is_introspection(name: &str) -> bool {
    name == "__schema" || name == "__type"
}

/// The operation a request names, checked against the size limits, with its variables
/// coerced.
pub fn operation<'d>(
    schema: &GqlSchema,
    doc: &'d Document,
    name: Option<&str>,
    variables: &Value,
    limits: &Limits,
) -> Result<(&'d Node<Operation>, Valid<JsonMap>), Vec<GqlError>> {
    let d = &doc.doc;
    let op = d
        .operations
        .get(name)
        .map_err(|e| vec![GqlError::validation(e.message().to_string())])?;
    let at = location(op.location(), &d.sources);
    let mut root = op.selection_set.clone();
    root.selections
        .retain(|s| !matches!(s, Selection::Field(f) if is_introspection(f.name.as_str())));
    let mut m = Measure {
        doc: d,
        memo: HashMap::new(),
        visiting: Default::default(),
        limit: limits.max_nesting(),
    };
    let (fields, depth) = m.set(&root, 0).ok_or_else(|| {
        vec![GqlError::limit(format!(
            "the operation nests deeper than {} levels with its fragments expanded (udm.graphql_max_depth is {})",
            limits.max_nesting(),
            limits.max_depth
        ))
        .at(at)]
    })?;
    if depth > limits.max_depth {
        return Err(vec![GqlError::limit(format!(
            "the operation selects {depth} levels deep; udm.graphql_max_depth allows {}",
            limits.max_depth
        ))
        .at(at)]);
    }
    if fields > limits.max_fields {
        let n = if fields == u64::MAX {
            "more than 2^64".to_string()
        } else {
            fields.to_string()
        };
        return Err(vec![GqlError::limit(format!(
            "the operation selects {n} fields with its fragments expanded; udm.graphql_max_fields allows {}",
            limits.max_fields
        ))
        .at(at)]);
    }
    check_variables(variables, limits).map_err(|e| vec![e])?;
    let vars = match JsonValue::from(variables.clone()) {
        JsonValue::Object(m) => m,
        JsonValue::Null => JsonMap::new(),
        _ => return Err(vec![GqlError::input("variables must be a JSON object")]),
    };
    let coerced = coerce_variable_values(&schema.schema, op, &vars).map_err(|e| {
        vec![GqlError::input(e.message().to_string()).at(location(e.location(), &d.sources))]
    })?;
    Ok((op, coerced))
}

/// Size and nesting of the variables, walked without recursion before anything reads them.
pub fn check_variables(v: &Value, limits: &Limits) -> Result<(), GqlError> {
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    let mut count = 0usize;
    while let Some((v, depth)) = stack.pop() {
        count += 1;
        if count > limits.max_variable_values {
            return Err(GqlError::limit(format!(
                "the variables hold more than {} values (udm.graphql_max_variable_values)",
                limits.max_variable_values
            )));
        }
        if depth > limits.max_variable_depth {
            return Err(GqlError::limit(format!(
                "the variables nest deeper than {} levels",
                limits.max_variable_depth
            )));
        }
        match v {
            Value::Array(items) => {
                if items.len() > limits.max_list_items {
                    return Err(GqlError::limit(format!(
                        "a list in the variables has {} items; udm.graphql_max_list_items allows {}",
                        items.len(),
                        limits.max_list_items
                    )));
                }
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(m) => stack.extend(m.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}
