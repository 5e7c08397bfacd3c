//! What streaming from S3 costs: `classguard scan` of one recording from a local S3-compatible
//! server (moto on a loopback port) against the same scan of the local file. Each run is a fresh
//! process with a fresh output folder and store, local and S3 runs interleaved; the fastest of
//! each is reported, and the ratio (target: at most 1.1).
//!
//!   cargo bench --bench s3_scan
//!
//! Environment:
//!   CG_BENCH_INPUT    the recording (default fixtures/browser/camera-speech-contact.webm; the
//!                     10-minute camera input: `scripts/fixtures/make-long.sh 600`, then
//!                     fixtures/generated/camera-600s.webm)
//!   CG_BENCH_REPEAT   runs of each (default 3)
//!   CLASSGUARD_MOTO_VENV  moto's venv (default ~/.cache/classguard-tools/moto, from scripts/setup)

// The tests' moto harness; the bench uses only some of it.
#[allow(dead_code)]
#[path = "../tests/common/moto.rs"]
mod moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time (user + system) of the waited-for children so far.
fn children_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given and nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time of one scan; panics if it fails (a failed run measures nothing). CPU time
/// is what to compare on a shared machine, where wall time moves with the neighbours' load.
fn scan(input: &str, work: &Path, endpoint: &str) -> (Duration, Duration) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let cpu_before = children_cpu();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_classguard"))
        .args([
            "scan",
            input,
            "--no-progress",
            "--endpoint-url",
            endpoint,
            "--out",
        ])
        .arg(work.join("out"))
        .arg("--store")
        .arg(work.join("store.sqlite"))
        .env("RUST_LOG", "classguard=warn")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running classguard");
    let took = (started.elapsed(), children_cpu() - cpu_before);
    assert!(
        out.status.success(),
        "scan {input} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 recordings: 1 audited"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn main() {
    // `cargo bench` passes --bench; any other argument (a filter) is ignored.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = std::env::var_os("CG_BENCH_INPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixtures/browser/camera-speech-contact.webm"));
    let repeat: usize = std::env::var("CG_BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let Some(moto) = moto::Moto::start() else {
        eprintln!("s3_scan: moto is not installed; run scripts/setup first");
        return;
    };
    let port = moto.port;
    let bytes = std::fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let name = input.file_name().unwrap().to_string_lossy().to_string();
    moto::put(port, "/bench", &[]);
    moto::put(port, &format!("/bench/in/{name}"), &bytes);
    let endpoint = moto.url();
    let work = std::env::temp_dir().join(format!("classguard-s3-bench-{}", std::process::id()));
    let local_input = input.to_string_lossy().to_string();
    let s3_input = format!("s3://bench/in/{name}");
    let (mut local, mut s3) = (Vec::new(), Vec::new());
    for i in 0..repeat {
        let l = scan(&local_input, &work.join("local"), &endpoint);
        let s = scan(&s3_input, &work.join("s3"), &endpoint);
        eprintln!(
            "s3_scan: run {}: local {:.2} s ({:.2} CPU-s), s3 {:.2} s ({:.2} CPU-s)",
            i + 1,
            l.0.as_secs_f64(),
            l.1.as_secs_f64(),
            s.0.as_secs_f64(),
            s.1.as_secs_f64()
        );
        local.push(l);
        s3.push(s);
    }
    drop(moto);
    let _ = std::fs::remove_dir_all(&work);
    let fastest = |runs: &[(Duration, Duration)]| runs.iter().map(|r| r.0).min().unwrap();
    let least_cpu = |runs: &[(Duration, Duration)]| runs.iter().map(|r| r.1).min().unwrap();
    let (l, s) = (fastest(&local).as_secs_f64(), fastest(&s3).as_secs_f64());
    let (lc, sc) = (
        least_cpu(&local).as_secs_f64(),
        least_cpu(&s3).as_secs_f64(),
    );
    let verdict = |r: f64| if r <= 1.1 { "met" } else { "not met" };
    println!(
        "input {name} ({:.1} MB), best of {repeat}: local file {l:.2} s / {lc:.2} CPU-s, \
         local S3 server {s:.2} s / {sc:.2} CPU-s; ratio wall {:.3} ({}), CPU {:.3} ({}) \
         (target <= 1.1)",
        bytes.len() as f64 / 1e6,
        s / l,
        verdict(s / l),
        sc / lc,
        verdict(sc / lc),
    );
}
