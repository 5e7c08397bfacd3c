//! Service throughput: a real embedded `classguard serve` (release build, SQLite and local files,
//! models loaded once in-process) with N camera recordings arriving at once.
//!
//!   cargo bench --bench service_load
//!
//! For each N a fresh `serve` is started (so its peak RSS is that N's), with a fresh store and
//! data dir and its defaults otherwise. N tus clients (the API the classroom servers use) start
//! together: each creates its upload and PATCHes the generated 2-minute camera recording as fast
//! as the server takes it, one second of media per PATCH as MediaRecorder hands it over. The
//! same bytes go up N times as N recordings (the service keys each verdict by recording: it
//! does not dedupe by content; the bench checks that each has its own verdict). Measured from the
//! first request to the last final verdict: wall time, `serve`'s CPU time (user + system of every
//! thread, and of its children, from `/proc/PID/stat`), its peak RSS (`VmHWM`), the mean cores
//! busy (CPU s / wall s), and throughput in recording-minutes audited per CPU-minute, where a
//! CPU-minute is a minute of the machine's whole CPU capacity (wall minutes x `nproc`), and per
//! CPU-minute `serve` consumed. Every verdict must be final, whole (not partial) and not
//! `error`, so throughput is never bought by failing jobs.
//!
//!   CG_BENCH_CONCURRENCY  1,4,16  recordings arriving at once, one run (one serve) each
//!   CG_BENCH_DURATION     120     camera recording length, seconds (scripts/fixtures/make-long.sh)
//!   CG_BENCH_CHUNK_S      1       media seconds per PATCH; 0: the whole file in one PATCH
//!   CG_BENCH_PACE         0       media seconds each client sends per wall second (1: live
//!                                 classes); 0: as fast as the server takes them
//!   CG_BENCH_SERVE_ARGS   (none)  extra `serve` flags, space-separated (experiments only)
//!   CG_BENCH_NO_BUILD     unset   set to skip `cargo build --release --bin classguard`
//!
//! Targets: 16 concurrent at least 1.5x the throughput of 1 at a time; peak RSS under 1.5 GB.

mod common;

use base64::Engine;
use common::{env_or, start_serve};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

/// How often the bench asks for progress and verdicts while it waits.
const POLL: Duration = Duration::from_millis(250);
/// 1.5 GB.
const RSS_LIMIT_MIB: f64 = 1.5e9 / (1024.0 * 1024.0);

struct Run {
    n: usize,
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    /// CPU seconds of the bench's own clients, and of everything else on the machine, in the
    /// same interval (the noise: on a shared machine other work takes cores from `serve`).
    client_cpu_s: f64,
    other_cpu_s: f64,
    uploads_done_s: f64,
    first_verdict_s: f64,
    decisions: BTreeMap<String, usize>,
    /// What is wrong with the verdicts (empty: all final, whole, not `error`, one per recording).
    problems: Vec<String>,
    /// (seconds since the first request, serve's CPU seconds, audits running: recordings with
    /// media audited and no final verdict yet).
    samples: Vec<(f64, f64, usize)>,
}

/// How the clients send: `chunk` bytes per PATCH, each `chunk_s` seconds of media, at `pace`
/// media seconds per wall second (0: no pacing).
#[derive(Clone, Copy)]
struct Sending {
    chunk: usize,
    chunk_s: f64,
    pace: f64,
}

