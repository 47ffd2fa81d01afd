//! The event stream under concurrent writers: many writers (short and long transactions,
//! rollbacks, bulk statements, updates) race consumers reading with `udm_events`, with
//! `udm_consume`/`udm_ack`, and listening to notifications. Every committed event must reach each
//! consumer exactly once, in id order, with no gap; every committed event must be announced.
//! Several rounds, each bounded in time.

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use udm_tests::*;

const WRITERS: usize = 8;
const TRANSACTIONS: usize = 40;
const ROUNDS: usize = 3;

fn session(role: &str, tenant: &str) -> Client {
    let mut c = connect_as(role);
    c.query_one("SELECT udm_use($1)", &[&tenant]).unwrap();
    c
}

/// One writer's transactions, of every kind, in an order that differs per writer.
fn write(mut c: Client, t: &str, w: usize) {
    for i in 0..TRANSACTIONS {
        let kind = (i + w) % 5;
        let mut tx = c.transaction().unwrap();
        match kind {
            0 => tx
                .batch_execute(&format!("INSERT INTO \"{t}\".item (n) VALUES ({w})"))
                .unwrap(),
            1 => {
                tx.batch_execute(&format!("INSERT INTO \"{t}\".item (n) VALUES ({w})"))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2 + (i % 3) as u64));
            }
            2 => {
                tx.batch_execute(&format!("INSERT INTO \"{t}\".item (n) VALUES ({w})"))
                    .unwrap();
                tx.rollback().unwrap();
                continue;
            }
            3 => tx
                .batch_execute(&format!(
                    "INSERT INTO \"{t}\".item (n) SELECT g FROM generate_series(1, {}) g",
                    20 + 65 * (i % 3)
                ))
                .unwrap(),
            _ => {
                tx.batch_execute(&format!(
                    "UPDATE \"{t}\".item SET n = n + 1 WHERE id = (SELECT id FROM \"{t}\".item ORDER BY id DESC LIMIT 1 OFFSET {w}); \
                     INSERT INTO \"{t}\".item (n) VALUES ({w})"
                ))
                .unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        tx.commit().unwrap();
    }
}

/// Reads the stream until `done` and caught up with `end()`; returns the ids in delivery order.
fn consume(
    mut c: Client,
    mode: &str,
    done: Arc<AtomicBool>,
    end: Arc<std::sync::Mutex<Option<i64>>>,
) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut last = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{mode}: did not catch up");
        let page = if mode == "events" {
            json(&mut c, &format!("SELECT udm_events({last}, 1000)"))
        } else {
            json(&mut c, "SELECT udm_consume('racer', 1000)")
        };
        let events = page["events"].as_array().unwrap();
        for e in events {
            seen.push(e["event_id"].as_i64().unwrap());
        }
        if let Some(l) = events.last() {
            last = l["event_id"].as_i64().unwrap();
            if mode == "consume" {
                json(&mut c, &format!("SELECT udm_ack('racer', {last})"));
            }
        }
        if done.load(Ordering::SeqCst) {
            if let Some(end) = *end.lock().unwrap() {
                if last >= end {
                    return seen;
                }
            }
        }
        if events.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Adds the event ids the notifications arriving within `wait` announce (a batch notification
/// names a range).
fn drain(c: &mut Client, wait: Duration, ids: &mut BTreeSet<i64>) {
    let mut n = c.notifications();
    let mut it = n.timeout_iter(wait);
    while let Ok(Some(note)) = it.next() {
        let v: Value = serde_json::from_str(note.payload()).unwrap();
        if v["batch"] == json!(true) {
            let (a, b) = (
                v["first_event"].as_i64().unwrap(),
                v["last_event"].as_i64().unwrap(),
            );
            ids.extend(a..=b);
        } else {
            ids.insert(v["event"].as_i64().unwrap());
        }
    }
}

/// Collects announced event ids until told to stop, then drains what is still on its way.
fn listen(mut c: Client, done: Arc<AtomicBool>) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    while !done.load(Ordering::SeqCst) {
        drain(&mut c, Duration::from_millis(50), &mut ids);
    }
    drain(&mut c, Duration::from_millis(300), &mut ids);
    ids
}

