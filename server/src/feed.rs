//! Feeds: the subscriptions of one process that share a tenant, a user and a request (document,
//! variables, operation) share one reading of their events. A feed wakes when the watcher sees
//! its tenant's events go further (`watch.rs`), reads the events after its members' smallest
//! cursor with `udm_graphql_events` as that user (row-level security and field permissions
//! decide what they receive), and hands each member every event after its own cursor, in
//! order, once. A member that resumes from an old event id joins the same feed: it is caught up
//! from its own cursor while the others receive nothing twice.

use crate::auth::Identity;
use crate::http::GqlRequest;
use crate::App;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// What a feed hands a member: `next` payloads (with their event id) and, at the end, errors.
pub trait Sink: Send + Sync {
    /// Queues a message; false when the member's connection is gone or too far behind.
    fn send(&self, v: Value) -> bool {
        self.send_text(v.to_string())
    }

    /// Queues a message already written as JSON text.
    fn send_text(&self, text: String) -> bool;
}

struct Member {
    key: u64,
    /// the subscription's id on its connection
    id: String,
    cursor: i64,
    /// the token's expiry (seconds since the epoch, with the leeway)
    expires: i64,
    sink: Arc<dyn Sink>,
    /// fired when the feed ends this member (an error was sent, or its token expired)
    ended: Option<oneshot::Sender<()>>,
}

#[derive(PartialEq, Eq, Hash, Clone)]
struct Key {
    tenant: String,
    user: String,
    query: String,
    variables: String,
    operation: Option<String>,
}

struct Feed {
    members: Mutex<Vec<Member>>,
    /// a member joined (it may need events the others have had)
    joined: Notify,
}

#[derive(Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<Key, Arc<Feed>>>,
    next_key: std::sync::atomic::AtomicU64,
}

/// A member of a feed for as long as it lives (a subscription's task holds it).
pub struct Membership {
    feed: Arc<Feed>,
    key: u64,
    /// fires when the feed ended the membership
    pub ended: oneshot::Receiver<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.feed
            .members
            .lock()
            .unwrap()
            .retain(|m| m.key != self.key);
        // the feed notices it has no members left and ends
        self.feed.joined.notify_one();
    }
}

impl Feeds {
    /// Open feeds.
    pub fn len(&self) -> usize {
        self.feeds.lock().unwrap().len()
    }

    /// Joins the feed of (`who`, `req`) from `cursor`, starting the feed if it is new.
    pub fn join(
        app: &Arc<App>,
        who: &Identity,
        req: &GqlRequest,
        id: &str,
        cursor: i64,
        expires: i64,
        sink: Arc<dyn Sink>,
    ) -> Membership {
        let key = Key {
            tenant: who.tenant.clone(),
            user: who.user.clone(),
            query: req.query.clone(),
            variables: req
                .variables
                .as_ref()
                .map_or(String::new(), |v| v.to_string()),
            operation: req.operation_name.clone(),
        };
        let (tx, rx) = oneshot::channel();
        let member_key = app.feeds.next_key.fetch_add(1, Ordering::Relaxed);
        let member = Member {
            key: member_key,
            id: id.to_string(),
            cursor,
            expires,
            sink,
            ended: Some(tx),
        };
        let mut feeds = app.feeds.feeds.lock().unwrap();
        let feed = match feeds.get(&key) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(Feed {
                    members: Mutex::new(Vec::new()),
                    joined: Notify::new(),
                });
                feeds.insert(key.clone(), f.clone());
                let (app2, f2, who2, req2) = (app.clone(), f.clone(), who.clone(), req.clone());
                tokio::spawn(async move { run(app2, key, f2, who2, req2).await });
                f
            }
        };
        feed.members.lock().unwrap().push(member);
        drop(feeds);
        feed.joined.notify_one();
        Membership {
            feed,
            key: member_key,
            ended: rx,
        }
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Ends the members `pick` chooses, sending each `message(id)` first.
fn end_members(feed: &Feed, pick: impl Fn(&Member) -> bool, message: impl Fn(&str) -> Value) {
    let mut members = feed.members.lock().unwrap();
    for m in members.iter_mut().filter(|m| pick(m)) {
        m.sink.send(message(&m.id));
        if let Some(tx) = m.ended.take() {
            let _ = tx.send(());
        }
    }
    members.retain(|m| m.ended.is_some());
}

