//! Store: idempotent verdicts, review status, erasure, evidence expiry, concurrent writers, and
//! the service tables (tokens, recordings, jobs, webhook deliveries). Every behaviour is one
//! generic function run on both backends: SQLite (a temp file) and the machine's PostgreSQL
//! (127.0.0.1:5432; each test creates its own database and drops it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use classguard::policy::{decide, Policy};
use classguard::store::{Attempt, FindingStatus, NewRecording, RecordingState, Store, StoreError};
use classguard::verdict::{
    Evidence, Finding, Label, ModelRef, ModelUse, PolicyRef, RecordingInfo, Severity, Stats, Track,
    Verdict, SCHEMA_VERSION,
};
use common::pg::PgDb;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn verdict(recording: &str, findings: usize) -> Verdict {
    let policy = Policy::embedded().unwrap();
    let findings: Vec<Finding> = (0..findings)
        .map(|i| Finding {
            label: if i % 2 == 0 {
                Label::ContactInfo
            } else {
                Label::NoFace
            },
            severity: Severity::High,
            track: Track::Desktop,
            start_ms: i as u64 * 1000,
            end_ms: i as u64 * 1000 + 500,
            confidence: 0.9,
            model: ModelRef {
                id: "ocr".into(),
                sha256: sha("ocr"),
            },
            rule_id: "contact.email".into(),
            evidence: Evidence {
                slice_path: Some(format!("{recording}/{i}.jpg")),
                ..Default::default()
            },
            reason: "e-mail on screen".into(),
        })
        .collect();
    Verdict {
        schema_version: SCHEMA_VERSION,
        recording: RecordingInfo {
            id: recording.into(),
            source: format!("/in/{recording}.webm"),
            sha256: sha(recording),
            duration_ms: 60_000,
            partial: false,
            teacher_id: None,
            partial_reason: None,
            error: None,
        },
        decision: decide(&policy, &findings, false),
        findings,
        stats: Stats::default(),
        policy: PolicyRef::from(&policy),
        models: vec![ModelUse {
            role: "ocr_rec".into(),
            id: "ocr".into(),
            sha256: sha("ocr"),
        }],
        created_at: classguard::verdict::now_rfc3339(),
    }
}

/// Migrations this build applies.
const SCHEMA: i64 = 5;

/// Runs each named suite function on a fresh SQLite store and a fresh PostgreSQL store.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let mut store = classguard::store::Store::open(&super::db(&dir)).unwrap();
                    super::$name(&mut store);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let db = super::PgDb::new("store");
                    let mut store = classguard::store::Store::connect(&db.url).unwrap();
                    super::$name(&mut store);
                }
            )*
        }
    };
}

on_both_backends!(
    same_verdict_twice_changes_nothing,
    review_status_and_notes,
    templates_round_trip_per_model,
    erase_teacher_removes_templates_and_returns_evidence,
    expire_evidence_returns_only_expired_paths_once,
    tokens_store_only_hashes_and_revoke,
    recordings_are_idempotent_per_token,
    recording_progress_and_final_verdict_link_once,
    jobs_lease_heartbeat_and_takeover,
    queue_outbox_attempts_and_dead_letters,
    webhook_deliveries_once_per_event_with_retries,
    migrations_are_versioned,
    review_accounts_sessions_and_lockout,
    review_queue_order_filters_and_counts,
    review_claims_versions_and_append_only_history,
    review_evidence_ids_follow_retention,
);

fn migrations_are_versioned(store: &mut Store) {
    assert_eq!(store.schema_version().unwrap(), SCHEMA);
}

fn tokens_store_only_hashes_and_revoke(store: &mut Store) {
    let hash = sha("cg_secret-token");
    let t = store
        .create_token(
            "school-a",
            &hash,
            Some("http://127.0.0.1:9/hook"),
            "whsec_x",
        )
        .unwrap();
    assert_eq!(t.name, "school-a");
    assert!(!t.revoked);
    assert!(matches!(
        store.create_token("school-a", &sha("other"), None, "s"),
        Err(StoreError::TokenExists(_))
    ));
    let b = store
        .create_token("school-b", &sha("b"), None, "s")
        .unwrap();
    assert_ne!(t.id, b.id);
    assert_eq!(store.token_by_hash(&hash).unwrap().unwrap().id, t.id);
    assert!(store.token_by_hash(&sha("nope")).unwrap().is_none());
    let listed = store.list_tokens().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0].webhook_url.as_deref(),
        Some("http://127.0.0.1:9/hook")
    );
    assert!(store.revoke_token("school-a").unwrap());
    assert!(!store.revoke_token("school-a").unwrap(), "already revoked");
    assert!(
        store.token_by_hash(&hash).unwrap().is_none(),
        "revoked tokens do not authenticate"
    );
    assert!(store.token_by_id(t.id).unwrap().unwrap().revoked);
}

fn new_rec(id: &str, token_id: i64, key: Option<&str>) -> NewRecording {
    NewRecording {
        id: id.into(),
        token_id,
        idempotency_key: key.map(str::to_string),
        upload_length: None,
        session_id: Some("class-1".into()),
        role: Some("camera".into()),
        teacher_id: Some("t1".into()),
        expires_at_ms: 1_000,
    }
}

