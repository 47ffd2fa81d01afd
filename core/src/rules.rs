//! Rule expressions: `sample_date <= release_date`, `status in ('draft', 'active')`,
//! `length(code) >= 2 and (price > 0 or status = 'draft')`.
//!
//! Parsed into an AST, type-checked against the entity's fields, and compiled to a SQL boolean
//! expression with every identifier quoted and every literal passed through `quote_literal`.
//! Rules become CHECK constraints, so plain SQL writes are held to them.

use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{printable, quote_ident, quote_literal};
use crate::types::FieldType;

pub const MAX_RULE_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Path(Vec<String>),
    List(Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    In {
        expr: Box<Expr>,
        set: Box<Expr>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        ci: bool,
        negated: bool,
    },
    Matches {
        expr: Box<Expr>,
        pattern: Box<Expr>,
    },
    Call {
        name: String,
        args: Vec<Expr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    And,
    Or,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    fn sql(self) -> &'static str {
        match self {
            BinOp::And => "AND",
            BinOp::Or => "OR",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }

    fn source(self) -> &'static str {
        match self {
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            other => other.sql(),
        }
    }

    fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

fn syntax(src: &str, at: usize, what: impl std::fmt::Display) -> UdmError {
    UdmError::new(SqlState::SyntaxError, format!("check \"{}\": {what} at character {}", printable(src), at + 1))
        .hint("rules compare fields and values, e.g. \"start_date <= end_date and price >= 0\"; strings go in single quotes")
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((Tok::LParen, start));
                i += 1
            }
            b')' => {
                out.push((Tok::RParen, start));
                i += 1
            }
            b'[' => {
                out.push((Tok::LBracket, start));
                i += 1
            }
            b']' => {
                out.push((Tok::RBracket, start));
                i += 1
            }
            b',' => {
                out.push((Tok::Comma, start));
                i += 1
            }
            b'.' => {
                out.push((Tok::Dot, start));
                i += 1
            }
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    if i >= b.len() {
                        return Err(syntax(src, start, "unterminated string"));
                    }
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            s.push('\'');
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    let ch = src[i..].chars().next().expect("in bounds");
                    s.push(ch);
                    i += ch.len_utf8();
                }
                out.push((Tok::Str(s), start));
            }
            b'0'..=b'9' => {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                out.push((Tok::Number(src[start..i].to_string()), start));
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_string()), start));
            }
            _ => {
                // (bytes: the next character may be any character, not only ASCII)
                let two: &[u8] = if i + 1 < b.len() { &b[i..i + 2] } else { b"" };
                let op: &'static str = match two {
                    b"<=" => "<=",
                    b">=" => ">=",
                    b"!=" => "!=",
                    b"<>" => "!=",
                    b"==" => "=",
                    b"&&" => "and",
                    b"||" => "or",
                    _ => "",
                };
                if !op.is_empty() {
                    out.push((Tok::Op(op), start));
                    i += 2;
                    continue;
                }
                let op: &'static str = match c {
                    b'=' => "=",
                    b'<' => "<",
                    b'>' => ">",
                    b'+' => "+",
                    b'-' => "-",
                    b'*' => "*",
                    b'/' => "/",
                    b'%' => "%",
                    b'!' => "not",
                    _ => {
                        let ch = src[i..].chars().next().expect("in bounds");
                        return Err(syntax(
                            src,
                            start,
                            format!("unexpected character '{}'", ch.escape_default()),
                        ));
                    }
                };
                out.push((Tok::Op(op), start));
                i += 1;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn at(&self) -> usize {
        self.toks
            .get(self.pos)
            .map(|t| t.1)
            .unwrap_or(self.src.len())
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
            || matches!(self.peek(), Some(Tok::Op(o)) if *o == kw)
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.keyword(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<()> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(syntax(self.src, self.at(), format!("expected {what}")))
        }
    }

    /// A path segment `phase[]` or `phase[roadmap_id]` (records pointing here), as one segment.
    fn reverse_suffix(&mut self, seg: String) -> String {
        match (
            self.toks.get(self.pos).map(|t| &t.0),
            self.toks.get(self.pos + 1).map(|t| &t.0),
            self.toks.get(self.pos + 2).map(|t| &t.0),
        ) {
            (Some(Tok::LBracket), Some(Tok::RBracket), _) => {
                self.pos += 2;
                format!("{seg}[]")
            }
            (Some(Tok::LBracket), Some(Tok::Ident(f)), Some(Tok::RBracket)) => {
                let s = format!("{seg}[{f}]");
                self.pos += 3;
                s
            }
            _ => seg,
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_RULE_DEPTH {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!(
                    "check \"{}\" nests deeper than {MAX_RULE_DEPTH} levels",
                    printable(self.src)
                ),
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr> {
        self.enter()?;
        let mut left = self.and()?;
        while self.eat_keyword("or") {
            let right = self.and()?;
            left = Expr::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut left = self.not()?;
        while self.eat_keyword("and") {
            let right = self.not()?;
            left = Expr::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr> {
        if self.eat_keyword("not") {
            self.enter()?;
            let e = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Op("=")) => Some(BinOp::Eq),
            Some(Tok::Op("!=")) => Some(BinOp::Ne),
            Some(Tok::Op("<")) => Some(BinOp::Lt),
            Some(Tok::Op("<=")) => Some(BinOp::Le),
            Some(Tok::Op(">")) => Some(BinOp::Gt),
            Some(Tok::Op(">=")) => Some(BinOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.pos += 1;
            let right = self.sum()?;
            return Ok(Expr::Binary(op, Box::new(left), Box::new(right)));
        }
        if self.eat_keyword("is") {
            let negated = self.eat_keyword("not");
            if !self.eat_keyword("null") {
                return Err(syntax(self.src, self.at(), "expected null after is"));
            }
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let negated = self.eat_keyword("not");
        if self.eat_keyword("in") {
            let set = self.sum()?;
            return Ok(Expr::In {
                expr: Box::new(left),
                set: Box::new(set),
                negated,
            });
        }
        if self.eat_keyword("between") {
            let low = self.sum()?;
            if !self.eat_keyword("and") {
                return Err(syntax(
                    self.src,
                    self.at(),
                    "expected and in between ... and ...",
                ));
            }
            let high = self.sum()?;
            return Ok(Expr::Between {
                expr: Box::new(left),
                low: Box::new(low),
                high: Box::new(high),
                negated,
            });
        }
        for (kw, ci) in [("like", false), ("ilike", true)] {
            if self.eat_keyword(kw) {
                let pattern = self.sum()?;
                return Ok(Expr::Like {
                    expr: Box::new(left),
                    pattern: Box::new(pattern),
                    ci,
                    negated,
                });
            }
        }
        if !negated && self.eat_keyword("matches") {
            let pattern = self.sum()?;
            return Ok(Expr::Matches {
                expr: Box::new(left),
                pattern: Box::new(pattern),
            });
        }
        if negated {
            return Err(syntax(
                self.src,
                self.at(),
                "expected in, between, like or ilike after not",
            ));
        }
        Ok(left)
    }

    fn sum(&mut self) -> Result<Expr> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("+")) => BinOp::Add,
                Some(Tok::Op("-")) => BinOp::Sub,
                _ => break,
            };
            self.pos += 1;
            let right = self.product()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => BinOp::Mul,
                Some(Tok::Op("/")) => BinOp::Div,
                Some(Tok::Op("%")) => BinOp::Mod,
                _ => break,
            };
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr> {
        if self.peek() == Some(&Tok::Op("-")) {
            self.pos += 1;
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Neg(Box::new(e)));
        }
        self.atom()
    }

    fn list(&mut self, close: Tok) -> Result<Vec<Expr>> {
        let mut items = Vec::new();
        if self.peek() == Some(&close) {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(self.expr()?);
            if self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                continue;
            }
            self.expect(
                close.clone(),
                if close == Tok::RParen { "')'" } else { "']'" },
            )?;
            return Ok(items);
        }
    }

    fn atom(&mut self) -> Result<Expr> {
        let at = self.at();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(syntax(self.src, at, "unexpected end of rule"));
        };
        self.pos += 1;
        match tok {
            Tok::Number(n) => Ok(Expr::Number(n)),
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::LParen => {
                self.enter()?;
                let mut items = self.list(Tok::RParen)?;
                self.depth -= 1;
                if items.len() == 1 {
                    Ok(items.remove(0))
                } else {
                    Ok(Expr::List(items))
                }
            }
            Tok::LBracket => {
                self.enter()?;
                let items = self.list(Tok::RBracket)?;
                self.depth -= 1;
                Ok(Expr::List(items))
            }
            Tok::Ident(id) => {
                let lower = id.to_ascii_lowercase();
                match lower.as_str() {
                    "null" => return Ok(Expr::Null),
                    "true" => return Ok(Expr::Bool(true)),
                    "false" => return Ok(Expr::Bool(false)),
                    _ => {}
                }
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    self.enter()?;
                    let args = self.list(Tok::RParen)?;
                    self.depth -= 1;
                    return Ok(Expr::Call { name: lower, args });
                }
                let mut path = vec![self.reverse_suffix(id)];
                while self.peek() == Some(&Tok::Dot) {
                    self.pos += 1;
                    match self.toks.get(self.pos).cloned() {
                        Some((Tok::Ident(seg), _)) => {
                            self.pos += 1;
                            path.push(self.reverse_suffix(seg));
                        }
                        _ => return Err(syntax(self.src, self.at(), "expected a name after '.'")),
                    }
                }
                Ok(Expr::Path(path))
            }
            other => Err(syntax(
                self.src,
                at,
                format!("unexpected {}", describe_tok(&other)),
            )),
        }
    }
}

