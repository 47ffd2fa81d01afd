//! Many-to-many links are part of a record's state: history shows link changes as changes of the
//! field (ids added and removed), `udm_record_at` shows the links of that time, `udm_rollback`
//! restores them (also for a deleted record), and `udm_rollback_transaction` restores records
//! before their links and removes links before records, for every order of operations, whether
//! the links were changed through udm functions or plain SQL on the junction table.

use postgres::Client;
use udm_tests::*;

/// (version, action, changed_fields, summary, data, txid, changed_at)
type Row = (Option<i32>, String, Vec<String>, String, Value, i64, String);

struct Shelf {
    c: Client,
    t: String,
    author: String,
    tags: Vec<String>,
}

fn shelf() -> Shelf {
    let mut adm = admin();
    let m = member(&mut adm, "lnk");
    let mut c = m.client;
    c.batch_execute(
        r#"SELECT udm_define_entity('author', '{"fields": [{"name": "name", "type": "text"}]}');
           SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}');
           SELECT udm_define_entity('book', '{"fields": [
             {"name": "title", "type": "text"},
             {"name": "author_id", "type": "relation", "target": "author"},
             {"name": "tags", "type": "relation", "target": "tag", "many": true}]}');"#,
    )
    .unwrap();
    let author: String = scalar(
        &mut c,
        r#"SELECT udm_insert('author', '{"name": "Ann"}')->>'id'"#,
    );
    let tags = (1..=4)
        .map(|i| {
            scalar::<String>(
                &mut c,
                &format!(r#"SELECT udm_insert('tag', '{{"name": "t{i}"}}')->>'id'"#),
            )
        })
        .collect();
    Shelf {
        c,
        t: m.tenant,
        author,
        tags,
    }
}

impl Shelf {
    fn book(&mut self, title: &str, tags: &[usize]) -> String {
        let ids: Vec<String> = tags
            .iter()
            .map(|i| format!("\"{}\"", self.tags[*i]))
            .collect();
        scalar(
            &mut self.c,
            &format!(
                r#"SELECT udm_insert('book', '{{"title": "{title}", "author_id": "{}", "tags": [{}]}}')->>'id'"#,
                self.author,
                ids.join(", ")
            ),
        )
    }

    fn set_tags(&mut self, id: &str, tags: &[usize]) {
        let ids: Vec<String> = tags
            .iter()
            .map(|i| format!("\"{}\"", self.tags[*i]))
            .collect();
        json(
            &mut self.c,
            &format!(
                r#"SELECT udm_update('book', '{id}', '{{"tags": [{}]}}')"#,
                ids.join(", ")
            ),
        );
    }