fn recordings_are_idempotent_per_token(store: &mut Store) {
    let a = store.create_token("a", &sha("a"), None, "s").unwrap().id;
    let b = store.create_token("b", &sha("b"), None, "s").unwrap().id;
    let (r1, new1) = store
        .create_recording(&new_rec("rec-1", a, Some("k1")))
        .unwrap();
    assert!(new1);
    assert_eq!(r1.state, RecordingState::Uploading);
    assert_eq!(r1.session_id.as_deref(), Some("class-1"));
    let (again, new2) = store
        .create_recording(&new_rec("rec-2", a, Some("k1")))
        .unwrap();
    assert!(!new2);
    assert_eq!(again.id, "rec-1", "same key, same recording");
    // The same key from another token is another recording; no key never collides.
    assert!(
        store
            .create_recording(&new_rec("rec-3", b, Some("k1")))
            .unwrap()
            .1
    );
    assert!(
        store
            .create_recording(&new_rec("rec-4", a, None))
            .unwrap()
            .1
    );
    assert!(
        store
            .create_recording(&new_rec("rec-5", a, None))
            .unwrap()
            .1
    );
    assert_eq!(store.count_uploading(a).unwrap(), 3);
    assert!(store.get_recording("rec-2").unwrap().is_none());
}

fn recording_progress_and_final_verdict_link_once(store: &mut Store) {
    let a = store.create_token("a", &sha("a"), None, "s").unwrap().id;
    store.create_recording(&new_rec("rec-1", a, None)).unwrap();
    store.set_upload_length("rec-1", 500).unwrap();
    store.set_bytes_received("rec-1", 200, 5_000).unwrap();
    store
        .set_audit_progress("rec-1", 1500, "[{\"label\":\"x\"}]")
        .unwrap();
    let r = store.get_recording("rec-1").unwrap().unwrap();
    assert_eq!(
        (r.upload_length, r.bytes_received, r.media_ms_audited),
        (Some(500), 200, 1500)
    );
    assert_eq!(r.findings_json, "[{\"label\":\"x\"}]");
    assert_eq!(store.expired_uploads(4_999).unwrap(), Vec::<String>::new());
    assert_eq!(
        store.expired_uploads(5_000).unwrap(),
        vec!["rec-1".to_string()]
    );
    store
        .set_recording_state("rec-1", RecordingState::Complete)
        .unwrap();
    assert!(
        store.expired_uploads(9_999).unwrap().is_empty(),
        "complete uploads do not expire"
    );
    let v = verdict("rec-1", 1);
    assert!(store.put_verdict(&v).unwrap());
    assert!(store
        .set_verdict_key("rec-1", &v.idempotency_key())
        .unwrap());
    assert!(
        !store.set_verdict_key("rec-1", "other").unwrap(),
        "linked once"
    );
    // Final stays final.
    store
        .set_recording_state("rec-1", RecordingState::Expired)
        .unwrap();
    let r = store.get_recording("rec-1").unwrap().unwrap();
    assert_eq!(r.state, RecordingState::Audited);
    assert_eq!(r.verdict_key, Some(v.idempotency_key()));
    assert!(store
        .get_verdict_json(&v.idempotency_key())
        .unwrap()
        .is_some());
}

fn jobs_lease_heartbeat_and_takeover(store: &mut Store) {
    let a = store.create_token("a", &sha("a"), None, "s").unwrap().id;
    for id in ["rec-1", "rec-2"] {
        store.create_recording(&new_rec(id, a, None)).unwrap();
    }
    assert!(store.enqueue_job("rec-1").unwrap());
    assert!(
        !store.enqueue_job("rec-1").unwrap(),
        "one job per recording"
    );
    assert!(store.enqueue_job("rec-2").unwrap());
    assert_eq!(store.queue_depth().unwrap(), 2);
    let j1 = store.claim_job("w1", 1_000, 100).unwrap().unwrap();
    assert_eq!((j1.recording_id.as_str(), j1.attempts), ("rec-1", 1));
    let j2 = store.claim_job("w2", 1_000, 100).unwrap().unwrap();
    assert_eq!(j2.recording_id, "rec-2");
    assert!(
        store.claim_job("w3", 1_050, 100).unwrap().is_none(),
        "both leased"
    );
    // w1 keeps beating; w2 dies.
    assert!(store.heartbeat(j1.id, "w1", 1_300).unwrap());
    assert!(
        !store.heartbeat(j1.id, "w2", 1_300).unwrap(),
        "not w2's job"
    );
    let taken = store.claim_job("w3", 1_200, 100).unwrap().unwrap();
    assert_eq!((taken.recording_id.as_str(), taken.attempts), ("rec-2", 2));
    assert!(
        !store.finish_job(j2.id, "w2", None).unwrap(),
        "w2 lost its lease"
    );
    assert!(store.finish_job(taken.id, "w3", None).unwrap());
    assert!(store.finish_job(j1.id, "w1", Some("boom")).unwrap());
    assert_eq!(store.queue_depth().unwrap(), 0);
    assert!(
        store.claim_job("w4", 99_999, 100).unwrap().is_none(),
        "done and failed jobs stay put"
    );
}

