//! A teacher who is never seen is never verified: `scan --teacher` on real browser recordings with
//! the shipped policy and real models. A faceless short recording is `no_face` and
//! `identity_unverified`; a recording whose camera is empty for most of it is `no_face` although
//! the absence is shorter than `no_face_min_s`; a long class with short glances away passes.

mod common;

use common::findings;

use std::path::Path;
use std::process::Command;

use classguard::models::ModelHome;
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
    c.env("RUST_LOG", "classguard=warn");
    c
}

fn enroll(store: &Path, teacher: &str, photo: &Path) {
    let out = bin()
        .args(["enroll", "--teacher", teacher])
        .arg(photo)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scans one recording with the shipped policy; returns its verdict.
fn scan(dir: &Path, store: &Path, teacher: Option<&str>, rec: &Path) -> Value {
    let mut c = bin();
    c.arg("scan");
    if let Some(t) = teacher {
        c.args(["--teacher", t]);
    }
    let out = c
        .arg(rec)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--store")
        .arg(store)
        .arg("--jsonl")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or_else(|| {
        panic!(
            "no verdict; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: Value = serde_json::from_str(line).unwrap();
    validate(&v);
    v
}

fn validate(v: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("docs/verdict.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "verdict does not match the schema: {errors:?}"
    );
}

fn ms(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a time: {v}"))
}

/// A store with the teacher the fixtures show enrolled from the verified photo.
fn store_with_teacher(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store.sqlite");
    enroll(
        &store,
        "t-astro",
        &ModelHome::locate().testdata("astronaut.png"),
    );
    store
}

#[test]
fn faceless_short_recording_is_no_face_and_identity_unverified() {
    let facts = common::facts("browser/camera-no-face.webm");
    let duration = ms(&facts["duration_ms"]);
    assert!(
        (15_000..30_000).contains(&duration),
        "fixture should be ~20 s: {duration} ms"
    );
    assert!(
        facts["ground_truth"]["changes_found"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the picture never changes"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_teacher(dir.path());
    let rec = common::fixture("browser/camera-no-face.webm");

    let v = scan(&dir.path().join("teacher"), &store, Some("t-astro"), &rec);
    assert_eq!(v["decision"], "review", "{v:#}");
    assert_eq!(v["recording"]["partial"], false, "{v:#}");
    let end = ms(&v["recording"]["duration_ms"]);

    // Absence shorter than no_face_min_s (30 s) but most of the recording.
    let nf = findings(&v, "no_face");
    assert_eq!(nf.len(), 1, "{v:#}");
    assert!(ms(&nf[0]["start_ms"]) <= 1_000, "{:#}", nf[0]);
    assert!(ms(&nf[0]["end_ms"]) + 1_500 >= end, "{:#}", nf[0]);
    assert_eq!(nf[0]["severity"], "medium");

    let un = findings(&v, "identity_unverified");
    assert_eq!(un.len(), 1, "{v:#}");
    assert!(ms(&un[0]["start_ms"]) <= 1_000, "{:#}", un[0]);
    assert_eq!(ms(&un[0]["end_ms"]), end, "{:#}", un[0]);
    assert_eq!(un[0]["track"], "camera");
    assert_eq!(un[0]["severity"], "medium");
    let reason = un[0]["reason"].as_str().unwrap();
    assert!(reason.contains("never verified"), "{reason}");
    assert!(reason.contains(", 0 matched"), "{reason}");
    assert!(findings(&v, "identity_mismatch").is_empty(), "{v:#}");

    // Without --teacher nobody asked for verification: absence only.
    let v = scan(&dir.path().join("anon"), &store, None, &rec);
    assert_eq!(findings(&v, "no_face").len(), 1, "{v:#}");
    assert!(findings(&v, "identity_unverified").is_empty(), "{v:#}");
    assert_eq!(v["decision"], "review");
}

#[test]
fn absence_for_most_of_a_short_recording_is_no_face_but_the_teacher_is_verified() {
    let facts = common::facts("browser/camera-face-then-none.webm");
    let switch = ms(&facts["ground_truth"]["face_switch"]["switch_ms"]);
    let no_face = &facts["ground_truth"]["face_switch"]["no_face_ms"];
    let absence = ms(&no_face[1]) - ms(&no_face[0]);
    let duration = ms(&facts["duration_ms"]);
    assert!(
        absence < 30_000 && absence * 10 > duration * 3,
        "fixture: absence {absence} ms of {duration} ms must be under no_face_min_s and over 30 %"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_teacher(dir.path());
    let rec = common::fixture("browser/camera-face-then-none.webm");
    let v = scan(dir.path(), &store, Some("t-astro"), &rec);

    let nf = findings(&v, "no_face");
    assert_eq!(nf.len(), 1, "{v:#}");
    let start = ms(&nf[0]["start_ms"]);
    assert!(
        start >= switch && start <= switch + 1_000,
        "no_face starts at {start} ms, the face left at {switch} ms"
    );
    assert!(nf[0]["evidence"]["slice_path"].is_string());
    // The teacher was on camera (and recognised) before leaving.
    assert!(findings(&v, "identity_unverified").is_empty(), "{v:#}");
    assert!(findings(&v, "identity_mismatch").is_empty(), "{v:#}");
    assert_eq!(v["decision"], "review");
}

#[test]
fn long_class_with_short_glances_away_passes() {
    let facts = common::facts("browser/camera-glances-away.webm");
    let duration = ms(&facts["duration_ms"]);
    let away: Vec<[u64; 2]> = common::ground_truth(&facts, "glances_away_ms");
    assert!(duration >= 80_000, "fixture should be long: {duration} ms");
    assert!(
        away.len() >= 3,
        "fixture should glance away 3 times: {away:?}"
    );
    for [a, b] in &away {
        assert!(
            (2_000..8_000).contains(&(b - a)),
            "a glance, not an absence: {a}..{b}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_teacher(dir.path());
    let rec = common::fixture("browser/camera-glances-away.webm");
    let v = scan(dir.path(), &store, Some("t-astro"), &rec);
    assert_eq!(v["recording"]["partial"], false, "{v:#}");
    let camera: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["track"] == "camera")
        .collect();
    assert!(camera.is_empty(), "{v:#}");
    assert_eq!(v["decision"], "pass", "{v:#}");
    assert!(
        v["stats"]["model_calls"]["sface-2021dec-fp32"]
            .as_u64()
            .unwrap()
            > 0,
        "identity was checked"
    );

    // The glances are real absences to the detector: a policy that counts 2 s finds each one.
    let text = std::fs::read_to_string(common::root().join("pipelines/classroom.toml")).unwrap();
    let strict = text
        .replace("no_face_min_s = 30.0", "no_face_min_s = 2.0")
        .replace("whisper = \"tiny.en\"", "whisper = \"off\"");
    assert!(strict.contains("no_face_min_s = 2.0") && strict.contains("whisper = \"off\""));
    let policy = dir.path().join("strict.toml");
    std::fs::write(&policy, strict).unwrap();
    let out = bin()
        .args(["scan", "--teacher", "t-astro", "--policy"])
        .arg(&policy)
        .arg(&rec)
        .arg("--out")
        .arg(dir.path().join("strict"))
        .arg("--store")
        .arg(&store)
        .arg("--jsonl")
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("a verdict"),
    )
    .unwrap();
    let nf = findings(&v, "no_face");
    assert_eq!(nf.len(), away.len(), "{v:#}");
    for (f, [a, b]) in nf.iter().zip(&away) {
        let (s, e) = (ms(&f["start_ms"]), ms(&f["end_ms"]));
        assert!(
            s < *b && *a < e,
            "no_face {s}..{e} is not the glance {a}..{b}"
        );
    }
    assert!(findings(&v, "identity_unverified").is_empty(), "{v:#}");
}
