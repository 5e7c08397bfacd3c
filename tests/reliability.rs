//! Crash safety and privacy of `classguard scan`: kill -9 at random points and resume, two
//! processes over the same folder, and no personal data in the logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const RECORDINGS: [&str; 4] = [
    "browser/camera-vp9-opus.webm",
    "browser/video-only-vp8.webm",
    "browser/audio-only-opus.webm",
    "browser/whiteboard-clean.webm",
];

fn input_dir(dir: &Path) -> PathBuf {
    let inputs = dir.join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    for rel in RECORDINGS {
        let src = common::fixture(rel);
        std::fs::copy(&src, inputs.join(src.file_name().unwrap())).unwrap();
    }
    inputs
}

fn scan_cmd(inputs: &Path, out: &Path, store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
    c.args([
        "scan",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    c.env("RUST_LOG", "classguard=info");
    c
}

/// Every recording has exactly one complete verdict, no temp or lock files are left, and the
/// store holds each verdict once.
fn check_outputs(out: &Path, store: &Path) -> Vec<Value> {
    let mut verdicts = Vec::new();
    for entry in std::fs::read_dir(out).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        assert!(!name.ends_with(".lock"), "lock left behind: {name}");
        if entry.path().is_dir() {
            for f in std::fs::read_dir(entry.path()).unwrap().flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                assert!(!n.ends_with(".tmp"), "temp file left behind: {n}");
            }
            let v: Value =
                serde_json::from_slice(&std::fs::read(entry.path().join("verdict.json")).unwrap())
                    .unwrap();
            verdicts.push(v);
        }
    }
    assert_eq!(verdicts.len(), RECORDINGS.len());
    let db = classguard::store::Store::open(store).unwrap();
    for v in &verdicts {
        let typed: classguard::verdict::Verdict = serde_json::from_value(v.clone()).unwrap();
        assert!(
            db.get_verdict_by_key(&typed.idempotency_key())
                .unwrap()
                .is_some(),
            "verdict missing from the store"
        );
    }
    verdicts
}

#[test]
fn killed_runs_resume_without_losing_or_duplicating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = input_dir(dir.path());
    let out = dir.path().join("out");
    let store = dir.path().join("store.sqlite");
    // Kill at a spread of points: during start-up, model loading and mid-recording.
    for delay_ms in [400u64, 1500, 2600, 3700] {
        let mut child = scan_cmd(&inputs, &out, &store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
    }
    let done = scan_cmd(&inputs, &out, &store).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    check_outputs(&out, &store);
    // A further run audits nothing.
    let again = scan_cmd(&inputs, &out, &store).output().unwrap();
    let table = String::from_utf8_lossy(&again.stdout);
    assert!(
        table.contains(&format!(
            "{} recordings: 0 audited, {} skipped",
            RECORDINGS.len(),
            RECORDINGS.len()
        )),
        "{table}"
    );
}

#[test]
fn two_processes_over_the_same_folder_audit_each_recording_once() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = input_dir(dir.path());
    let out = dir.path().join("out");
    let store = dir.path().join("store.sqlite");
    let a = scan_cmd(&inputs, &out, &store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let b = scan_cmd(&inputs, &out, &store)
        .args(["-j", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let audited = |o: &std::process::Output| -> usize {
        let t = String::from_utf8_lossy(&o.stdout);
        let line = t
            .lines()
            .find(|l| l.contains(" recordings: "))
            .unwrap_or_else(|| panic!("no summary: {t}"))
            .to_string();
        line.split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        audited(&a) + audited(&b),
        RECORDINGS.len(),
        "each recording audited exactly once"
    );
    // Whatever one process found busy, a later run completes.
    let finish = scan_cmd(&inputs, &out, &store).output().unwrap();
    assert!(finish.status.success());
    check_outputs(&out, &store);
}

#[test]
fn logs_carry_ids_but_no_screen_text_speech_or_home_paths() {
    let dir = tempfile::tempdir().unwrap();
    // A home-like path, as operators' files often live under one.
    let home = dir.path().join("home/jane.doe");
    std::fs::create_dir_all(&home).unwrap();
    for rel in [
        "browser/whiteboard-contact.webm",
        "browser/camera-speech-contact.webm",
    ] {
        let src = common::fixture(rel);
        std::fs::copy(&src, home.join(src.file_name().unwrap())).unwrap();
    }
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let run = scan_cmd(&home, &out, &dir.path().join("s.sqlite"))
        .arg("--jsonl")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    let log_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("INFO") || l.contains("WARN") || l.contains("DEBUG"))
        .collect();
    assert!(log_lines.len() >= 4, "expected log lines: {stderr}");
    assert!(
        log_lines.iter().all(|l| l.contains("rec-")),
        "every log line names a recording id"
    );
    for marker in [
        "teacher.li",
        "example.com",
        "138 0013",
        "pay pal",
        "paypal",
        "we chat",
        "jane.doe",
        "/home/",
        "whiteboard-contact",
        "speech-contact",
    ] {
        for line in &log_lines {
            assert!(
                !line.to_lowercase().contains(marker),
                "log line leaks {marker:?}: {line}"
            );
        }
    }
    // The same words are in the verdicts' evidence, where reviewers need them.
    let verdicts = String::from_utf8_lossy(&run.stdout).to_lowercase();
    assert!(
        verdicts.contains("teacher.li@example.com"),
        "OCR evidence missing"
    );
    assert!(
        verdicts.contains("pay pal") || verdicts.contains("paypal"),
        "transcript evidence missing"
    );
    eprintln!("privacy scan took {:?}", t0.elapsed());
}