fn queue_outbox_attempts_and_dead_letters(store: &mut Store) {
    let a = store.create_token("a", &sha("a"), None, "s").unwrap().id;
    for id in ["rec-1", "rec-2", "rec-3"] {
        store.create_recording(&new_rec(id, a, None)).unwrap();
        assert!(store.enqueue_job(id).unwrap());
    }
    // A live upload's job goes out with its first stored bytes, a finished one at once.
    assert!(
        store.unpublished_jobs(10).unwrap().is_empty(),
        "no bytes yet"
    );
    store.set_bytes_received("rec-2", 10, 9_000).unwrap();
    store
        .set_recording_state("rec-3", RecordingState::Complete)
        .unwrap();
    let out: Vec<String> = store
        .unpublished_jobs(10)
        .unwrap()
        .into_iter()
        .map(|j| j.recording_id)
        .collect();
    assert_eq!(out, ["rec-2", "rec-3"]);
    let jobs = store.unpublished_jobs(1).unwrap();
    assert_eq!(jobs.len(), 1, "limit");
    let j2 = jobs[0].id;
    store.mark_published(j2).unwrap();
    let left: Vec<String> = store
        .unpublished_jobs(10)
        .unwrap()
        .into_iter()
        .map(|j| j.recording_id)
        .collect();
    assert_eq!(left, ["rec-3"], "published once");
    // Deliveries: a live lease keeps a redelivered job with its worker; an expired one (the
    // worker died) lets the next delivery start a new attempt; attempts are counted here.
    assert_eq!(
        store.start_attempt(j2, "w1", 60_000, 2).unwrap(),
        Attempt::Started(1)
    );
    assert!(matches!(
        store.start_attempt(j2, "w2", 60_000, 2).unwrap(),
        Attempt::Busy { .. }
    ));
    // A graceful hand-back does not count: the next delivery starts attempt 1 again at once.
    assert!(!store.release_attempt(j2, "w2").unwrap(), "not w2's");
    assert!(store.release_attempt(j2, "w1").unwrap());
    assert_eq!(
        store.start_attempt(j2, "w1", 60_000, 2).unwrap(),
        Attempt::Started(1)
    );
    assert!(store.heartbeat(j2, "w1", 0).unwrap(), "w1 holds it");
    assert_eq!(
        store.start_attempt(j2, "w2", 60_000, 2).unwrap(),
        Attempt::Started(2)
    );
    assert!(!store.finish_job(j2, "w1", None).unwrap(), "w1 lost it");
    assert!(store.finish_job(j2, "w2", None).unwrap());
    assert_eq!(
        store.start_attempt(j2, "w3", 60_000, 2).unwrap(),
        Attempt::Finished,
        "a redelivery of a finished job does nothing"
    );
    // Attempts used up: the next delivery is a dead letter, recorded once; nothing runs it again.
    let j3 = store.unpublished_jobs(10).unwrap()[0].id;
    assert_eq!(
        store.start_attempt(j3, "w1", 0, 1).unwrap(),
        Attempt::Started(1)
    );
    assert_eq!(
        store.start_attempt(j3, "w2", 0, 1).unwrap(),
        Attempt::Exhausted { attempts: 1 }
    );
    assert!(store.dead_letter(j3, 1, "worker died").unwrap());
    assert!(!store.dead_letter(j3, 1, "again").unwrap(), "once");
    let dead = store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].recording_id.as_str(),
            dead[0].attempts,
            dead[0].reason.as_str()
        ),
        ("rec-3", 1, "worker died")
    );
    assert_eq!(
        store.start_attempt(j3, "w2", 0, 5).unwrap(),
        Attempt::Finished
    );
    assert_eq!(
        store
            .claim_job("w9", 99_999, 100)
            .unwrap()
            .map(|j| j.recording_id),
        Some("rec-1".into())
    );
}

fn webhook_deliveries_once_per_event_with_retries(store: &mut Store) {
    assert!(store
        .enqueue_delivery("evt-1", 1, "rec-1", "http://h/x", "{}")
        .unwrap());
    assert!(!store
        .enqueue_delivery("evt-1", 1, "rec-1", "http://h/x", "{}")
        .unwrap());
    let now = classguard::store::now_ms();
    let due = store.due_deliveries(now + 10, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].event_id.as_str(), due[0].attempts), ("evt-1", 0));
    store
        .delivery_failed(due[0].id, Some(now + 60_000), "503")
        .unwrap();
    assert!(
        store.due_deliveries(now + 10, 10).unwrap().is_empty(),
        "backing off"
    );
    let due = store.due_deliveries(now + 60_000, 10).unwrap();
    assert_eq!(due[0].attempts, 1);
    store.delivery_done(due[0].id).unwrap();
    assert!(store.due_deliveries(i64::MAX, 10).unwrap().is_empty());
    assert!(store
        .enqueue_delivery("evt-2", 1, "rec-2", "http://h/x", "{}")
        .unwrap());
    let d = store.due_deliveries(i64::MAX, 10).unwrap();
    store.delivery_failed(d[0].id, None, "gave up").unwrap();
    assert!(
        store.due_deliveries(i64::MAX, 10).unwrap().is_empty(),
        "given up"
    );
}

#[test]
fn postgres_refuses_a_store_from_a_newer_build() {
    let db = PgDb::new("store");
    drop(Store::connect(&db.url).unwrap());
    let mut c = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
    c.batch_execute("UPDATE classguard_schema SET version = 99")
        .unwrap();
    assert!(matches!(
        Store::connect(&db.url),
        Err(StoreError::TooNew { found: 99, .. })
    ));
    assert!(matches!(
        Store::connect("postgres://%%%"),
        Err(StoreError::BadUrl(_)) | Err(StoreError::Postgres(_))
    ));
}

#[test]
fn postgres_concurrent_connections_write_once() {
    let db = PgDb::new("store");
    let tags: Vec<String> = (0..4).map(|t| format!("pg{t}")).collect();
    std::thread::scope(|s| {
        for tag in &tags {
            let url = &db.url;
            s.spawn(move || {
                let mut store = Store::connect(url).unwrap();
                write_many_into(&mut store, tag, 10);
            });
        }
    });
    let store = Store::connect(&db.url).unwrap();
    assert_eq!(
        store.list_findings(None).unwrap().len(),
        5 + tags.len() * 10 * 2
    );
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sub/dir/classguard.sqlite")
}

#[test]
fn opens_creates_directories_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA);
    drop(store);
    // Re-opening an up-to-date store is a no-op.
    assert_eq!(
        Store::open(&db(&dir)).unwrap().schema_version().unwrap(),
        SCHEMA
    );
}

#[test]
fn refuses_a_store_from_a_newer_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

