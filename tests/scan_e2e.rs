//! End-to-end `classguard scan` on browser recordings with real models: identity, presence,
//! screen text, speech, truncation; the verdict format; exit codes and re-runs.

mod common;

use common::findings;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use classguard::models::ModelHome;
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
    c.env("RUST_LOG", "classguard=info");
    c
}

/// The shipped policy with shorter presence windows, so 12 s recordings can show them.
fn short_policy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::root().join("pipelines/classroom.toml")).unwrap();
    let text = text
        .replace("no_face_min_s = 30.0", "no_face_min_s = 3.0")
        .replace("multiple_faces_min_s = 10.0", "multiple_faces_min_s = 3.0");
    assert!(
        text.contains("no_face_min_s = 3.0"),
        "policy text changed: update this test"
    );
    let p = dir.join("short.toml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Scan {
    out: Output,
    verdicts: Vec<Value>,
}

impl Scan {
    /// The verdict of the recording whose source path contains `name`.
    fn verdict_of(&self, name: &str) -> &Value {
        self.verdicts
            .iter()
            .find(|v| v["recording"]["source"].as_str().unwrap().contains(name))
            .unwrap_or_else(|| panic!("no verdict for {name}"))
    }
}

fn scan(dir: &Path, store: &Path, args: &[&str]) -> Scan {
    let out_dir = dir.join("out");
    let out = bin()
        .arg("scan")
        .args(args)
        .args([
            "--out",
            out_dir.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--jsonl",
        ])
        .output()
        .unwrap();
    let verdicts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    Scan { out, verdicts }
}

fn enroll(store: &Path, teacher: &str, photo: &Path) {
    let out = bin()
        .args([
            "enroll",
            "--teacher",
            teacher,
            photo.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A single-face photo of someone else: the largest face of the six-person photo, cropped.
fn other_person_photo(dir: &Path) -> PathBuf {
    let home = ModelHome::locate();
    let img = image::open(home.testdata("t1.jpg"))
        .expect("t1.jpg installed by the set-up")
        .to_rgb8();
    let det = classguard::models::face::FaceDetector::load(
        classguard::models::face::FaceDetectorKind::YuNet,
        &home,
        &Default::default(),
    )
    .unwrap();
    let faces = det.detect(&img).unwrap();
    let f = faces
        .iter()
        .max_by(|a, b| a.area().total_cmp(&b.area()))
        .unwrap();
    let (cx, cy) = (f.bbox[0] + f.bbox[2] / 2.0, f.bbox[1] + f.bbox[3] / 2.0);
    let side = f.bbox[2].max(f.bbox[3]) * 1.6;
    let x = (cx - side / 2.0).max(0.0) as u32;
    let y = (cy - side / 2.0).max(0.0) as u32;
    let w = (side as u32).min(img.width() - x);
    let h = (side as u32).min(img.height() - y);
    let crop = image::imageops::crop_imm(&img, x, y, w, h).to_image();
    let crop = image::imageops::resize(&crop, w * 2, h * 2, image::imageops::FilterType::Triangle);
    let p = dir.join("other.png");
    crop.save(&p).unwrap();
    p
}

fn validate(v: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("docs/verdict.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "verdict does not match the schema: {errors:?}"
    );
}

#[test]
fn enrolled_teacher_passes_and_another_teacher_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let home = ModelHome::locate();
    enroll(&store, "t-astro", &home.testdata("astronaut.png"));
    enroll(&store, "t-other", &other_person_photo(dir.path()));
    let rec = common::fixture("browser/camera-vp8-opus.webm");

    let ok = scan(
        dir.path(),
        &store,
        &["--teacher", "t-astro", rec.to_str().unwrap()],
    );
    assert!(
        ok.out.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.out.stderr)
    );
    let v = &ok.verdicts[0];
    validate(v);
    assert!(findings(v, "identity_mismatch").is_empty(), "{v:#}");
    assert!(findings(v, "no_face").is_empty());
    assert!(findings(v, "nudity").is_empty());
    assert_eq!(v["decision"], "pass", "{v:#}");
    assert!(
        v["stats"]["model_calls"]["sface-2021dec-fp32"]
            .as_u64()
            .unwrap()
            > 0
    );

    let other_dir = dir.path().join("second");
    std::fs::create_dir_all(&other_dir).unwrap();
    let bad = scan(
        &other_dir,
        &store,
        &["--teacher", "t-other", rec.to_str().unwrap()],
    );
    let v = &bad.verdicts[0];
    validate(v);
    let mism = findings(v, "identity_mismatch");
    assert_eq!(mism.len(), 1, "{v:#}");
    let duration = v["recording"]["duration_ms"].as_u64().unwrap();
    assert!(
        mism[0]["start_ms"].as_u64().unwrap() <= 1000,
        "{:#}",
        mism[0]
    );
    assert!(
        mism[0]["end_ms"].as_u64().unwrap() + 1500 >= duration,
        "{:#}",
        mism[0]
    );
    assert_eq!(v["decision"], "review");
    let ev = mism[0]["evidence"]["slice_path"].as_str().unwrap();
    assert!(other_dir
        .join("out")
        .join(v["recording"]["id"].as_str().unwrap())
        .join(ev)
        .is_file());
}

#[test]
fn face_leaving_the_camera_starts_no_face_within_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let policy = short_policy(dir.path());
    let facts = common::facts("browser/camera-face-then-none.webm");
    let switch = facts["ground_truth"]["face_switch"]["switch_ms"]
        .as_u64()
        .expect("measured switch time");
    let rec = common::fixture("browser/camera-face-then-none.webm");
    let s = scan(
        dir.path(),
        &store,
        &["--policy", policy.to_str().unwrap(), rec.to_str().unwrap()],
    );
    let v = &s.verdicts[0];
    validate(v);
    let nf = findings(v, "no_face");
    assert_eq!(nf.len(), 1, "{v:#}");
    let start = nf[0]["start_ms"].as_u64().unwrap();
    assert!(
        start >= switch && start <= switch + 1000,
        "no_face starts at {start} ms, picture changed at {switch} ms"
    );
    assert!(nf[0]["evidence"]["slice_path"].is_string());
    assert_eq!(v["decision"], "review");
}

