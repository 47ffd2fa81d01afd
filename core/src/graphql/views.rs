//! udm's views (kanban, tree, gantt, dropdown, breadcrumb) as root fields: the view spec is
//! built from the arguments and compiled by `query::views`; its result (records keyed by udm
//! paths) is reshaped in Rust for the selection.

use super::builder::{Sel, Sels};
use super::schema::Out;
use serde_json::{Map, Value};

/// How a JSON value becomes the selection's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// The value as it is.
    Same,
    /// A constant (`__typename`).
    Const(Value),
    /// An object: (response key, key in the input, shape).
    Object(Vec<(String, String, Shape)>),
    /// Each item of an array.
    List(Box<Shape>),
    /// A record keyed by udm paths, for a record selection.
    Row(Sels),
    /// One key of the input, reshaped.
    Pick(String, Box<Shape>),
}

/// The shape of a view's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewShape(pub(crate) Shape);

impl ViewShape {
    pub(crate) fn apply(&self, v: &Value) -> Value {
        self.0.apply(v)
    }
}

impl Shape {
    fn apply(&self, v: &Value) -> Value {
        match self {
            Shape::Same => v.clone(),
            Shape::Const(c) => c.clone(),
            Shape::List(item) => match v {
                Value::Array(items) => Value::Array(items.iter().map(|i| item.apply(i)).collect()),
                _ => Value::Null,
            },
            Shape::Object(fields) => {
                if v.is_null() {
                    return Value::Null;
                }
                let o: Map<String, Value> = fields
                    .iter()
                    .map(|(k, from, s)| (k.clone(), s.apply(v.get(from).unwrap_or(&Value::Null))))
                    .collect();
                Value::Object(o)
            }
            Shape::Row(sels) => row(sels, v),
            Shape::Pick(k, s) => s.apply(v.get(k).unwrap_or(&Value::Null)),
        }
    }
}

fn text(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(text).collect()),
        other => other.clone(),
    }
}

/// A record selection from a row keyed by udm paths (`name`, `category_id.name`).
fn row(sels: &Sels, r: &Value) -> Value {
    if r.is_null() {
        return Value::Null;
    }
    let mut o = Map::new();
    for (k, s) in sels {
        let v = match s {
            Sel::Leaf { path, out, .. } => {
                let v = r.get(path).cloned().unwrap_or(Value::Null);
                if *out == Out::Text {
                    text(&v)
                } else {
                    v
                }
            }
            Sel::Typename(t) => Value::String(t.clone()),
            Sel::ToOne { path, sels } => match r.get(path) {
                None | Some(Value::Null) => Value::Null,
                Some(_) => row(sels, r),
            },
            // refused by the builder for views
            Sel::Conn(_) | Sel::Union { .. } | Sel::Ref { .. } => Value::Null,
        };
        o.insert(k.clone(), v);
    }
    Value::Object(o)
}

/// Whether a selection can be read from a view's rows (leaves and to-one objects only).
pub(crate) fn flat(sels: &Sels) -> bool {
    sels.iter().all(|(_, s)| match s {
        Sel::Leaf { .. } | Sel::Typename(_) => true,
        Sel::ToOne { sels, .. } => flat(sels),
        _ => false,
    })
}
