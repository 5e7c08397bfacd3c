//! Service mode end to end: a real `classguard serve` (real models), a real tus client we did not
//! write (tuspy, installed by scripts/setup), the browser fixtures in MediaRecorder-sized chunks.

mod common;

use common::serve::{http, Serve};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/browser").join(name)
}

fn python() -> PathBuf {
    let venv = std::env::var_os("CLASSGUARD_TUS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/classguard/tus-venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} missing: run scripts/setup (installs tuspy)",
        py.display()
    );
    py
}

trait TusPy {
    fn client(&self, scenario: &str, token: &str, file: &Path, chunk: usize) -> serde_json::Value;
}

impl TusPy for Serve {
    fn client(&self, scenario: &str, token: &str, file: &Path, chunk: usize) -> serde_json::Value {
        let out = Command::new(python())
            .arg(root().join("tests/clients/tus_client.py"))
            .args([scenario, &self.base, token])
            .arg(file)
            .arg(chunk.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{scenario}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn verdict_decision(v: &serde_json::Value) -> &str {
    v["verdict"]["decision"].as_str().unwrap_or("?")
}

#[test]
fn tus_client_uploads_resumes_and_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let token = serve.token("school-a");
    let other = serve.token("school-b");

    // Plain chunked upload with sha1 checksums.
    let clean = serve.client("upload", &token, &fixture("camera-vp8-opus.webm"), 16_384);
    assert_eq!(verdict_decision(&clean), "pass", "{clean}");
    assert_eq!(clean["verdict"]["recording"]["partial"], false);

    // The same clean recording, to be checked against a teacher nobody enrolled: never `pass`.
    let unknown = serve.client(
        "unknown-teacher",
        &token,
        &fixture("camera-vp8-opus.webm"),
        16_384,
    );
    assert_ne!(verdict_decision(&unknown), "pass", "{unknown}");
    assert_eq!(unknown["verdict"]["recording"]["partial"], true);
    assert!(
        unknown["verdict"]["recording"]["partial_reason"]
            .as_str()
            .unwrap()
            .contains("not enrolled"),
        "{unknown}"
    );
    assert_eq!(
        unknown["verdict"]["recording"]["teacher_id"],
        "t-never-enrolled"
    );

    // Interrupted mid-chunk, resumed from HEAD.
    let r = serve.client("resume", &token, &fixture("camera-vp9-opus.webm"), 16_384);
    let before = r["offset_before_drop"].as_u64().unwrap();
    let after = r["offset_after_drop"].as_u64().unwrap();
    assert!(after >= before, "{r}");
    assert_eq!(r["resumed_from"].as_u64().unwrap(), after, "{r}");
    assert_eq!(r["verdict"]["recording"]["partial"], false, "{r}");
    let expected = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(fixture("camera-vp9-opus.webm")).unwrap(),
    ));
    assert_eq!(
        r["verdict"]["recording"]["sha256"], expected,
        "resumed bytes are the file's bytes"
    );

    // Checksum mismatch -> 460, wrong offset -> 409, no token -> 401; nothing changes.
    let m = serve.client(
        "mismatch",
        &token,
        &fixture("whiteboard-clean.webm"),
        16_384,
    );
    assert_eq!(m["status"], 460, "{m}");
    assert_eq!(m["offset_after"], m["offset_before"], "{m}");
    assert_eq!(m["wrong_offset_status"], 409, "{m}");
    assert_eq!(m["offset_after_wrong"], m["offset_before"], "{m}");
    assert_eq!(m["no_token_status"], 401, "{m}");
    assert_eq!(m["verdict"]["recording"]["partial"], false, "{m}");

    // Termination.
    let t = serve.client(
        "terminate",
        &token,
        &fixture("camera-face-then-none.webm"),
        16_384,
    );
    assert_eq!(t["delete_status"], 204, "{t}");
    assert_eq!(t["head_after"], 410, "{t}");
    assert_eq!(t["state"], "terminated", "{t}");
    let id = t["id"].as_str().unwrap();
    assert!(!serve
        .dir
        .join("data/uploads")
        .join(format!("{id}.webm"))
        .exists());

    // Deferred length.
    let d = serve.client("deferred", &token, &fixture("video-only-vp8.webm"), 20_000);
    assert_eq!(d["defer_header"], "1", "{d}");
    assert_eq!(d["verdict"]["recording"]["partial"], false, "{d}");