fn describe_tok(t: &Tok) -> String {
    match t {
        Tok::Op(o) => format!("'{o}'"),
        Tok::RParen => "')'".into(),
        Tok::RBracket => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::Dot => "'.'".into(),
        other => format!("{other:?}"),
    }
}

pub fn parse(src: &str) -> Result<Expr> {
    if src.trim().is_empty() {
        return Err(UdmError::new(SqlState::SyntaxError, "rule check is empty")
            .hint("write a condition such as \"start_date <= end_date\""));
    }
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(syntax(
            src,
            p.at(),
            "unexpected text after the end of the condition",
        ));
    }
    Ok(e)
}

// ---------------------------------------------------------------- printing

impl Expr {
    /// Canonical source text (used to rewrite rules when a field is renamed).
    pub fn to_source(&self) -> String {
        match self {
            Expr::Null => "null".into(),
            Expr::Bool(b) => b.to_string(),
            Expr::Number(n) => n.clone(),
            Expr::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Expr::Path(p) => p.join("."),
            Expr::List(items) => format!(
                "({})",
                items
                    .iter()
                    .map(Expr::to_source)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Expr::Not(e) => format!("not ({})", e.to_source()),
            Expr::Neg(e) => format!("-({})", e.to_source()),
            Expr::Binary(op, l, r) => {
                format!("({} {} {})", l.to_source(), op.source(), r.to_source())
            }
            Expr::In { expr, set, negated } => {
                format!(
                    "{}{} in {}",
                    expr.to_source(),
                    if *negated { " not" } else { "" },
                    set.to_source()
                )
            }
            Expr::IsNull { expr, negated } => {
                format!(
                    "{} is {}null",
                    expr.to_source(),
                    if *negated { "not " } else { "" }
                )
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => format!(
                "{}{} between {} and {}",
                expr.to_source(),
                if *negated { " not" } else { "" },
                low.to_source(),
                high.to_source()
            ),
            Expr::Like {
                expr,
                pattern,
                ci,
                negated,
            } => format!(
                "{}{} {} {}",
                expr.to_source(),
                if *negated { " not" } else { "" },
                if *ci { "ilike" } else { "like" },
                pattern.to_source()
            ),
            Expr::Matches { expr, pattern } => {
                format!("{} matches {}", expr.to_source(), pattern.to_source())
            }
            Expr::Call { name, args } => {
                format!(
                    "{name}({})",
                    args.iter()
                        .map(Expr::to_source)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        }
    }

    /// Every path the expression uses.
    pub fn paths(&self) -> Vec<&[String]> {
        let mut out = Vec::new();
        self.walk_paths(&mut out);
        out
    }

    fn walk_paths<'a>(&'a self, out: &mut Vec<&'a [String]>) {
        match self {
            Expr::Path(p) => out.push(p),
            Expr::List(items) | Expr::Call { args: items, .. } => {
                items.iter().for_each(|e| e.walk_paths(out))
            }
            Expr::Not(e) | Expr::Neg(e) | Expr::IsNull { expr: e, .. } => e.walk_paths(out),
            Expr::Binary(_, l, r)
            | Expr::Matches {
                expr: l,
                pattern: r,
            } => {
                l.walk_paths(out);
                r.walk_paths(out)
            }
            Expr::In { expr, set, .. } => {
                expr.walk_paths(out);
                set.walk_paths(out)
            }
            Expr::Like { expr, pattern, .. } => {
                expr.walk_paths(out);
                pattern.walk_paths(out)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.walk_paths(out);
                low.walk_paths(out);
                high.walk_paths(out)
            }
            Expr::Null | Expr::Bool(_) | Expr::Number(_) | Expr::Str(_) => {}
        }
    }

    /// Renames the first segment of every path equal to `from`.
    pub fn rename_root(&mut self, from: &str, to: &str) {
        match self {
            Expr::Path(p) => {
                if p[0] == from {
                    p[0] = to.to_string();
                }
            }
            Expr::List(items) | Expr::Call { args: items, .. } => {
                items.iter_mut().for_each(|e| e.rename_root(from, to))
            }
            Expr::Not(e) | Expr::Neg(e) | Expr::IsNull { expr: e, .. } => e.rename_root(from, to),
            Expr::Binary(_, l, r)
            | Expr::Matches {
                expr: l,
                pattern: r,
            } => {
                l.rename_root(from, to);
                r.rename_root(from, to)
            }
            Expr::In { expr, set, .. } => {
                expr.rename_root(from, to);
                set.rename_root(from, to)
            }
            Expr::Like { expr, pattern, .. } => {
                expr.rename_root(from, to);
                pattern.rename_root(from, to)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                expr.rename_root(from, to);
                low.rename_root(from, to);
                high.rename_root(from, to)
            }
            Expr::Null | Expr::Bool(_) | Expr::Number(_) | Expr::Str(_) => {}
        }
    }
}

// ---------------------------------------------------------------- types and compilation

/// The type of a value in a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VType {
    Null,
    /// A string literal: becomes whatever it is compared with.
    Untyped,
    Bool,
    Number,
    Text,
    Date,
    DateTime,
    Time,
    Duration,
    Uuid,
    Json,
    List(Box<VType>),
}

impl VType {
    pub fn of_field(t: &FieldType) -> VType {
        match t {
            FieldType::Integer
            | FieldType::BigInt
            | FieldType::Decimal
            | FieldType::Float
            | FieldType::Currency
            | FieldType::Percent
            | FieldType::Rating
            | FieldType::AutoNumber => VType::Number,
            FieldType::Boolean => VType::Bool,
            FieldType::Date => VType::Date,
            FieldType::DateTime => VType::DateTime,
            FieldType::Time => VType::Time,
            FieldType::Duration => VType::Duration,
            FieldType::Uuid | FieldType::Relation | FieldType::User => VType::Uuid,
            FieldType::Json | FieldType::File | FieldType::Reference => VType::Json,
            FieldType::MultiSelect | FieldType::Tags => VType::List(Box::new(VType::Text)),
            FieldType::Array(item) => VType::List(Box::new(VType::of_field(item))),
            _ => VType::Text,
        }
    }

    fn name(&self) -> String {
        match self {
            VType::Null => "null".into(),
            VType::Untyped => "a string".into(),
            VType::Bool => "boolean".into(),
            VType::Number => "number".into(),
            VType::Text => "text".into(),
            VType::Date => "date".into(),
            VType::DateTime => "datetime".into(),
            VType::Time => "time".into(),
            VType::Duration => "duration".into(),
            VType::Uuid => "uuid".into(),
            VType::Json => "json".into(),
            VType::List(t) => format!("list of {}", t.name()),
        }
    }

    /// The SQL type a string literal is cast to when compared with this type.
    fn literal_cast(&self) -> Option<&'static str> {
        Some(match self {
            VType::Text => "text",
            VType::Date => "date",
            VType::DateTime => "timestamptz",
            VType::Time => "time",
            VType::Duration => "interval",
            VType::Uuid => "uuid",
            VType::Number => "numeric",
            VType::Bool => "boolean",
            _ => return None,
        })
    }

    fn temporal(&self) -> bool {
        matches!(self, VType::Date | VType::DateTime)
    }
}

/// What a path in a rule means: SQL for it and its type.
pub struct Resolved {
    pub sql: String,
    pub vtype: VType,
}

/// Resolves paths for the compiler (the entity's fields, and later related entities).
pub trait Scope {
    fn resolve(&self, path: &[String]) -> Result<Resolved>;
}

#[derive(Debug, Clone)]
struct Typed {
    sql: String,
    t: VType,
}

pub struct Compiler<'a> {
    src: &'a str,
    scope: &'a dyn Scope,
}

