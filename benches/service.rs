//! Service benchmark: a real `classguard serve` (release build), one tus upload of a long camera
//! recording, measured from the client's side.
//!
//!   cargo bench --bench service
//!
//! Prints, per input: upload throughput (bytes the server acknowledged per second of upload),
//! the time from the last acknowledged byte to the final verdict, the audit's realtime factor
//! and the server's peak RSS. With `CG_BENCH_PACE=1` (the default) the bytes arrive at the
//! recording's own pace, one second of media (its average bytes per second) per second, as a
//! live class uploads: the audit follows the upload, so only the tail is left when it ends.
//! `CG_BENCH_PACE=0` sends as fast as the server takes them (upload throughput).
//!
//!   CG_BENCH_DURATIONS  120     recording lengths in seconds (scripts/fixtures/make-long.sh)
//!   CG_BENCH_PACE       1       media seconds sent per wall second; 0: no pacing
//!   CG_BENCH_NO_BUILD   unset   set to skip `cargo build --release --bin classguard`

mod common;

use common::{env_or, start_serve};
use std::path::Path;
use std::time::{Duration, Instant};

struct Run {
    bytes: usize,
    upload_s: f64,
    last_byte_to_verdict_s: f64,
    verdict_wall_ms: u64,
    realtime: f64,
    decision: String,
    peak_rss_mb: f64,
}

fn run_one(bin: &Path, input: &Path, media_s: f64, pace: f64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (serve, token) = start_serve(bin, dir.path(), &[]);
    let auth = format!("Bearer {token}");
    let bytes = std::fs::read(input).unwrap();
    let path = common::tus_create(&serve.addr, &auth, bytes.len(), "role Y2FtZXJh"); // role=camera
    let id = common::tus_id(&path);
    // One second of media per PATCH: the recording's average bytes per second.
    let per_second = ((bytes.len() as f64 / media_s).ceil() as usize).max(1);
    let started = Instant::now();
    let mut offset = 0usize;
    let mut n = 0u64;
    while offset < bytes.len() {
        if pace > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / pace);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let end = (offset + per_second).min(bytes.len());
        offset = common::tus_patch(&serve.addr, &auth, &path, offset, &bytes[offset..end]);
        n += 1;
    }
    let last_byte = Instant::now();
    let upload_s = (last_byte - started).as_secs_f64();
    let verdict = loop {
        if let Some(v) = common::final_verdict(&serve.addr, &auth, &id) {
            break v;
        }
        assert!(
            last_byte.elapsed() < Duration::from_secs(1800),
            "no verdict"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let last_byte_to_verdict_s = last_byte.elapsed().as_secs_f64();
    let wall_ms = verdict["stats"]["wall_ms"].as_u64().unwrap_or(0);
    Run {
        bytes: bytes.len(),
        upload_s,
        last_byte_to_verdict_s,
        verdict_wall_ms: wall_ms,
        realtime: verdict["stats"]["realtime_factor"].as_f64().unwrap_or(0.0),
        decision: verdict["decision"].as_str().unwrap_or("?").to_string(),
        peak_rss_mb: serve.peak_rss_mib(),
    }
}

fn main() {
    let bin = common::release_classguard();
    let pace: f64 = env_or("CG_BENCH_PACE", "1")
        .parse()
        .expect("CG_BENCH_PACE is a number");
    println!("| input | pace | MB | upload s | upload MB/s | last byte -> verdict s | audit wall s | audit x realtime | decision | serve peak RSS MB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for d in env_or("CG_BENCH_DURATIONS", "120").split(',') {
        let d: u64 = d.trim().parse().expect("durations are seconds");
        let input = common::generated_camera(d);
        let r = run_one(&bin, &input, d as f64, pace);
        let mb = r.bytes as f64 / 1e6;
        println!(
            "| camera-{d}s | {pace} | {mb:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {:.0} |",
            r.upload_s,
            mb / r.upload_s.max(1e-9),
            r.last_byte_to_verdict_s,
            r.verdict_wall_ms as f64 / 1000.0,
            r.realtime,
            r.decision,
            r.peak_rss_mb
        );
        if pace >= 1.0 {
            let met = r.last_byte_to_verdict_s <= 2.0;
            println!(
                "- last byte -> final verdict at real-time pace, camera {d} s: {:.2} s (target <= 2 s): {}",
                r.last_byte_to_verdict_s,
                if met { "met" } else { "NOT met" }
            );
        }
    }
}
