//! Limits on what callers hand udm: a spec (query, view, aggregate, definition, permissions,
//! subscription condition) is refused before any work when it nests deeper, is larger, or holds
//! a longer list than the superuser-set limits allow (`udm.max_spec_depth`, `udm.max_spec_size`,
//! `udm.max_list_values`), with an error naming the limit. Without them a caller could make one
//! call cost minutes (an `in` list of 100,000 values) or exhaust the stack.

use crate::error::{Result, SqlState, UdmError};
use crate::guc;
use serde_json::Value;

/// What a spec measures: its depth, its approximate size in bytes, its longest list.
fn measure(v: &Value) -> (usize, usize, usize) {
    let (mut depth, mut size, mut list) = (0, 0, 0);
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                depth = depth.max(d + 1);
                list = list.max(a.len());
                size += 2;
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                depth = depth.max(d + 1);
                list = list.max(o.len());
                size += 2;
                for (k, x) in o {
                    size += k.len() + 4;
                    stack.push((x, d + 1));
                }
            }
            Value::String(s) => size += s.len() + 2,
            Value::Number(n) => size += n.as_str().len(),
            _ => size += 4,
        }
    }
    (depth, size, list)
}

fn over(what: &str, found: String, setting: &str, limit: String) -> UdmError {
    UdmError::new(
        SqlState::ProgramLimitExceeded,
        format!("{what} {found}, above the limit of {limit} ({setting})"),
    )
    .hint(format!(
        "split the request, or have a superuser raise {setting}"
    ))
}

/// Refuses a spec beyond the limits; `what` names it in the error ("udm_query spec").
pub fn check_spec(v: &Value, what: &str) -> Result<()> {
    let (depth, size, list) = measure(v);
    let max_depth = guc::MAX_SPEC_DEPTH.get().max(1) as usize;
    if depth > max_depth {
        return Err(over(
            what,
            format!("nests {depth} levels deep"),
            "udm.max_spec_depth",
            max_depth.to_string(),
        ));
    }
    let max_kb = guc::MAX_SPEC_SIZE_KB.get().max(1) as usize;
    if size > max_kb * 1024 {
        return Err(over(
            what,
            format!("is about {} kB", size.div_ceil(1024)),
            "udm.max_spec_size",
            format!("{max_kb} kB"),
        ));
    }
    let max_list = guc::MAX_LIST_VALUES.get().max(1) as usize;
    if list > max_list {
        return Err(over(
            what,
            format!("has a list of {list} values"),
            "udm.max_list_values",
            max_list.to_string(),
        ));
    }
    Ok(())
}
