//! Shared helpers for integration tests: fixture paths and their measured ground truth.
#![allow(dead_code)]

pub mod moto;
pub mod nats;
pub mod outcome;
pub mod pg;
pub mod serve;

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    let p = root().join("fixtures").join(rel);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p
}

/// The entry of fixtures/fixtures.json for `rel` (e.g. "browser/camera-vp8-opus.webm").
pub fn facts(rel: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join("fixtures/fixtures.json")).expect("fixtures.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("fixtures.json parses");
    all["fixtures"]
        .as_array()
        .expect("fixtures list")
        .iter()
        .find(|f| f["path"] == format!("fixtures/{rel}"))
        .cloned()
        .unwrap_or_else(|| panic!("no facts for {rel}"))
}

/// `ground_truth.<key>` of a fixture's facts, e.g. a list of times in ms.
pub fn ground_truth<T: serde::de::DeserializeOwned>(facts: &serde_json::Value, key: &str) -> T {
    serde_json::from_value(facts["ground_truth"][key].clone())
        .unwrap_or_else(|e| panic!("ground_truth.{key}: {e}"))
}

/// The shared conformance corpus, when present (CI has it); `None` means skip with a note.
pub fn conformance_dir() -> Option<PathBuf> {
    let dir = root().join("../shared/conformance");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: ../shared/conformance not found; conformance checks skipped");
        None
    }
}

/// The findings of a verdict (as JSON) with this label.
pub fn findings<'a>(v: &'a serde_json::Value, label: &str) -> Vec<&'a serde_json::Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["label"] == label)
        .collect()
}
