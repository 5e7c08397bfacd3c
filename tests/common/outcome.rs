//! What an audit concluded, compared across ways of arriving: the reference is `classguard scan`
//! of each whole file; uploads are driven by tus-js-client under Node (tests/clients).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

pub fn node_client(args: &[String]) -> serde_json::Value {
    let dir = super::root().join("tests/clients");
    assert!(
        dir.join("node_modules/tus-js-client").is_dir(),
        "tests/clients/node_modules missing: run scripts/setup (installs tus-js-client)"
    );
    let out = Command::new("node")
        .arg(dir.join("tus_js.mjs"))
        .args(args)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "tus-js-client {}: {}\n{}",
        args[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

/// What one audit of a recording concluded, the part that must not depend on how it arrived.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Outcome {
    pub decision: String,
    pub partial: bool,
    pub labels: BTreeSet<String>,
}

pub fn outcome_of_upload(u: &serde_json::Value) -> Outcome {
    Outcome {
        decision: u["decision"].as_str().unwrap().to_string(),
        partial: u["partial"].as_bool().unwrap(),
        labels: u["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect(),
    }
}

/// The reference: `classguard scan` of each whole file, same embedded default policy and models.
pub fn reference(files: &[PathBuf]) -> BTreeMap<String, Outcome> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_classguard"))
        .args(["scan", "--jsonl", "--store"])
        .arg(dir.path().join("store.sqlite"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut refs = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = v["recording"]["source"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let labels = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["label"].as_str().unwrap().to_string())
            .collect();
        refs.insert(
            name,
            Outcome {
                decision: v["decision"].as_str().unwrap().to_string(),
                partial: v["recording"]["partial"].as_bool().unwrap(),
                labels,
            },
        );
    }
    assert_eq!(refs.len(), files.len(), "one reference per file");
    refs
}
