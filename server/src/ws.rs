//! Subscriptions (and queries and mutations) over WebSocket: the `graphql-transport-ws` protocol
//! (enisdenjo/graphql-ws, PROTOCOL.md). The token comes in `connection_init`'s payload
//! (`{"token": "<JWT>"}`, or `{"Authorization": "Bearer <JWT>"}`). Each subscription asks the
//! database for the events after its cursor (`udm_graphql_events`, as the subscriber: row-level
//! security and field permissions decide what it receives), in order, and a subscriber that
//! resumes with `extensions.after` (the last `eventId` it saw) gets every event after it.

use crate::auth::Identity;
use crate::error::ApiError;
use crate::http::{operation_kind, GqlRequest, Kind};
use crate::App;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub const PROTOCOL: &str = "graphql-transport-ws";

/// A close code and reason of the protocol.
struct Close(u16, String);

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Close(code, reason.into())
    }
}

/// What a task hands the connection to send.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<String>,
    overflow: Arc<Notify>,
}

impl Outbox {
    /// Queues a message; false when the connection is gone or its buffer is full (then the
    /// connection is closed as a slow consumer).
    fn push(&self, v: Value) -> bool {
        self.push_text(v.to_string())
    }

    fn push_text(&self, text: String) -> bool {
        match self.tx.try_send(text) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

struct Session {
    app: Arc<App>,
    who: Option<(Identity, i64)>,
    initialised: bool,
    subs: HashMap<String, JoinHandle<()>>,
    out: Outbox,
    /// this connection's place among its token's connections
    _slot: Option<crate::limit::Slot>,
}

/// Counts an open WebSocket for as long as it lives.
struct Open(Arc<App>);

impl Open {
    fn new(app: Arc<App>) -> Self {
        app.sockets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Open(app)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .sockets
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub async fn session(app: Arc<App>, mut socket: WebSocket, protocol_ok: bool) {
    let _open = Open::new(app.clone());
    if !protocol_ok {
        close(&mut socket, Close::new(4406, "Subprotocol not acceptable")).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<String>(app.config.subscriber_buffer);
    let overflow = Arc::new(Notify::new());
    let mut shutdown = app.shutdown.clone();
    let mut s = Session {
        app: app.clone(),
        who: None,
        initialised: false,
        subs: HashMap::new(),
        _slot: None,
        out: Outbox {
            tx,
            overflow: overflow.clone(),
        },
    };
    let init_deadline =
        tokio::time::sleep(Duration::from_millis(app.config.connection_init_timeout_ms));
    tokio::pin!(init_deadline);
    let ending = loop {
        tokio::select! {
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Err(c) = s.handle(t.as_str()).await {
                        break Some(c);
                    }
                }
                Some(Ok(Message::Binary(_))) => break Some(Close::new(4400, "Binary messages are not part of the protocol")),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
            },
            Some(text) = rx.recv() => {
                // what else is waiting goes out with it, in one flush
                let mut ok = socket.feed(Message::Text(Utf8Bytes::from(text))).await.is_ok();
                let mut n = 1;
                while ok && n < 256 {
                    match rx.try_recv() {
                        Ok(more) => {
                            ok = socket.feed(Message::Text(Utf8Bytes::from(more))).await.is_ok();
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                if !ok || socket.flush().await.is_err() {
                    break None;
                }
            }
            _ = &mut init_deadline, if !s.initialised => {
                break Some(Close::new(4408, "Connection initialisation timeout"));
            }
            _ = overflow.notified() => {
                app.metrics.slow_consumer();
                break Some(Close::new(1008, "Slow consumer: too many messages waiting"));
            }
            _ = shutdown.changed() => {
                break Some(Close::new(1001, "Server shutting down"));
            }
        }
    };
    for (_, h) in s.subs.drain() {
        h.abort();
    }
    if let Some(c) = ending {
        close(&mut socket, c).await;
    }
}

async fn close(socket: &mut WebSocket, c: Close) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: c.0,
            reason: Utf8Bytes::from(c.1),
        })))
        .await;
}

fn invalid(what: &str) -> Close {
    Close::new(4400, format!("Invalid message: {what}"))
}

impl Session {
    async fn handle(&mut self, text: &str) -> Result<(), Close> {
        let msg: Value = serde_json::from_str(text).map_err(|_| invalid("not JSON"))?;
        let o = msg.as_object().ok_or_else(|| invalid("not an object"))?;
        match o.get("type").and_then(Value::as_str) {
            Some("connection_init") => self.init(o.get("payload")).await,
            Some("ping") => {
                self.out.push(json!({"type": "pong"}));
                Ok(())
            }
            Some("pong") => Ok(()),
            Some("subscribe") => self.subscribe(o),
            Some("complete") => {
                let id = o
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("complete without an id"))?;
                if let Some(h) = self.subs.remove(id) {
                    h.abort();
                }
                Ok(())
            }
            _ => Err(invalid("unknown type")),
        }
    }

