//! Scale-out mode against real parts: one `classguard serve --queue --storage` and three
//! `classguard worker` processes, the test's own `nats-server -js`, the machine's PostgreSQL and a
//! moto S3 server; 30 live uploads by tus-js-client (the tus reference client, under Node) of the
//! ten real browser fixtures, while a worker is killed with -9 mid-audit, the broker is killed and
//! restarted, and a poison recording crashes every worker that takes it (a test-only fault
//! switch) until it becomes a dead letter. Every recording must end with exactly one verdict row,
//! equal to a `scan` of the whole file; none lost.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::moto::{put, s3_env, Moto, S3_ENV};
use common::nats::NatsServer;
use common::outcome::{node_client, outcome_of_upload, reference};
use common::pg::PgDb;
use common::serve::{http, Serve};

const FILES: &[&str] = &[
    "browser/camera-vp8-opus.webm",
    "browser/camera-vp9-opus.webm",
    "browser/video-only-vp8.webm",
    "browser/audio-only-opus.webm",
    "browser/camera-face-then-none.webm",
    "browser/camera-speech-contact.webm",
    "browser/camera-no-face.webm",
    "browser/camera-glances-away.webm",
    "browser/whiteboard-contact.webm",
    "browser/whiteboard-clean.webm",
];

const BUCKET: &str = "cg-scale";
/// The class session whose recordings crash the worker (CLASSGUARD_FAULT_CRASH_SESSION).
const POISON: &str = "poison-class";

/// The broker, database and bucket every node shares.
struct Parts {
    nats: NatsServer,
    pg: PgDb,
    moto: Moto,
    dir: tempfile::TempDir,
}

