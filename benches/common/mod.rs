//! What the end-to-end benches share: the release `classguard` binary they run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The release `classguard` next to this bench's own binary, built first unless
/// `CG_BENCH_NO_BUILD` is set (a bench measures the release build, never a debug one).
pub fn release_classguard() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().unwrap();
    let release_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target/release"));
    if std::env::var_os("CG_BENCH_NO_BUILD").is_none() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--bin", "classguard"])
            .env(
                "CARGO_TARGET_DIR",
                release_dir.parent().expect("target dir"),
            )
            .current_dir(&root)
            .status()
            .expect("cargo build");
        assert!(st.success(), "cargo build --release failed");
    }
    release_dir.join("classguard")
}

/// `classguard token create` on `database`; the token (printed once).
pub fn create_token(bin: &Path, database: &str) -> String {
    let out = Command::new(bin)
        .args(["token", "create", "--name", "bench", "--database", database])
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("token: ").map(str::to_string))
        .expect("token printed")
}