fn type_error(src: &str, what: String) -> UdmError {
    UdmError::new(
        SqlState::DatatypeMismatch,
        format!("check \"{}\": {what}", printable(src)),
    )
}

impl<'a> Compiler<'a> {
    pub fn new(src: &'a str, scope: &'a dyn Scope) -> Self {
        Compiler { src, scope }
    }

    /// Compiles a rule that must be a condition.
    pub fn condition(&self, e: &Expr) -> Result<String> {
        let t = self.expr(e)?;
        if t.t != VType::Bool {
            return Err(type_error(
                self.src,
                format!(
                    "a rule must be a condition (true or false), this is {}",
                    t.t.name()
                ),
            )
            .hint("compare values, e.g. \"price >= 0\""));
        }
        Ok(t.sql)
    }

    fn literal_as(&self, lit: &Typed, t: &VType) -> Typed {
        if lit.t == VType::Untyped {
            if let Some(cast) = t.literal_cast() {
                return Typed {
                    sql: format!("{}::{cast}", lit.sql),
                    t: t.clone(),
                };
            }
        }
        lit.clone()
    }

    /// Makes two operands comparable (casting string literals), or explains why not.
    fn unify(&self, l: Typed, r: Typed, what: &str) -> Result<(Typed, Typed)> {
        let (l, r) = (self.literal_as(&l, &r.t), self.literal_as(&r, &l.t));
        let ok = l.t == r.t
            || (l.t.temporal() && r.t.temporal())
            || (l.t == VType::Untyped && r.t == VType::Untyped);
        if !ok {
            return Err(type_error(
                self.src,
                format!("cannot {what} {} with {}", l.t.name(), r.t.name()),
            ));
        }
        Ok((l, r))
    }

