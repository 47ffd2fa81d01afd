//! Subscriptions: `subscription { productChanged(actions, filter) { … } }` is validated and
//! planned; a server delivers it. For each change event (from `udm_events`, read as the
//! subscriber), [`SubscriptionPlan`] says whether the subscriber wants it (entity, action,
//! the filter on the record image: udm's `query::image_condition`, the evaluation
//! `udm_subscribe` uses) and gives the statement that reads `record { … }` as the subscriber
//! sees it now (null when gone or hidden), then the payload.

use super::builder::{Sels, R};
use super::error::{GqlError, PathSeg};
use super::names::camel;
use super::plan::{Planning, Statement};
use super::prepare::{system_name, Planner};
use super::schema::{FieldKind, Out};
use super::transpile::Sql;
use crate::query::{bind, image_condition, path::Model};
use apollo_compiler::executable::Field;
use apollo_compiler::Node;
use serde_json::{json, Map, Value};

/// A change event of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: i64,
    pub entity: String,
    pub id: String,
    /// INSERT, UPDATE, DELETE or ROLLBACK.
    pub action: String,
    pub version: Option<i64>,
    /// udm field names the change wrote.
    pub changed_fields: Vec<String>,
    /// The image before the change (udm field names as keys), as the subscriber may read it.
    pub old: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum EventField {
    EventId,
    Action,
    Id,
    Version,
    ChangedFields,
    Record,
    Old(Vec<(String, String)>),
    Typename(String),
}

/// What a subscription needs per event.
#[derive(Debug, Clone)]
pub struct SubscriptionPlan {
    /// The response key of the root field.
    pub key: String,
    pub entity: String,
    /// Actions subscribed to (empty: all).
    pub actions: Vec<String>,
    filter: Option<Value>,
    record: Option<Sels>,
    fields: Vec<(String, EventField)>,
    /// GraphQL names of the entity's fields, by udm name (for `changedFields` and `old`).
    names: Map<String, Value>,
    /// GraphQL names of the fields given as text to be exact (`Decimal`, `BigInt`): `old`
    /// gives them as the record does.
    exact: std::collections::BTreeSet<String>,
}

pub(crate) fn plan(p: &mut Planner, entity: &str, fs: &[&Node<Field>]) -> R<SubscriptionPlan> {
    let b = p.b;
    let f = fs[0];
    let path = vec![PathSeg::Key(p.key.clone())];
    let actions = b
        .arg(f, "actions")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let filter = b
        .arg(f, "filter")
        .map(|v| b.filter(entity, &v, f, &path))
        .transpose()?;
    let info = b.info(entity)?;
    let mut record = None;
    let mut fields = Vec::new();
    for (k, sub) in b.sub_own(fs) {
        let ef = match sub[0].name.as_str() {
            "eventId" => EventField::EventId,
            "action" => EventField::Action,
            "id" => EventField::Id,
            "version" => EventField::Version,
            "changedFields" => EventField::ChangedFields,
            "record" => {
                record = Some(b.node(entity, "", &b.sub_own(&sub), &path)?);
                EventField::Record
            }
            "old" => EventField::Old(b.plain(&sub)),
            _ => EventField::Typename(format!("{}Change", info.type_name)),
        };
        fields.push((k, ef));
    }
    let mut names = Map::new();
    let mut exact = std::collections::BTreeSet::new();
    for (n, kind) in &info.fields {
        if matches!(kind, FieldKind::Scalar { out: Out::Text, .. }) {
            exact.insert(n.clone());
        }
        if !matches!(
            kind,
            FieldKind::ToOne { .. }
                | FieldKind::Reverse { .. }
                | FieldKind::ReverseManyToMany { .. }
                | FieldKind::Reference { .. }
                | FieldKind::Password { .. }
        ) {
            names.insert(kind.slug().to_string(), json!(n));
        }
    }
    Ok(SubscriptionPlan {
        key: p.key.clone(),
        entity: entity.to_string(),
        actions: actions
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        filter,
        record,
        fields,
        names,
        exact,
    })
}

