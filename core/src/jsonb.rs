//! A writer of PostgreSQL's binary `jsonb` format for flat objects (the row images of the audit
//! and the fast point read), so a row becomes jsonb without going through `jsonb_build_object`'s
//! per-value type lookups, text round trips and key sorting.
//!
//! The layout is the one `convertToJsonb` (src/backend/utils/adt/jsonb_util.c) writes:
//! a container is a header word (count | kind flags), then one JEntry per child (for an object
//! all keys first, in jsonb key order, then the values in the same order), then the children's
//! data. A JEntry holds the child's type and either its length or, on every
//! `OFFSET_STRIDE`th child, the end offset of its data. Numerics and containers start at 4-byte
//! alignment (measured from the start of the datum, varlena header included), and the padding
//! counts in the child's length.

use std::cmp::Ordering;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const OFFSET_STRIDE: usize = 32;
const VARHDRSZ: usize = 4;

#[cfg(not(target_endian = "little"))]
compile_error!("udm's jsonb writer assumes a little-endian server");

/// One value of an object being written.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// A string in the database encoding (no escaping in the binary format).
    String(&'a [u8]),
    /// A PostgreSQL `numeric`: its bytes after the varlena header.
    Numeric(&'a [u8]),
    /// A jsonb datum: its bytes after the varlena header (its root container). A scalar jsonb
    /// (stored as a one-element raw-scalar array) is written as that scalar.
    Jsonb(&'a [u8]),
    /// An array of values.
    Array(Vec<Value<'a>>),
    /// An object (keys unique, in any order: they are written in jsonb's key order).
    Object(Vec<(&'a [u8], Value<'a>)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonbError(pub String);

impl std::fmt::Display for JsonbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, JsonbError>;

/// jsonb's key order: shorter keys first, equal lengths bytewise.
pub fn key_order(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Writes the object `pairs` (keys unique) as a complete jsonb datum into `out` (cleared first):
/// a 4-byte varlena header followed by the root container.
pub fn write_object(out: &mut Vec<u8>, pairs: &[(&[u8], Value<'_>)]) -> Result<()> {
    out.clear();
    out.extend_from_slice(&[0u8; VARHDRSZ]);
    object(out, pairs, &key_sorted(pairs)?)?;
    set_varsize(out)
}

/// The positions of `pairs` in jsonb key order; an error for a duplicate key.
fn key_sorted(pairs: &[(&[u8], Value<'_>)]) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&a, &b| key_order(pairs[a].0, pairs[b].0));
    if order.windows(2).any(|w| pairs[w[0]].0 == pairs[w[1]].0) {
        return Err(JsonbError("jsonb object with a duplicate key".into()));
    }
    Ok(order)
}

fn set_varsize(out: &mut [u8]) -> Result<()> {
    let len = out.len();
    if len > 0x3FFF_FFFF {
        return Err(JsonbError(format!(
            "jsonb value of {len} bytes is too large"
        )));
    }
    out[..VARHDRSZ].copy_from_slice(&((len as u32) << 2).to_le_bytes());
    Ok(())
}

fn pad_to_int(out: &mut Vec<u8>) -> usize {
    let pad = (4 - out.len() % 4) % 4;
    out.extend(std::iter::repeat_n(0u8, pad));
    pad
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn len_field(len: usize) -> Result<u32> {
    if len > JENTRY_OFFLENMASK as usize {
        return Err(JsonbError(format!(
            "jsonb value exceeds the maximum of {JENTRY_OFFLENMASK} bytes"
        )));
    }
    Ok(len as u32)
}

/// Writes one child's data; returns its JEntry (type | length).
fn child(out: &mut Vec<u8>, v: &Value<'_>) -> Result<u32> {
    Ok(match v {
        Value::Null => JENTRY_ISNULL,
        Value::Bool(true) => JENTRY_ISBOOL_TRUE,
        Value::Bool(false) => JENTRY_ISBOOL_FALSE,
        Value::String(s) => {
            out.extend_from_slice(s);
            JENTRY_ISSTRING | len_field(s.len())?
        }
        Value::Numeric(n) => {
            let pad = pad_to_int(out);
            let total = n.len() + VARHDRSZ;
            out.extend_from_slice(&((len_field(total)?) << 2).to_le_bytes());
            out.extend_from_slice(n);
            JENTRY_ISNUMERIC | len_field(pad + total)?
        }
        Value::Jsonb(root) => return embed(out, root),
        Value::Object(pairs) => return object(out, pairs, &key_sorted(pairs)?),
        Value::Array(items) => {
            let start = out.len();
            pad_to_int(out);
            out.extend_from_slice(&(len_field(items.len())? | JB_FARRAY).to_le_bytes());
            let entries = out.len();
            out.extend(std::iter::repeat_n(0u8, 4 * items.len()));
            let mut total = 0usize;
            for (i, item) in items.iter().enumerate() {
                let meta = child(out, item)?;
                total += (meta & JENTRY_OFFLENMASK) as usize;
                put_u32(out, entries + 4 * i, entry(meta, i, total)?);
            }
            JENTRY_ISCONTAINER | len_field(out.len() - start)?
        }
    })
}

/// The JEntry of the `i`th child: its length, or on stride positions its end offset.
fn entry(meta: u32, i: usize, end: usize) -> Result<u32> {
    Ok(if i.is_multiple_of(OFFSET_STRIDE) {
        (meta & JENTRY_TYPEMASK) | len_field(end)? | JENTRY_HAS_OFF
    } else {
        meta
    })
}

fn object(out: &mut Vec<u8>, pairs: &[(&[u8], Value<'_>)], order: &[usize]) -> Result<u32> {
    let n = pairs.len();
    let start = out.len();
    pad_to_int(out);
    out.extend_from_slice(&(len_field(n)? | JB_FOBJECT).to_le_bytes());
    let entries = out.len();
    out.extend(std::iter::repeat_n(0u8, 8 * n));
    let mut total = 0usize;
    for (i, &p) in order.iter().enumerate() {
        let meta = child(out, &Value::String(pairs[p].0))?;
        total += (meta & JENTRY_OFFLENMASK) as usize;
        put_u32(out, entries + 4 * i, entry(meta, i, total)?);
    }
    for (i, &p) in order.iter().enumerate() {
        let meta = child(out, &pairs[p].1)?;
        total += (meta & JENTRY_OFFLENMASK) as usize;
        put_u32(out, entries + 4 * (n + i), entry(meta, n + i, total)?);
    }
    Ok(JENTRY_ISCONTAINER | len_field(out.len() - start)?)
}

/// The body of the PostgreSQL `numeric` equal to an integer (what `int8_numeric` makes: the
/// short format, base-10000 digits without leading or trailing zero digits, display scale 0),
/// in `out`; returns its length.
pub fn integer_numeric(v: i64, out: &mut [u8; 12]) -> usize {
    const NUMERIC_SHORT: u16 = 0x8000;
    const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
    let mut digits = [0u16; 5];
    let mut n = 0;
    let mut rest = v.unsigned_abs();
    while rest > 0 {
        digits[n] = (rest % 10_000) as u16;
        rest /= 10_000;
        n += 1;
    }
    // digits[0] is the least significant; the weight is that of the most significant
    let weight = n.saturating_sub(1) as u16;
    let low = digits[..n].iter().take_while(|d| **d == 0).count();
    let mut header = NUMERIC_SHORT | weight;
    if v < 0 {
        header |= NUMERIC_SHORT_SIGN_MASK;
    }
    out[..2].copy_from_slice(&header.to_le_bytes());
    let mut len = 2;
    for d in digits[low..n].iter().rev() {
        out[len..len + 2].copy_from_slice(&d.to_le_bytes());
        len += 2;
    }
    len
}

fn read_u32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| JsonbError("truncated jsonb container".into()))
}

/// Embeds the root container of a jsonb datum as a child: a container is copied as is (its
/// internal alignment is relative to its own start, which stays 4-byte aligned); a raw scalar is
/// unwrapped.
fn embed(out: &mut Vec<u8>, root: &[u8]) -> Result<u32> {
    let header = read_u32(root, 0)?;
    if header & JB_FSCALAR == 0 {
        let start = out.len();
        pad_to_int(out);
        out.extend_from_slice(root);
        return Ok(JENTRY_ISCONTAINER | len_field(out.len() - start)?);
    }
    if header & JB_FARRAY == 0 || header & JB_CMASK != 1 {
        return Err(JsonbError("malformed scalar jsonb".into()));
    }
    let meta = read_u32(root, 4)?;
    let len = (meta & JENTRY_OFFLENMASK) as usize; // the first child stores its end offset
    let data = root
        .get(8..8 + len)
        .ok_or_else(|| JsonbError("truncated scalar jsonb".into()))?;
    match meta & JENTRY_TYPEMASK {
        JENTRY_ISNULL => child(out, &Value::Null),
        JENTRY_ISBOOL_TRUE => child(out, &Value::Bool(true)),
        JENTRY_ISBOOL_FALSE => child(out, &Value::Bool(false)),
        JENTRY_ISSTRING => child(out, &Value::String(data)),
        JENTRY_ISNUMERIC => {
            // the numeric starts at an aligned offset (data begins aligned: no padding) and
            // carries its own varlena header
            let hdr = read_u32(data, 0)?;
            if hdr & 3 != 0 || (hdr >> 2) as usize != data.len() {
                return Err(JsonbError("malformed numeric in scalar jsonb".into()));
            }
            child(out, &Value::Numeric(&data[VARHDRSZ..]))
        }
        _ => Err(JsonbError("malformed scalar jsonb".into())),
    }
}

// ------------------------------------------------------------------ reading

/// The deepest JSON udm converts into a tree of values (PostgreSQL's own text parser stops at
/// about this depth with its default `max_stack_depth`); deeper values are refused with an error
/// instead of exhausting the stack. The reader itself keeps its place on the heap.
pub const MAX_READ_DEPTH: usize = 10_000;

/// Where a child's data starts (relative to its container's data area): the sum of the lengths
/// before it, back to the nearest child that stores its end offset.
fn child_offset(entries: &[u8], index: usize) -> Result<usize> {
    let mut offset = 0usize;
    let mut i = index;
    while i > 0 {
        i -= 1;
        let e = read_u32(entries, 4 * i)?;
        offset += (e & JENTRY_OFFLENMASK) as usize;
        if e & JENTRY_HAS_OFF != 0 {
            break;
        }
    }
    Ok(offset)
}

fn child_len(entries: &[u8], index: usize, offset: usize) -> Result<usize> {
    let e = read_u32(entries, 4 * index)?;
    let f = (e & JENTRY_OFFLENMASK) as usize;
    Ok(if e & JENTRY_HAS_OFF != 0 {
        f.checked_sub(offset)
            .ok_or_else(|| JsonbError("malformed jsonb offsets".into()))?
    } else {
        f
    })
}

fn int_align(n: usize) -> usize {
    (n + 3) & !3
}

/// One container being read: its children's JEntries and data area, and what was read so far.
struct Frame<'a> {
    entries: &'a [u8],
    data: &'a [u8],
    n: usize,
    object: bool,
    next: usize,
    items: Vec<serde_json::Value>,
    map: serde_json::Map<String, serde_json::Value>,
}

impl<'a> Frame<'a> {
    fn new(container: &'a [u8]) -> Result<(Frame<'a>, u32)> {
        let header = read_u32(container, 0)?;
        let n = (header & JB_CMASK) as usize;
        let object = header & JB_FOBJECT != 0;
        let entries_len = 4 * if object { 2 * n } else { n };
        let entries = container
            .get(4..4 + entries_len)
            .ok_or_else(|| JsonbError("truncated jsonb container".into()))?;
        let data = &container[4 + entries_len..];
        Ok((
            Frame {
                entries,
                data,
                n,
                object,
                next: 0,
                items: Vec::new(),
                map: serde_json::Map::new(),
            },
            header,
        ))
    }

    /// The type bits and bytes of child `index`.
    fn child(&self, index: usize) -> Result<(u32, &'a [u8], usize)> {
        let offset = child_offset(self.entries, index)?;
        let len = child_len(self.entries, index, offset)?;
        let kind = read_u32(self.entries, 4 * index)? & JENTRY_TYPEMASK;
        let bytes = self
            .data
            .get(offset..offset + len)
            .ok_or_else(|| JsonbError("truncated jsonb child".into()))?;
        Ok((kind, bytes, offset))
    }
}

/// Reads a jsonb datum's root container (its bytes after the varlena header) into a JSON value,
/// keeping its place in a heap stack rather by recursion, so any depth up to `max_depth` reads
/// without growing the machine stack; deeper values are an error. `numeric` turns a `numeric`
/// (its bytes from its own varlena header on) into a JSON number.
pub fn read(
    root: &[u8],
    max_depth: usize,
    numeric: &mut dyn FnMut(&[u8]) -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    read_with(root, max_depth, false, numeric)
}

/// Like `read`, but what lies deeper than `max_depth` becomes the string `"…"`: for text made
/// for people (change summaries), which never shows a whole deep value.
pub fn read_elided(
    root: &[u8],
    max_depth: usize,
    numeric: &mut dyn FnMut(&[u8]) -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    read_with(root, max_depth, true, numeric)
}

/// What stands for an elided value in `read_elided`.
pub const ELIDED: &str = "…";

fn read_with(
    root: &[u8],
    max_depth: usize,
    elide: bool,
    numeric: &mut dyn FnMut(&[u8]) -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    use serde_json::Value as J;
    let (frame, header) = Frame::new(root)?;
    let scalar = header & JB_FSCALAR != 0;
    let mut stack = vec![frame];
    loop {
        let top = stack.last_mut().expect("a frame");
        let total = if top.object { 2 * top.n } else { top.n };
        if top.object && top.next < top.n {
            // keys first: read them all, values pair up with them in order
            top.next = top.n;
        }
        if top.next >= total {
            let done = stack.pop().expect("a frame");
            let v = if done.object {
                J::Object(done.map)
            } else {
                J::Array(done.items)
            };
            match stack.last_mut() {
                None => {
                    return Ok(match v {
                        J::Array(mut a) if scalar && a.len() == 1 => a.remove(0),
                        v => v,
                    })
                }
                Some(parent) => put(parent, v)?,
            }
            continue;
        }
        let index = top.next;
        top.next += 1;
        let (kind, bytes, offset) = top.child(index)?;
        let v = match kind {
            JENTRY_ISNULL => J::Null,
            JENTRY_ISBOOL_TRUE => J::Bool(true),
            JENTRY_ISBOOL_FALSE => J::Bool(false),
            JENTRY_ISSTRING => J::String(String::from_utf8_lossy(bytes).into_owned()),
            JENTRY_ISNUMERIC => {
                let pad = int_align(offset) - offset;
                numeric(bytes.get(pad..).unwrap_or_default())?
            }
            JENTRY_ISCONTAINER => {
                let pad = int_align(offset) - offset;
                let inner = bytes.get(pad..).unwrap_or_default();
                if stack.len() >= max_depth {
                    if elide {
                        put(stack.last_mut().expect("a frame"), J::String(ELIDED.into()))?;
                        continue;
                    }
                    return Err(JsonbError(format!(
                        "JSON value nested deeper than {max_depth} levels"
                    )));
                }
                let (frame, _) = Frame::new(inner)?;
                stack.push(frame);
                continue;
            }
            _ => return Err(JsonbError("unknown jsonb value type".into())),
        };
        put(stack.last_mut().expect("a frame"), v)?;
    }
}

/// An object's (key, value) pairs, as `write_object` takes them.
pub type Pairs<'a> = Vec<(&'a [u8], Value<'a>)>;

/// The pairs of a root object (bytes after the varlena header) as writer values, its children
/// left in their binary form (a container is embedded as is): for rewriting an object's top level
/// (dropping keys) without reading what lies below. `None` when the root is not an object.
pub fn object_pairs(root: &[u8]) -> Result<Option<Pairs<'_>>> {
    let (frame, header) = Frame::new(root)?;
    if header & JB_FOBJECT == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(frame.n);
    for i in 0..frame.n {
        let (kind, key, _) = frame.child(i)?;
        if kind != JENTRY_ISSTRING {
            return Err(JsonbError("jsonb object key is not a string".into()));
        }
        let (kind, bytes, offset) = frame.child(frame.n + i)?;
        let pad = int_align(offset) - offset;
        let v = match kind {
            JENTRY_ISNULL => Value::Null,
            JENTRY_ISBOOL_TRUE => Value::Bool(true),
            JENTRY_ISBOOL_FALSE => Value::Bool(false),
            JENTRY_ISSTRING => Value::String(bytes),
            JENTRY_ISNUMERIC => {
                let n = bytes.get(pad..).unwrap_or_default();
                // the numeric's own varlena header: 1 byte (short) or 4
                let body = match n.first() {
                    Some(b) if b & 1 == 1 => n.get(1..(*b >> 1) as usize),
                    Some(_) => {
                        let total = (read_u32(n, 0)? >> 2) as usize;
                        n.get(VARHDRSZ..total)
                    }
                    None => None,
                };
                Value::Numeric(body.ok_or_else(|| JsonbError("truncated jsonb numeric".into()))?)
            }
            JENTRY_ISCONTAINER => Value::Jsonb(bytes.get(pad..).unwrap_or_default()),
            _ => return Err(JsonbError("unknown jsonb value type".into())),
        };
        out.push((key, v));
    }
    Ok(Some(out))
}

/// Adds a finished child to its container: the next array item, or the value of the next key.
fn put(parent: &mut Frame<'_>, v: serde_json::Value) -> Result<()> {
    if !parent.object {
        parent.items.push(v);
        return Ok(());
    }
    let i = parent.next - 1 - parent.n; // the value just read pairs with key i
    let (kind, bytes, _) = parent.child(i)?;
    if kind != JENTRY_ISSTRING {
        return Err(JsonbError("jsonb object key is not a string".into()));
    }
    parent
        .map
        .insert(String::from_utf8_lossy(bytes).into_owned(), v);
    Ok(())
}

/// The depth of a JSON value (a scalar is 0, `[]` 1), found without recursion.
pub fn depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            serde_json::Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            serde_json::Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Drops a JSON value without recursion (a deep value's own drop would recurse once per level).
pub fn drop_deep(v: serde_json::Value) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => stack.extend(o.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect()
    }

    #[test]
    fn a_small_object_has_postgres_layout() {
        // SELECT '{"a": true, "bb": null}'::jsonb, laid out by hand from jsonb_util.c
        let mut out = Vec::new();
        write_object(&mut out, &[(b"bb", Value::Null), (b"a", Value::Bool(true))]).unwrap();
        assert_eq!(out.len(), 4 + 4 + 16 + 3);
        let w = words(&out[..24]);
        assert_eq!(w[0], (27u32) << 2, "varlena header");
        assert_eq!(w[1], JB_FOBJECT | 2);
        assert_eq!(w[2], JENTRY_HAS_OFF | 1, "key a: offset stored on stride 0");
        assert_eq!(w[3], 2, "key bb: length");
        assert_eq!(w[4], JENTRY_ISBOOL_TRUE, "value of a");
        assert_eq!(w[5], JENTRY_ISNULL, "value of bb");
        assert_eq!(&out[24..], b"abb");
    }

    #[test]
    fn keys_are_ordered_shorter_first_and_duplicates_refused() {
        assert_eq!(key_order(b"zz", b"aaa"), Ordering::Less);
        assert_eq!(key_order(b"ab", b"aa"), Ordering::Greater);
        let mut out = Vec::new();
        let e = write_object(&mut out, &[(b"x", Value::Null), (b"x", Value::Null)]).unwrap_err();
        assert!(e.0.contains("duplicate"));
    }

    #[test]
    fn numerics_are_aligned_and_get_a_four_byte_header() {
        let mut out = Vec::new();
        let num = [0x01u8, 0x80, 0x2a, 0x00]; // any numeric body: copied verbatim
        write_object(&mut out, &[(b"n", Value::Numeric(&num))]).unwrap();
        // header 4 + container header 4 + 2 entries 8 = 16, key "n" at 16, pad to 20
        assert_eq!(out[16], b'n');
        assert_eq!(&out[17..20], &[0, 0, 0]);
        let w = words(&out);
        assert_eq!(
            w[3],
            JENTRY_ISNUMERIC | (3 + 8),
            "padding counts in the length"
        );
        assert_eq!(w[5], 8 << 2, "numeric carries a 4-byte varlena header");
        assert_eq!(&out[24..28], &num);
        assert_eq!(out.len(), 28);
    }

    #[test]
    fn every_thirty_second_entry_stores_an_offset() {
        let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let pairs: Vec<(&[u8], Value)> = keys
            .iter()
            .map(|k| (k.as_bytes(), Value::String(b"v")))
            .collect();
        let mut out = Vec::new();
        write_object(&mut out, &pairs).unwrap();
        let w = words(&out[..8 + 4 * 40]);
        let entries = &w[2..42];
        for (i, e) in entries.iter().enumerate() {
            let has_off = e & JENTRY_HAS_OFF != 0;
            assert_eq!(has_off, i % 32 == 0, "entry {i}");
        }
        // entry 32 is the 13th value: end offset = 20 keys * 3 bytes + 13 values * 1 byte
        assert_eq!(entries[32] & JENTRY_OFFLENMASK, 60 + 13);
    }

    #[test]
    fn nested_containers_are_copied_at_an_aligned_offset() {
        // inner object {"a": true}: header, 2 entries, "a"
        let mut inner = Vec::new();
        write_object(&mut inner, &[(b"a", Value::Bool(true))]).unwrap();
        let root = &inner[4..];
        let mut out = Vec::new();
        write_object(&mut out, &[(b"m", Value::Jsonb(root))]).unwrap();
        let w = words(&out[..16]);
        // key "m" at 16, padding to 20, then the inner container
        assert_eq!(w[3], JENTRY_ISCONTAINER | (3 + root.len() as u32));
        assert_eq!(&out[20..], root);
    }

    #[test]
    fn nested_objects_are_written_as_an_embedded_object_would_be() {
        let num = [0x01u8, 0x80, 0x2a, 0x00];
        let mut inner = Vec::new();
        write_object(
            &mut inner,
            &[(b"zz", Value::Numeric(&num)), (b"a", Value::String(b"x"))],
        )
        .unwrap();
        let mut embedded = Vec::new();
        write_object(
            &mut embedded,
            &[
                (b"k", Value::Bool(false)),
                (b"obj", Value::Jsonb(&inner[4..])),
            ],
        )
        .unwrap();
        let mut nested = Vec::new();
        let obj = Value::Object(vec![
            (b"a".as_slice(), Value::String(b"x")),
            (b"zz".as_slice(), Value::Numeric(&num)),
        ]);
        write_object(&mut nested, &[(b"k", Value::Bool(false)), (b"obj", obj)]).unwrap();
        assert_eq!(nested, embedded);
        let dup = Value::Object(vec![
            (b"a".as_slice(), Value::Null),
            (b"a".as_slice(), Value::Null),
        ]);
        let e = write_object(&mut nested, &[(b"o", dup)]).unwrap_err();
        assert!(e.0.contains("duplicate"), "{e}");
    }

    #[test]
    fn scalar_jsonb_is_unwrapped() {
        // '"hi"'::jsonb: raw-scalar array of one string
        let mut root = Vec::new();
        root.extend_from_slice(&(JB_FARRAY | JB_FSCALAR | 1).to_le_bytes());
        root.extend_from_slice(&(JENTRY_HAS_OFF | 2).to_le_bytes());
        root.extend_from_slice(b"hi");
        let mut out = Vec::new();
        write_object(&mut out, &[(b"s", Value::Jsonb(&root))]).unwrap();
        let mut expect = Vec::new();
        write_object(&mut expect, &[(b"s", Value::String(b"hi"))]).unwrap();
        assert_eq!(out, expect);
        // a scalar numeric keeps its body
        let mut root = Vec::new();
        root.extend_from_slice(&(JB_FARRAY | JB_FSCALAR | 1).to_le_bytes());
        root.extend_from_slice(&(JENTRY_HAS_OFF | JENTRY_ISNUMERIC | 6).to_le_bytes());
        root.extend_from_slice(&(6u32 << 2).to_le_bytes());
        root.extend_from_slice(&[0x00, 0x80]);
        write_object(&mut out, &[(b"n", Value::Jsonb(&root))]).unwrap();
        write_object(&mut expect, &[(b"n", Value::Numeric(&[0x00, 0x80]))]).unwrap();
        assert_eq!(out, expect);
        // garbage is refused, not read past its end
        assert!(write_object(&mut out, &[(b"n", Value::Jsonb(&root[..6]))]).is_err());
        assert!(write_object(&mut out, &[(b"n", Value::Jsonb(&[1, 2]))]).is_err());
    }

    fn num(v: i64) -> Vec<u8> {
        let mut out = [0u8; 12];
        let n = integer_numeric(v, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn integers_become_short_numerics() {
        // header: 0x8000 short | 0x2000 negative | weight; digits base 10000, little-endian
        assert_eq!(num(0), vec![0x00, 0x80], "zero has no digits");
        assert_eq!(num(1), vec![0x00, 0x80, 1, 0]);
        assert_eq!(num(-1), vec![0x00, 0xA0, 1, 0]);
        assert_eq!(
            num(10_000),
            vec![0x01, 0x80, 1, 0],
            "trailing zero digits are dropped"
        );
        assert_eq!(num(12_345), vec![0x01, 0x80, 1, 0, 0x29, 0x09]);
        assert_eq!(num(100_000_002), vec![0x02, 0x80, 1, 0, 0, 0, 2, 0]);
        assert_eq!(
            num(i64::MIN),
            vec![0x04, 0xA0, 0x9A, 0x03, 0x2C, 0x0D, 0x70, 0x01, 0x65, 0x15, 0xB0, 0x16],
            "922 3372 0368 5477 5808"
        );
        assert_eq!(num(i64::MAX).len(), 12);
    }

    #[test]
    fn arrays_hold_their_elements() {
        let mut out = Vec::new();
        write_object(
            &mut out,
            &[(
                b"t",
                Value::Array(vec![Value::String(b"x"), Value::Null, Value::String(b"yz")]),
            )],
        )
        .unwrap();
        // 16: "t", pad to 20, array header at 20, 3 entries at 24, "x" "yz" at 36
        let w = words(&out[..36]);
        assert_eq!(w[5], JB_FARRAY | 3);
        assert_eq!(w[6], JENTRY_HAS_OFF | 1);
        assert_eq!(w[7], JENTRY_ISNULL);
        assert_eq!(w[8], 2);
        assert_eq!(&out[36..], b"xyz");
        assert_eq!(w[3], JENTRY_ISCONTAINER | (3 + 4 + 12 + 3));
    }

    fn read_plain(root: &[u8]) -> serde_json::Value {
        read(root, MAX_READ_DEPTH, &mut |_| Ok(serde_json::json!(0))).unwrap()
    }

    #[test]
    fn reads_what_the_writer_wrote() {
        let mut out = Vec::new();
        let items = Value::Array(vec![Value::Null, Value::Bool(true), Value::String(b"x")]);
        write_object(
            &mut out,
            &[
                (b"name", Value::String(b"Phone")),
                (b"ok", Value::Bool(false)),
                (b"list", items),
                (b"none", Value::Null),
            ],
        )
        .unwrap();
        assert_eq!(
            read_plain(&out[VARHDRSZ..]),
            serde_json::json!({"name": "Phone", "ok": false, "list": [null, true, "x"], "none": null})
        );
    }

    #[test]
    fn reads_past_the_offset_stride_and_numbers_through_the_callback() {
        let keys: Vec<String> = (0..70).map(|i| format!("k{i:02}")).collect();
        let mut nums = [[0u8; 12]; 70];
        let lens: Vec<usize> = (0..70)
            .map(|i| integer_numeric(i as i64 * 1000, &mut nums[i]))
            .collect();
        let pairs: Vec<(&[u8], Value)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_bytes(), Value::Numeric(&nums[i][..lens[i]])))
            .collect();
        let mut out = Vec::new();
        write_object(&mut out, &pairs).unwrap();
        let mut seen = 0;
        let v = read(&out[VARHDRSZ..], MAX_READ_DEPTH, &mut |b| {
            seen += 1;
            // the callback gets the numeric from its varlena header on
            let hdr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            Ok(serde_json::json!((hdr >> 2) as usize))
        })
        .unwrap();
        assert_eq!(seen, 70);
        assert_eq!(v.as_object().unwrap().len(), 70);
        assert_eq!(v["k00"], serde_json::json!(VARHDRSZ + lens[0]));
        assert_eq!(v["k69"], serde_json::json!(VARHDRSZ + lens[69]));
    }

    /// A jsonb root of `n` nested one-element arrays around `[]`, built by hand.
    fn nested(n: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = JB_FARRAY.to_le_bytes().to_vec(); // []
        for _ in 0..n {
            let mut outer = (1 | JB_FARRAY).to_le_bytes().to_vec();
            outer.extend_from_slice(
                &(JENTRY_ISCONTAINER | JENTRY_HAS_OFF | inner.len() as u32).to_le_bytes(),
            );
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        inner
    }

    #[test]
    fn deep_values_read_without_recursion_up_to_the_limit_and_are_refused_beyond() {
        let v = read_plain(&nested(MAX_READ_DEPTH - 1));
        assert_eq!(depth(&v), MAX_READ_DEPTH);
        drop_deep(v);
        let e = read(&nested(MAX_READ_DEPTH), MAX_READ_DEPTH, &mut |_| {
            Ok(serde_json::json!(0))
        })
        .unwrap_err();
        assert!(e.0.contains("deeper than 10000"), "{e}");
    }

    #[test]
    fn truncated_or_garbled_containers_are_errors_not_panics() {
        let mut out = Vec::new();
        write_object(&mut out, &[(b"a", Value::String(b"hello"))]).unwrap();
        let root = &out[VARHDRSZ..];
        for cut in 0..root.len() {
            let _ = read(&root[..cut], 16, &mut |_| Ok(serde_json::json!(0)));
        }
        let mut bad = root.to_vec();
        bad[4] ^= 0xFF;
        let _ = read(&bad, 16, &mut |_| Ok(serde_json::json!(0)));
    }

    #[test]
    fn elided_reading_cuts_deep_values_and_objects_split_without_reading_below() {
        let v = read_elided(&nested(50), 10, &mut |_| Ok(serde_json::json!(0))).unwrap();
        assert_eq!(depth(&v), 10);
        let mut out = Vec::new();
        let mut n = [0u8; 12];
        let len = integer_numeric(-1234567, &mut n);
        let inner = nested(3);
        write_object(
            &mut out,
            &[
                (b"a", Value::String(b"x")),
                (b"n", Value::Numeric(&n[..len])),
                (b"deep", Value::Jsonb(&inner)),
                (b"t", Value::Bool(true)),
            ],
        )
        .unwrap();
        let pairs = object_pairs(&out[VARHDRSZ..]).unwrap().unwrap();
        assert_eq!(pairs.len(), 4);
        // rewrite without one key: the rest is the same JSON
        let kept: Vec<(&[u8], Value)> = pairs.into_iter().filter(|(k, _)| *k != b"a").collect();
        let mut again = Vec::new();
        write_object(&mut again, &kept).unwrap();
        let numbers = &mut |b: &[u8]| Ok(serde_json::json!(b.len()));
        let before = read(&out[VARHDRSZ..], 100, numbers).unwrap();
        let after = read(&again[VARHDRSZ..], 100, numbers).unwrap();
        let mut expected = before.as_object().unwrap().clone();
        expected.remove("a");
        assert_eq!(after, serde_json::Value::Object(expected));
        assert_eq!(object_pairs(&nested(2)).unwrap(), None);
    }
}