    fn expr(&self, e: &Expr) -> Result<Typed> {
        Ok(match e {
            Expr::Null => Typed {
                sql: "NULL".into(),
                t: VType::Null,
            },
            Expr::Bool(b) => Typed {
                sql: if *b { "true".into() } else { "false".into() },
                t: VType::Bool,
            },
            Expr::Number(n) => Typed {
                sql: n.clone(),
                t: VType::Number,
            },
            Expr::Str(s) => {
                crate::json::check_text(s, "a rule string")?;
                Typed {
                    sql: quote_literal(s),
                    t: VType::Untyped,
                }
            }
            Expr::Path(p) => {
                let r = self.scope.resolve(p).map_err(|e| {
                    let msg = format!("check \"{}\": {}", printable(self.src), e.message);
                    UdmError { message: msg, ..e }
                })?;
                Typed {
                    sql: r.sql,
                    t: r.vtype,
                }
            }
            Expr::List(_) => {
                return Err(type_error(
                    self.src,
                    "a list can only follow in, e.g. status in ('a', 'b')".into(),
                ))
            }
            Expr::Not(inner) => {
                let t = self.bool_operand(inner, "not")?;
                Typed {
                    sql: format!("(NOT {})", t.sql),
                    t: VType::Bool,
                }
            }
            Expr::Neg(inner) => {
                let t = self.expr(inner)?;
                if t.t != VType::Number {
                    return Err(type_error(
                        self.src,
                        format!("cannot negate {}", t.t.name()),
                    ));
                }
                Typed {
                    sql: format!("(- {})", t.sql),
                    t: VType::Number,
                }
            }
            Expr::Binary(op, l, r) => self.binary(*op, l, r)?,
            Expr::IsNull { expr, negated } => {
                let t = self.expr(expr)?;
                Typed {
                    sql: format!("({} IS {}NULL)", t.sql, if *negated { "NOT " } else { "" }),
                    t: VType::Bool,
                }
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let v = self.expr(expr)?;
                let (v1, lo) = self.unify(v.clone(), self.expr(low)?, "compare")?;
                let (_, hi) = self.unify(v1.clone(), self.expr(high)?, "compare")?;
                Typed {
                    sql: format!(
                        "({} {}BETWEEN {} AND {})",
                        v1.sql,
                        if *negated { "NOT " } else { "" },
                        lo.sql,
                        hi.sql
                    ),
                    t: VType::Bool,
                }
            }
            Expr::Like {
                expr,
                pattern,
                ci,
                negated,
            } => {
                let v = self.text_operand(expr, "like")?;
                let p = self.text_operand(pattern, "like")?;
                Typed {
                    sql: format!(
                        "({} {}{} {})",
                        v.sql,
                        if *negated { "NOT " } else { "" },
                        if *ci { "ILIKE" } else { "LIKE" },
                        p.sql
                    ),
                    t: VType::Bool,
                }
            }
            Expr::Matches { expr, pattern } => {
                let v = self.text_operand(expr, "matches")?;
                let p = self.text_operand(pattern, "matches")?;
                Typed {
                    sql: format!("({} ~ {})", v.sql, p.sql),
                    t: VType::Bool,
                }
            }
            Expr::In { expr, set, negated } => self.in_(expr, set, *negated)?,
            Expr::Call { name, args } => self.call(name, args)?,
        })
    }

