//! Prometheus metrics at `/metrics` (text exposition format 0.0.4), kept in atomics: requests by
//! operation type and status, request latency, the pool, WebSockets, subscriptions, feeds and
//! the delivery of events.

use crate::App;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// microseconds
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}"
            );
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    /// (operation, status) -> count
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// operation -> latency
    latency: Mutex<BTreeMap<&'static str, std::sync::Arc<Histogram>>>,
    events_delivered: AtomicU64,
    delivery: Histogram,
    subscriptions: AtomicU64,
    slow_consumers: AtomicU64,
}

/// The operation types requests are counted by.
pub fn operation_label(kind: Option<crate::http::Kind>) -> &'static str {
    match kind {
        Some(crate::http::Kind::Query) => "query",
        Some(crate::http::Kind::Mutation) => "mutation",
        Some(crate::http::Kind::Subscription) => "subscription",
        None => "none",
    }
}

impl Metrics {
    pub fn request(&self, op: &'static str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((op, status))
            .or_default() += 1;
        let h = self.latency.lock().unwrap().entry(op).or_default().clone();
        h.observe(took);
    }

    /// `n` events handed to subscribers, `lag` after their feed learnt of them.
    pub fn delivered(&self, n: u64, lag: Duration) {
        self.events_delivered.fetch_add(n, Ordering::Relaxed);
        self.delivery.observe(lag);
    }

    pub fn subscription_opened(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn subscription_closed(&self) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, app: &App) -> String {
        let mut out = String::new();
        out.push_str("# HELP udm_server_requests_total HTTP requests by operation (GraphQL: its operation type; rest: the REST bridge) and status.\n# TYPE udm_server_requests_total counter\n");
        for ((op, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "udm_server_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP udm_server_request_duration_seconds Latency of HTTP GraphQL requests by operation type.\n# TYPE udm_server_request_duration_seconds histogram\n");
        for (op, h) in self.latency.lock().unwrap().iter() {
            h.write(
                &mut out,
                "udm_server_request_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        let s = app.pool.status();
        let _ = write!(
            out,
            "# HELP udm_server_pool_connections Pooled database connections by state.\n# TYPE udm_server_pool_connections gauge\n\
             udm_server_pool_connections{{state=\"in_use\"}} {}\nudm_server_pool_connections{{state=\"idle\"}} {}\n\
             # HELP udm_server_pool_max Largest size of the pool.\n# TYPE udm_server_pool_max gauge\nudm_server_pool_max {}\n\
             # HELP udm_server_pool_waiting Requests waiting for a pooled connection.\n# TYPE udm_server_pool_waiting gauge\nudm_server_pool_waiting {}\n",
            s.size.saturating_sub(s.available),
            s.available,
            s.max_size,
            s.waiting
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        gauge(
            &mut out,
            "udm_server_websockets_open",
            "Open WebSocket connections.",
            app.sockets.load(Ordering::SeqCst) as u64,
        );
        gauge(
            &mut out,
            "udm_server_subscriptions_open",
            "Active subscriptions.",
            self.subscriptions.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "udm_server_feeds_open",
            "Distinct (tenant, user, request) subscriptions reading events.",
            app.feeds.len() as u64,
        );
        gauge(
            &mut out,
            "udm_server_watched_tenants",
            "Tenants the event watcher watches.",
            app.watcher.watched() as u64,
        );
        gauge(
            &mut out,
            "udm_server_watcher_connected",
            "Whether the event watcher's database connection is up.",
            u64::from(app.watcher.connected.load(Ordering::SeqCst)),
        );
        let _ = write!(
            out,
            "# HELP udm_server_events_delivered_total Events handed to subscribers.\n# TYPE udm_server_events_delivered_total counter\nudm_server_events_delivered_total {}\n\
             # HELP udm_server_slow_consumers_total WebSockets closed because their client fell too far behind.\n# TYPE udm_server_slow_consumers_total counter\nudm_server_slow_consumers_total {}\n",
            self.events_delivered.load(Ordering::Relaxed),
            self.slow_consumers.load(Ordering::Relaxed)
        );
        out.push_str("# HELP udm_server_event_delivery_seconds Event delivery lag: from a feed learning of new events to handing them to its subscribers.\n# TYPE udm_server_event_delivery_seconds histogram\n");
        self.delivery
            .write(&mut out, "udm_server_event_delivery_seconds", "");
        out
    }
}
