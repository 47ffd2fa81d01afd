//! A small programmatic builder of apollo-compiler schema structures: types are described with
//! type references written as in SDL (`"[String!]!"`) and collected in definition order. No SDL
//! text is parsed (parsing the SDL of 50 entities takes ~20 ms; constructing it ~2 ms).

use crate::error::{Result, UdmError};
use apollo_compiler::ast::Type;
use apollo_compiler::schema::{
    Component, ComponentName, EnumType, EnumValueDefinition, ExtendedType, FieldDefinition,
    InputObjectType, InputValueDefinition, ObjectType, ScalarType, UnionType,
};
use apollo_compiler::{Name, Node, Schema};
use std::collections::HashSet;

/// A GraphQL name; the schema builder only makes names from slugs and fixed words, so an
/// invalid one is a bug in udm.
pub fn name(s: &str) -> Result<Name> {
    Name::new(s).map_err(|_| UdmError::internal(format!("udm made an invalid GraphQL name {s:?}")))
}

/// Reads a type reference written as in SDL: `Int`, `Int!`, `[Int!]`, `[[Int]!]!`.
pub fn type_ref(t: &str) -> Result<Type> {
    let (inner, non_null) = match t.strip_suffix('!') {
        Some(i) => (i, true),
        None => (t, false),
    };
    if let Some(item) = inner.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
        let item = Box::new(type_ref(item)?);
        return Ok(if non_null {
            Type::NonNullList(item)
        } else {
            Type::List(item)
        });
    }
    let n = name(inner)?;
    Ok(if non_null {
        Type::NonNullNamed(n)
    } else {
        Type::Named(n)
    })
}

fn description(d: Option<&str>) -> Option<Node<str>> {
    d.map(Node::new_str)
}

/// An argument or input field.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub ty: String,
    pub description: Option<String>,
}

impl Input {
    pub fn new(name: &str, ty: &str) -> Input {
        Input {
            name: name.into(),
            ty: ty.into(),
            description: None,
        }
    }

    fn definition(&self) -> Result<InputValueDefinition> {
        Ok(InputValueDefinition {
            description: description(self.description.as_deref()),
            name: name(&self.name)?,
            ty: Node::new(type_ref(&self.ty)?),
            default_value: None,
            directives: Default::default(),
        })
    }
}

/// A field of an object type.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: String,
    pub args: Vec<Input>,
    pub description: Option<String>,
}

/// The fields of an object or input type under construction; a name is given once (the first
/// claim wins, [`Fields::has`] tells whether it is taken).
#[derive(Debug, Clone)]
pub struct Fields<T> {
    items: Vec<T>,
    names: HashSet<String>,
}

impl<T> Default for Fields<T> {
    fn default() -> Self {
        Fields {
            items: Vec::new(),
            names: HashSet::new(),
        }
    }
}

impl<T> Fields<T> {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items, in the order given.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }

    fn push(&mut self, n: &str, item: T) -> bool {
        if !self.names.insert(n.to_string()) {
            return false;
        }
        self.items.push(item);
        true
    }
}

impl Fields<Field> {
    /// Adds a field; false when the name is taken.
    pub fn add(&mut self, n: &str, ty: &str, args: Vec<Input>, desc: Option<&str>) -> bool {
        self.push(
            n,
            Field {
                name: n.into(),
                ty: ty.into(),
                args,
                description: desc.map(str::to_string),
            },
        )
    }
}

impl Fields<Input> {
    /// Adds an input field; false when the name is taken.
    pub fn add(&mut self, n: &str, ty: &str) -> bool {
        self.push(n, Input::new(n, ty))
    }

    /// Adds an input field with a description.
    pub fn add_described(&mut self, n: &str, ty: &str, desc: &str) -> bool {
        let mut i = Input::new(n, ty);
        i.description = Some(desc.into());
        self.push(n, i)
    }
}

/// The schema being built, with the names of its types.
pub struct SchemaBuilder {
    schema: Schema,
    types: HashSet<String>,
}