    fn bool_operand(&self, e: &Expr, op: &str) -> Result<Typed> {
        let t = self.expr(e)?;
        if t.t != VType::Bool {
            return Err(type_error(
                self.src,
                format!("{op} needs conditions, got {}", t.t.name()),
            ));
        }
        Ok(t)
    }

    fn text_operand(&self, e: &Expr, op: &str) -> Result<Typed> {
        let t = self.expr(e)?;
        match t.t {
            VType::Text => Ok(t),
            VType::Untyped => Ok(Typed {
                sql: format!("{}::text", t.sql),
                t: VType::Text,
            }),
            _ => Err(type_error(
                self.src,
                format!("{op} needs text, got {}", t.t.name()),
            )),
        }
    }

    fn binary(&self, op: BinOp, l: &Expr, r: &Expr) -> Result<Typed> {
        if matches!(op, BinOp::And | BinOp::Or) {
            let a = self.bool_operand(l, op.source())?;
            let b = self.bool_operand(r, op.source())?;
            return Ok(Typed {
                sql: format!("({} {} {})", a.sql, op.sql(), b.sql),
                t: VType::Bool,
            });
        }
        let a = self.expr(l)?;
        let b = self.expr(r)?;
        if op.is_comparison() {
            if a.t == VType::Null || b.t == VType::Null {
                return Err(
                    type_error(self.src, "comparing with null is never true".into())
                        .hint("use \"is null\" or \"is not null\""),
                );
            }
            if matches!(a.t, VType::Json | VType::List(_) | VType::Bool)
                && !matches!(op, BinOp::Eq | BinOp::Ne)
            {
                return Err(type_error(
                    self.src,
                    format!("cannot order {} values", a.t.name()),
                ));
            }
            let (a, b) = self.unify(a, b, "compare")?;
            return Ok(Typed {
                sql: format!("({} {} {})", a.sql, op.sql(), b.sql),
                t: VType::Bool,
            });
        }
        // arithmetic
        let result = match (&a.t, &b.t, op) {
            (VType::Number, VType::Number, _) => VType::Number,
            (VType::Date, VType::Date, BinOp::Sub) => VType::Number,
            (VType::DateTime, VType::DateTime, BinOp::Sub) => VType::Duration,
            (VType::Date, VType::Number, BinOp::Add | BinOp::Sub) => VType::Date,
            (VType::Duration, VType::Duration, BinOp::Add | BinOp::Sub) => VType::Duration,
            _ => {
                return Err(type_error(
                    self.src,
                    format!(
                        "cannot use {} on {} and {}",
                        op.sql(),
                        a.t.name(),
                        b.t.name()
                    ),
                ))
            }
        };
        Ok(Typed {
            sql: format!("({} {} {})", a.sql, op.sql(), b.sql),
            t: result,
        })
    }