#[test]
fn every_committed_event_reaches_every_consumer_once_in_order_under_concurrent_writers() {
    let mut adm = admin();
    for round in 0..ROUNDS {
        let mut m = member(&mut adm, "race");
        let t = m.tenant.clone();
        json(
            &mut m.client,
            r#"SELECT udm_define_entity('item', '{"fields": [{"name": "n", "type": "integer"}]}')"#,
        );
        m.client
            .batch_execute(&format!(
                "INSERT INTO \"{t}\".item (n) SELECT g FROM generate_series(1, 20) g"
            ))
            .unwrap();
        let channel: String = scalar(&mut m.client, "SELECT udm_events_channel()");
        let before: i64 = scalar(
            &mut m.client,
            &format!("SELECT max(audit_id) FROM \"{t}\"._udm_audit"),
        );
        let done = Arc::new(AtomicBool::new(false));
        let end = Arc::new(std::sync::Mutex::new(None));
        let listener = {
            let (mut c, done) = (session(&m.role, &t), done.clone());
            c.batch_execute(&format!("LISTEN \"{channel}\"")).unwrap();
            std::thread::spawn(move || listen(c, done))
        };
        let consumers: Vec<_> = ["events", "consume"]
            .into_iter()
            .map(|mode| {
                let (c, done, end) = (session(&m.role, &t), done.clone(), end.clone());
                std::thread::spawn(move || consume(c, mode, done, end))
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (mut c, t) = (session(&m.role, &t), t.clone());
                // announced, for the listener (notifications are off by default)
                c.batch_execute("SET udm.notify_changes = on").unwrap();
                std::thread::spawn(move || write(c, &t, w))
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let log: Vec<i64> = m
            .client
            .query(
                &format!("SELECT audit_id FROM \"{t}\"._udm_audit ORDER BY 1"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        *end.lock().unwrap() = log.last().copied();
        done.store(true, Ordering::SeqCst);
        for (mode, c) in ["events", "consume"].into_iter().zip(consumers) {
            let seen = c.join().unwrap();
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "round {round}, {mode}: delivered out of order or twice"
            );
            let missing: Vec<i64> = log
                .iter()
                .filter(|id| seen.binary_search(id).is_err())
                .copied()
                .collect();
            assert!(
                missing.is_empty(),
                "round {round}, {mode}: {} of {} committed events never delivered: {:?}",
                missing.len(),
                log.len(),
                &missing[..missing.len().min(20)]
            );
            assert_eq!(seen, log, "round {round}, {mode}: exactly the log");
        }
        let announced = listener.join().unwrap();
        // on Citus the triggers notify on the tenant's worker, where no listener of the
        // coordinator hears them (README): the stream itself is what holds there
        if on_citus(&mut m.client) {
            continue;
        }
        let unannounced: Vec<i64> = log
            .iter()
            .filter(|id| **id > before && !announced.contains(id))
            .copied()
            .collect();
        assert!(
            unannounced.is_empty(),
            "round {round}: committed events without a notification: {} of them, the first {:?}",
            unannounced.len(),
            &unannounced[..unannounced.len().min(20)]
        );
    }
}

/// `udm_event_heads`: how far each tenant's event ids have gone, for the tenants the caller may
/// use only (an unknown tenant and another's are left out alike), moving with every change and
/// with no table read; too many tenants in one call is refused.
#[test]
fn event_heads_answer_for_the_callers_tenants_only() {
    let mut adm = admin();
    let mut m = member(&mut adm, "heads");
    let other = tenant(&mut adm, "heads_other");
    m.client
        .query_one(
            r#"SELECT udm_define_entity('item', '{"fields": [{"name": "n", "type": "integer"}]}')"#,
            &[],
        )
        .unwrap();
    let heads = |c: &mut Client, names: &[&str]| -> Vec<(String, i64, String)> {
        c.query(
            "SELECT tenant, head, channel FROM udm_event_heads($1::text[])",
            &[&names],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let t = m.tenant.clone();
    let before = heads(
        &mut m.client,
        &[&t, &other, "no-such-tenant", "Not A Slug!"],
    );
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].0, t);
    let channel: String = m
        .client
        .query_one("SELECT udm_events_channel()", &[])
        .unwrap()
        .get(0);
    assert_eq!(before[0].2, channel);
    // writes with notifications off move the head all the same
    m.client
        .batch_execute(&format!(
            "SET udm.notify_changes = off; INSERT INTO \"{t}\".item (n) SELECT generate_series(1, 3)"
        ))
        .unwrap();
    let after = heads(&mut m.client, &[&t]);
    let newest: i64 = scalar(
        &mut m.client,
        &format!("SELECT max(audit_id) FROM \"{t}\"._udm_audit"),
    );
    if on_citus(&mut m.client) {
        // the node numbers from its own range (group << 48): the head is the newest id there
        assert_eq!(after[0].1, newest, "{before:?} {after:?}");
    } else if std::env::var("UDM_TEST_AUDIT_BATCHES").is_ok_and(|v| v == "1") {
        // a batched log's head is the last id its newest batch can hold
        assert!(after[0].1 >= before[0].1 + 3, "{before:?} {after:?}");
    } else {
        assert_eq!(after[0].1, before[0].1 + 3, "{before:?} {after:?}");
        assert_eq!(after[0].1, newest);
    }
    // the admin may use both
    let both = heads(&mut adm, &[&other, &t]);
    assert_eq!(both.len(), 2, "{both:?}");
    // bounded
    let many: Vec<String> = (0..10_001).map(|i| format!("t{i}")).collect();
    let e = m
        .client
        .query("SELECT * FROM udm_event_heads($1::text[])", &[&many])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e}");
    assert!(
        message(&e).contains("at most 10000 tenants"),
        "{}",
        message(&e)
    );
}