fn same_verdict_twice_changes_nothing(store: &mut Store) {
    let v = verdict("rec-1", 3);
    assert!(store.put_verdict(&v).unwrap());
    let findings = store.list_findings(None).unwrap();
    assert_eq!(findings.len(), 3);
    store
        .set_finding_status(findings[0].id, FindingStatus::Confirmed, Some("seen"))
        .unwrap();

    // A re-run: same bytes, policy and models, different timing and source path.
    let mut again = v.clone();
    again.created_at = "2030-01-01T00:00:00Z".into();
    again.stats.wall_ms = 1234;
    again.recording.source = "/elsewhere.webm".into();
    assert_eq!(again.idempotency_key(), v.idempotency_key());
    assert!(!store.put_verdict(&again).unwrap());

    assert_eq!(
        store.get_verdict_by_key(&v.idempotency_key()).unwrap(),
        Some(v.clone())
    );
    let after = store.list_findings(None).unwrap();
    assert_eq!(after.len(), 3, "no duplicate findings");
    assert_eq!(
        after[0].status,
        FindingStatus::Confirmed,
        "review work kept"
    );

    // A different policy is a different verdict.
    let mut other = v.clone();
    other.policy.fingerprint = sha("other policy");
    assert!(store.put_verdict(&other).unwrap());
    assert_eq!(store.get_verdict_by_key("nope").unwrap(), None);
}

fn review_status_and_notes(store: &mut Store) {
    store.put_verdict(&verdict("rec-a", 2)).unwrap();
    store.put_verdict(&verdict("rec-b", 1)).unwrap();
    let all = store.list_findings(None).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].recording_id, "rec-a");
    assert_eq!(all[0].evidence_path.as_deref(), Some("rec-a/0.jpg"));
    assert_eq!(
        (
            all[0].label.as_str(),
            all[0].severity.as_str(),
            all[0].track.as_str()
        ),
        ("contact_info", "high", "desktop")
    );

    store
        .set_finding_status(all[1].id, FindingStatus::Dismissed, Some("false positive"))
        .unwrap();
    store
        .set_finding_status(all[1].id, FindingStatus::Dismissed, None)
        .unwrap();
    let dismissed = store.list_findings(Some(FindingStatus::Dismissed)).unwrap();
    assert_eq!(dismissed.len(), 1);
    assert_eq!(
        dismissed[0].reviewer_note.as_deref(),
        Some("false positive"),
        "None keeps the note"
    );
    assert_eq!(
        store
            .list_findings(Some(FindingStatus::Open))
            .unwrap()
            .len(),
        2
    );
    assert!(store
        .list_findings(Some(FindingStatus::Confirmed))
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.set_finding_status(9999, FindingStatus::Confirmed, None),
        Err(StoreError::FindingNotFound(9999))
    ));
}

fn templates_round_trip_per_model(store: &mut Store) {
    let a = vec![0.25f32, -1.5, 3.0e-7, f32::MAX];
    let b = vec![1.0f32; 128];
    store.enroll_template("t1", "sface", &a).unwrap();
    store.enroll_template("t1", "sface", &b).unwrap();
    store
        .enroll_template("t1", "mobilefacenet", &[0.5; 192])
        .unwrap();
    assert_eq!(store.templates_for("t1", "sface").unwrap(), vec![a, b]);
    assert_eq!(store.templates_for("t1", "mobilefacenet").unwrap().len(), 1);
    assert!(store.templates_for("t2", "sface").unwrap().is_empty());
    assert!(matches!(
        store.enroll_template("t1", "sface", &[]),
        Err(StoreError::InvalidEmbedding(_))
    ));
    assert!(matches!(
        store.enroll_template("t1", "sface", &[f32::NAN]),
        Err(StoreError::InvalidEmbedding(_))
    ));
}

fn erase_teacher_removes_templates_and_returns_evidence(store: &mut Store) {
    let later = OffsetDateTime::now_utc() + Duration::days(30);
    store.enroll_template("t1", "sface", &[1.0, 2.0]).unwrap();
    store.enroll_template("t2", "sface", &[3.0, 4.0]).unwrap();
    store.put_verdict(&verdict("rec-1", 2)).unwrap();
    store
        .add_evidence("rec-1/0.jpg", "rec-1", Some("t1"), later)
        .unwrap();
    store
        .add_evidence("rec-1/1.jpg", "rec-1", Some("t1"), later)
        .unwrap();
    store
        .add_evidence("rec-2/0.jpg", "rec-2", Some("t2"), later)
        .unwrap();
    store
        .add_evidence("rec-3/0.jpg", "rec-3", None, later)
        .unwrap();

    let paths = store.erase_teacher("t1").unwrap();
    assert_eq!(
        paths,
        vec![PathBuf::from("rec-1/0.jpg"), PathBuf::from("rec-1/1.jpg")]
    );
    assert!(store.templates_for("t1", "sface").unwrap().is_empty());
    assert_eq!(
        store.templates_for("t2", "sface").unwrap(),
        vec![vec![3.0, 4.0]]
    );
    // Findings stay for the record, without a link to deleted files.
    let findings = store.list_findings(None).unwrap();
    assert_eq!(findings.len(), 2);
    assert!(findings.iter().all(|f| f.evidence_path.is_none()));
    // Erasing again finds nothing.
    assert!(store.erase_teacher("t1").unwrap().is_empty());
    // Re-enrolling works after erasure.
    store.enroll_template("t1", "sface", &[5.0]).unwrap();
}

fn expire_evidence_returns_only_expired_paths_once(store: &mut Store) {
    let policy = Policy::embedded().unwrap();
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    store
        .add_evidence("old.jpg", "r", None, policy.evidence.expires_at(t0))
        .unwrap();
    store
        .add_evidence(
            "new.jpg",
            "r",
            Some("t"),
            policy.evidence.expires_at(t0 + Duration::days(10)),
        )
        .unwrap();

    assert!(store
        .expire_evidence(t0 + Duration::days(29))
        .unwrap()
        .is_empty());
    assert_eq!(
        store.expire_evidence(t0 + Duration::days(30)).unwrap(),
        vec![PathBuf::from("old.jpg")]
    );
    assert!(store
        .expire_evidence(t0 + Duration::days(30))
        .unwrap()
        .is_empty());
    assert_eq!(
        store.expire_evidence(t0 + Duration::days(365)).unwrap(),
        vec![PathBuf::from("new.jpg")]
    );
}