    fn in_(&self, expr: &Expr, set: &Expr, negated: bool) -> Result<Typed> {
        let v = self.expr(expr)?;
        let not = if negated { "NOT " } else { "" };
        if let Expr::List(items) = set {
            if items.is_empty() {
                return Err(type_error(self.src, "in needs at least one value".into()));
            }
            let mut v = v;
            let mut sqls = Vec::new();
            for item in items {
                let (v2, it) = self.unify(v.clone(), self.expr(item)?, "compare")?;
                v = v2;
                sqls.push(it.sql);
            }
            return Ok(Typed {
                sql: format!("({} {not}IN ({}))", v.sql, sqls.join(", ")),
                t: VType::Bool,
            });
        }
        let s = self.expr(set)?;
        match &s.t {
            VType::List(inner) => {
                let v = self.literal_as(&v, inner);
                if v.t != **inner {
                    return Err(type_error(
                        self.src,
                        format!("cannot look for {} in a {}", v.t.name(), s.t.name()),
                    ));
                }
                let sql = if negated {
                    format!("(NOT ({} = ANY ({})))", v.sql, s.sql)
                } else {
                    format!("({} = ANY ({}))", v.sql, s.sql)
                };
                Ok(Typed {
                    sql,
                    t: VType::Bool,
                })
            }
            VType::Json => {
                let v = if v.t == VType::Untyped {
                    Typed {
                        sql: format!("{}::text", v.sql),
                        t: VType::Text,
                    }
                } else {
                    v
                };
                let sql = format!("({not}(jsonb_build_array({}) <@ {}))", v.sql, s.sql);
                Ok(Typed {
                    sql,
                    t: VType::Bool,
                })
            }
            other => Err(
                type_error(self.src, format!("in needs a list, got {}", other.name()))
                    .hint("write x in ('a', 'b') or x in some_list_field"),
            ),
        }
    }

    fn call(&self, name: &str, args: &[Expr]) -> Result<Typed> {
        let argc = |n: usize| -> Result<()> {
            if args.len() != n {
                return Err(type_error(
                    self.src,
                    format!("{name}() takes {n} argument(s), got {}", args.len()),
                ));
            }
            Ok(())
        };
        Ok(match name {
            "length" => {
                argc(1)?;
                let a = self.expr(&args[0])?;
                let sql = match a.t {
                    VType::Text | VType::Untyped => format!("char_length({})", a.sql),
                    VType::List(_) => format!("cardinality({})", a.sql),
                    VType::Json => format!("jsonb_array_length({})", a.sql),
                    _ => {
                        return Err(type_error(
                            self.src,
                            format!("length() needs text or a list, got {}", a.t.name()),
                        ))
                    }
                };
                Typed {
                    sql,
                    t: VType::Number,
                }
            }
            "lower" | "upper" | "trim" => {
                argc(1)?;
                let a = self.text_operand(&args[0], name)?;
                Typed {
                    sql: format!("{name}({})", a.sql),
                    t: VType::Text,
                }
            }
            "abs" => {
                argc(1)?;
                let a = self.expr(&args[0])?;
                if a.t != VType::Number {
                    return Err(type_error(
                        self.src,
                        format!("abs() needs a number, got {}", a.t.name()),
                    ));
                }
                Typed {
                    sql: format!("abs({})", a.sql),
                    t: VType::Number,
                }
            }
            "coalesce" => {
                if args.len() < 2 {
                    return Err(type_error(
                        self.src,
                        "coalesce() takes at least 2 arguments".into(),
                    ));
                }
                let mut acc = self.expr(&args[0])?;
                let mut sqls = vec![];
                let mut rest = vec![];
                for a in &args[1..] {
                    let (l, r) = self.unify(acc.clone(), self.expr(a)?, "combine")?;
                    acc = l;
                    rest.push(r.sql);
                }
                sqls.push(acc.sql.clone());
                sqls.extend(rest);
                Typed {
                    sql: format!("coalesce({})", sqls.join(", ")),
                    t: acc.t,
                }
            }
            other => {
                return Err(UdmError::new(
                    SqlState::UndefinedObject,
                    format!(
                        "check \"{}\": unknown function {}()",
                        printable(self.src),
                        printable(other)
                    ),
                )
                .hint(format!(
                    "rule functions are {}",
                    name_list(["length", "lower", "upper", "trim", "abs", "coalesce"])
                )))
            }
        })
    }
}

/// A scope over one entity's own fields (JSON fields may be followed with dots).
pub struct FieldScope<'a> {
    pub entity: &'a crate::definition::EntityDef,
}