    // A token sees only its own recordings.
    let own = clean["id"].as_str().unwrap();
    let (st, _, _) = http(
        &serve.base,
        "GET",
        &format!("/v1/recordings/{own}"),
        &[("Authorization", &format!("Bearer {other}"))],
        b"",
    );
    assert_eq!(st, 404);
    let (st, _, body) = http(
        &serve.base,
        "GET",
        &format!("/v1/recordings/{own}"),
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let (st, head, _) = http(
        &serve.base,
        "GET",
        &format!("/v1/recordings/{own}"),
        &[],
        b"",
    );
    assert_eq!(st, 401);
    assert!(head.contains("www-authenticate: bearer"));

    // Garbage instead of WebM: a clear 415, nothing stored for it.
    let (st, _, loc_head) = {
        let (st, head, body) = http(
            &serve.base,
            "POST",
            "/files/",
            &[
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "64"),
                ("Authorization", &format!("Bearer {token}")),
            ],
            b"",
        );
        (st, body, head)
    };
    assert_eq!(st, 201);
    let loc = loc_head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let (st, _, body) = http(
        &serve.base,
        "PATCH",
        &loc,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", "0"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Authorization", &format!("Bearer {token}")),
        ],
        &[0x42u8; 64],
    );
    assert_eq!(st, 415, "{body}");
    assert!(body.contains("EBML"), "{body}");
    let (st, head, _) = http(
        &serve.base,
        "HEAD",
        &loc,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Authorization", &format!("Bearer {token}")),
        ],
        b"",
    );
    assert_eq!(st, 200);
    assert!(head.contains("upload-offset: 0"), "{head}");

    // Whole file in one request, idempotent by key.
    let bytes = std::fs::read(fixture("audio-only-opus.webm")).unwrap();
    let auth = format!("Bearer {token}");
    let post = |key: &str| {
        http(
            &serve.base,
            "POST",
            "/v1/recordings?role=camera&session_id=s1",
            &[
                ("Authorization", &auth),
                ("Content-Type", "video/webm"),
                ("Idempotency-Key", key),
            ],
            &bytes,
        )
    };
    let (st1, _, b1) = post("k-1");
    let (st2, _, b2) = post("k-1");
    assert_eq!((st1, st2), (201, 200), "{b1} {b2}");
    let j1: serde_json::Value = serde_json::from_str(&b1).unwrap();
    let j2: serde_json::Value = serde_json::from_str(&b2).unwrap();
    assert_eq!(j1["id"], j2["id"]);
    let (st, _, b) = http(
        &serve.base,
        "POST",
        "/v1/recordings",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{\"s3\":\"s3://b/k\"}",
    );
    // An S3 body naming an impossible bucket: refused before anything is created (the fetch
    // itself is tested against moto in tests/s3_scan.rs).
    assert_eq!(st, 422, "{b}");
    assert!(b.contains("s3://b/k"), "{b}");

    // Operability.
    let (st, _, metrics) = http(&serve.base, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert!(
        metrics.contains("classguard_verdicts_total{decision=\"pass\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("classguard_upload_bytes_total"),
        "{metrics}"
    );
    let (st, _, _) = http(&serve.base, "GET", "/readyz", &[], b"");
    assert_eq!(st, 200);
    let (st, _, doc) = http(&serve.base, "GET", "/openapi.json", &[], b"");
    assert_eq!(st, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for (method, path) in classguard::service::ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
}

#[test]
fn finding_is_visible_before_the_last_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let token = serve.token("school-a");
    let e = serve.client("early", &token, &fixture("whiteboard-contact.webm"), 13_000);
    let before = e["findings_before_last_chunk"].as_array().unwrap();
    assert!(
        !before.is_empty(),
        "no finding visible before the last chunk: {e}"
    );
    assert_eq!(e["state_before_last_chunk"], "uploading", "{e}");
    assert_ne!(verdict_decision(&e), "pass", "{e}");
}

#[test]
fn kill_9_mid_audit_and_restart_audits_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &["--job-lease-s", "2"]);
    let token = serve.token("school-a");
    let auth = format!("Bearer {token}");
    let bytes = std::fs::read(fixture("camera-speech-contact.webm")).unwrap();
    let (st, _, body) = http(
        &serve.base,
        "POST",
        "/v1/recordings?role=camera",
        &[
            ("Authorization", &auth),
            ("Content-Type", "video/webm"),
            ("Idempotency-Key", "once"),
        ],
        &bytes,
    );
    assert_eq!(st, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill -9 as soon as an audit worker has taken the job.
    let conn = rusqlite::Connection::open(&serve.db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while conn
        .query_row(
            "SELECT COUNT(*) FROM jobs WHERE recording_id = ?1 AND state = 'running'",
            [&id],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the audit never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(conn);
    let (_, _, s) = http(
        &serve.base,
        "GET",
        &format!("/v1/recordings/{id}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert!(
        !s.contains("\"audited\""),
        "audit finished before the kill; the test proves nothing: {s}"
    );
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    let db = serve.db.clone();
    drop(serve);
    let serve = Serve::start_with(dir.path(), &db, &["--job-lease-s", "2"]);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (st, _, v) = http(
            &serve.base,
            "GET",
            &format!("/v1/recordings/{id}/verdict"),
            &[("Authorization", &auth)],
            b"",
        );
        if st == 200 {
            let v: serde_json::Value = serde_json::from_str(&v).unwrap();
            assert_eq!(v["recording"]["partial"], false, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no verdict after restart");
        std::thread::sleep(Duration::from_millis(500));
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM verdicts WHERE recording_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "verdict written once");
    let attempts: i64 = conn
        .query_row(
            "SELECT attempts FROM jobs WHERE recording_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attempts, 2, "audited again after the crash");
}