/// A feed's life: read and hand out events while it has members.
async fn run(app: Arc<App>, key: Key, feed: Arc<Feed>, who: Identity, req: GqlRequest) {
    let interest = app.watcher.interest(&key.tenant);
    let mut head = interest.head.clone();
    let poll = Duration::from_millis(app.config.poll_interval_ms);
    // when the watcher is away, look now and then all the same
    let fallback = poll.max(Duration::from_secs(1)) * 5;
    let mut retry = Duration::ZERO;
    // read at once: a new member starts from its own cursor
    let mut read = true;
    // when the feed learnt of the events it reads next (for the delivery lag)
    let mut learnt = Instant::now();
    // Reads are spaced by at least `feed_interval_ms`: every read has a fixed cost in the
    // database, and a busy tenant with many distinct subscribers would otherwise cost a read per
    // feed per change. Not for a member that joined or a backlog (`more`): those read at once.
    let gap = Duration::from_millis(app.config.feed_interval_ms);
    let mut last_read: Option<Instant> = None;
    let mut urgent = true;
    loop {
        {
            let mut feeds = app.feeds.feeds.lock().unwrap();
            if feed.members.lock().unwrap().is_empty() {
                if feeds.get(&key).is_some_and(|f| Arc::ptr_eq(f, &feed)) {
                    feeds.remove(&key);
                }
                return;
            }
        }
        let leeway = app.config.jwt_leeway_s as i64;
        let t = now_s();
        end_members(
            &feed,
            |m| t > m.expires + leeway,
            |id| {
                json!({"id": id, "type": "error", "payload": [
                    {"message": "the token has expired", "extensions": {"code": "UNAUTHENTICATED"}}]})
            },
        );
        let lowest = feed.members.lock().unwrap().iter().map(|m| m.cursor).min();
        let Some(lowest) = lowest else { continue };
        let seen_head = *head.borrow_and_update();
        if read || lowest < seen_head {
            read = false;
            if let Some(t) = last_read.filter(|_| !urgent) {
                if let Some(wait) = gap.checked_sub(t.elapsed()) {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = feed.joined.notified() => {}
                    }
                }
            }
            urgent = false;
            last_read = Some(Instant::now());
            // the members as they are now (one may have joined while the feed waited)
            let from = feed.members.lock().unwrap().iter().map(|m| m.cursor).min();
            let Some(from) = from else { continue };
            let v = match crate::db::events(&app, &who, &req, from, app.config.events_batch).await {
                Ok(v) => v,
                Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                    // the database is away: try again (no event is lost, the cursors stay)
                    tokio::time::sleep(poll * 10).await;
                    read = true;
                    continue;
                }
                Err(e) => {
                    let errors = json!([{"message": e.message, "extensions": {"code": e.code}}]);
                    end_members(&feed, |_| true, |id| error(id, &errors));
                    continue;
                }
            };
            if let Some(errors) = v.get("errors") {
                end_members(&feed, |_| true, |id| error(id, errors));
                continue;
            }
            let events = v["events"].as_array().cloned().unwrap_or_default();
            let reached = v["cursor"].as_i64().unwrap_or(from);
            let mut delivered = 0u64;
            // each event's payload written once for all members: a member's message is its
            // subscription id around it
            let written: Vec<(i64, String)> = events
                .iter()
                .filter_map(|e| {
                    let event_id = e["event_id"].as_i64()?;
                    let mut payload = e["payload"].clone();
                    payload["extensions"] = json!({"eventId": event_id});
                    Some((event_id, payload.to_string()))
                })
                .collect();
            {
                let mut members = feed.members.lock().unwrap();
                for m in members.iter_mut() {
                    if m.cursor < from {
                        // joined while this read ran, from further back than it read: the next
                        // read (its joining asked for one) starts from its cursor
                        continue;
                    }
                    let id = Value::from(m.id.as_str()).to_string();
                    for (event_id, payload) in &written {
                        if *event_id <= m.cursor {
                            continue;
                        }
                        let text =
                            format!("{{\"id\":{id},\"type\":\"next\",\"payload\":{payload}}}");
                        if !m.sink.send_text(text) {
                            break;
                        }
                        delivered += 1;
                    }
                    m.cursor = m.cursor.max(reached);
                }
            }
            if delivered > 0 {
                app.metrics.delivered(delivered, learnt.elapsed());
            }
            if v["more"] == Value::Bool(true) {
                read = true;
                urgent = true;
                continue;
            }
            if reached < seen_head {
                // Ids handed out to transactions still open: look again when they may have
                // ended. Right after progress (events were read, writers are busy) at the
                // watcher's pace, so a feed reads at most once per `poll_interval_ms` under load;
                // with no progress (one long transaction) from 5 ms doubling up to a second.
                retry = if reached > from {
                    poll
                } else if retry.is_zero() {
                    Duration::from_millis(5)
                } else {
                    (retry * 2).min(Duration::from_secs(1))
                };
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = feed.joined.notified() => { read = true; urgent = true; }
                }
                continue;
            }
            retry = Duration::ZERO;
        }
        tokio::select! {
            r = head.changed() => {
                if r.is_err() {
                    // cannot happen while the feed holds its interest; do not spin if it did
                    tokio::time::sleep(fallback).await;
                    read = true;
                }
            }
            _ = feed.joined.notified() => { read = true; urgent = true; }
            _ = tokio::time::sleep(fallback) => { read = true; }
            // a token expires: its subscription ends then, not at the next event
            _ = tokio::time::sleep(until_expiry(&feed, leeway)) => {}
        }
        learnt = Instant::now();
    }
}

/// How long until the first member's token expires (with the leeway), at least a second.
fn until_expiry(feed: &Feed, leeway: i64) -> Duration {
    let first = feed.members.lock().unwrap().iter().map(|m| m.expires).min();
    let left = first.map_or(i64::MAX / 2, |e| e + leeway + 1 - now_s());
    Duration::from_secs(left.clamp(1, 86_400) as u64)
}

fn error(id: &str, errors: &Value) -> Value {
    json!({"id": id, "type": "error", "payload": errors})
}
