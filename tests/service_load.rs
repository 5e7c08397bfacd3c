//! Many classroom servers at once, and a crash in the middle of their uploads: a real
//! `classguard serve` (real models), tus-js-client (the tus project's reference client, installed
//! by scripts/setup) under Node, real browser fixtures sent at their recorded blob sizes with the
//! upload length deferred, as a live class forwards them.

mod common;

use common::outcome::{node_client, outcome_of_upload, reference, Outcome};
use common::serve::{http, Serve};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Short real recordings of every kind: camera with speech, whiteboard share, faceless camera,
/// microphone only, VP9 camera.
const FILES: &[&str] = &[
    "browser/camera-speech-contact.webm",
    "browser/whiteboard-contact.webm",
    "browser/camera-no-face.webm",
    "browser/audio-only-opus.webm",
    "browser/camera-vp9-opus.webm",
];

fn files() -> Vec<PathBuf> {
    FILES.iter().map(|f| common::fixture(f)).collect()
}

fn verdict_rows(db: &str, id: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM verdicts WHERE recording_id = ?1",
        [id],
        |r| r.get(0),
    )
    .unwrap()
}

fn check_uploads(
    serve: &Serve,
    uploads: &[serde_json::Value],
    refs: &BTreeMap<String, Outcome>,
) -> usize {
    let mut ids = BTreeSet::new();
    for u in uploads {
        let file = u["file"].as_str().unwrap();
        let id = u["id"].as_str().unwrap();
        assert!(ids.insert(id.to_string()), "recording id {id} given twice");
        assert_eq!(
            &outcome_of_upload(u),
            &refs[file],
            "{file} uploaded as {id} differs from a scan of the whole file"
        );
        assert_eq!(verdict_rows(&serve.db, id), 1, "{id}: verdict written once");
    }
    ids.len()
}

#[test]
fn fifty_concurrent_uploads_each_get_one_correct_verdict() {
    let refs = reference(&files());
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let token = serve.token("school-a");
    let started = Instant::now();
    let mut args: Vec<String> = vec!["many".into(), serve.base.clone(), token, "50".into()];
    args.extend(files().iter().map(|f| f.to_string_lossy().into_owned()));
    let out = node_client(&args);
    let uploads = out["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 50);
    assert_eq!(check_uploads(&serve, uploads, &refs), 50);
    eprintln!(
        "50 concurrent tus-js-client uploads: {:.1} s to the last verdict, serve peak RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        serve.peak_rss_mib()
    );
    // Bounded memory: persisted uploads wait in the job queue, not in RAM.
    assert!(
        serve.peak_rss_mib() < 1536.0,
        "{} MiB",
        serve.peak_rss_mib()
    );
}

#[test]
fn kill_9_during_uploads_and_audits_then_clients_resume() {
    let refs = reference(&files());
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &["--job-lease-s", "2"]);
    let token = serve.token("school-a");
    let auth = format!("Bearer {token}");

    // Six live classes send 60 % of their recording; their audits start on the bytes so far.
    let mut args: Vec<String> = vec![
        "start".into(),
        serve.base.clone(),
        token.clone(),
        "6".into(),
        "0.6".into(),
    ];
    args.extend(files().iter().map(|f| f.to_string_lossy().into_owned()));
    let started = node_client(&args);
    let ids: Vec<String> = started["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            u["url"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    // Audits of live uploads start on their first bytes: wait until both audit workers hold
    // one (their jobs running), then give them a moment to get into the media.
    let deadline = Instant::now() + Duration::from_secs(120);
    let conn = rusqlite::Connection::open(&serve.db).unwrap();
    loop {
        let running: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = 'running'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if running >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit started on the partial uploads"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(conn);
    std::thread::sleep(Duration::from_millis(1500));
    // What the server has acknowledged just before the crash must survive it.
    let acknowledged: Vec<i64> = ids
        .iter()
        .map(|id| {
            let (_, _, s) = http(
                &serve.base,
                "GET",
                &format!("/v1/recordings/{id}"),
                &[("Authorization", &auth)],
                b"",
            );
            let s: serde_json::Value = serde_json::from_str(&s).unwrap();
            s["bytes_received"].as_i64().unwrap()
        })
        .collect();
    assert!(acknowledged.iter().any(|&n| n > 0), "{acknowledged:?}");
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    let db = serve.db.clone();
    drop(serve);

    let old_base = serve_base_of(&started);
    let serve = Serve::start_with(dir.path(), &db, &["--job-lease-s", "2"]);
    // The restarted server listens on another free port; the upload urls keep their path.
    let state = dir.path().join("uploads.json");
    std::fs::write(&state, started.to_string().replace(&old_base, &serve.base)).unwrap();
    let finished = node_client(&[
        "finish".into(),
        serve.base.clone(),
        token,
        state.to_string_lossy().into_owned(),
    ]);
    let resumed: Vec<i64> = finished["resumed_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_i64().unwrap())
        .collect();
    for (before, after) in acknowledged.iter().zip(&resumed) {
        assert!(
            after >= before,
            "acknowledged bytes lost in the crash: {acknowledged:?} then {resumed:?}"
        );
    }
    let uploads = finished["uploads"].as_array().unwrap();
    assert_eq!(check_uploads(&serve, uploads, &refs), 6);
}

/// `http://127.0.0.1:PORT` of the first upload url in a client's output.
fn serve_base_of(out: &serde_json::Value) -> String {
    let url = out["uploads"][0]["url"].as_str().expect("an upload url");
    let rest = url.strip_prefix("http://").expect("http url");
    format!("http://{}", rest.split('/').next().unwrap())
}
