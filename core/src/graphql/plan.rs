//! Execution plans: what the surface runs for each root field, as a small program of
//! statements. The surface drives it with [`FieldPlan::next`]: run the statement it returns,
//! pass the first column of its first row back (as JSON; `None` when it returned no row), or the
//! value built from its rows when the statement has [`Statement::rows`], until it returns the
//! field's value. Statements take their values as text parameters (`$n::type`
//! casts are in the SQL), so the surface can prepare them by their SQL text.

use super::error::{GqlError, Location, PathSeg};
use crate::error::SqlState;
use crate::values::{to_text, PType};
use serde_json::{Map, Value};

/// A statement to run: one row, whose first column is the result (jsonb, or a value the
/// surface turns into JSON); or, with `rows`, rows the surface turns into the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: std::rc::Rc<str>,
    /// `$1`, `$2`, … as text (None is NULL).
    pub params: Vec<Option<String>>,
    pub planning: Planning,
    /// The statement returns rows: the field's value is built from them by this shape.
    pub rows: Option<std::rc::Rc<RowsShape>>,
}

/// How the rows of a field's statement become the field's value, for selections that need
/// nothing of SQL but the page's columns (leaves and to-one objects): the surface writes the
/// JSON itself instead of the statement building it with `jsonb_build_object` and `jsonb_agg`
/// (which cost as much as reading the page). Each row's columns hold the values as
/// `jsonb_build_object` would have been given them (a value converts as `to_jsonb` converts it).
#[derive(Debug, Clone, PartialEq)]
pub struct RowsShape {
    /// How many columns a row has.
    pub columns: usize,
    /// The object each row becomes.
    pub node: Vec<(String, RowPart)>,
    pub wrap: Wrap,
    /// A record by id whose columns are all plain columns of its table: what the surface may
    /// read by primary key without running the statement, where that is provably the same.
    pub point: Option<PointRead>,
}

/// The row's columns as columns of one table, for a read by primary key.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRead {
    pub entity: String,
    /// Each row column's table column, and whether it is its text (`::text`) rather than the
    /// value itself.
    pub columns: Vec<(String, bool)>,
    /// The statement parameter holding the id.
    pub id_param: usize,
}

/// A key of a row's object.
#[derive(Debug, Clone, PartialEq)]
pub enum RowPart {
    /// The value of a column.
    Column(usize),
    /// A string (`__typename`).
    Const(String),
    /// A to-one object: null when column `present` is NULL (no related record).
    Object {
        present: usize,
        fields: Vec<(String, RowPart)>,
    },
}

/// What the rows' objects are put in.
#[derive(Debug, Clone, PartialEq)]
pub enum Wrap {
    /// One record by its id: the first row's object, or null when there is no row.
    One,
    /// A connection: an object whose keys are, in selection order, the array of the rows'
    /// objects (None) or a string (Some: `__typename`). With `reverse` the rows came in the
    /// reverse of the order asked for (a page before a cursor, or the last ones).
    Connection {
        keys: Vec<(String, Option<String>)>,
        reverse: bool,
    },
}

impl Planning {
    /// `PerCall` for statements that visit every matching row, else `Cached`.
    pub fn per_call(per_call: bool) -> Planning {
        if per_call {
            Planning::PerCall
        } else {
            Planning::Cached
        }
    }
}

/// How a statement's plan is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Planning {
    /// Kept, PostgreSQL choosing between plans for the values and one for any values.
    Cached,
    /// For each call's values (it visits every matching row: counts, aggregates).
    PerCall,
    /// Once for any values (a keyset page, whose index order decides the plan: left to choose,
    /// PostgreSQL would plan it again on every call, its generic estimate of "after the cursor"
    /// being poor).
    Generic,
}

/// What to do next for a root field.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Run(Statement),
    /// The field's value in the response.
    Done(Value),
}

/// A parameter of a step: a value, or the ids an earlier step returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Text(Option<String>),
    /// The JSON array of ids step `i` returned, as `uuid[]` text.
    Ids(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Run {
        sql: std::rc::Rc<str>,
        args: Vec<Arg>,
        planning: Planning,
    },
    /// Step `of` returned more than `n` ids: refused (54000), before anything changed.
    AtMost { of: usize, n: i64 },
    /// Step `of` returned the record's `_version`: it must be `expected` (40001), and the
    /// record must exist (P0002).
    Version { of: usize, expected: i64 },
}

