//! Templates: named sets of entity definitions a tenant installs in one call
//! (`udm_install_template('roadmap')`). A template is plain udm definitions (fields, rules,
//! indexes, access and lock scopes), so everything it installs can be changed afterwards like
//! any other entity, and its rules hold for plain SQL as for udm functions.

use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::printable;
use serde_json::{json, Value};

/// One step of installing a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `udm_define_entity(slug, definition)`.
    Define {
        entity: &'static str,
        definition: Value,
    },
    /// `udm_add_rule(entity, rule)`: rules that read an entity defined after this one.
    AddRule { entity: &'static str, rule: Value },
}

pub const TEMPLATES: &[&str] = &["roadmap"];

/// The steps of the named template.
pub fn template(name: &str) -> Result<Vec<Step>> {
    match name {
        "roadmap" => Ok(roadmap()),
        other => Err(UdmError::new(
            SqlState::UndefinedObject,
            format!("template \"{}\" does not exist", printable(other)),
        )
        .hint(format!(
            "templates are {}",
            name_list(TEMPLATES.iter().copied())
        ))),
    }
}

/// Time values a product's x_position may take in time mode: a year, a month, a day, a quarter
/// or a half (`2027`, `2027-04`, `2027-04-15`, `2027-Q2`, `2027-H1`).
pub const TIME_VALUE_PATTERN: &str =
    "^[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?|-Q[1-4]|-H[12])?$";

/// The product roadmap of seed 003: roadmap, phase, product and dashboard_link. Users are udm's
/// global users (`user` fields), permissions are relation tuples on roadmaps (`udm_grant`: one
/// level per user and roadmap, granted by an admin of it, never above the granter's level), and
/// the write lock is udm's generic lock with the roadmap as scope.
fn roadmap() -> Vec<Step> {
    let len = |field: &str, min: u32, max: u32| {
        json!({
            "min_length": format!("{field} minimum length {min} characters"),
            "max_length": format!("{field} maximum length {max} characters"),
        })
    };
    vec![
        Step::Define {
            entity: "roadmap",
            definition: json!({
                "label": "Roadmap",
                "description": "An independent roadmap with its axes; its owner is implicitly admin",
                "fields": [
                    {"name": "name", "type": "text", "required": true, "min_length": 3, "max_length": 255,
                     "messages": len("name", 3, 255)},
                    {"name": "description", "type": "long_text"},
                    {"name": "x_axis_mode", "type": "select", "values": ["time", "phase"], "default": "time",
                     "required": true},
                    {"name": "y_axis_type", "type": "select", "values": ["category", "investment", "productType"],
                     "default": "category", "required": true},
                    {"name": "y_axis_values", "type": "array", "items": "text", "required": true, "min_items": 1, "max_items": 15,
                     "unique_items": true,
                     "messages": {
                        "min_items": "yAxisValues must be non-empty array (at least 1 value)",
                        "max_items": "yAxisValues maximum 15 values",
                        "unique_items": "Each value in yAxisValues must be unique within array"}},
                    {"name": "owner_id", "type": "user", "on_delete": "cascade"}
                ],
                "access": {"scope": "self", "owner": "owner_id"},
                "lock": "self"
            }),
        },
        Step::Define {
            entity: "phase",
            definition: json!({
                "label": "Phase",
                "description": "A named phase of a roadmap's x axis in phase mode",
                "fields": [
                    {"name": "roadmap_id", "type": "relation", "target": "roadmap", "required": true,
                     "on_delete": "cascade"},
                    {"name": "name", "type": "text", "required": true, "min_length": 2, "max_length": 100,
                     "messages": len("name", 2, 100)},
                    {"name": "sort_order", "type": "integer", "required": true, "min": 0,
                     "messages": {"min": "order must be >= 0"}},
                    {"name": "color", "type": "color",
                     "messages": {"format": "color must be valid hex format #RRGGBB if provided"}}
                ],
                "indexes": [
                    {"name": "phase_name_per_roadmap", "fields": ["roadmap_id", "name"], "unique": true},
                    {"name": "phase_order_per_roadmap", "fields": ["roadmap_id", "sort_order"], "unique": true}
                ],
                "access": {"scope": "roadmap_id"},
                "lock": {"scope": "roadmap_id", "required": true}
            }),
        },
        Step::Define {
            entity: "product",
            definition: json!({
                "label": "Product",
                "description": "A physical product placed on a roadmap",
                "fields": [
                    {"name": "codename", "type": "text", "required": true, "min_length": 2, "max_length": 100,
                     "messages": len("codename", 2, 100)},
                    {"name": "part_number", "type": "text", "required": true, "unique": true,
                     "min_length": 3, "max_length": 100,
                     "messages": {
                        "min_length": "partNumber minimum length 3 characters",
                        "max_length": "partNumber maximum length 100 characters",
                        "unique": "partNumber must be unique globally"}},
                    {"name": "description", "type": "long_text", "required": true, "min_length": 10,
                     "messages": {"min_length": "description minimum length 10 characters"}},
                    {"name": "sample_date", "type": "date", "required": true},
                    {"name": "release_date", "type": "date", "required": true},
                    {"name": "roadmap_id", "type": "relation", "target": "roadmap", "required": true,
                     "on_delete": "cascade"},
                    {"name": "x_position", "type": "text", "required": true, "max_length": 50},
                    {"name": "y_position", "type": "text", "required": true, "max_length": 100},
                    {"name": "metadata_links", "type": "json", "default": []}
                ],
                "rules": [
                    {"name": "sample_before_release", "check": "sample_date <= release_date",
                     "message": "sampleDate must be <= releaseDate"},
                    {"name": "y_position_in_axis", "check": "y_position in roadmap_id.y_axis_values",
                     "message": "yPosition must be one of values in parent Roadmap.yAxisValues"},
                    {"name": "x_position_valid",
                     "check": format!(
                        "(roadmap_id.x_axis_mode = 'time' and x_position matches '{TIME_VALUE_PATTERN}') \
                         or (roadmap_id.x_axis_mode = 'phase' and x_position in roadmap_id.phase[].name)"),
                     "message": "xPosition must match valid time value or phase name from parent roadmap"}
                ],
                "indexes": [
                    {"name": "product_grid_cell", "fields": ["roadmap_id", "x_position", "y_position"]}
                ],
                "access": {"scope": "roadmap_id"},
                "lock": {"scope": "roadmap_id", "required": true}
            }),
        },
        Step::Define {
            entity: "dashboard_link",
            definition: json!({
                "label": "Dashboard link",
                "description": "A link from a product to an external dashboard",
                "fields": [
                    {"name": "product_id", "type": "relation", "target": "product", "required": true,
                     "on_delete": "cascade"},
                    {"name": "dashboard_type", "type": "select", "values": ["sales", "inventory", "engineering"],
                     "required": true,
                     "messages": {"values": "dashboardType must be from allowed list (sales, inventory, engineering)"}},
                    {"name": "dashboard_id", "type": "text", "required": true, "max_length": 255},
                    {"name": "label", "type": "text", "required": true, "min_length": 3, "max_length": 100,
                     "messages": {"min_length": "label minimum length 3 characters"}},
                    {"name": "context_params", "type": "json"}
                ],
                "access": {"scope": "product_id"}
            }),
        },
        Step::AddRule {
            entity: "roadmap",
            rule: json!({"name": "at_most_10_phases", "check": "length(phase[]) <= 10",
                         "message": "Maximum 10 phases per roadmap"}),
        },
    ]
}