    /// The book's tags now, as tag indexes.
    fn tags_of(&mut self, id: &str) -> Vec<usize> {
        let t = self.t.clone();
        let ids: Vec<String> = self
            .c
            .query(
                &format!("SELECT target_id::text FROM \"{t}\".book__tags WHERE source_id = '{id}'"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.indexes(&ids)
    }

    fn indexes(&self, ids: &[String]) -> Vec<usize> {
        let mut out: Vec<usize> = ids
            .iter()
            .map(|i| self.tags.iter().position(|t| t == i).expect("a known tag"))
            .collect();
        out.sort();
        out
    }

    fn json_tags(&self, v: &Value) -> Vec<usize> {
        let ids: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("a list of tags: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        self.indexes(&ids)
    }

    /// (version, action, changed_fields, summary, data, txid, changed_at), newest first.
    /// The book's history, newest first.
    fn history(&mut self, id: &str) -> Vec<Row> {
        self.c
            .query(
                &format!(
                    "SELECT version, action, coalesce(changed_fields, '{{}}'), summary, coalesce(data, 'null'), txid, changed_at::text \
                     FROM udm_history('book', '{id}')"
                ),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
            .collect()
    }
}

#[test]
fn history_shows_link_changes_as_field_changes_and_record_at_shows_the_links_of_the_time() {
    let mut s = shelf();
    let id = s.book("Dune", &[0, 1]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.set_tags(&id, &[1, 2]);
    let h = s.history(&id);
    assert_eq!(h.len(), 2, "{h:?}");
    let (v, action, changed, summary, data, _, _) = &h[0];
    assert_eq!((*v, action.as_str()), (Some(2), "UPDATE"));
    assert_eq!(changed, &["tags"]);
    assert_eq!(
        summary,
        &format!("tags: added {}; removed {}", s.tags[2], s.tags[0])
    );
    assert_eq!(s.json_tags(&data["tags"]), [1, 2]);
    assert_eq!(
        s.json_tags(&h[1].4["tags"]),
        [0, 1],
        "version 1 had its own tags"
    );
    // the record at the time of version 1
    let at = h[1].6.clone();
    let then = json(
        &mut s.c,
        &format!("SELECT udm_record_at('book', '{id}', '{at}')"),
    );
    assert_eq!(s.json_tags(&then["tags"]), [0, 1], "{then}");
    let now = json(
        &mut s.c,
        &format!("SELECT udm_record_at('book', '{id}', now())"),
    );
    assert_eq!(s.json_tags(&now["tags"]), [1, 2]);
    // plain SQL on the junction table: a row of its own, at the record's current version
    let t = s.t.clone();
    s.c.batch_execute(&format!(
        "INSERT INTO \"{t}\".book__tags (source_id, target_id) VALUES ('{id}', '{}')",
        s.tags[3]
    ))
    .unwrap();
    let h = s.history(&id);
    assert_eq!(h.len(), 3);
    assert_eq!(
        (h[0].0, h[0].2.as_slice()),
        (Some(2), &["tags".to_string()][..])
    );
    assert_eq!(h[0].3, format!("tags: added {}", s.tags[3]));
    assert_eq!(s.json_tags(&h[0].4["tags"]), [1, 2, 3]);
    assert_eq!(h[0].4["title"], json!("Dune"), "the record with its links");
}

#[test]
fn rollback_restores_links_and_a_deleted_record_with_its_links() {
    let mut s = shelf();
    let id = s.book("Emma", &[0, 1]);
    s.set_tags(&id, &[2]);
    json(
        &mut s.c,
        &format!(r#"SELECT udm_update('book', '{id}', '{{"title": "Emma!"}}')"#),
    );
    // the whole record: title and links of version 1
    let r = json(&mut s.c, &format!("SELECT udm_rollback('book', '{id}', 1)"));
    assert!(
        r["fields"].as_array().unwrap().contains(&json!("tags")),
        "{r}"
    );
    assert_eq!(s.tags_of(&id), [0, 1]);
    let title: String = scalar(
        &mut s.c,
        &format!("SELECT udm_get('book', '{id}')->>'title'"),
    );
    assert_eq!(title, "Emma");
    // only the links, named
    s.set_tags(&id, &[3]);
    json(
        &mut s.c,
        &format!(r#"SELECT udm_update('book', '{id}', '{{"title": "Later"}}')"#),
    );
    let r = json(
        &mut s.c,
        &format!("SELECT udm_rollback('book', '{id}', 2, ARRAY['tags'])"),
    );
    assert_eq!(r["fields"], json!(["tags"]), "{r}");
    assert_eq!(s.tags_of(&id), [2]);
    let title: String = scalar(
        &mut s.c,
        &format!("SELECT udm_get('book', '{id}')->>'title'"),
    );
    assert_eq!(title, "Later", "only the links were rolled back");
    // the rollback shows in history as a change of the links
    let h = s.history(&id);
    assert!(h[0].2.contains(&"tags".to_string()), "{:?}", h[0]);
    // a deleted book comes back with its links
    s.set_tags(&id, &[0, 3]);
    let last = s.history(&id)[0].0.unwrap();
    json(&mut s.c, &format!("SELECT udm_delete('book', '{id}')"));
    assert!(s.tags_of(&id).is_empty());
    json(
        &mut s.c,
        &format!("SELECT udm_rollback('book', '{id}', {last})"),
    );
    assert_eq!(s.tags_of(&id), [0, 3]);
    // a link to a tag deleted since is left out and reported
    let t = s.t.clone();
    json(&mut s.c, &format!("SELECT udm_rollback('book', '{id}', 1)"));
    s.c.batch_execute(&format!("DELETE FROM \"{t}\".book__tags WHERE target_id = '{}'; DELETE FROM \"{t}\".tag WHERE id = '{}'", s.tags[1], s.tags[1]))
        .unwrap();
    s.set_tags(&id, &[0]);
    let r = json(&mut s.c, &format!("SELECT udm_rollback('book', '{id}', 1)"));
    assert_eq!(s.tags_of(&id), [0]);
    assert!(r["skipped"].to_string().contains(&s.tags[1]), "{r}");
}

/// The transaction id of the newest change of a book.
fn last_txid(s: &mut Shelf, id: &str) -> i64 {
    s.history(id)[0].5
}

#[test]
fn rollback_transaction_restores_records_before_links_and_removes_links_before_records() {
    let mut s = shelf();
    let t = s.t.clone();
    // a transaction that deleted a book (and so its links): undone, the book and links are back
    let id = s.book("Ulysses", &[0, 1]);
    s.c.batch_execute(&format!("BEGIN; SELECT udm_delete('book', '{id}'); COMMIT"))
        .unwrap();
    let tx = last_txid(&mut s, &id);
    let r = json(&mut s.c, &format!("SELECT udm_rollback_transaction({tx})"));
    assert!(r["undone"].as_array().unwrap().len() >= 3, "{r}");
    assert_eq!(s.tags_of(&id), [0, 1]);
    // a transaction that created a book with links: undone, both are gone
    s.c.batch_execute("BEGIN").unwrap();
    let id2 = s.book("Beloved", &[2, 3]);
    s.c.batch_execute("COMMIT").unwrap();
    let tx = last_txid(&mut s, &id2);
    json(&mut s.c, &format!("SELECT udm_rollback_transaction({tx})"));
    let n: i64 = scalar(
        &mut s.c,
        &format!("SELECT count(*) FROM \"{t}\".book WHERE id = '{id2}'"),
    );
    assert_eq!(n, 0);
    assert!(s.tags_of(&id2).is_empty());
    // every order within one transaction, by plain SQL: link, change, unlink, delete
    let id3 = s.book("Ivanhoe", &[0]);
    s.c.batch_execute(&format!(
        "BEGIN; \
         INSERT INTO \"{t}\".book__tags (source_id, target_id) VALUES ('{id3}', '{a}'); \
         UPDATE \"{t}\".book SET title = 'Ivanhoe II' WHERE id = '{id3}'; \
         DELETE FROM \"{t}\".book__tags WHERE source_id = '{id3}' AND target_id = '{b}'; \
         INSERT INTO \"{t}\".book__tags (source_id, target_id) VALUES ('{id3}', '{c}'); \
         DELETE FROM \"{t}\".book WHERE id = '{id3}'; \
         COMMIT",
        a = s.tags[1],
        b = s.tags[0],
        c = s.tags[2]
    ))
    .unwrap();
    let tx = last_txid(&mut s, &id3);
    json(&mut s.c, &format!("SELECT udm_rollback_transaction({tx})"));
    let title: String = scalar(
        &mut s.c,
        &format!("SELECT title FROM \"{t}\".book WHERE id = '{id3}'"),
    );
    assert_eq!(title, "Ivanhoe");
    assert_eq!(s.tags_of(&id3), [0], "the links as before the transaction");
    // ... and one that created a record, linked it, and changed it
    s.c.batch_execute("BEGIN").unwrap();
    let id4 = s.book("Middlemarch", &[]);
    s.c.batch_execute(&format!(
        "INSERT INTO \"{t}\".book__tags (source_id, target_id) VALUES ('{id4}', '{}'), ('{id4}', '{}'); \
         UPDATE \"{t}\".book SET title = 'M.' WHERE id = '{id4}'; COMMIT",
        s.tags[0], s.tags[3]
    ))
    .unwrap();
    let tx = last_txid(&mut s, &id4);
    json(&mut s.c, &format!("SELECT udm_rollback_transaction({tx})"));
    let n: i64 = scalar(
        &mut s.c,
        &format!("SELECT count(*) FROM \"{t}\".book WHERE id = '{id4}'"),
    );
    assert_eq!(n, 0);
    let v = json(&mut s.c, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
}