fn write_many(path: &Path, tag: &str, n: usize) {
    let mut store = Store::open(path).unwrap();
    write_many_into(&mut store, tag, n);
}

fn write_many_into(store: &mut Store, tag: &str, n: usize) {
    for i in 0..n {
        // Every writer also writes the shared verdicts: exactly one insert each must win.
        store
            .put_verdict(&verdict(&format!("shared-{}", i % 5), 1))
            .unwrap();
        store
            .put_verdict(&verdict(&format!("{tag}-{i}"), 2))
            .unwrap();
        store.enroll_template(tag, "sface", &[i as f32]).unwrap();
    }
}

fn check_after_writers(path: &Path, tags: &[String], n: usize) {
    let store = Store::open(path).unwrap();
    let findings = store.list_findings(None).unwrap();
    assert_eq!(findings.len(), 5 + tags.len() * n * 2);
    for tag in tags {
        assert_eq!(store.templates_for(tag, "sface").unwrap().len(), n);
        for i in 0..n {
            assert!(store
                .get_verdict_by_key(&verdict(&format!("{tag}-{i}"), 2).idempotency_key())
                .unwrap()
                .is_some());
        }
    }
    let conn = rusqlite::Connection::open(path).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn concurrent_threads_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let tags: Vec<String> = (0..4).map(|t| format!("thread{t}")).collect();
    std::thread::scope(|s| {
        for tag in &tags {
            let path = &path;
            s.spawn(move || write_many(path, tag, 25));
        }
    });
    check_after_writers(&path, &tags, 25);
}

const CHILD_DB: &str = "CLASSGUARD_STORE_TEST_CHILD_DB";
const CHILD_TAG: &str = "CLASSGUARD_STORE_TEST_CHILD_TAG";

/// Body of the child processes of `concurrent_processes_share_one_file`; a no-op in a normal run.
#[test]
fn child_writer() {
    if let (Some(path), Some(tag)) = (std::env::var_os(CHILD_DB), std::env::var_os(CHILD_TAG)) {
        write_many(Path::new(&path), tag.to_str().unwrap(), 25);
    }
}