/// The entities a template defines, in order.
pub fn entities(steps: &[Step]) -> Vec<&'static str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Define { entity, .. } => Some(*entity),
            Step::AddRule { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{parse_rule, EntityDef, Source};
    use crate::query::path::tests::TestModel;
    use std::collections::BTreeMap;

    #[test]
    fn every_roadmap_definition_parses_and_every_rule_compiles_in_order() {
        let steps = template("roadmap").unwrap();
        let mut defs = TestModel(BTreeMap::new());
        for s in &steps {
            match s {
                Step::Define { entity, definition } => {
                    let d = EntityDef::parse(entity, definition, Source::Caller)
                        .unwrap_or_else(|e| panic!("{entity}: {}", e.message));
                    for r in &d.rules {
                        crate::related_rules::compile(&defs, &d, &r.check)
                            .map(|_| ())
                            .or_else(|e| {
                                // a rule over the entity being defined sees itself too
                                let mut with = TestModel(defs.0.clone());
                                with.0.insert(d.slug.clone(), d.clone());
                                crate::related_rules::compile(&with, &d, &r.check)
                                    .map(|_| ())
                                    .map_err(|_| e)
                            })
                            .unwrap_or_else(|e| panic!("{entity}.{}: {}", r.name, e.message));
                    }
                    defs.0.insert(entity.to_string(), d);
                }
                Step::AddRule { entity, rule } => {
                    let r = parse_rule(rule).unwrap();
                    let d = defs.0[*entity].clone();
                    let c = crate::related_rules::compile(&defs, &d, &r.check).unwrap();
                    assert!(!c.chains.is_empty(), "{} reads related records", r.name);
                }
            }
        }
        assert_eq!(
            entities(&steps),
            vec!["roadmap", "phase", "product", "dashboard_link"]
        );
    }

    #[test]
    fn unknown_templates_name_the_known_ones() {
        let e = template("crm").unwrap_err();
        assert_eq!(e.message, "template \"crm\" does not exist");
        assert!(e.hint.unwrap().contains("roadmap"));
    }
}