#[test]
fn contact_details_on_the_third_slide_are_found_with_its_time_span() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let facts = common::facts("browser/whiteboard-contact.webm");
    let visible: Vec<u64> = common::ground_truth(&facts, "contact_visible_ms");
    let rec = common::fixture("browser/whiteboard-contact.webm");
    let clean = common::fixture("browser/whiteboard-clean.webm");
    let s = scan(
        dir.path(),
        &store,
        &[rec.to_str().unwrap(), clean.to_str().unwrap()],
    );
    assert!(
        s.out.status.success(),
        "{}",
        String::from_utf8_lossy(&s.out.stderr)
    );
    let contact = s.verdict_of("contact");
    validate(contact);
    let hits = findings(contact, "contact_info");
    assert!(hits.len() >= 2, "phone and e-mail expected: {contact:#}");
    let text: String = hits
        .iter()
        .map(|f| f["evidence"]["ocr_excerpt"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        text.contains("138") && text.contains("example.com"),
        "{text}"
    );
    for f in &hits {
        assert_eq!(f["track"], "desktop");
        let (a, b) = (
            f["start_ms"].as_u64().unwrap(),
            f["end_ms"].as_u64().unwrap(),
        );
        assert!(
            a >= visible[0] && a <= visible[0] + 600,
            "starts at {a}, slide shown at {}",
            visible[0]
        );
        assert!(
            b >= visible[1] && b <= visible[1] + 600,
            "ends at {b}, slide left at {}",
            visible[1]
        );
    }
    assert_eq!(contact["decision"], "review");
    assert!(
        contact["stats"]["model_calls"]["ppocrv6-small"]
            .as_u64()
            .unwrap()
            >= 5
    );

    let clean_v = s.verdict_of("clean");
    validate(clean_v);
    let text_findings: Vec<_> = clean_v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            ["contact_info", "payment_solicitation", "profanity"]
                .contains(&f["label"].as_str().unwrap())
        })
        .collect();
    assert!(text_findings.is_empty(), "{clean_v:#}");
}