    async fn init(&mut self, payload: Option<&Value>) -> Result<(), Close> {
        if self.initialised {
            return Err(Close::new(4429, "Too many initialisation requests"));
        }
        self.initialised = true;
        let p = payload.and_then(Value::as_object);
        let token = p
            .and_then(|p| {
                p.get("token").and_then(Value::as_str).or_else(|| {
                    p.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .and_then(|(_, v)| v.as_str())
                        .and_then(|v| v.strip_prefix("Bearer ").or(Some(v)))
                })
            })
            .ok_or_else(|| Close::new(4403, "Forbidden"))?;
        let (who, exp) = self
            .app
            .keys
            .verify_with_expiry(token.trim())
            .map_err(|_| Close::new(4403, "Forbidden"))?;
        let token = token.trim();
        self._slot = Some(
            self.app
                .per_token
                .take(token)
                .ok_or_else(|| Close::new(1008, "Too many connections for this token"))?,
        );
        match crate::db::check(&self.app, &who).await {
            Ok(()) => {}
            Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => {
                return Err(Close::new(4403, "Forbidden"))
            }
            Err(_) => return Err(Close::new(4500, "Internal server error")),
        }
        self.who = Some((who, exp));
        self.out.push(json!({"type": "connection_ack"}));
        Ok(())
    }

    fn subscribe(&mut self, o: &Map<String, Value>) -> Result<(), Close> {
        let Some((who, exp)) = self.who.clone() else {
            return Err(Close::new(4401, "Unauthorized"));
        };
        let id = o
            .get("id")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty() && i.len() <= 256)
            .ok_or_else(|| invalid("subscribe needs an id"))?
            .to_string();
        let p = o
            .get("payload")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("subscribe needs a payload"))?;
        let req = crate::http::request_from_object(p).map_err(|e| invalid(&e.message))?;
        let after = match p.get("extensions").and_then(|e| e.get("after")) {
            None | Some(Value::Null) => None,
            Some(a) => Some(
                a.as_i64()
                    .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
                    .filter(|a| *a >= 0)
                    .ok_or_else(|| invalid("extensions.after must be an event id"))?,
            ),
        };
        self.subs.retain(|_, h| !h.is_finished());
        if self.subs.contains_key(&id) {
            return Err(Close::new(
                4409,
                format!("Subscriber for {id} already exists"),
            ));
        }
        if self.subs.len() >= self.app.config.max_subscriptions_per_connection {
            self.out.push(json!({"id": id, "type": "error", "payload": [
                {"message": "too many subscriptions on this connection", "extensions": {"code": "LIMIT_EXCEEDED"}}]}));
            return Ok(());
        }
        let (app, out, key) = (self.app.clone(), self.out.clone(), id.clone());
        let task = match operation_kind(&req.query, req.operation_name.as_deref()) {
            Some(Kind::Subscription) => {
                tokio::spawn(async move { subscription(app, who, exp, key, req, after, out).await })
            }
            _ => tokio::spawn(async move { single(app, who, key, req, out).await }),
        };
        self.subs.insert(id, task);
        Ok(())
    }
}

fn error_message(id: &str, errors: Value) -> Value {
    json!({"id": id, "type": "error", "payload": errors})
}

fn api_errors(e: &ApiError) -> Value {
    json!([{"message": e.message, "extensions": {"code": e.code}}])
}

/// A query or mutation over the socket: one result, then complete.
async fn single(app: Arc<App>, who: Identity, id: String, req: GqlRequest, out: Outbox) {
    match crate::db::graphql(&app, &who, &req, false)
        .await
        .and_then(|raw| raw.parse())
    {
        Ok(body) if body.get("data").is_none() => {
            out.push(error_message(&id, body["errors"].clone()));
        }
        Ok(body) => {
            if out.push(json!({"id": id, "type": "next", "payload": body})) {
                out.push(json!({"id": id, "type": "complete"}));
            }
        }
        Err(e) => {
            out.push(error_message(&id, api_errors(&e)));
        }
    }
}

impl crate::feed::Sink for Outbox {
    fn send_text(&self, text: String) -> bool {
        self.push_text(text)
    }
}

/// Counts an active subscription for as long as it lives.
struct Active(Arc<App>);

impl Active {
    fn new(app: Arc<App>) -> Self {
        app.metrics.subscription_opened();
        Active(app)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.metrics.subscription_closed();
    }
}

/// A subscription: the events after the cursor (`extensions.after`, or the tenant's horizon
/// now), in order, each as a `next` whose `payload.extensions.eventId` is the cursor to resume
/// after. The subscription joins the feed of its tenant, user and request (`feed.rs`), which
/// reads the events when the process's watcher sees them (`watch.rs`); it lives until the
/// client completes it (the task is aborted, which leaves the feed) or the feed ends it.
async fn subscription(
    app: Arc<App>,
    who: Identity,
    exp: i64,
    id: String,
    req: GqlRequest,
    after: Option<i64>,
    out: Outbox,
) {
    let _active = Active::new(app.clone());
    let cursor = match after {
        Some(a) => a,
        None => match crate::db::horizon(&app, &who).await {
            Ok(h) => h,
            Err(e) => {
                out.push(error_message(&id, api_errors(&e)));
                return;
            }
        },
    };
    let mut membership =
        crate::feed::Feeds::join(&app, &who, &req, &id, cursor, exp, Arc::new(out));
    let _ = (&mut membership.ended).await;
}