impl SubscriptionPlan {
    /// Whether the subscription is about this entity and action.
    pub fn wants(&self, entity: &str, action: &str) -> bool {
        self.entity == entity
            && (self.actions.is_empty() || self.actions.iter().any(|a| a == action))
    }

    /// Whether the payload selects `old` (the image before the change): the surface reads it
    /// only then.
    pub fn reads_old(&self) -> bool {
        self.fields
            .iter()
            .any(|(_, f)| matches!(f, EventField::Old(_)))
    }

    /// The statement telling whether a record image matches the filter (None: no filter).
    /// `image` writes the SQL of the image from the placeholder of its parameter (e.g.
    /// `|p| format!("(SELECT data FROM acme._udm_audit WHERE audit_id = {p}::bigint)")`), and
    /// `image_value` is that parameter's value.
    pub fn condition(
        &self,
        model: &dyn Model,
        image: &dyn Fn(&str) -> String,
        image_value: Option<String>,
    ) -> Result<Option<Statement>, GqlError> {
        let Some(filter) = &self.filter else {
            return Ok(None);
        };
        let t = image_condition(model, &self.entity, filter, image)?;
        let mut params = bind(&json!({ "filters": filter }), &t)?;
        params.push(image_value);
        Ok(Some(Statement {
            sql: t.sql.into(),
            params,
            planning: Planning::Cached,
            rows: None,
        }))
    }

    /// The statement reading `record { … }` of the event's record (None when not selected).
    pub fn record_statement(
        &self,
        model: &dyn Model,
        id: &str,
    ) -> Result<Option<Statement>, GqlError> {
        let Some(sels) = &self.record else {
            return Ok(None);
        };
        let mut sql = Sql::new(model);
        let e = sql.record(&self.entity, sels, None, Some(json!({"id": {"eq": id}})))?;
        Ok(Some(Statement {
            sql: format!("SELECT {e}").into(),
            params: sql.values,
            planning: Planning::Cached,
            rows: None,
        }))
    }

    fn name(&self, slug: &str) -> Value {
        self.names.get(slug).cloned().unwrap_or_else(|| {
            json!(system_name(slug)
                .map(str::to_string)
                .unwrap_or_else(|| camel(slug)))
        })
    }

    /// The payload (`data`) of an event for this subscriber; `record`: what
    /// [`Self::record_statement`] returned.
    pub fn payload(&self, event: &Event, record: Option<Value>) -> Value {
        let mut o = Map::new();
        for (k, f) in &self.fields {
            let v = match f {
                EventField::EventId => json!(event.event_id.to_string()),
                EventField::Action => json!(event.action),
                EventField::Id => json!(event.id),
                EventField::Version => json!(event.version),
                EventField::ChangedFields => {
                    Value::Array(event.changed_fields.iter().map(|s| self.name(s)).collect())
                }
                EventField::Record => record.clone().unwrap_or(Value::Null),
                EventField::Old(sel) => match &event.old {
                    Some(Value::Object(img)) => {
                        let by_name: Map<String, Value> = img
                            .iter()
                            .map(|(s, v)| {
                                (
                                    self.name(s).as_str().unwrap_or_default().to_string(),
                                    v.clone(),
                                )
                            })
                            .collect();
                        Value::Object(
                            sel.iter()
                                .map(|(k, n)| {
                                    let v = by_name.get(n).cloned().unwrap_or(Value::Null);
                                    let v = if self.exact.contains(n) {
                                        as_text(v)
                                    } else {
                                        v
                                    };
                                    (k.clone(), v)
                                })
                                .collect(),
                        )
                    }
                    _ => Value::Null,
                },
                EventField::Typename(t) => json!(t),
            };
            o.insert(k.clone(), v);
        }
        json!({ self.key.clone(): Value::Object(o) })
    }
}

/// Numbers (and lists of them) as text, as `Decimal` and `BigInt` values are given.
fn as_text(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.into_iter().map(as_text).collect()),
        other => other,
    }
}