#[test]
fn spoken_contact_and_payment_requests_are_found_inside_the_speech() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let facts = common::facts("browser/camera-speech-contact.webm");
    let speech = &facts["ground_truth"]["speech"];
    let (s0, s1) = (
        speech["start_ms"].as_u64().unwrap(),
        speech["end_ms"].as_u64().unwrap(),
    );
    let rec = common::fixture("browser/camera-speech-contact.webm");
    let plain = common::fixture("browser/camera-vp8-opus.webm");
    let s = scan(
        dir.path(),
        &store,
        &[rec.to_str().unwrap(), plain.to_str().unwrap()],
    );
    let v = s.verdict_of("speech-contact");
    validate(v);
    for label in ["contact_info", "payment_solicitation"] {
        let hits = findings(v, label);
        assert!(!hits.is_empty(), "{label} expected: {v:#}");
        for f in hits {
            assert_eq!(f["track"], "microphone");
            let (a, b) = (
                f["start_ms"].as_u64().unwrap(),
                f["end_ms"].as_u64().unwrap(),
            );
            assert!(
                a + 300 >= s0 && b <= s1 + 300,
                "{label} at {a}..{b} outside speech {s0}..{s1}"
            );
            let excerpt = f["evidence"]["transcript_excerpt"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .replace(' ', "");
            let want = if label == "contact_info" {
                "wechat"
            } else {
                "paypal"
            };
            assert!(excerpt.contains(want), "{excerpt}");
            assert!(f["evidence"]["audio_clip"].is_string());
        }
    }
    let plain_v = s.verdict_of("camera-vp8-opus");
    assert!(
        plain_v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["track"] != "microphone" || f["label"] == "silence"),
        "ordinary lesson speech flagged: {plain_v:#}"
    );
}

#[test]
fn truncated_recording_is_partial_and_bad_inputs_fail_without_stopping_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let policy = short_policy(dir.path());
    let trunc = common::fixture("damaged/truncated.webm");
    let garbage = common::fixture("damaged/garbage.webm");
    let s = scan(
        dir.path(),
        &store,
        &[
            "--policy",
            policy.to_str().unwrap(),
            trunc.to_str().unwrap(),
            garbage.to_str().unwrap(),
        ],
    );
    assert_eq!(s.out.status.code(), Some(1), "one input failed");
    let stderr = String::from_utf8_lossy(&s.out.stderr);
    assert!(
        stderr.contains("garbage.webm") && stderr.contains("no EBML header"),
        "{stderr}"
    );
    assert_eq!(s.verdicts.len(), 2);
    let t = s.verdict_of("truncated");
    validate(t);
    assert_eq!(t["recording"]["partial"], true);
    assert!(t["recording"]["partial_reason"]
        .as_str()
        .unwrap()
        .contains("truncated"));
    assert!(t["recording"]["duration_ms"].as_u64().unwrap() <= 6100);
    assert_eq!(t["decision"], "review", "partial means at least review");
    let g = s.verdict_of("garbage");
    validate(g);
    assert_eq!(g["decision"], "error");

    // A re-run audits nothing again and writes nothing new.
    let again = scan(
        dir.path(),
        &store,
        &[
            "--policy",
            policy.to_str().unwrap(),
            trunc.to_str().unwrap(),
        ],
    );
    assert!(again.out.status.success());
    assert!(again.verdicts.is_empty(), "nothing re-audited");
    assert!(String::from_utf8_lossy(&again.out.stderr).contains("skipped"));
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let bad_policy = dir.path().join("bad.toml");
    std::fs::write(&bad_policy, "name = \"x\"\nversion = \"1\"\nbogus = 1\n").unwrap();
    let rec = common::fixture("browser/video-only-vp8.webm");
    let s = scan(
        dir.path(),
        &store,
        &[
            "--policy",
            bad_policy.to_str().unwrap(),
            rec.to_str().unwrap(),
        ],
    );
    assert_eq!(s.out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&s.out.stderr).contains("bogus"));
    let s = scan(
        dir.path(),
        &store,
        &["--teacher", "nobody", rec.to_str().unwrap()],
    );
    assert_eq!(s.out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&s.out.stderr).contains("enroll"));
    let out = bin().args(["scan"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn enroll_refuses_photos_without_exactly_one_face() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite");
    let home = ModelHome::locate();
    for (photo, want) in [
        (home.testdata("coffee.png"), "no face"),
        (home.testdata("t1.jpg"), "faces found"),
    ] {
        let out = bin()
            .args([
                "enroll",
                "--teacher",
                "t",
                photo.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
}