fn run(bin: &Path, bytes: &Arc<Vec<u8>>, media_s: f64, send: Sending, n: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let extra = env_or("CG_BENCH_SERVE_ARGS", "");
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let (serve, token) = start_serve(bin, dir.path(), &extra);
    let auth = format!("Bearer {token}");
    let start = Arc::new(Barrier::new(n + 1));
    // Each client says its recording id once it is created, and again when its last byte is in.
    let (tx, rx) = mpsc::channel::<(String, bool)>();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (addr, auth, bytes, start, tx) = (
                serve.addr.clone(),
                auth.clone(),
                bytes.clone(),
                start.clone(),
                tx.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let session = format!("bench-{i}");
                // Creation first, so the bench can follow the recording while it uploads.
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                let meta = format!("role {},session_id {}", b64("camera"), b64(&session));
                let path = common::tus_create(&addr, &auth, bytes.len(), &meta);
                let id = common::tus_id(&path);
                let _ = tx.send((id.clone(), false));
                let started = Instant::now();
                let (mut offset, mut k) = (0, 0u32);
                while offset < bytes.len() {
                    if send.pace > 0.0 {
                        let due = started + Duration::from_secs_f64(send.chunk_s / send.pace) * k;
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        k += 1;
                    }
                    let end = (offset + send.chunk).min(bytes.len());
                    offset = common::tus_patch(&addr, &auth, &path, offset, &bytes[offset..end]);
                }
                let _ = tx.send((id, true));
            })
        })
        .collect();
    drop(tx);
    let me = std::process::id();
    let cpu0 = serve.cpu_s();
    let (client0, machine0) = (common::cpu_s(me), common::machine_busy_s());
    start.wait();
    let t0 = Instant::now();
    let mut created: Vec<String> = Vec::new();
    let mut verdicts: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut uploaded = 0;
    let mut uploads_done_s = f64::NAN;
    let mut first_verdict_s = f64::NAN;
    let mut samples = vec![(0.0, 0.0, 0)];
    while verdicts.len() < n {
        std::thread::sleep(POLL);
        while let Ok((id, done)) = rx.try_recv() {
            if !done {
                created.push(id);
            } else {
                uploaded += 1;
                if uploaded == n {
                    uploads_done_s = t0.elapsed().as_secs_f64();
                }
            }
        }
        let mut running = 0;
        let pending: Vec<String> = created
            .iter()
            .filter(|id| !verdicts.contains_key(*id))
            .cloned()
            .collect();
        for id in pending {
            let (st, _, body) = common::http(
                &serve.addr,
                "GET",
                &format!("/v1/recordings/{id}"),
                &[("Authorization", auth.clone())],
                b"",
            );
            assert_eq!(st, 200, "status of {id}: {body}");
            let s: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
            let ms = s["media_ms_audited"].as_i64().unwrap_or(0);
            if s["decision"].is_string() {
                let v = common::final_verdict(&serve.addr, &auth, &id).expect("final verdict");
                if verdicts.is_empty() {
                    first_verdict_s = t0.elapsed().as_secs_f64();
                }
                verdicts.insert(id, v);
            } else if ms > 0 {
                running += 1;
            }
        }
        samples.push((t0.elapsed().as_secs_f64(), serve.cpu_s() - cpu0, running));
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "{} of {n} verdicts after an hour",
            verdicts.len()
        );
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = serve.cpu_s() - cpu0;
    let client_cpu_s = common::cpu_s(me) - client0;
    let other_cpu_s = (common::machine_busy_s() - machine0 - cpu_s - client_cpu_s).max(0.0);
    let peak_rss_mib = serve.peak_rss_mib();
    for c in clients {
        c.join().expect("client thread");
    }
    let mut decisions = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, v) in &verdicts {
        let decision = v["decision"].as_str().unwrap_or("?").to_string();
        if decision == "error" || decision == "?" {
            problems.push(format!("{id}: decision {decision}: {}", v["error"]));
        }
        if v["recording"]["partial"].as_bool() != Some(false) {
            problems.push(format!(
                "{id}: partial: {}",
                v["recording"]["partial_reason"]
            ));
        }
        if v["recording"]["id"].as_str() != Some(id.as_str()) {
            problems.push(format!("{id}: the verdict is {}'s", v["recording"]["id"]));
        }
        let dur = v["recording"]["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        if (dur - media_s).abs() > 1.0 {
            problems.push(format!("{id}: {dur:.1} s audited of {media_s} s"));
        }
        *decisions.entry(decision).or_default() += 1;
    }
    if verdicts.len() != n {
        problems.push(format!("{} verdicts for {n} recordings", verdicts.len()));
    }
    Run {
        n,
        wall_s,
        cpu_s,
        client_cpu_s,
        other_cpu_s,
        peak_rss_mib,
        uploads_done_s,
        first_verdict_s,
        decisions,
        problems,
        samples,
    }
}

/// Mean cores busy and the most audits running at once per bucket of about `wall / 16` (at least 1 s).
fn timeline(r: &Run) -> (Vec<String>, Vec<String>) {
    let bucket = (r.wall_s / 16.0).max(1.0);
    let (mut cores, mut audits) = (Vec::new(), Vec::new());
    let mut from = 0;
    while from + 1 < r.samples.len() {
        let t_from = r.samples[from].0;
        let mut to = from + 1;
        while to + 1 < r.samples.len() && r.samples[to].0 - t_from < bucket {
            to += 1;
        }
        let (t1, c1, _) = r.samples[to];
        let (_, c0, _) = r.samples[from];
        cores.push(format!("{:.1}", (c1 - c0) / (t1 - t_from).max(1e-9)));
        let polls = &r.samples[from + 1..=to];
        let max = polls.iter().map(|s| s.2).max().unwrap_or(0);
        audits.push(max.to_string());
        from = to;
    }
    (cores, audits)
}

