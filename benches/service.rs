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

use common::env_or;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request; returns status, lower-cased head and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to serve");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn start_serve(bin: &Path, dir: &Path) -> (Serve, String) {
    let db = dir.join("store.sqlite");
    let token = common::create_token(bin, &db.to_string_lossy());
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(&db)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
        .to_string();
    (Serve { child, addr }, token)
}

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
    let (serve, token) = start_serve(bin, dir.path());
    let auth = format!("Bearer {token}");
    let bytes = std::fs::read(input).unwrap();
    let tus = || {
        vec![
            ("Authorization", auth.clone()),
            ("Tus-Resumable", "1.0.0".to_string()),
        ]
    };
    let mut h = tus();
    h.push(("Upload-Length", bytes.len().to_string()));
    h.push(("Upload-Metadata", "role Y2FtZXJh".to_string())); // role=camera
    let (st, head, body) = http(&serve.addr, "POST", "/files/", &h, b"");
    assert_eq!(st, 201, "create: {body}");
    let location = header(&head, "location").expect("Location").to_string();
    let path = location
        .split_once("://")
        .map(|(_, rest)| {
            rest.split_once('/')
                .map(|(_, p)| format!("/{p}"))
                .unwrap_or_default()
        })
        .unwrap_or(location.clone());
    let id = path.rsplit('/').next().unwrap().to_string();
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
        let mut h = tus();
        h.push(("Upload-Offset", offset.to_string()));
        h.push((
            "Content-Type",
            "application/offset+octet-stream".to_string(),
        ));
        let (st, head, body) = http(&serve.addr, "PATCH", &path, &h, &bytes[offset..end]);
        assert_eq!(st, 204, "PATCH at {offset}: {body}");
        offset = header(&head, "upload-offset")
            .and_then(|v| v.parse().ok())
            .expect("offset");
        n += 1;
    }
    let last_byte = Instant::now();
    let upload_s = (last_byte - started).as_secs_f64();
    let verdict = loop {
        let (st, _, body) = http(
            &serve.addr,
            "GET",
            &format!("/v1/recordings/{id}/verdict"),
            &[("Authorization", auth.clone())],
            b"",
        );
        if st == 200 {
            break serde_json::from_str::<serde_json::Value>(&body).expect("verdict JSON");
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
        peak_rss_mb: serve.peak_rss_mb(),
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = common::release_classguard();
    let pace: f64 = env_or("CG_BENCH_PACE", "1")
        .parse()
        .expect("CG_BENCH_PACE is a number");
    println!("| input | pace | MB | upload s | upload MB/s | last byte -> verdict s | audit wall s | audit x realtime | decision | serve peak RSS MB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for d in env_or("CG_BENCH_DURATIONS", "120").split(',') {
        let d: u64 = d.trim().parse().expect("durations are seconds");
        let st = Command::new(root.join("scripts/fixtures/make-long.sh"))
            .arg(d.to_string())
            .status()
            .expect("make-long.sh");
        assert!(st.success(), "make-long.sh {d} failed");
        let input = root.join(format!("fixtures/generated/camera-{d}s.webm"));
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
