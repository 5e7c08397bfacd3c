//! Scale-out benchmark: audit throughput with 1 and 2 `classguard worker` processes (release
//! build) behind one `serve --queue --storage`, on the real parts the tests use: a
//! `nats-server -js` of its own, the machine's PostgreSQL and a moto S3 server.
//!
//!   cargo bench --bench scale_out
//!
//! Each run POSTs `CG_BENCH_RECORDINGS` copies of the generated camera recording at once (whole
//! bodies, so the measurement is the audit, not the upload pace) after every worker has loaded
//! its models, and prints recording-minutes audited per wall minute from the first POST to the
//! last verdict, and each worker's peak RSS.
//!
//!   CG_BENCH_DURATION    120    length of the camera recording, seconds (scripts/fixtures/make-long.sh)
//!   CG_BENCH_RECORDINGS  6      recordings per run
//!   CG_BENCH_WORKERS     1,2    worker processes per run
//!   CG_BENCH_JOBS        2      recordings each worker audits at once
//!   CG_BENCH_NO_BUILD    unset  set to skip `cargo build --release --bin classguard`

// The tests' own harness for the real parts; the bench uses only some of it.
#[allow(dead_code)]
#[path = "../tests/common/moto.rs"]
mod moto;
#[allow(dead_code)]
#[path = "../tests/common/nats.rs"]
mod nats;
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../tests/common/serve.rs"]
mod serve;

mod common;

use common::env_or;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One request through the tests' HTTP helper: status and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) = serve::http(&format!("http://{addr}"), method, path, &h, body);
    (status, body)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    wall_s: f64,
    worker_rss_mb: Vec<f64>,
    decisions: Vec<String>,
}

fn run(bin: &Path, input: &Path, recordings: usize, workers: usize, jobs: usize) -> Option<Run> {
    let moto = moto::Moto::start()?;
    moto::put(moto.port, "/cg-bench", b"");
    let broker = nats::NatsServer::start();
    let db = pg::PgDb::new("bench_scale");
    let dir = tempfile::tempdir().unwrap();
    let shared: Vec<String> = vec![
        "--queue".into(),
        broker.url(),
        "--storage".into(),
        "s3://cg-bench/classes".into(),
        "--s3-endpoint-url".into(),
        moto.url(),
    ];
    let token = common::create_token(bin, &db.url);
    let mut serve = Command::new(bin);
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
        .arg("--data-dir")
        .arg(dir.path().join("serve"))
        .args(&shared)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    moto::s3_env(&mut serve);
    let mut serve = Killed(serve.spawn().expect("serve starts"));
    let mut line = String::new();
    BufReader::new(serve.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
        .to_string();
    let mut pool = Vec::new();
    for n in 0..workers {
        let log = dir.path().join(format!("worker-{n}.log"));
        let mut c = Command::new(bin);
        c.arg("worker")
            .args(&shared)
            .args(["--database", &db.url, "--jobs", &jobs.to_string()])
            .arg("--work-dir")
            .arg(dir.path().join(format!("worker-{n}")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        moto::s3_env(&mut c);
        pool.push((Killed(c.spawn().expect("worker starts")), log));
    }
    // Model loading is start-up, not throughput: wait until every worker is ready.
    let t = Instant::now();
    for (_, log) in &pool {
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("worker ready")
        {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "worker did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let body = std::fs::read(input).unwrap();
    let auth = format!("Bearer {token}");
    let started = Instant::now();
    let ids: Vec<String> = (0..recordings)
        .map(|i| {
            let (st, resp) = http(
                &addr,
                "POST",
                &format!("/v1/recordings?session_id=bench-{i}&role=camera"),
                &[
                    ("Authorization", auth.clone()),
                    ("Content-Type", "video/webm".into()),
                ],
                &body,
            );
            assert_eq!(st, 201, "{resp}");
            let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut decisions = Vec::new();
    for id in &ids {
        loop {
            let (st, resp) = http(
                &addr,
                "GET",
                &format!("/v1/recordings/{id}/verdict"),
                &[("Authorization", auth.clone())],
                b"",
            );
            if st == 200 {
                let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
                decisions.push(v["decision"].as_str().unwrap_or("?").to_string());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3600),
                "no verdict for {id}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let worker_rss_mb = pool
        .iter()
        .map(|(w, _)| common::peak_rss_mib(w.0.id()))
        .collect();
    let _ = serve.0.kill();
    Some(Run {
        wall_s,
        worker_rss_mb,
        decisions,
    })
}

fn main() {
    let bin = common::release_classguard();
    let d: u64 = env_or("CG_BENCH_DURATION", "120").parse().expect("seconds");
    let recordings: usize = env_or("CG_BENCH_RECORDINGS", "6").parse().expect("a count");
    let jobs: usize = env_or("CG_BENCH_JOBS", "2").parse().expect("a count");
    let input = common::generated_camera(d);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("{cpus} CPUs; {recordings} x camera-{d}s posted at once; --jobs {jobs} per worker");
    println!("| workers | recording-min | wall s | recording-min per wall-min | worker peak RSS MB | decisions |");
    println!("|---:|---:|---:|---:|---|---|");
    for w in env_or("CG_BENCH_WORKERS", "1,2").split(',') {
        let w: usize = w.trim().parse().expect("a worker count");
        let Some(r) = run(&bin, &input, recordings, w, jobs) else {
            println!("(moto is not installed: run scripts/setup)");
            return;
        };
        let minutes = recordings as f64 * d as f64 / 60.0;
        let rss: Vec<String> = r.worker_rss_mb.iter().map(|m| format!("{m:.0}")).collect();
        let mut decisions = r.decisions.clone();
        decisions.sort();
        decisions.dedup();
        println!(
            "| {w} | {minutes:.0} | {:.1} | {:.1} | {} | {} |",
            r.wall_s,
            minutes / (r.wall_s / 60.0),
            rss.join(", "),
            decisions.join(", ")
        );
    }
}