impl Scope for FieldScope<'_> {
    fn resolve(&self, path: &[String]) -> Result<Resolved> {
        let f = self
            .entity
            .field(&path[0])
            .ok_or_else(|| self.entity.no_such_field(&path[0]))?;
        if !f.has_column() {
            return Err(UdmError::invalid(format!(
                "field \"{}\" is a many-to-many relation and cannot be used in a rule",
                f.name
            )));
        }
        if f.ftype == FieldType::Password {
            return Err(UdmError::invalid(format!(
                "field \"{}\" is a password and cannot be used in a rule",
                f.name
            )));
        }
        if f.encrypted_or_staged() {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "field \"{}\" of entity \"{}\" is encrypted and cannot be used in a rule",
                    f.name, self.entity.slug
                ),
            )
            .hint("the database holds only its ciphertext; check the value in the application, or use the field's own options (max_length, pattern)"));
        }
        let col = quote_ident(&f.column);
        if path.len() == 1 {
            return Ok(Resolved {
                sql: col,
                vtype: VType::of_field(&f.ftype),
            });
        }
        if matches!(f.ftype, FieldType::Json | FieldType::File) {
            let keys: Vec<String> = path[1..].iter().map(|k| quote_literal(k)).collect();
            return Ok(Resolved {
                sql: format!("({col} #>> ARRAY[{}])", keys.join(", ")),
                vtype: VType::Text,
            });
        }
        Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!("\"{}\" follows field \"{}\", which is {}; entity rules use the entity's own fields", path.join("."), f.name, f.ftype.name()),
        )
        .hint("only json fields can be followed with '.' in a rule"))
    }
}

/// Parses and compiles a rule against an entity's fields; returns the SQL condition.
pub fn compile_rule(entity: &crate::definition::EntityDef, check: &str) -> Result<String> {
    let e = parse(check)?;
    let scope = FieldScope { entity };
    Compiler::new(check, &scope).condition(&e)
}

/// Whether a rule has string literals (which PostgreSQL casts when the constraint is made).
pub fn has_string_literal(check: &str) -> Result<bool> {
    fn walk(e: &Expr) -> bool {
        match e {
            Expr::Str(_) => true,
            Expr::List(items) | Expr::Call { args: items, .. } => items.iter().any(walk),
            Expr::Not(x) | Expr::Neg(x) | Expr::IsNull { expr: x, .. } => walk(x),
            Expr::Binary(_, l, r)
            | Expr::Matches {
                expr: l,
                pattern: r,
            } => walk(l) || walk(r),
            Expr::In { expr, set, .. } => walk(expr) || walk(set),
            Expr::Like { expr, pattern, .. } => walk(expr) || walk(pattern),
            Expr::Between {
                expr, low, high, ..
            } => walk(expr) || walk(low) || walk(high),
            Expr::Null | Expr::Bool(_) | Expr::Number(_) | Expr::Path(_) => false,
        }
    }
    Ok(walk(&parse(check)?))
}

