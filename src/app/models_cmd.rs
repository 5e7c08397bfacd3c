//! `classguard models list|fetch`: what the manifest pins and what is installed.

use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::models::ModelHome;

/// The manifest, compiled in so the binary can check an installation on its own.
pub const MANIFEST: &str = include_str!("../../models/manifest.toml");

#[derive(Debug, Deserialize)]
struct Manifest {
    runtime: Runtime,
    model: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct Runtime {
    package: String,
    version: String,
    sha256: String,
    install: String,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    name: String,
    role: String,
    package: String,
    result_sha256: String,
    licence: String,
    optional: bool,
    default: bool,
}

/// One line per model: installed or not, and whether its hash matches the pin.
pub fn list(verify: bool) -> Result<String, String> {
    let m: Manifest = toml::from_str(MANIFEST).map_err(|e| format!("models/manifest.toml: {e}"))?;
    let home = ModelHome::locate();
    let check = |path: PathBuf, want: &str| -> &'static str {
        if !path.is_file() {
            return "missing";
        }
        if !verify {
            return "installed";
        }
        match std::fs::read(&path) {
            Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == want => "ok",
            Ok(_) => "HASH MISMATCH",
            Err(_) => "unreadable",
        }
    };
    let mut out = format!("models in {}\n", home.root().display());
    out += &format!(
        "{:<34} {:<16} {:<13} {:<9} {:<14} {:<12} {}\n",
        "NAME", "ROLE", "STATUS", "USE", "SHA256", "LICENCE", "SOURCE"
    );
    let rt = check(home.root().join(&m.runtime.install), &m.runtime.sha256);
    out += &format!(
        "{:<34} {:<16} {:<13} {:<9} {:<14} {:<12} {}\n",
        format!("onnxruntime {}", m.runtime.version),
        "runtime",
        rt,
        "required",
        &m.runtime.sha256[..12],
        "MIT",
        m.runtime.package
    );
    for e in &m.model {
        let status = check(home.model(&e.name), &e.result_sha256);
        let usage = if e.default {
            "default"
        } else if e.optional {
            "optional"
        } else {
            "opt-in"
        };
        out += &format!(
            "{:<34} {:<16} {:<13} {:<9} {:<14} {:<12} {}\n",
            e.name,
            e.role,
            status,
            usage,
            &e.result_sha256[..12.min(e.result_sha256.len())],
            e.licence,
            e.package
        );
    }
    Ok(out)
}

/// Runs the set-up script that downloads, verifies and converts the pinned models.
pub fn fetch(with_optional: bool) -> Result<(), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-models.sh");
    if !script.is_file() {
        return Err(format!(
            "{} not found: run it from a ClassGuard checkout",
            script.display()
        ));
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script);
    if with_optional {
        cmd.arg("--with-optional");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err("model set-up failed (see above)".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifest_parses_and_pins_every_model() {
        let m: super::Manifest = toml::from_str(super::MANIFEST).unwrap();
        assert!(m.model.len() >= 10);
        for e in &m.model {
            assert_eq!(e.result_sha256.len(), 64, "{}", e.name);
            assert!(!e.licence.is_empty() && !e.role.is_empty());
        }
    }
}
