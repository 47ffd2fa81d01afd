//! One watcher per process: a single database connection that learns when a watched tenant has
//! new events and wakes that tenant's subscriptions. Writers pay nothing for it: it asks
//! `udm_event_heads` (one sequence read per watched tenant) every `poll_interval_ms`, and when
//! the database announces changes (`udm.notify_changes = on`) it also LISTENs on the tenants'
//! channels and asks at once on a notification. Subscriptions then read their events through
//! the pool as their own subscriber (`feed.rs`); the watcher reads no event and no record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

struct Watched {
    head: watch::Sender<i64>,
    /// live `Interest`s in this tenant
    interested: usize,
}

pub struct Watcher {
    tenants: Mutex<HashMap<String, Watched>>,
    /// asks the watcher to look now (a new tenant to watch, or a notification)
    poke: Notify,
    /// whether the watcher's connection is up (`/readyz` and metrics)
    pub connected: AtomicBool,
}

/// Interest in a tenant's events; the tenant is watched while one is alive.
pub struct Interest {
    watcher: Arc<Watcher>,
    tenant: String,
    pub head: watch::Receiver<i64>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut m = self.watcher.tenants.lock().unwrap();
        if let Some(w) = m.get_mut(&self.tenant) {
            w.interested -= 1;
            if w.interested == 0 {
                // the watcher UNLISTENs on its next round (it notices the tenant is gone)
                m.remove(&self.tenant);
            }
        }
    }
}

impl Watcher {
    pub fn new() -> Arc<Watcher> {
        Arc::new(Watcher {
            tenants: Mutex::new(HashMap::new()),
            poke: Notify::new(),
            connected: AtomicBool::new(false),
        })
    }

    /// Watches `tenant` for as long as the returned interest lives; its `head` changes when the
    /// tenant's events may have gone further.
    pub fn interest(self: &Arc<Self>, tenant: &str) -> Interest {
        let mut m = self.tenants.lock().unwrap();
        let w = m.entry(tenant.to_string()).or_insert_with(|| Watched {
            head: watch::channel(0).0,
            interested: 0,
        });
        w.interested += 1;
        let head = w.head.subscribe();
        drop(m);
        self.poke.notify_one();
        Interest {
            watcher: self.clone(),
            tenant: tenant.to_string(),
            head,
        }
    }

    /// Tenants watched now.
    pub fn watched(&self) -> usize {
        self.tenants.lock().unwrap().len()
    }

    /// Runs for the life of the process: connects (again, after a failure), then asks for the
    /// heads of the watched tenants every `poll` and on every notification.
    pub async fn run(self: Arc<Self>, pg: tokio_postgres::Config, poll: Duration) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let e = self.session(&pg, poll, &mut backoff).await;
            self.connected.store(false, Ordering::SeqCst);
            tracing::warn!(error = %e, "event watcher: no connection, connecting again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(
        &self,
        pg: &tokio_postgres::Config,
        poll: Duration,
        backoff: &mut Duration,
    ) -> tokio_postgres::Error {
        let (client, mut conn) = match pg.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let notified = Arc::new(Notify::new());
        let lost = Arc::new(Notify::new());
        let (n2, l2) = (notified.clone(), lost.clone());
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => n2.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        l2.notify_one();
                        return;
                    }
                }
            }
        });
        let _stop_driver = AbortOnDrop(driver);
        let heads = match client
            .prepare("SELECT tenant, head, channel FROM udm_event_heads($1::text[])")
            .await
        {
            Ok(h) => h,
            Err(e) => return e,
        };
        self.connected.store(true, Ordering::SeqCst);
        *backoff = Duration::from_millis(100);
        tracing::info!("event watcher connected");
        // tenant -> the channel this connection LISTENs on
        let mut listening: HashMap<String, String> = HashMap::new();
        loop {
            let names: Vec<String> = self.tenants.lock().unwrap().keys().cloned().collect();
            let mut statements = Vec::new();
            if !names.is_empty() {
                let rows = match client.query(&heads, &[&names]).await {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                let m = self.tenants.lock().unwrap();
                for r in rows {
                    let (tenant, head, channel): (String, i64, String) =
                        (r.get(0), r.get(1), r.get(2));
                    if let Some(w) = m.get(&tenant) {
                        w.head.send_if_modified(|h| {
                            let moved = head > *h;
                            *h = (*h).max(head);
                            moved
                        });
                        listening.entry(tenant).or_insert_with(|| {
                            statements.push(format!("LISTEN {}", quote(&channel)));
                            channel
                        });
                    }
                }
            }
            listening.retain(|tenant, channel| {
                let keep = names.contains(tenant);
                if !keep {
                    statements.push(format!("UNLISTEN {}", quote(channel)));
                }
                keep
            });
            if !statements.is_empty() {
                if let Err(e) = client.batch_execute(&statements.join("; ")).await {
                    return e;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = notified.notified() => {}
                _ = self.poke.notified() => {}
                _ = lost.notified() => {}
            }
            if client.is_closed() {
                // the next statement fails with the reason
                if let Err(e) = client.simple_query("").await {
                    return e;
                }
            }
        }
    }
}

/// A double-quoted identifier (channels are udm's own names, quoted all the same).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