/// Field names (first path segments) a rule uses.
pub fn rule_fields(check: &str) -> Result<Vec<String>> {
    let e = parse(check)?;
    let mut names: Vec<String> = e.paths().iter().map(|p| p[0].clone()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The rule text with a field renamed.
pub fn rename_in_rule(check: &str, from: &str, to: &str) -> Result<String> {
    let mut e = parse(check)?;
    e.rename_root(from, to);
    let s = e.to_source();
    // the outermost parentheses of a binary expression add nothing
    Ok(match &e {
        Expr::Binary(..) => s[1..s.len() - 1].to_string(),
        _ => s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{EntityDef, Source};
    use serde_json::json;

    fn product() -> EntityDef {
        EntityDef::parse(
            "product",
            &json!({"fields": [
                {"name": "name", "type": "text"},
                {"name": "price", "type": "decimal"},
                {"name": "qty", "type": "integer"},
                {"name": "status", "type": "select", "values": ["draft", "active"]},
                {"name": "sample_date", "type": "date"},
                {"name": "release_date", "type": "date"},
                {"name": "at", "type": "datetime"},
                {"name": "done", "type": "boolean"},
                {"name": "tags", "type": "tags"},
                {"name": "meta", "type": "json"},
                {"name": "secret", "type": "password"}]}),
            Source::Caller,
        )
        .unwrap()
    }

    fn sql(check: &str) -> String {
        compile_rule(&product(), check).unwrap()
    }

    fn err(check: &str) -> UdmError {
        compile_rule(&product(), check).unwrap_err()
    }

    #[test]
    fn the_issue_example() {
        assert_eq!(
            sql("sample_date <= release_date"),
            "(\"sample_date\" <= \"release_date\")"
        );
    }

    #[test]
    fn literals_are_cast_to_the_other_side() {
        assert_eq!(
            sql("sample_date >= '2024-01-01'"),
            "(\"sample_date\" >= '2024-01-01'::date)"
        );
        assert_eq!(sql("status = 'draft'"), "(\"status\" = 'draft'::text)");
        assert_eq!(
            sql("price > 0 and qty >= 1"),
            "((\"price\" > 0) AND (\"qty\" >= 1))"
        );
    }

    #[test]
    fn in_between_like_null_not() {
        assert_eq!(
            sql("status in ('draft', 'active')"),
            "(\"status\" IN ('draft'::text, 'active'::text))"
        );
        assert_eq!(
            sql("status not in ['x']"),
            "(\"status\" NOT IN ('x'::text))"
        );
        assert_eq!(sql("'vip' in tags"), "('vip'::text = ANY (\"tags\"))");
        assert_eq!(
            sql("price between 1 and 10"),
            "(\"price\" BETWEEN 1 AND 10)"
        );
        assert_eq!(sql("name like 'A%'"), "(\"name\" LIKE 'A%'::text)");
        assert_eq!(
            sql("name is not null or not done"),
            "((\"name\" IS NOT NULL) OR (NOT \"done\"))"
        );
        assert_eq!(sql("name matches '^[A-Z]'"), "(\"name\" ~ '^[A-Z]'::text)");
    }

    #[test]
    fn functions_and_arithmetic() {
        assert_eq!(sql("length(name) >= 2"), "(char_length(\"name\") >= 2)");
        assert_eq!(sql("length(tags) <= 3"), "(cardinality(\"tags\") <= 3)");
        assert_eq!(
            sql("release_date - sample_date <= 365"),
            "((\"release_date\" - \"sample_date\") <= 365)"
        );
        assert_eq!(sql("price * qty < 1000"), "((\"price\" * \"qty\") < 1000)");
        assert_eq!(
            sql("meta.brand = 'Apple'"),
            "((\"meta\" #>> ARRAY['brand']) = 'Apple'::text)"
        );
        assert_eq!(sql("at >= sample_date"), "(\"at\" >= \"sample_date\")");
    }

    #[test]
    fn injection_stays_in_literals() {
        assert_eq!(
            sql("name = 'x''); drop table t; --'"),
            "(\"name\" = 'x''); drop table t; --'::text)"
        );
        let e = err("name = 1; drop table t");
        assert_eq!(e.state, SqlState::SyntaxError);
    }

    #[test]
    fn type_errors() {
        for (check, want) in [
            ("price", "must be a condition"),
            ("name > 5", "cannot compare text with number"),
            ("done > true", "cannot order boolean"),
            ("price = null", "never true"),
            ("status in 5", "in needs a list"),
            ("abs(name) > 1", "abs() needs a number"),
            ("price and done", "and needs conditions"),
            ("sample_date + release_date > 0", "cannot use +"),
        ] {
            let e = err(check);
            assert!(e.message.contains(want), "{check}: {}", e.message);
        }
    }

    #[test]
    fn unknown_names() {
        let e = err("nope > 1");
        assert_eq!(e.state, SqlState::UndefinedColumn);
        assert!(e.message.contains("no field \"nope\""));
        assert!(e.hint.unwrap().contains("\"price\""));
        assert_eq!(err("explode(price) > 1").state, SqlState::UndefinedObject);
        assert!(err("secret = 'x'").message.contains("password"));
        assert_eq!(err("name.first = 'x'").state, SqlState::FeatureNotSupported);
    }

    #[test]
    fn syntax_errors_point_at_the_place() {
        for (check, want) in [
            ("", "empty"),
            ("price >", "unexpected end"),
            ("(price > 1", "expected ')'"),
            ("price > 1 1", "after the end"),
            ("name = 'abc", "unterminated"),
            ("price # 1", "unexpected character '#'"),
            ("price is 5", "expected null"),
            ("price not 5", "expected in, between"),
        ] {
            let e = err(check);
            assert!(e.message.contains(want), "{check}: {}", e.message);
        }
    }

    #[test]
    fn depth_is_limited() {
        let deep = format!("{}price > 1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(err(&deep).state, SqlState::ProgramLimitExceeded);
        let nots = format!("{}done", "not ".repeat(100));
        assert_eq!(err(&nots).state, SqlState::ProgramLimitExceeded);
    }

    #[test]
    fn string_literals_are_found() {
        assert!(has_string_literal("a = 'x'").unwrap());
        assert!(has_string_literal("a in (1, 'x')").unwrap());
        assert!(!has_string_literal("a <= b and c > 1").unwrap());
    }

    #[test]
    fn rename_and_fields() {
        assert_eq!(
            rule_fields("sample_date <= release_date and sample_date > '2020-01-01'").unwrap(),
            vec!["release_date", "sample_date"]
        );
        let r = rename_in_rule("sample_date <= release_date", "sample_date", "sampled_on").unwrap();
        assert_eq!(r, "sampled_on <= release_date");
        assert_eq!(
            rename_in_rule("name = 'it''s'", "name", "title").unwrap(),
            "title = 'it''s'"
        );
        assert_eq!(
            rename_in_rule("a > 1 and (b < 2 or a = 3)", "a", "x").unwrap(),
            "(x > 1) and ((b < 2) or (x = 3))"
        );
    }
}
