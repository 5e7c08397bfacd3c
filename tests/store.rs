//! Store: idempotent verdicts, review status, erasure, evidence expiry, concurrent writers.

use std::path::{Path, PathBuf};
use std::process::Command;

use classguard::policy::{decide, Policy};
use classguard::store::{FindingStatus, Store, StoreError};
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

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sub/dir/classguard.sqlite")
}

#[test]
fn opens_creates_directories_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db(&dir)).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    drop(store);
    // Re-opening an up-to-date store is a no-op.
    assert_eq!(Store::open(&db(&dir)).unwrap().schema_version().unwrap(), 1);
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

#[test]
fn same_verdict_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&db(&dir)).unwrap();
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

#[test]
fn review_status_and_notes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&db(&dir)).unwrap();
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

#[test]
fn templates_round_trip_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&db(&dir)).unwrap();
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

#[test]
fn erase_teacher_removes_templates_and_returns_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&db(&dir)).unwrap();
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

#[test]
fn expire_evidence_returns_only_expired_paths_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&db(&dir)).unwrap();
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
