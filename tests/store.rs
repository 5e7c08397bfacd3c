//! Store: idempotent verdicts, review status, erasure, evidence expiry, concurrent writers, and
//! the service tables (tokens, recordings, jobs, webhook deliveries). Every behaviour is one
//! generic function run on both backends: SQLite (a temp file) and the machine's PostgreSQL
//! (127.0.0.1:5432; each test creates its own database and drops it).

use std::path::{Path, PathBuf};
use std::process::Command;

use classguard::policy::{decide, Policy};
use classguard::store::{FindingStatus, NewRecording, RecordingState, Store, StoreError};
use classguard::verdict::{
    Evidence, Finding, Label, ModelRef, ModelUse, PolicyRef, RecordingInfo, Severity, Stats, Track,
    Verdict, SCHEMA_VERSION,
};
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
const SCHEMA: i64 = 3;

/// A PostgreSQL database of its own for one test, dropped afterwards.
struct PgDb {
    name: String,
    url: String,
}

const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

impl PgDb {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "cg_store_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut admin = ::postgres::Client::connect(PG_ADMIN, ::postgres::NoTls)
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/setup starts it)");
        // One statement per call: several in one batch run as one transaction, which
        // DROP/CREATE DATABASE refuse.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = ::postgres::Client::connect(PG_ADMIN, ::postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

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
                    let db = super::PgDb::new();
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
    webhook_deliveries_once_per_event_with_retries,
    migrations_are_versioned,
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
    let db = PgDb::new();
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
    let db = PgDb::new();
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