#[test]
fn concurrent_processes_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let exe = std::env::current_exe().unwrap();
    let tags: Vec<String> = (0..3).map(|t| format!("proc{t}")).collect();
    let children: Vec<_> = tags
        .iter()
        .map(|tag| {
            Command::new(&exe)
                .args(["--exact", "child_writer", "--test-threads=1", "--quiet"])
                .env(CHILD_DB, &path)
                .env(CHILD_TAG, tag)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    check_after_writers(&path, &tags, 25);
}

#[test]
fn default_path_follows_the_environment() {
    // Only reads the variables this process already has: tests run in parallel and share the environment.
    let p = Store::default_path();
    if let Some(explicit) = std::env::var_os("CLASSGUARD_STORE").filter(|v| !v.is_empty()) {
        assert_eq!(p.unwrap(), PathBuf::from(explicit));
    } else if std::env::var_os("XDG_DATA_HOME").is_some() || std::env::var_os("HOME").is_some() {
        assert!(p.unwrap().ends_with("classguard/classguard.sqlite"));
    }
}

// ---- review page ----

fn staff(store: &Store, name: &str, role: &str) -> classguard::store::UserRow {
    store
        .review_add_user(&classguard::store::NewUser {
            name: name.into(),
            role: role.into(),
            password_hash: format!("$argon2id$test-{name}"),
        })
        .unwrap()
}

/// A verdict whose findings have these (label, severity, track).
fn verdict_with(recording: &str, findings: &[(Label, Severity, Track)]) -> Verdict {
    let mut v = verdict(recording, findings.len());
    for (f, (label, severity, track)) in v.findings.iter_mut().zip(findings) {
        f.label = *label;
        f.severity = *severity;
        f.track = *track;
    }
    v.decision = decide(&Policy::embedded().unwrap(), &v.findings, false);
    v
}

fn review_accounts_sessions_and_lockout(store: &mut Store) {
    use classguard::store::{Lockout, NewSession, UserChange};
    let ann = staff(store, "ann", "reviewer");
    assert!(matches!(
        store.review_add_user(&classguard::store::NewUser {
            name: "ann".into(),
            role: "lead".into(),
            password_hash: "x".into(),
        }),
        Err(StoreError::UserExists(_))
    ));
    assert_eq!(
        store.review_user_by_name("ann").unwrap().unwrap().id,
        ann.id
    );
    let lock = Lockout {
        max_failures: 3,
        lock_ms: 60_000,
    };
    for n in 1..=2 {
        let u = store
            .review_login_result(ann.id, false, 1_000, lock)
            .unwrap()
            .unwrap();
        assert_eq!((u.failed_logins, u.locked_until_ms), (n, 0));
    }
    let u = store
        .review_login_result(ann.id, false, 1_000, lock)
        .unwrap()
        .unwrap();
    assert_eq!(u.locked_until_ms, 61_000, "locked at the third failure");
    let u = store
        .review_login_result(ann.id, true, 2_000, lock)
        .unwrap()
        .unwrap();
    assert_eq!((u.failed_logins, u.locked_until_ms), (0, 0));
    assert!(store
        .review_login_result(9999, false, 0, lock)
        .unwrap()
        .is_none());

    store
        .review_create_session(&NewSession {
            id_hash: sha("cookie"),
            user_id: ann.id,
            csrf: "tok".into(),
            now_ms: 10_000,
            expires_at_ms: 100_000,
        })
        .unwrap();
    let (s, u) = store
        .review_session(&sha("cookie"), 20_000, 30_000)
        .unwrap()
        .unwrap();
    assert_eq!((s.csrf.as_str(), u.name.as_str()), ("tok", "ann"));
    assert!(store
        .review_session(&sha("other"), 20_000, 30_000)
        .unwrap()
        .is_none());
    // Idle longer than allowed: gone for good.
    assert!(store
        .review_session(&sha("cookie"), 60_001, 30_000)
        .unwrap()
        .is_none());
    assert!(store
        .review_session(&sha("cookie"), 20_000, 30_000)
        .unwrap()
        .is_none());
    // A disabled account's sessions stop working.
    store
        .review_create_session(&NewSession {
            id_hash: sha("c2"),
            user_id: ann.id,
            csrf: "t".into(),
            now_ms: 0,
            expires_at_ms: 100_000,
        })
        .unwrap();
    assert!(store
        .review_update_user(
            ann.id,
            &UserChange {
                disabled: Some(true),
                reveal_default: Some(true),
                ..Default::default()
            }
        )
        .unwrap());
    assert!(store
        .review_session(&sha("c2"), 1_000, 30_000)
        .unwrap()
        .is_none());
    let u = store.review_user_by_id(ann.id).unwrap().unwrap();
    assert!(u.disabled && u.reveal_default);
    assert!(!store
        .review_update_user(9999, &UserChange::default())
        .unwrap());
    assert_eq!(store.review_list_users().unwrap().len(), 1);
}

fn review_queue_order_filters_and_counts(store: &mut Store) {
    use classguard::store::QueueFilter;
    let policy = Policy::embedded().unwrap();
    let medium = verdict_with(
        "rec-medium",
        &[(Label::NoFace, Severity::Medium, Track::Camera)],
    );
    let high_old = verdict_with(
        "rec-high-old",
        &[
            (Label::ContactInfo, Severity::High, Track::Microphone),
            (Label::MultipleFaces, Severity::Low, Track::Camera),
        ],
    );
    let critical = verdict_with(
        "rec-critical",
        &[(Label::Nudity, Severity::Critical, Track::Camera)],
    );
    let high_new = verdict_with(
        "rec-high-new",
        &[(Label::ContactInfo, Severity::High, Track::Desktop)],
    );
    let pass = verdict_with("rec-pass", &[]);
    for v in [&medium, &high_old, &critical, &high_new, &pass] {
        store.put_verdict(v).unwrap();
    }
    assert_eq!(pass.decision.as_str(), "pass");
    let added = classguard::review::queue::sync(store, &policy).unwrap();
    assert_eq!(added, 5);
    assert_eq!(
        classguard::review::queue::sync(store, &policy).unwrap(),
        0,
        "once per verdict"
    );
    let all = |f: QueueFilter| -> Vec<String> {
        store
            .review_queue(&QueueFilter { limit: 100, ..f })
            .unwrap()
            .into_iter()
            .map(|r| r.recording_id)
            .collect()
    };
    let queue = all(QueueFilter::default());
    // Worst severity first, then oldest first (same created_at second: by id, i.e. insertion).
    let expected: Vec<&str> = vec!["rec-critical", "rec-high-old", "rec-high-new", "rec-medium"];
    let without_pass: Vec<&str> = queue
        .iter()
        .map(String::as_str)
        .filter(|r| *r != "rec-pass")
        .collect();
    assert_eq!(without_pass, expected);
    assert!(queue.len() <= 5, "a pass is there only when sampled");
    // The QA sample of passes follows the policy's rate (drawn once, when the item is made).
    let sample_all = Policy::from_toml_str(
        &classguard::policy::CLASSROOM_TOML
            .replace("qa_sample_rate = 0.05", "qa_sample_rate = 1.0"),
        "mem",
    )
    .unwrap();
    let sample_none = Policy::from_toml_str(
        &classguard::policy::CLASSROOM_TOML
            .replace("qa_sample_rate = 0.05", "qa_sample_rate = 0.0"),
        "mem",
    )
    .unwrap();
    store
        .put_verdict_shared(&verdict_with("rec-pass-sampled", &[]))
        .unwrap();
    classguard::review::queue::sync(store, &sample_all).unwrap();
    store
        .put_verdict_shared(&verdict_with("rec-pass-skipped", &[]))
        .unwrap();
    classguard::review::queue::sync(store, &sample_none).unwrap();
    let rows = store
        .review_queue(&QueueFilter {
            decision: Some("pass".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let sampled = rows
        .iter()
        .find(|r| r.recording_id == "rec-pass-sampled")
        .unwrap();
    assert!(sampled.qa_sample);
    assert_eq!(sampled.severity_rank, -1, "no findings");
    assert!(rows.iter().all(|r| r.recording_id != "rec-pass-skipped"));
    assert_eq!(
        all(QueueFilter {
            label: Some("contact_info".into()),
            ..Default::default()
        }),
        vec!["rec-high-old", "rec-high-new"]
    );
    assert_eq!(
        all(QueueFilter {
            track: Some("camera".into()),
            decision: Some("block".into()),
            ..Default::default()
        }),
        vec!["rec-critical"]
    );
    assert!(all(QueueFilter {
        from_ms: Some(i64::MAX - 1),
        ..Default::default()
    })
    .is_empty());
    let counts = store
        .review_label_counts(&QueueFilter {
            label: Some("ignored".into()),
            ..Default::default()
        })
        .unwrap();
    let count = |l: &str| counts.iter().find(|(x, _)| x == l).map(|(_, n)| *n);
    assert_eq!(count("contact_info"), Some(2));
    assert_eq!(count("nudity"), Some(1));
    assert_eq!(count("silence"), None);
    let row = &store
        .review_queue(&QueueFilter {
            limit: 1,
            ..Default::default()
        })
        .unwrap()[0];
    assert_eq!((row.severity_rank, row.findings, row.version), (4, 1, 1));
    assert_eq!(row.labels, vec!["nudity"]);
    let detail = store.review_item(row.id).unwrap().unwrap();
    assert_eq!(detail.findings.len(), 1);
    assert!(detail.verdict_json.contains("rec-critical"));
    assert!(store.review_item(9999).unwrap().is_none());
}

fn review_claims_versions_and_append_only_history(store: &mut Store) {
    use classguard::store::{ActOutcome, QueueFilter, ReviewAct};
    let policy = Policy::embedded().unwrap();
    let ann = staff(store, "ann", "reviewer");
    let bob = staff(store, "bob", "reviewer");
    let lea = staff(store, "lea", "lead");
    let v = verdict_with(
        "rec-1",
        &[
            (Label::ContactInfo, Severity::High, Track::Desktop),
            (Label::NoFace, Severity::Medium, Track::Camera),
        ],
    );
    store.put_verdict(&v).unwrap();
    classguard::review::queue::sync(store, &policy).unwrap();
    let item = store
        .review_queue(&QueueFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .remove(0);
    let findings = store.review_item(item.id).unwrap().unwrap().findings;
    // Ann claims; Bob cannot, until Ann's lease runs out.
    let c = store
        .review_claim(item.id, ann.id, 1_000, 300_000)
        .unwrap()
        .unwrap();
    assert!(c.mine && c.until_ms == 301_000);
    let c = store
        .review_claim(item.id, bob.id, 2_000, 300_000)
        .unwrap()
        .unwrap();
    assert!(!c.mine);
    assert_eq!((c.holder, c.holder_name.as_str()), (ann.id, "ann"));
    let act = |user: i64, finding: Option<i64>, action: &str, version: i64| ReviewAct {
        item_id: item.id,
        user_id: user,
        finding_id: finding,
        action: action.into(),
        reason_code: "false_positive".into(),
        note: Some("n".into()),
        version,
    };
    assert_eq!(
        store
            .review_act(&act(bob.id, None, "dismiss", 1), 3_000)
            .unwrap(),
        ActOutcome::NotClaimed {
            holder: Some(ann.id)
        }
    );
    assert_eq!(
        store
            .review_act(&act(ann.id, Some(findings[0].id), "dismiss", 1), 3_000)
            .unwrap(),
        ActOutcome::Applied {
            version: 2,
            decision: None
        }
    );
    // A decision made on the page of version 1 is stale now.
    assert_eq!(
        store
            .review_act(&act(ann.id, None, "confirm", 1), 4_000)
            .unwrap(),
        ActOutcome::Stale { current: 2 }
    );
    assert_eq!(
        store
            .review_act(&act(ann.id, Some(424_242), "confirm", 2), 4_000)
            .unwrap(),
        ActOutcome::NoSuchFinding
    );
    assert_eq!(
        store
            .review_act(&act(ann.id, Some(findings[1].id), "confirm", 2), 5_000)
            .unwrap(),
        ActOutcome::Applied {
            version: 3,
            decision: Some("block".into())
        }
    );
    let after = store.review_item(item.id).unwrap().unwrap();
    assert_eq!(after.item.state, "decided");
    assert_eq!(after.item.human_decision.as_deref(), Some("block"));
    assert_eq!(after.item.first_decided_at_ms, Some(5_000));
    assert_eq!(after.item.claimed_by, None, "deciding releases the hold");
    assert_eq!(
        after.findings.iter().map(|f| f.status).collect::<Vec<_>>(),
        vec![FindingStatus::Dismissed, FindingStatus::Confirmed]
    );
    assert!(
        store
            .review_claim(item.id, bob.id, 6_000, 1_000)
            .unwrap()
            .is_none(),
        "a decided item is not claimed"
    );
    assert!(matches!(
        store
            .review_act(&act(ann.id, None, "dismiss", 3), 6_000)
            .unwrap(),
        ActOutcome::NotClaimed { .. } | ActOutcome::WrongState { .. }
    ));
    // A lead reopens (no claim needed), then Bob decides the whole recording.
    let reopen = ReviewAct {
        reason_code: "appeal_received".into(),
        ..act(lea.id, None, "reopen", 3)
    };
    assert_eq!(
        store.review_act(&reopen, 7_000).unwrap(),
        ActOutcome::Applied {
            version: 4,
            decision: None
        }
    );
    assert!(
        store
            .review_claim(item.id, bob.id, 8_000, 1_000)
            .unwrap()
            .unwrap()
            .mine
    );
    assert_eq!(
        store
            .review_act(&act(bob.id, None, "dismiss", 4), 8_500)
            .unwrap(),
        ActOutcome::Applied {
            version: 5,
            decision: Some("pass".into())
        }
    );
    let done = store.review_item(item.id).unwrap().unwrap();
    assert_eq!(
        done.item.first_decided_at_ms,
        Some(5_000),
        "first decision kept"
    );
    assert_eq!(done.item.decided_at_ms, Some(8_500));
    assert!(done
        .findings
        .iter()
        .all(|f| f.status == FindingStatus::Dismissed));
    let h = store.review_history(item.id).unwrap();
    assert_eq!(
        h.iter()
            .map(|d| (
                d.action.as_str(),
                d.item_version,
                d.outcome.as_deref(),
                d.user_name.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("dismiss", 1, None, "ann"),
            ("confirm", 2, Some("block"), "ann"),
            ("reopen", 3, Some("block"), "lea"),
            ("dismiss", 4, Some("pass"), "bob"),
        ]
    );
    assert_eq!(
        store
            .review_item_by_verdict_key(&v.idempotency_key())
            .unwrap()
            .unwrap()
            .human_decision
            .as_deref(),
        Some("pass")
    );
    let log = store.review_audit_log(10).unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].action, "decision");
    assert_eq!(log[1].action, "reopen");
    let m = store.review_metrics().unwrap();
    assert_eq!((m.items.len(), m.history.len()), (1, 4));
    // The history and the audit log refuse edits in the database itself.
    assert!(raw_sql(store, "UPDATE review_decisions SET reason_code = 'x'").is_err());
    assert!(raw_sql(store, "DELETE FROM review_audit").is_err());
    assert_eq!(store.review_history(item.id).unwrap().len(), 4);
}

/// Runs one statement straight on the store's database (to check what the schema refuses).
fn raw_sql(store: &Store, sql: &str) -> Result<(), String> {
    let loc = store.path().to_string_lossy().into_owned();
    if loc.starts_with("postgres://") {
        let mut c =
            ::postgres::Client::connect(&loc, ::postgres::NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(sql).map_err(|e| e.to_string())
    } else {
        let c = rusqlite::Connection::open(&loc).map_err(|e| e.to_string())?;
        c.execute_batch(sql).map_err(|e| e.to_string())
    }
}

fn review_evidence_ids_follow_retention(store: &mut Store) {
    use classguard::store::QueueFilter;
    let policy = Policy::embedded().unwrap();
    let v = verdict_with(
        "rec-e",
        &[(Label::Nudity, Severity::Critical, Track::Camera)],
    );
    store.put_verdict(&v).unwrap();
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    store
        .add_evidence("/data/rec-e/evidence/a.jpg", "rec-e", Some("t1"), t0)
        .unwrap();
    classguard::review::queue::sync(store, &policy).unwrap();
    let item = store
        .review_queue(&QueueFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .remove(0);
    assert_eq!(
        item.teacher_id.as_deref(),
        Some("t1"),
        "teacher from the evidence rows"
    );
    let detail = store.review_item(item.id).unwrap().unwrap();
    assert_eq!(
        detail.evidence_paths,
        vec!["/data/rec-e/evidence/a.jpg".to_string()]
    );
    let id = store
        .review_evidence_id(item.id, "image", "/data/rec-e/evidence/a.jpg", "id-1")
        .unwrap();
    assert_eq!(id, "id-1");
    assert_eq!(
        store
            .review_evidence_id(item.id, "image", "/data/rec-e/evidence/a.jpg", "id-2")
            .unwrap(),
        "id-1",
        "one id per file"
    );
    let e = store.review_evidence("id-1").unwrap().unwrap();
    assert_eq!(
        (e.item_id, e.recording_id.as_str(), e.kind.as_str()),
        (item.id, "rec-e", "image")
    );
    assert!(store.review_evidence("id-2").unwrap().is_none());
    // Once retention deletes the file's row, its id no longer serves it.
    store.expire_evidence(t0).unwrap();
    assert!(store.review_evidence("id-1").unwrap().is_none());
}
/// Batch rescans (`scan s3://...`): object versions mapped to their content, and the newest
/// verdict per recording for `diff`.
mod rescan {
    use super::{db, sha, verdict, PgDb};
    use classguard::store::Store;

    on_both_backends!(
        object_versions_map_to_their_content,
        latest_verdicts_are_one_per_recording,
    );

    fn object_versions_map_to_their_content(store: &mut Store) {
        let uri = "s3://media/classes/a-camera.webm";
        assert_eq!(store.object_sha(uri, "\"e1\"", 100).unwrap(), None);
        store
            .put_object_sha(uri, "\"e1\"", 100, &sha("v1"))
            .unwrap();
        assert_eq!(
            store.object_sha(uri, "\"e1\"", 100).unwrap(),
            Some(sha("v1"))
        );
        // Another version of the same key, or the same ETag with another size, is unknown.
        assert_eq!(store.object_sha(uri, "\"e2\"", 100).unwrap(), None);
        assert_eq!(store.object_sha(uri, "\"e1\"", 101).unwrap(), None);
        assert_eq!(
            store
                .object_sha("s3://media/other.webm", "\"e1\"", 100)
                .unwrap(),
            None
        );
        // Recording the same version again (a re-read after a crash) replaces, never duplicates.
        store
            .put_object_sha(uri, "\"e1\"", 100, &sha("v1"))
            .unwrap();
        store
            .put_object_sha(uri, "\"e2\"", 100, &sha("v2"))
            .unwrap();
        assert_eq!(
            store.object_sha(uri, "\"e2\"", 100).unwrap(),
            Some(sha("v2"))
        );
        assert_eq!(
            store.object_sha(uri, "\"e1\"", 100).unwrap(),
            Some(sha("v1"))
        );
        // Sizes beyond i64 are clamped, not wrapped into a negative key.
        store
            .put_object_sha(uri, "\"big\"", u64::MAX, &sha("big"))
            .unwrap();
        assert_eq!(
            store.object_sha(uri, "\"big\"", u64::MAX).unwrap(),
            Some(sha("big"))
        );
    }

    fn latest_verdicts_are_one_per_recording(store: &mut Store) {
        assert!(store.latest_verdicts().unwrap().is_empty());
        let old = verdict("rec-b", 0);
        store.put_verdict(&old).unwrap();
        store.put_verdict(&verdict("rec-a", 1)).unwrap();
        // rec-b audited again under a new policy version: a second verdict, the newer one wins.
        let mut newer = verdict("rec-b", 2);
        newer.policy.fingerprint = sha("policy-2");
        assert_ne!(newer.idempotency_key(), old.idempotency_key());
        store.put_verdict(&newer).unwrap();
        let latest = store.latest_verdicts().unwrap();
        let ids: Vec<&str> = latest.iter().map(|v| v.recording.id.as_str()).collect();
        assert_eq!(ids, ["rec-a", "rec-b"]);
        assert_eq!(latest[1].findings.len(), 2);
        assert_eq!(latest[1].policy.fingerprint, sha("policy-2"));
    }
}
