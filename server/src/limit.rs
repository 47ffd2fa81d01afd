//! Connections per token: a token holds at most `max_connections_per_token` open WebSockets and
//! HTTP requests in flight together, so one leaked or abused token cannot take the pool or the
//! process. Tokens are counted by a keyed hash of their text (the token itself is not kept).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

pub struct PerToken {
    max: usize,
    hasher: RandomState,
    held: Mutex<HashMap<u64, usize>>,
}

/// One connection of a token, given back when dropped.
pub struct Slot {
    limits: Arc<PerToken>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.limits.held.lock().unwrap();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl PerToken {
    pub fn new(max: usize) -> Arc<PerToken> {
        Arc::new(PerToken {
            max,
            hasher: RandomState::new(),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A connection for `token`, or None when it holds `max` already.
    pub fn take(self: &Arc<Self>, token: &str) -> Option<Slot> {
        let key = self.hasher.hash_one(token);
        let mut m = self.held.lock().unwrap();
        let n = m.entry(key).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            limits: self.clone(),
            key,
        })
    }
}