impl Default for SchemaBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SchemaBuilder {
    pub fn new() -> Self {
        SchemaBuilder {
            schema: Schema::new(),
            types: HashSet::new(),
        }
    }

    /// Whether a type of that name exists.
    pub fn has(&self, n: &str) -> bool {
        self.types.contains(n)
    }

    fn insert(&mut self, n: &str, t: ExtendedType) -> Result<()> {
        if !self.types.insert(n.to_string()) {
            return Err(UdmError::internal(format!(
                "udm defined the GraphQL type {n} twice"
            )));
        }
        self.schema.types.insert(name(n)?, t);
        Ok(())
    }

    pub fn scalar(&mut self, n: &str, desc: &str) -> Result<()> {
        let t = ScalarType {
            description: description(Some(desc)),
            name: name(n)?,
            directives: Default::default(),
        };
        self.insert(n, ExtendedType::Scalar(Node::new(t)))
    }

    pub fn enumeration(&mut self, n: &str, desc: Option<&str>, values: &[String]) -> Result<()> {
        let mut t = EnumType {
            description: description(desc),
            name: name(n)?,
            directives: Default::default(),
            values: Default::default(),
        };
        for v in values {
            let def = EnumValueDefinition {
                description: None,
                value: name(v)?,
                directives: Default::default(),
            };
            t.values.insert(name(v)?, Component::new(def));
        }
        self.insert(n, ExtendedType::Enum(Node::new(t)))
    }

    pub fn union(&mut self, n: &str, desc: Option<&str>, members: &[String]) -> Result<()> {
        let mut t = UnionType {
            description: description(desc),
            name: name(n)?,
            directives: Default::default(),
            members: Default::default(),
        };
        for m in members {
            t.members.insert(ComponentName::from(name(m)?));
        }
        self.insert(n, ExtendedType::Union(Node::new(t)))
    }

    pub fn object(&mut self, n: &str, desc: Option<&str>, fields: &Fields<Field>) -> Result<()> {
        let mut t = ObjectType {
            description: description(desc),
            name: name(n)?,
            implements_interfaces: Default::default(),
            directives: Default::default(),
            fields: Default::default(),
        };
        for f in &fields.items {
            let mut arguments = Vec::with_capacity(f.args.len());
            for a in &f.args {
                arguments.push(Node::new(a.definition()?));
            }
            let def = FieldDefinition {
                description: description(f.description.as_deref()),
                name: name(&f.name)?,
                arguments,
                ty: type_ref(&f.ty)?,
                directives: Default::default(),
            };
            t.fields.insert(name(&f.name)?, Component::new(def));
        }
        self.insert(n, ExtendedType::Object(Node::new(t)))
    }

    pub fn input(&mut self, n: &str, desc: Option<&str>, fields: &Fields<Input>) -> Result<()> {
        let mut t = InputObjectType {
            description: description(desc),
            name: name(n)?,
            directives: Default::default(),
            fields: Default::default(),
        };
        for f in &fields.items {
            t.fields
                .insert(name(&f.name)?, Component::new(f.definition()?));
        }
        self.insert(n, ExtendedType::InputObject(Node::new(t)))
    }

    /// The schema with its root operation types, not yet validated.
    pub fn finish(mut self, mutation: bool, subscription: bool) -> Result<Schema> {
        let sd = self.schema.schema_definition.make_mut();
        sd.query = Some(ComponentName::from(name("Query")?));
        sd.mutation = mutation
            .then(|| name("Mutation").map(ComponentName::from))
            .transpose()?;
        sd.subscription = subscription
            .then(|| name("Subscription").map(ComponentName::from))
            .transpose()?;
        Ok(self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_refs() {
        assert_eq!(type_ref("[String!]!").unwrap().to_string(), "[String!]!");
        assert_eq!(type_ref("Int").unwrap().to_string(), "Int");
        assert_eq!(type_ref("[[Int]!]").unwrap().to_string(), "[[Int]!]");
        assert!(type_ref("[Int").is_err());
    }
}