impl Parts {
    fn start() -> Option<Parts> {
        let moto = Moto::start()?;
        put(moto.port, &format!("/{BUCKET}"), b"");
        Some(Parts {
            nats: NatsServer::start(),
            pg: PgDb::new("scale"),
            moto,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn storage(&self) -> String {
        format!("s3://{BUCKET}/classes")
    }

    /// Options both `serve` and `worker` take; they must agree on the queue's redelivery.
    fn shared_args(&self) -> Vec<String> {
        vec![
            "--queue".into(),
            self.nats.url(),
            "--storage".into(),
            self.storage(),
            "--s3-endpoint-url".into(),
            self.moto.url(),
            "--ack-wait-s".into(),
            "3".into(),
            "--max-attempts".into(),
            "2".into(),
        ]
    }

    fn serve(&self) -> Serve {
        let args = self.shared_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env: Vec<(&str, &str)> = S3_ENV.to_vec();
        env.push(("RUST_LOG", "classguard=info"));
        Serve::start_with_env(&self.dir.path().join("serve"), &self.pg.url, &args, &env)
    }

    fn worker(&self, n: usize, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("worker-{n}.log"))).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
        c.arg("worker")
            .args(self.shared_args())
            .args(["--database", &self.pg.url, "--jobs", "2"])
            .arg("--work-dir")
            .arg(self.dir.path().join(format!("worker-{n}")))
            .args(extra)
            .env("CLASSGUARD_FAULT_CRASH_SESSION", POISON)
            .stdout(Stdio::null())
            .stderr(log);
        s3_env(&mut c);
        c.spawn().expect("classguard worker starts")
    }

    fn verdict_rows(&self, id: &str) -> i64 {
        let mut c = ::postgres::Client::connect(&self.pg.url, ::postgres::NoTls).unwrap();
        c.query_one(
            "SELECT COUNT(*) FROM verdicts WHERE recording_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0)
    }

    /// Like systemd: a worker that exited is started again. How many were.
    fn supervise(&self, workers: &mut [Child]) -> usize {
        let mut restarted = 0;
        for (n, w) in workers.iter_mut().enumerate() {
            if let Ok(Some(status)) = w.try_wait() {
                restarted += 1;
                eprintln!("worker {n} exited ({status}); restarting");
                *w = self.worker(n, &[]);
            }
        }
        restarted
    }

    /// `classguard scan <mode>` of the recordings the workers kept whole; its stdout.
    fn rescan(&self, mode: &str) -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
        c.args(["scan", mode, "--endpoint-url", &self.moto.url()])
            .arg(format!("s3://{BUCKET}/classes/recordings/"))
            .arg("--store")
            .arg(self.dir.path().join("rescan.sqlite"))
            .arg("--out")
            .arg(self.dir.path().join("rescan"));
        s3_env(&mut c);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Jobs the store says `worker` is running (workers are named host-pid).
    fn running_jobs_of(&self, worker: &Child) -> i64 {
        let mut c = ::postgres::Client::connect(&self.pg.url, ::postgres::NoTls).unwrap();
        c.query_one(
            "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND worker LIKE $1",
            &[&format!("%-{}", worker.id())],
        )
        .unwrap()
        .get(0)
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        for n in 0..3 {
            if let Ok(t) = std::fs::read_to_string(self.dir.path().join(format!("worker-{n}.log")))
            {
                let lines: Vec<&str> = t.lines().collect();
                let notable: Vec<&str> = lines
                    .iter()
                    .copied()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                let from = notable.len().saturating_sub(20);
                s.push_str(&format!("--- worker {n}\n{}\n", notable[from..].join("\n")));
            }
        }
        s
    }
}

fn files() -> Vec<PathBuf> {
    FILES.iter().map(|f| common::fixture(f)).collect()
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// POSTs one whole recording; its id.
fn post(serve: &Serve, token: &str, file: &Path, session: &str) -> String {
    let (status, _, body) = http(
        &serve.base,
        "POST",
        &format!("/v1/recordings?session_id={session}&role=camera"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "video/webm"),
        ],
        &std::fs::read(file).unwrap(),
    );
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn kill9(child: &Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
}

#[test]
fn three_workers_thirty_live_uploads_survive_a_kill_a_broker_restart_and_a_poison_job() {
    let Some(mut parts) = Parts::start() else {
        return;
    };
    let refs = reference(&files());
    let serve = parts.serve();
    let token = serve.token("school-a");
    let mut workers: Vec<Child> = (0..3).map(|n| parts.worker(n, &[])).collect();
    let poison = post(&serve, &token, &common::fixture(FILES[0]), POISON);

    // The classroom servers: 30 live uploads at once, blobs at their recorded sizes.
    let client = {
        let mut args: Vec<String> = vec![
            "many".into(),
            serve.base.clone(),
            token.clone(),
            "30".into(),
        ];
        args.extend(files().iter().map(|f| f.to_string_lossy().into_owned()));
        std::thread::spawn(move || node_client(&args))
    };

    let started = Instant::now();
    let deadline = started + Duration::from_secs(540);
    let (mut killed, mut broker_restarted, mut restarts) = (false, false, 0);
    while !client.is_finished() {
        assert!(
            Instant::now() < deadline,
            "uploads did not finish\n{}",
            parts.log_tail()
        );
        restarts += parts.supervise(&mut workers);
        let t = started.elapsed();
        if !killed && t > Duration::from_secs(6) && parts.running_jobs_of(&workers[0]) > 0 {
            // Mid-audit: worker 0 is auditing live uploads right now.
            kill9(&workers[0]);
            killed = true;
            eprintln!("killed worker 0 at {t:?}");
        }
        if !broker_restarted && t > Duration::from_secs(15) {
            parts.nats.kill();
            std::thread::sleep(Duration::from_secs(2));
            parts.nats.restart();
            broker_restarted = true;
            eprintln!("restarted nats-server at {t:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = client.join().unwrap();
    let elapsed = started.elapsed();
    let uploads = out["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 30);
    let mut per_file: BTreeMap<String, usize> = BTreeMap::new();
    for u in uploads {
        let file = u["file"].as_str().unwrap();
        let id = u["id"].as_str().unwrap();
        let v = serve.verdict(&token, id).expect("a final verdict");
        assert_eq!(
            &outcome_of_upload(u),
            &refs[file],
            "{file} uploaded as {id} differs from a scan of the whole file: {}\n{}",
            v["recording"]["partial_reason"],
            parts.log_tail()
        );
        assert_eq!(parts.verdict_rows(id), 1, "{id}: exactly one verdict row");
        let path = files().into_iter().find(|p| p.ends_with(file)).unwrap();
        assert_eq!(
            v["recording"]["sha256"].as_str().unwrap(),
            sha256_hex(&path),
            "{id}: the worker read exactly the uploaded bytes back from storage"
        );
        *per_file.entry(file.to_string()).or_default() += 1;
    }
    assert!(per_file.values().all(|&n| n == 3), "{per_file:?}");

    // The poison job: crashed each worker that took it, then a dead letter and an error verdict.
    // Still supervising: the poison job may crash its last worker after the uploads are done.
    let t = Instant::now();
    let v = loop {
        restarts += parts.supervise(&mut workers);
        if let Some(v) = serve.verdict(&token, &poison) {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no verdict for the poison recording\n{}",
            parts.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["decision"], "error", "{v}");
    assert!(
        v["recording"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("dead letter"),
        "{v}"
    );
    assert_eq!(parts.verdict_rows(&poison), 1);
    let dead = Command::new(env!("CARGO_BIN_EXE_classguard"))
        .args(["jobs", "dead", "--json", "--database", &parts.pg.url])
        .output()
        .unwrap();
    assert!(dead.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(dead.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "only the poison job is dead: {lines:?}");
    assert_eq!(lines[0]["recording"], poison.as_str());
    assert_eq!(lines[0]["attempts"], 2);
    // Each ended recording is kept whole for rescans, in place of its segments.
    let t = Instant::now();
    let plan = loop {
        let text = parts.rescan("--plan");
        if text.contains("30 recordings") || t.elapsed() > Duration::from_secs(60) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(plan.contains("30 recordings"), "{plan}");
    assert!(killed, "worker 0 never held a running job");
    // The kill, and the poison job's crashes (two attempts, one of which the kill may have been).
    assert!(restarts >= 2, "{restarts} restarts");
    eprintln!(
        "3 workers, 30 live uploads + 1 poison: last verdict after {:.1} s, {restarts} worker \
         restarts, serve peak RSS {:.0} MiB (it loads no model)",
        elapsed.as_secs_f64(),
        serve.peak_rss_mib()
    );
    // The serve node stays light: audits, and their models, live in the workers.
    assert!(serve.peak_rss_mib() < 300.0, "{} MiB", serve.peak_rss_mib());
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// tus by hand: an upload whose bytes come in later parts, under the test's control.
fn tus_create(serve: &Serve, token: &str, session: &str) -> String {
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let meta = format!("session_id {},role {}", b64(session), b64("camera"));
    let (st, head, body) = http(
        &serve.base,
        "POST",
        "/files/",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Defer-Length", "1"),
            ("Upload-Metadata", &meta),
        ],
        b"",
    );
    assert_eq!(st, 201, "{body}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    location.rsplit('/').next().unwrap().to_string()
}

fn tus_patch(
    serve: &Serve,
    token: &str,
    id: &str,
    offset: usize,
    data: &[u8],
    total: Option<usize>,
) {
    let offset_s = offset.to_string();
    let total_s = total.map(|t| t.to_string());
    let mut headers = vec![
        ("Authorization".to_string(), format!("Bearer {token}")),
        ("Tus-Resumable".into(), "1.0.0".into()),
        (
            "Content-Type".into(),
            "application/offset+octet-stream".into(),
        ),
        ("Upload-Offset".into(), offset_s),
    ];
    if let Some(t) = total_s {
        headers.push(("Upload-Length".into(), t));
    }
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (st, _, body) = http(&serve.base, "PATCH", &format!("/files/{id}"), &h, data);
    assert_eq!(st, 204, "{body}");
}

#[test]
fn sigterm_hands_a_live_audit_back_and_another_worker_finishes_it() {
    let Some(parts) = Parts::start() else {
        return;
    };
    let file = common::fixture("browser/camera-speech-contact.webm");
    let bytes = std::fs::read(&file).unwrap();
    let refs = reference(std::slice::from_ref(&file));
    let serve = parts.serve();
    let token = serve.token("school-b");
    let mut first = parts.worker(0, &["--shutdown-grace-s", "1"]);
    let id = tus_create(&serve, &token, "class-live");
    let half = bytes.len() / 2;
    tus_patch(&serve, &token, &id, 0, &bytes[..half], None);
    // The first worker takes the job with the first bytes and audits while it waits for more.
    let (db, rid) = (parts.pg.url.clone(), id.clone());
    let running = move || {
        let mut c = ::postgres::Client::connect(&db, ::postgres::NoTls).unwrap();
        c.query_one("SELECT state FROM jobs WHERE recording_id = $1", &[&rid])
            .unwrap()
            .get::<_, String>(0)
            == "running"
    };
    let t = Instant::now();
    while !running() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no worker took the job\n{}",
            parts.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "SIGTERM did not stop the worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "graceful exit: {status}\n{}",
        parts.log_tail()
    );
    // Handed back, not waiting out ack_wait: a new worker gets it and follows the rest.
    let mut second = parts.worker(1, &[]);
    tus_patch(&serve, &token, &id, half, &bytes[half..], Some(bytes.len()));
    let v = serve.wait_verdict(&token, &id, Duration::from_secs(120));
    let name = file.file_name().unwrap().to_str().unwrap();
    let got = common::outcome::Outcome {
        decision: v["decision"].as_str().unwrap().into(),
        partial: v["recording"]["partial"].as_bool().unwrap(),
        labels: v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["label"].as_str().unwrap().to_string())
            .collect(),
    };
    assert_eq!(got, refs[name], "{v}");
    assert_eq!(
        v["recording"]["sha256"].as_str().unwrap(),
        sha256_hex(&file)
    );
    assert_eq!(parts.verdict_rows(&id), 1);
    // The hand-back was not a failed attempt: the second worker's was attempt 1 again.
    let mut c = ::postgres::Client::connect(&parts.pg.url, ::postgres::NoTls).unwrap();
    let t = Instant::now();
    let (attempts, state) = loop {
        let r = c
            .query_one(
                "SELECT attempts, state FROM jobs WHERE recording_id = $1",
                &[&id],
            )
            .unwrap();
        let (attempts, state): (i64, String) = (r.get(0), r.get(1));
        if state == "done" || t.elapsed() > Duration::from_secs(30) {
            break (attempts, state);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((attempts, state.as_str()), (1, "done"));
    // The operator's rescan reads the recording kept whole, byte for byte.
    let t = Instant::now();
    let rescanned = loop {
        let text = parts.rescan("--jsonl");
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the recording was not stored whole"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        rescanned["recording"]["sha256"].as_str().unwrap(),
        sha256_hex(&file)
    );
    assert_eq!(rescanned["decision"], v["decision"]);
    let _ = second.kill();
    let _ = second.wait();
}