fn main() {
    let bin = common::release_classguard();
    let d: u64 = env_or("CG_BENCH_DURATION", "120")
        .parse()
        .expect("CG_BENCH_DURATION is seconds");
    let chunk_s: f64 = env_or("CG_BENCH_CHUNK_S", "1")
        .parse()
        .expect("CG_BENCH_CHUNK_S is seconds");
    let input = common::generated_camera(d);
    let bytes = Arc::new(std::fs::read(&input).unwrap());
    let media_s = d as f64;
    let pace: f64 = env_or("CG_BENCH_PACE", "0")
        .parse()
        .expect("CG_BENCH_PACE is a number");
    let chunk = if chunk_s > 0.0 {
        ((bytes.len() as f64 * chunk_s / media_s).ceil() as usize).max(1)
    } else {
        bytes.len()
    };
    let send = Sending {
        chunk,
        chunk_s: if chunk_s > 0.0 { chunk_s } else { media_s },
        pace,
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "nproc {cpus}; camera-{d}s ({:.1} MB) uploaded over tus {}, {} KB per PATCH; \
         load average before: {}",
        bytes.len() as f64 / 1e6,
        if pace > 0.0 {
            format!("at {pace}x its own pace")
        } else {
            "at full speed".to_string()
        },
        chunk / 1000,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut runs = Vec::new();
    for n in env_or("CG_BENCH_CONCURRENCY", "1,4,16").split(',') {
        let n: usize = n.trim().parse().expect("CG_BENCH_CONCURRENCY: counts");
        let r = run(&bin, &bytes, media_s, send, n);
        let (cores, audits) = timeline(&r);
        println!(
            "N={n}: uploads done {:.1} s, first verdict {:.1} s, last {:.1} s ({:.1} s after the \
             last byte); serve's cores busy over time: {}; most audits running at once: {}; \
             meanwhile the bench's clients used {:.2} cores and other work {:.2}",
            r.uploads_done_s,
            r.first_verdict_s,
            r.wall_s,
            r.wall_s - r.uploads_done_s,
            cores.join(" "),
            audits.join(" "),
            r.client_cpu_s / r.wall_s,
            r.other_cpu_s / r.wall_s
        );
        for p in &r.problems {
            println!("  PROBLEM {p}");
        }
        runs.push(r);
    }
    let per_machine = |r: &Run| {
        let media_min = r.n as f64 * media_s / 60.0;
        media_min / (r.wall_s / 60.0 * cpus as f64)
    };
    let base = runs.iter().find(|r| r.n == 1).map(per_machine);
    println!();
    println!(
        "| concurrent | media min | wall s | CPU s | cores busy | other work, cores | rec-min per CPU-min | \
         rec-min per consumed CPU-min | speed-up vs 1 | first verdict s | peak RSS MiB | decisions |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &runs {
        let media_min = r.n as f64 * media_s / 60.0;
        let decisions: Vec<String> = r
            .decisions
            .iter()
            .map(|(d, c)| format!("{d} x{c}"))
            .collect();
        println!(
            "| {} | {media_min:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.0} | {}{} |",
            r.n,
            r.wall_s,
            r.cpu_s,
            r.cpu_s / r.wall_s,
            (r.client_cpu_s + r.other_cpu_s) / r.wall_s,
            per_machine(r),
            media_min / (r.cpu_s / 60.0),
            base.map_or("-".into(), |b| format!("{:.2}", per_machine(r) / b)),
            r.first_verdict_s,
            r.peak_rss_mib,
            decisions.join(", "),
            if r.problems.is_empty() { "" } else { " (INVALID)" }
        );
    }
    println!();
    let valid = runs.iter().all(|r| r.problems.is_empty());
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    match (base, runs.iter().find(|r| r.n == 16)) {
        (Some(b), Some(r16)) => {
            let x = per_machine(r16) / b;
            println!(
                "{}: 16 concurrent {x:.2}x the throughput of 1 at a time (target >= 1.5x){}",
                verdict(x >= 1.5 && valid),
                if valid {
                    ""
                } else {
                    "; some verdicts are invalid"
                }
            );
        }
        _ => println!("-: throughput target not measured (needs N = 1 and 16)"),
    }
    let (worst_n, worst) = runs
        .iter()
        .map(|r| (r.n, r.peak_rss_mib))
        .fold((0, 0.0f64), |a, b| if b.1 > a.1 { b } else { a });
    println!(
        "{}: peak RSS {worst:.0} MiB at N={worst_n} (target < 1.5 GB = {RSS_LIMIT_MIB:.0} MiB)",
        verdict(worst < RSS_LIMIT_MIB)
    );
}