/// How the field's value is made from the results of its steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Finish {
    /// The result of the last step.
    Last,
    /// The result of step `i`.
    Step(usize),
    /// A constant (`__typename`, introspection).
    Const(Value),
    /// `{affectedCount, records}`: a count (known, or the length of step `count`'s ids) and
    /// the records step `records` read.
    Mutation {
        count: Count,
        records: Option<usize>,
        fields: Vec<(String, MutationField)>,
    },
    /// A udm view result reshaped for the selection (views return records keyed by udm path).
    View(super::views::ViewShape),
    /// The value the surface built from the last step's rows by this shape (the step's
    /// [`Statement::rows`]).
    Rows(std::rc::Rc<RowsShape>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Count {
    Known(usize),
    IdsOf(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MutationField {
    AffectedCount,
    Records,
    Typename(String),
}

/// The plan of one root field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPlan {
    /// The response key (alias or name).
    pub key: String,
    /// Where the field is in the document, for errors the surface reports at it.
    pub location: Option<Location>,
    pub(crate) ops: Vec<Op>,
    pub(crate) finish: Finish,
    results: Vec<Value>,
    pc: usize,
}

impl FieldPlan {
    pub(crate) fn new(key: &str, location: Option<Location>, ops: Vec<Op>, finish: Finish) -> Self {
        FieldPlan {
            key: key.to_string(),
            location,
            ops,
            finish,
            results: Vec::new(),
            pc: 0,
        }
    }

    /// A field whose value is known without SQL.
    pub(crate) fn constant(key: &str, v: Value) -> Self {
        Self::new(key, None, vec![], Finish::Const(v))
    }

    /// Where the text parameters of `self` and `other` differ, as (step, parameter) positions,
    /// when the plans are otherwise the same (statements, checks, the result's shaping): two
    /// plans of one document whose variables differ only in values that became parameters.
    /// None when they differ anywhere else, or either has run.
    pub fn param_differences(&self, other: &FieldPlan) -> Option<Vec<(usize, usize)>> {
        if self.key != other.key
            || self.location != other.location
            || self.finish != other.finish
            || self.pc != 0
            || other.pc != 0
            || !self.results.is_empty()
            || !other.results.is_empty()
            || self.ops.len() != other.ops.len()
        {
            return None;
        }
        let mut out = Vec::new();
        for (i, (a, b)) in self.ops.iter().zip(&other.ops).enumerate() {
            match (a, b) {
                (
                    Op::Run {
                        sql: sa,
                        args: aa,
                        planning: pa,
                    },
                    Op::Run {
                        sql: sb,
                        args: ab,
                        planning: pb,
                    },
                ) => {
                    if sa != sb || pa != pb || aa.len() != ab.len() {
                        return None;
                    }
                    for (j, (x, y)) in aa.iter().zip(ab).enumerate() {
                        match (x, y) {
                            (Arg::Text(x), Arg::Text(y)) => {
                                if x != y {
                                    out.push((i, j));
                                }
                            }
                            (x, y) if x == y => {}
                            _ => return None,
                        }
                    }
                }
                (a, b) if a == b => {}
                _ => return None,
            }
        }
        Some(out)
    }

    /// The text parameter at a position [`Self::param_differences`] gave.
    pub fn param(&self, step: usize, i: usize) -> Option<&Option<String>> {
        match self.ops.get(step)? {
            Op::Run { args, .. } => match args.get(i)? {
                Arg::Text(t) => Some(t),
                Arg::Ids(_) => None,
            },
            _ => None,
        }
    }

    /// Replaces the text parameter at a position (false: there is none there).
    pub fn set_param(&mut self, step: usize, i: usize, v: Option<String>) -> bool {
        if let Some(Op::Run { args, .. }) = self.ops.get_mut(step) {
            if let Some(a @ Arg::Text(_)) = args.get_mut(i) {
                *a = Arg::Text(v);
                return true;
            }
        }
        false
    }

    /// The statements of the plan so far as text (for `EXPLAIN`-like tooling and tests).
    pub fn sql(&self) -> Vec<&str> {
        self.ops
            .iter()
            .filter_map(|o| match o {
                Op::Run { sql, .. } => Some(&**sql),
                _ => None,
            })
            .collect()
    }

    /// An error at this field (its location and response path).
    pub fn error(&self, e: GqlError) -> GqlError {
        let mut e = e.with_path(&[PathSeg::Key(self.key.clone())]);
        if e.locations.is_empty() {
            e.locations.extend(self.location);
        }
        e
    }

    /// Whether the field's value is exactly what its one statement returns (no step before it,
    /// nothing done to the result): the surface may then keep that result in its binary form.
    pub fn is_single_statement(&self) -> bool {
        self.pc == 0
            && self.ops.len() == 1
            && matches!(self.ops[0], Op::Run { .. })
            && matches!(self.finish, Finish::Last | Finish::Rows(_))
    }

    /// The next statement to run, or the field's value. `last`: the result of the statement
    /// returned before (None on the first call; `Some(Value::Null)` for no row).
    pub fn next(&mut self, last: Option<Value>) -> Result<Next, GqlError> {
        if let Some(v) = last {
            self.results.push(v);
        }
        while self.pc < self.ops.len() {
            let op = self.ops[self.pc].clone();
            self.pc += 1;
            match op {
                Op::Run {
                    sql,
                    args,
                    planning,
                } => {
                    let params = args.iter().map(|a| self.arg(a)).collect::<Result<_, _>>()?;
                    let rows = match &self.finish {
                        Finish::Rows(shape) if self.pc == self.ops.len() => Some(shape.clone()),
                        _ => None,
                    };
                    return Ok(Next::Run(Statement {
                        sql,
                        params,
                        planning,
                        rows,
                    }));
                }
                Op::AtMost { of, n } => {
                    let found = self.ids(of)?.len() as i64;
                    if found > n {
                        return Err(self.error(GqlError::limit(format!(
                            "more than {n} records match (atMost is {n}); nothing was changed"
                        ))));
                    }
                }
                Op::Version { of, expected } => self.check_version(of, expected)?,
            }
        }
        Ok(Next::Done(self.finish()?))
    }

    fn result(&self, i: usize) -> Result<&Value, GqlError> {
        self.results
            .get(i)
            .ok_or_else(|| GqlError::internal(format!("the result of step {i} is missing")))
    }

    fn ids(&self, i: usize) -> Result<Vec<String>, GqlError> {
        Ok(self
            .result(i)?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    fn arg(&self, a: &Arg) -> Result<Option<String>, GqlError> {
        match a {
            Arg::Text(t) => Ok(t.clone()),
            Arg::Ids(i) => {
                let ids: Vec<Value> = self.ids(*i)?.into_iter().map(Value::String).collect();
                Ok(Some(to_text(
                    &Value::Array(ids),
                    &PType::Array(Box::new(PType::Uuid)),
                    "ids",
                )?))
            }
        }
    }

    fn check_version(&self, of: usize, expected: i64) -> Result<(), GqlError> {
        match self.result(of)?.as_i64() {
            None => Err(self.error(GqlError::new(
                super::error::Code::BadUserInput,
                SqlState::NoDataFound,
                "the record does not exist (or is not visible)",
            ))),
            Some(v) if v != expected => Err(self.error(GqlError::new(
                super::error::Code::DatabaseError,
                SqlState::SerializationFailure,
                format!(
                    "the record is at version {v}, not {expected}: it changed since it was read"
                ),
            ))),
            Some(_) => Ok(()),
        }
    }

    fn finish(&self) -> Result<Value, GqlError> {
        Ok(match &self.finish {
            Finish::Last | Finish::Rows(_) => self.results.last().cloned().unwrap_or(Value::Null),
            Finish::Step(i) => self.result(*i)?.clone(),
            Finish::Const(v) => v.clone(),
            Finish::Mutation {
                count,
                records,
                fields,
            } => {
                let n = match count {
                    Count::Known(n) => *n,
                    Count::IdsOf(i) => self.ids(*i)?.len(),
                };
                let recs = match records {
                    Some(i) => self.result(*i)?.clone(),
                    None => Value::Array(vec![]),
                };
                let mut o = Map::new();
                for (k, f) in fields {
                    let v = match f {
                        MutationField::AffectedCount => Value::from(n),
                        MutationField::Records => recs.clone(),
                        MutationField::Typename(t) => Value::String(t.clone()),
                    };
                    o.insert(k.clone(), v);
                }
                Value::Object(o)
            }
            Finish::View(shape) => shape.apply(self.results.last().unwrap_or(&Value::Null)),
        })
    }
}
