//! The review page end to end in a real browser: a real `classguard serve` (real models) audits
//! real fixtures uploaded through its API, staff accounts are made with `classguard user add`,
//! and Debian's headless Chromium, driven by Playwright (tests/browser/review.mjs), signs in,
//! works the queue and decides. Afterwards the store, the audit log and the API are checked.
//!
//! Needs what scripts/setup installs: /usr/bin/chromium, node, and tests/browser/node_modules.
//! Screenshots go to $CLASSGUARD_REVIEW_SCREENSHOTS (default target/review-screenshots; the ones
//! in docs/ were taken with it set to docs).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use classguard::store::Store;

use common::pg::PgDb;
use common::{root, serve::Serve};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_classguard"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One HTTP/1.1 request; returns status and body.
fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = common::serve::http(base, method, path, headers, body);
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Uploads a fixture in one request and waits for its verdict; returns the recording id.
fn upload_and_wait(base: &str, token: &str, fixture: &str, role: &str) -> String {
    let bytes = std::fs::read(root().join("fixtures/browser").join(fixture)).unwrap();
    let auth = format!("Bearer {token}");
    let (status, body) = http(
        base,
        "POST",
        &format!("/v1/recordings?session_id={fixture}&role={role}&teacher_id=t-17"),
        &[("Authorization", &auth), ("Content-Type", "video/webm")],
        &bytes,
    );
    assert_eq!(status, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let (_, body) = http(
            base,
            "GET",
            &format!("/v1/recordings/{id}"),
            &[("Authorization", &auth)],
            b"",
        );
        if json(&body)["state"] == "audited" {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{fixture} not audited: {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn verdict(base: &str, token: &str, id: &str) -> serde_json::Value {
    let (status, body) = http(
        base,
        "GET",
        &format!("/v1/recordings/{id}/verdict"),
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    json(&body)
}

#[test]
fn staff_review_recordings_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir
        .path()
        .join("store.sqlite")
        .to_string_lossy()
        .into_owned();
    let shots = std::env::var_os("CLASSGUARD_REVIEW_SCREENSHOTS")
        .map(|d| root().join(d))
        .unwrap_or_else(|| root().join("target/review-screenshots"));
    scenario(dir.path(), &db, &shots);
}

/// The same scenario on the production store.
#[test]
fn staff_review_recordings_in_a_real_browser_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDb::new("review");
    scenario(dir.path(), &pg.url, &dir.path().join("screenshots"));
}

fn scenario(dir: &Path, db: &str, shots: &Path) {
    let browser_dir = root().join("tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists()
            && browser_dir.join("node_modules/playwright-core").is_dir(),
        "chromium or tests/browser/node_modules missing: run scripts/setup"
    );
    let db = db.to_string();
    let passwords = [
        ("alice", "reviewer", "alice's long passphrase"),
        ("bob", "reviewer", "bob's long passphrase"),
        ("lea", "lead", "lea's long passphrase"),
        ("carol", "reviewer", "carol's long passphrase"),
        ("root", "admin", "root's long passphrase"),
    ];
    for (name, role, pw) in passwords {
        let f = dir.join(format!("{name}.pw"));
        std::fs::write(&f, format!("{pw}\n")).unwrap();
        let out = run_ok(
            bin()
                .args(["user", "add", name, "--role", role, "--database", &db])
                .arg("--password-file")
                .arg(&f),
        );
        assert_eq!(out.trim(), format!("added {role} account {name}"));
    }
    let listed = run_ok(bin().args(["user", "list", "--database", &db]));
    assert!(listed.contains("lea\tlead\tactive"), "{listed}");
    assert!(!listed.contains("argon2"), "no hashes in listings");

    let token_out = run_ok(bin().args([
        "token",
        "create",
        "--name",
        "school",
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--database",
        &db,
    ]));
    let token = token_out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let serve = Serve::start_with(dir, &db, &[]);
    let whiteboard = upload_and_wait(&serve.base, &token, "whiteboard-contact.webm", "desktop");
    let speech = upload_and_wait(&serve.base, &token, "camera-speech-contact.webm", "camera");
    let no_face = upload_and_wait(&serve.base, &token, "camera-no-face.webm", "camera");
    for id in [&whiteboard, &speech, &no_face] {
        assert_eq!(
            verdict(&serve.base, &token, id)["decision"],
            "review",
            "{id}"
        );
    }

    std::fs::create_dir_all(shots).unwrap();
    let out = Command::new("node")
        .arg(browser_dir.join("review.mjs"))
        .current_dir(&browser_dir)
        .env("BASE", &serve.base)
        .env("REC_WHITEBOARD", &whiteboard)
        .env("REC_SPEECH", &speech)
        .env("PW_ALICE", passwords[0].2)
        .env("PW_BOB", passwords[1].2)
        .env("PW_LEA", passwords[2].2)
        .env("PW_CAROL", passwords[3].2)
        .env("PW_ROOT", passwords[4].2)
        .env("SCREENSHOTS", shots)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "review.mjs failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let seen = json(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    );
    assert_eq!(seen["stale"], 409, "{seen}");
    assert_eq!(seen["second_reviewer"], 409);
    assert_eq!(seen["csrf_less"], 403);
    for shot in ["review-queue.png", "review-item.png"] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot}");
    }

    // What the browser did is in the store: the append-only history, the audit log.
    let store = Store::open_any(&db).unwrap();
    let users = store.review_list_users().unwrap();
    let uid = |n: &str| users.iter().find(|u| u.name == n).unwrap().id;
    let wb_item: i64 = seen["whiteboard_item"].as_str().unwrap().parse().unwrap();
    let history = store.review_history(wb_item).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|d| (
                d.action.as_str(),
                d.user_id,
                d.item_version,
                d.reason_code.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("dismiss", uid("alice"), 1, "false_positive"),
            ("confirm", uid("alice"), 2, "off_platform_contact"),
            ("reopen", uid("lea"), 3, "appeal_received"),
        ]
    );
    let log = store.review_audit_log(1000).unwrap();
    let count = |action: &str, user: i64| {
        log.iter()
            .filter(|e| e.action == action && e.user_id == Some(user))
            .count()
    };
    assert_eq!(
        count("evidence_viewed", uid("alice")),
        2,
        "image and audio reveals"
    );
    assert_eq!(count("locked_out", uid("carol")), 1);
    assert_eq!(count("sign_in_refused_locked", uid("carol")), 1);
    assert_eq!(count("sign_out", uid("alice")), 1);
    assert_eq!(count("settings_changed", uid("bob")), 1);
    assert!(
        count("evidence_viewed", uid("bob")) >= 1,
        "revealed by default is still logged"
    );
    assert!(log.iter().any(|e| e.action == "user_changed"
        && e.user_id == Some(uid("root"))
        && e.detail == format!("user {}: unlock", uid("carol"))));
    assert_eq!(count("sign_in", uid("carol")), 1, "signs in once unlocked");
    // Ids and codes only: no password and no account name in any entry.
    for e in &log {
        let words: Vec<&str> = e.detail.split(|c: char| !c.is_alphanumeric()).collect();
        for (name, _, pw) in passwords {
            assert!(!e.detail.contains(pw) && !words.contains(&name), "{e:?}");
        }
    }

    // The API shows the human decision (the model's kept) and says when it is back in review.
    let v = verdict(&serve.base, &token, &speech);
    assert_eq!(v["decision"], "pass", "{v}");
    assert_eq!(v["model_decision"], "review");
    assert_eq!(v["review"]["status"], "decided");
    assert!(v["review"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["status"] == "dismissed"));
    let schema: serde_json::Value =
        json(&std::fs::read_to_string(root().join("docs/verdict.schema.json")).unwrap());
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "reviewed verdict vs docs/verdict.schema.json: {errors:?}"
    );
    let (_, status) = http(
        &serve.base,
        "GET",
        &format!("/v1/recordings/{speech}"),
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert_eq!(json(&status)["decision"], "pass", "the status shows it too");
    let v = verdict(&serve.base, &token, &whiteboard);
    assert!(validator.is_valid(&v), "{v}");
    assert_eq!(
        (v["decision"].as_str(), v["review"]["status"].as_str()),
        (Some("review"), Some("in_review"))
    );
    let v = verdict(&serve.base, &token, &no_face);
    assert!(
        v.get("review").is_none(),
        "untouched verdicts are as the model wrote them"
    );
    // ...and so does the webhook: one `verdict.reviewed` event per outcome change.
    let events: Vec<String> = store
        .due_deliveries(i64::MAX, 100)
        .unwrap()
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    for id in [
        format!("evt-{speech}-review-2"),
        format!("evt-{whiteboard}-review-3"),
        format!("evt-{whiteboard}-review-4"),
    ] {
        assert!(events.contains(&id), "{id} not in {events:?}");
    }
    assert!(
        !events.contains(&format!("evt-{whiteboard}-review-2")),
        "a finding decided while the recording stays open changes no outcome"
    );
    drop(serve);
}
