//! `classguard scan s3://...` against a real S3-compatible server (moto, started per test on a
//! free loopback port) behind a small TCP proxy of our own that logs every request and can cut
//! a response after N bytes: a bucket of browser recordings scanned, re-scanned without one media
//! GET, re-audited after a policy change, `kill -9` and resume, objects deleted or replaced
//! mid-run, a garbage object, and connections broken mid-object.
//!
//! moto comes from scripts/setup (a venv under ~/.cache/classguard-tools/moto); when it is
//! missing the test installs it the same way, and skips with a note only if that fails.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::moto::{http, put, s3_env, Moto};

/// A request as the proxy saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    range: Option<String>,
}

type Hook = Box<dyn Fn(&Req) + Send + Sync>;

#[derive(Default)]
struct ProxyState {
    log: Vec<Req>,
    /// Responses to GETs of paths containing this are cut after `bytes`, `times` more times.
    cut: Option<(String, usize, usize)>,
    hooks: Vec<Hook>,
}

/// A TCP proxy in front of moto that logs requests, runs hooks on them and cuts responses.
#[derive(Clone)]
struct Proxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let st = st.clone();
                std::thread::spawn(move || relay(client, server, st));
            }
        });
        Proxy { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// GETs of input media (not listings, not verdicts).
    fn media_gets(&self, bucket_prefix: &str) -> Vec<Req> {
        self.log()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with(bucket_prefix))
            .collect()
    }

    fn cut(&self, path_part: &str, after_bytes: usize, times: usize) {
        self.state.lock().unwrap().cut = Some((path_part.to_string(), after_bytes, times));
    }

    fn on_request(&self, hook: impl Fn(&Req) + Send + Sync + 'static) {
        self.state.lock().unwrap().hooks.push(Box::new(hook));
    }
}

/// Copies both ways; parses request heads on the way up (no pipelining: the SDK waits for each
/// response), so a cut applies to the response of the request just sent.
fn relay(client: TcpStream, server: TcpStream, state: Arc<Mutex<ProxyState>>) {
    let cut_at: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up_cut = cut_at.clone();
    let up_state = state.clone();
    let up = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut pending: Vec<u8> = Vec::new();
        let mut current: Option<Req> = None;
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&pending[..end]).to_string();
                pending.drain(..end + 2);
                let mut words = line.split(' ');
                if let (Some(m), Some(p), Some(v)) = (words.next(), words.next(), words.next()) {
                    if v.starts_with("HTTP/1.")
                        && ["GET", "PUT", "HEAD", "DELETE", "POST"].contains(&m)
                    {
                        current = Some(Req {
                            method: m.to_string(),
                            path: p.to_string(),
                            range: None,
                        });
                        continue;
                    }
                }
                if let Some(r) = &mut current {
                    if let Some(v) = line
                        .strip_prefix("range: ")
                        .or_else(|| line.strip_prefix("Range: "))
                    {
                        r.range = Some(v.to_string());
                    }
                    if line.is_empty() {
                        let req = current.take().unwrap();
                        let mut st = up_state.lock().unwrap();
                        if req.method == "GET" {
                            if let Some((part, bytes, times)) = &mut st.cut {
                                if *times > 0 && req.path.contains(part.as_str()) {
                                    *times -= 1;
                                    *up_cut.lock().unwrap() = Some(*bytes);
                                }
                            }
                        }
                        st.log.push(req.clone());
                        let hooks = std::mem::take(&mut st.hooks);
                        drop(st);
                        for h in &hooks {
                            h(&req);
                        }
                        up_state.lock().unwrap().hooks.extend(hooks);
                    }
                }
            }
            // Request bodies (uploads) have no line structure worth keeping.
            if pending.len() > 16 << 10 {
                pending.clear();
            }
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = vec![0u8; 16 << 10];
    let mut sent_since_cut = 0usize;
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let limit = *cut_at.lock().unwrap();
        if let Some(limit) = limit {
            let room = limit.saturating_sub(sent_since_cut);
            let _ = c_write.write_all(&buf[..n.min(room)]);
            sent_since_cut += n.min(room);
            if sent_since_cut >= limit {
                let _ = c_write.shutdown(Shutdown::Both);
                let _ = s_read.shutdown(Shutdown::Both);
                break;
            }
        } else if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// A bucket on a fresh moto server behind a fresh proxy.
struct S3 {
    moto: Moto,
    proxy: Proxy,
}

impl S3 {
    fn start() -> Option<S3> {
        let moto = Moto::start()?;
        let proxy = Proxy::start(moto.port);
        put(moto.port, "/media", b"");
        put(moto.port, "/verdicts", b"");
        Some(S3 { moto, proxy })
    }

    fn upload(&self, key: &str, bytes: &[u8]) {
        put(self.moto.port, &format!("/media/{key}"), bytes);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(common::fixture(rel)).unwrap()
}

fn scan_cmd(s3: &S3, dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
    c.arg("scan")
        .args(extra)
        .args(["--out"])
        .arg(dir.join("out"))
        .arg("--store")
        .arg(dir.join("store.sqlite"))
        .args(["--endpoint-url", &s3.proxy.url()]);
    s3_env(&mut c);
    c
}

/// Runs a scan to its end; one that hangs fails the test instead of the whole run.
fn run(mut c: Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "scan did not finish in 300 s:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every published verdict, by recording source.
fn verdicts(out: &Path) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path().join("verdict.json");
        if let Ok(bytes) = std::fs::read(&p) {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            found.insert(v["recording"]["source"].as_str().unwrap().to_string(), v);
        }
    }
    found
}

const BUCKET_FIXTURES: [&str; 3] = [
    "browser/camera-speech-contact.webm",
    "browser/audio-only-opus.webm",
    "browser/whiteboard-clean.webm",
];

fn upload_fixtures(s3: &S3, prefix: &str, rels: &[&str]) -> BTreeMap<String, String> {
    let mut shas = BTreeMap::new();
    for rel in rels {
        let bytes = fixture_bytes(rel);
        let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
        s3.upload(&format!("{prefix}/{name}"), &bytes);
        shas.insert(format!("s3://media/{prefix}/{name}"), sha256_hex(&bytes));
    }
    shas
}

/// The shipped policy, one version on, with contact details a block instead of a review.
fn stricter_policy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::root().join("pipelines/classroom.toml")).unwrap();
    let new = text
        .replace("version = \"1.1.0\"", "version = \"1.2.0\"")
        .replace(
            "contact_info = { action = \"review\"",
            "contact_info = { action = \"block\"",
        );
    assert!(
        new.contains("version = \"1.2.0\"") && new.contains("contact_info = { action = \"block\""),
        "policy text changed: update this test"
    );
    let p = dir.join("stricter.toml");
    std::fs::write(&p, new).unwrap();
    p
}

#[test]
fn a_bucket_is_scanned_rescanned_without_reading_media_and_reaudited_after_a_policy_change() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shas = upload_fixtures(&s3, "in", &BUCKET_FIXTURES);
    // Not media: never listed as a recording.
    s3.upload("in/notes.txt", b"not a recording");

    let first = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(first.status.success(), "{}", text(&first));
    let table = String::from_utf8_lossy(&first.stdout);
    assert!(
        table.contains("3 recordings: 3 audited, 0 skipped"),
        "{}",
        text(&first)
    );
    let v1 = verdicts(&dir.path().join("out"));
    assert_eq!(v1.len(), 3);
    for (uri, sha) in &shas {
        let v = &v1[uri];
        assert_eq!(
            v["recording"]["sha256"],
            sha.as_str(),
            "{uri}: content hash"
        );
        assert_eq!(v["recording"]["partial"], false, "{uri}");
        assert!(
            v["recording"]["duration_ms"].as_u64().unwrap() > 1000,
            "{uri}"
        );
    }
    let contact = &v1["s3://media/in/camera-speech-contact.webm"];
    assert_eq!(contact["decision"], "review");
    assert!(!common::findings(contact, "contact_info").is_empty());
    // Streamed: one ranged GET per object from byte 0, each pinned to the listed ETag.
    let gets = s3.proxy.media_gets("/media/in/");
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(
        gets.iter().all(|g| g.range.as_deref() == Some("bytes=0-")),
        "{gets:?}"
    );

    // The same scan again: everything skipped, not one media byte read.
    s3.proxy.clear();
    let again = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("3 recordings: 0 audited, 3 skipped"),
        "{}",
        text(&again)
    );
    assert_eq!(
        s3.proxy.media_gets("/media/in/").len(),
        0,
        "{:?}",
        s3.proxy.log()
    );
    assert!(
        s3.proxy
            .log()
            .iter()
            .any(|r| r.path.starts_with("/media?") || r.path.starts_with("/media/?")),
        "listed with ListObjectsV2: {:?}",
        s3.proxy.log()
    );

    // The plan of a stricter policy: every recording, because the policy changed; no GETs.
    let policy = stricter_policy(dir.path());
    s3.proxy.clear();
    let plan = run(scan_cmd(
        &s3,
        dir.path(),
        &[
            "s3://media/in",
            "--plan",
            "--policy",
            policy.to_str().unwrap(),
        ],
    ));
    assert!(plan.status.success(), "{}", text(&plan));
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("3 recordings: 3 to audit"),
        "{plan_text}"
    );
    assert!(
        plan_text.contains("policy changed (classroom 1.1.0 -> classroom 1.2.0)"),
        "{plan_text}"
    );
    assert_eq!(s3.proxy.media_gets("/media/in/").len(), 0);
    let same_plan = run(scan_cmd(&s3, dir.path(), &["s3://media/in", "--plan"]));
    assert!(
        String::from_utf8_lossy(&same_plan.stdout).contains("3 recordings: 0 to audit"),
        "{}",
        text(&same_plan)
    );

    // The policy change itself: all re-audited, with the change report against the old verdicts.
    let old = dir.path().join("old");
    copy_dir(&dir.path().join("out"), &old);
    let changed = run(scan_cmd(
        &s3,
        dir.path(),
        &[
            "s3://media/in",
            "--policy",
            policy.to_str().unwrap(),
            "--compare-with",
            old.to_str().unwrap(),
        ],
    ));
    assert!(changed.status.success(), "{}", text(&changed));
    let out = String::from_utf8_lossy(&changed.stdout);
    assert!(
        out.contains("3 recordings: 3 audited, 0 skipped"),
        "{}",
        text(&changed)
    );
    assert!(
        out.contains("3 recordings compared: 1 decisions changed, 2 unchanged"),
        "{out}"
    );
    let contact_id = contact["recording"]["id"].as_str().unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("review -> block") && l.contains(contact_id)),
        "{out}"
    );
    let v2 = verdicts(&dir.path().join("out"));
    assert_eq!(
        v2["s3://media/in/camera-speech-contact.webm"]["decision"],
        "block"
    );
    assert_eq!(
        v2["s3://media/in/camera-speech-contact.webm"]["policy"]["version"],
        "1.2.0"
    );

    // `classguard diff` over the two folders says the same.
    let mut d = Command::new(env!("CARGO_BIN_EXE_classguard"));
    d.args([
        "diff",
        old.to_str().unwrap(),
        dir.path().join("out").to_str().unwrap(),
    ]);
    let diff = run(d);
    assert!(diff.status.success(), "{}", text(&diff));
    let report = String::from_utf8_lossy(&diff.stdout);
    assert!(report.contains("1 decisions changed"), "{report}");
    assert!(report.contains("review -> block"), "{report}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn verdicts_can_go_to_an_s3_prefix_and_a_rescan_skips_them() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    upload_fixtures(&s3, "in", &["browser/camera-speech-contact.webm"]);
    let cmd = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
        c.args([
            "scan",
            "s3://media/in",
            "--out",
            "s3://verdicts/run1",
            "--store",
        ])
        .arg(dir.path().join("store.sqlite"))
        .args(["--endpoint-url", &s3.proxy.url()])
        .args(extra);
        s3_env(&mut c);
        c
    };
    let first = run(cmd(&[]));
    assert!(first.status.success(), "{}", text(&first));
    let puts: Vec<Req> = s3
        .proxy
        .log()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with("/verdicts/run1/"))
        .collect();
    assert!(
        puts.iter().any(|r| r.path.contains("/verdict.json")),
        "verdict uploaded: {puts:?}"
    );
    assert!(
        puts.iter().any(|r| r.path.contains("/mic.webm")),
        "microphone uploaded: {puts:?}"
    );
    assert!(
        puts.iter().any(|r| r.path.contains(".wav")),
        "evidence uploaded: {puts:?}"
    );
    // The verdict is the last upload: a published verdict means its evidence is there.
    assert!(
        puts.last().unwrap().path.contains("/verdict.json"),
        "{puts:?}"
    );
    s3.proxy.clear();
    let again = run(cmd(&[]));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("1 recordings: 0 audited, 1 skipped"),
        "{}",
        text(&again)
    );
    assert_eq!(s3.proxy.media_gets("/media/in/").len(), 0);
}

#[test]
fn killed_runs_resume_without_losing_or_auditing_anything_twice() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rels = [
        "browser/camera-vp9-opus.webm",
        "browser/video-only-vp8.webm",
        "browser/audio-only-opus.webm",
        "browser/whiteboard-clean.webm",
    ];
    let shas = upload_fixtures(&s3, "in", &rels);
    let out = dir.path().join("out");
    // Published verdicts by source -> created_at: a verdict, once published, is never redone.
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for delay_ms in [500u64, 2500, 4000, 5500] {
        let mut c = scan_cmd(&s3, dir.path(), &["s3://media/in"]);
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        for (src, v) in verdicts(&out) {
            let created = v["created_at"].as_str().unwrap().to_string();
            if let Some(before) = published.get(&src) {
                assert_eq!(before, &created, "{src} audited twice");
            }
            published.insert(src, created);
        }
    }
    let done = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(done.status.success(), "{}", text(&done));
    let table = String::from_utf8_lossy(&done.stdout);
    let audited_now = 4 - published.len();
    assert!(
        table.contains(&format!(
            "4 recordings: {audited_now} audited, {} skipped",
            published.len()
        )),
        "{}",
        text(&done)
    );
    let all = verdicts(&out);
    assert_eq!(all.len(), 4);
    let store = classguard::store::Store::open(&dir.path().join("store.sqlite")).unwrap();
    for (src, v) in &all {
        if let Some(before) = published.get(src) {
            assert_eq!(
                before,
                v["created_at"].as_str().unwrap(),
                "{src} audited twice"
            );
        }
        assert_eq!(v["recording"]["sha256"], shas[src].as_str());
        let typed: classguard::verdict::Verdict = serde_json::from_value(v.clone()).unwrap();
        assert!(
            store
                .get_verdict_by_key(&typed.idempotency_key())
                .unwrap()
                .is_some(),
            "{src}: verdict missing from the store"
        );
    }
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.ends_with(".lock"), "lock left behind: {name}");
    }
    s3.proxy.clear();
    let again = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(String::from_utf8_lossy(&again.stdout).contains("4 recordings: 0 audited, 4 skipped"));
    assert_eq!(s3.proxy.media_gets("/media/in/").len(), 0);
}

#[test]
fn objects_deleted_or_replaced_mid_run_fail_alone_and_are_picked_up_next_time() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Key order is scan order: a is read first, while b and c wait their turn.
    let a = fixture_bytes("browser/audio-only-opus.webm");
    let b = fixture_bytes("browser/video-only-vp8.webm");
    let c = fixture_bytes("browser/whiteboard-clean.webm");
    s3.upload("in/a.webm", &a);
    s3.upload("in/b.webm", &b);
    s3.upload("in/c.webm", &c);
    let moto = s3.moto.port;
    let c2 = fixture_bytes("browser/camera-vp9-opus.webm");
    let c2_sha = sha256_hex(&c2);
    // (status of the DELETE, of the PUT), once a is being read. No asserts in the proxy: a
    // panic there would leave the scan waiting for a response.
    type Statuses = Option<(Option<u16>, Option<u16>)>;
    let fired: Arc<Mutex<Statuses>> = Arc::new(Mutex::new(None));
    let hook_fired = fired.clone();
    s3.proxy.on_request(move |r| {
        let mut fired = hook_fired.lock().unwrap();
        if r.method == "GET" && r.path.starts_with("/media/in/a.webm") && fired.is_none() {
            *fired = Some((
                http(moto, "DELETE", "/media/in/b.webm", &[]),
                http(moto, "PUT", "/media/in/c.webm", &c2),
            ));
        }
    });
    let first = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert_eq!(*fired.lock().unwrap(), Some((Some(204), Some(200))));
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    let table = String::from_utf8_lossy(&first.stdout);
    assert!(
        table.contains("3 recordings: 1 audited, 0 skipped, 0 busy, 2 failed"),
        "{}",
        text(&first)
    );
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("s3://media/in/b.webm: not found"), "{err}");
    assert!(
        err.contains("s3://media/in/c.webm: the object changed while it was read"),
        "{err}"
    );
    let v = verdicts(&dir.path().join("out"));
    assert_eq!(v.keys().collect::<Vec<_>>(), ["s3://media/in/a.webm"]);

    // Next time: b is gone from the listing, the new c is audited, a is skipped.
    let second = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("2 recordings: 1 audited, 1 skipped"),
        "{}",
        text(&second)
    );
    let v = verdicts(&dir.path().join("out"));
    assert_eq!(
        v["s3://media/in/c.webm"]["recording"]["sha256"],
        c2_sha.as_str()
    );
}

#[test]
fn a_garbage_object_gets_an_error_verdict_and_the_run_goes_on() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s3.upload("in/a-garbage.webm", &garbage);
    upload_fixtures(&s3, "in", &["browser/audio-only-opus.webm"]);
    let first = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    let v = verdicts(&dir.path().join("out"));
    let bad = &v["s3://media/in/a-garbage.webm"];
    assert_eq!(bad["decision"], "error");
    // The hash names the whole object even though the demuxer gave up at its first bytes.
    assert_eq!(bad["recording"]["sha256"], sha256_hex(&garbage).as_str());
    assert_ne!(v["s3://media/in/audio-only-opus.webm"]["decision"], "error");
    // An error verdict is a verdict: not read again until the object or the policy changes.
    s3.proxy.clear();
    let again = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("2 recordings: 0 audited, 1 skipped, 0 busy, 1 failed"),
        "{}",
        text(&again)
    );
    assert_eq!(s3.proxy.media_gets("/media/in/").len(), 0);
}

#[test]
fn a_connection_broken_mid_object_resumes_at_the_offset_reached() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rel = "browser/camera-speech-contact.webm";
    let shas = upload_fixtures(&s3, "in", &[rel]);
    let uri = "s3://media/in/camera-speech-contact.webm";
    // Cut twice, 100 kB into the response: two resumes, then the rest in one piece.
    s3.proxy
        .cut("/media/in/camera-speech-contact.webm", 100_000, 2);
    let cut = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(cut.status.success(), "{}", text(&cut));
    let gets = s3.proxy.media_gets("/media/in/");
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=0-"));
    let resumed_at = |g: &Req| -> u64 {
        g.range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("not a resume: {g:?}"))
    };
    let (r1, r2) = (resumed_at(&gets[1]), resumed_at(&gets[2]));
    // The response head takes part of the 100 kB; the body offset is what was received.
    assert!(r1 > 50_000 && r1 < 100_000, "{gets:?}");
    assert!(r2 > r1 && r2 < r1 + 100_000, "{gets:?}");
    let v = verdicts(&dir.path().join("out"));
    assert_eq!(v[uri]["recording"]["sha256"], shas[uri].as_str());
    assert_eq!(v[uri]["recording"]["partial"], false);

    // The same recording from a local file gives the same decision and findings.
    let mut local = Command::new(env!("CARGO_BIN_EXE_classguard"));
    local
        .arg("scan")
        .arg(common::fixture(rel))
        .arg("--out")
        .arg(dir.path().join("local"))
        .arg("--store")
        .arg(dir.path().join("local.sqlite"));
    s3_env(&mut local);
    let local_out = run(local);
    assert!(local_out.status.success(), "{}", text(&local_out));
    let lv = verdicts(&dir.path().join("local"));
    let lv = lv.values().next().unwrap();
    assert_eq!(lv["recording"]["sha256"], v[uri]["recording"]["sha256"]);
    assert_eq!(lv["decision"], v[uri]["decision"]);
    let labels = |v: &Value| -> Vec<String> {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{} {}", f["label"], f["start_ms"]))
            .collect()
    };
    assert_eq!(labels(lv), labels(&v[uri]));
}

#[test]
fn a_connection_that_keeps_breaking_fails_the_object_without_a_verdict() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    upload_fixtures(&s3, "in", &["browser/camera-speech-contact.webm"]);
    // Every response cut after its first byte: no progress, so the retries run out.
    s3.proxy
        .cut("/media/in/camera-speech-contact.webm", 1, 1000);
    let broken = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(err.contains("GetObject failed after 6 attempts"), "{err}");
    assert!(
        verdicts(&dir.path().join("out")).is_empty(),
        "no verdict for a read that broke"
    );
    // Once the network is back, the next scan audits it.
    s3.proxy.cut("/media/in/camera-speech-contact.webm", 0, 0);
    let fine = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    assert!(fine.status.success(), "{}", text(&fine));
    assert_eq!(verdicts(&dir.path().join("out")).len(), 1);
}

#[test]
fn local_files_and_s3_prefixes_mix_in_one_scan() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    upload_fixtures(&s3, "in", &["browser/audio-only-opus.webm"]);
    let local = common::fixture("browser/video-only-vp8.webm");
    let out = run(scan_cmd(
        &s3,
        dir.path(),
        &[
            local.to_str().unwrap(),
            "s3://media/in",
            "s3://media/empty-prefix",
        ],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 recordings: 2 audited"),
        "{}",
        text(&out)
    );
    let v = verdicts(&dir.path().join("out"));
    assert!(v.contains_key("s3://media/in/audio-only-opus.webm"));
    assert!(v
        .keys()
        .any(|k| k.ends_with("video-only-vp8.webm") && !k.starts_with("s3://")));
    // A bucket that does not exist is one failed input, not a failed run.
    let missing = run(scan_cmd(
        &s3,
        dir.path(),
        &["s3://no-such-bucket/x", local.to_str().unwrap()],
    ));
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stdout).contains("1 skipped"),
        "{}",
        text(&missing)
    );
}

#[test]
fn a_terminal_gets_a_progress_bar_and_a_pipe_gets_log_lines() {
    let Some(s3) = S3::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    upload_fixtures(&s3, "in", &["browser/audio-only-opus.webm"]);
    // `script` gives the scan a pseudo-terminal as stdout and stderr (util-linux, in Debian's
    // base system).
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("note: util-linux `script` missing; progress bar check skipped");
        return;
    }
    let scan = scan_cmd(&s3, dir.path(), &["s3://media/in"]);
    let mut line = vec![scan.get_program().to_string_lossy().to_string()];
    line.extend(scan.get_args().map(|a| a.to_string_lossy().to_string()));
    let quoted: Vec<String> = line.iter().map(|a| format!("'{a}'")).collect();
    let mut tty = Command::new("script");
    tty.args(["-qec", &quoted.join(" "), "/dev/null"]);
    s3_env(&mut tty);
    let out = run(tty);
    assert!(out.status.success(), "{}", text(&out));
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("1/1 recordings, 0.00 h media audited") && screen.contains("ETA"),
        "{screen}"
    );
    assert!(
        !screen.contains(" progress "),
        "no progress log lines under a bar: {screen}"
    );

    // Through a pipe: one `progress` log line per recording instead, and no bar.
    let piped = run(scan_cmd(&s3, dir.path(), &["s3://media/in"]));
    let err = strip_ansi(&String::from_utf8_lossy(&piped.stderr));
    assert!(
        err.lines()
            .any(|l| l.contains("progress") && l.contains("done=1") && l.contains("total=1")),
        "{err}"
    );
    assert!(!err.contains("ETA"), "{err}");
}

/// The log's colours out (`ESC [ ... m`), so fields read as `name=value`.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A classroom server that already has the recording in S3 names it instead of uploading it:
/// `serve` fetches it (through the logging proxy) and audits it while it streams in.
#[test]
fn serve_audits_an_object_named_by_its_s3_url() {
    use common::serve::{http as serve_http, Serve};
    let Some(s3) = S3::start() else { return };
    let rel = "browser/camera-speech-contact.webm";
    let bytes = fixture_bytes(rel);
    s3.upload("classes/class42-camera.webm", &bytes);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3.proxy.url();
    let mut env = common::moto::S3_ENV.to_vec();
    env.push(("CLASSGUARD_S3_ENDPOINT", endpoint.as_str()));
    let serve = Serve::start_env(&dir.path().join("serve"), &[], &env);
    let token = serve.token("school-a");
    let auth = format!("Bearer {token}");
    let post = |body: &str, key: &str| {
        serve_http(
            &serve.base,
            "POST",
            "/v1/recordings?session_id=class42&role=camera",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            body.as_bytes(),
        )
    };
    let (st, _, body) = post(r#"{"s3": "s3://media/classes/class42-camera.webm"}"#, "c42");
    assert_eq!(st, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The same request again (a lost answer retried): the same recording, nothing fetched twice.
    let (st, _, again) = post(r#"{"s3": "s3://media/classes/class42-camera.webm"}"#, "c42");
    assert_eq!(st, 200, "{again}");
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["id"],
        id.as_str()
    );

    let v = serve.wait_verdict(&token, &id, Duration::from_secs(120));
    assert_eq!(v["recording"]["sha256"], sha256_hex(&bytes), "{v}");
    assert_eq!(v["recording"]["partial"], false, "{v}");
    assert_eq!(v["decision"], "review", "{v}");
    let labels: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"contact_info"), "{labels:?}");
    let gets = s3
        .proxy
        .log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("class42-camera.webm"))
        .count();
    assert!(gets >= 1, "the object was not read through S3");

    // Named wrongly: a clear 422, nothing created.
    for (body, why) in [
        (
            r#"{"s3": "s3://media/classes/missing.webm"}"#,
            "no such object",
        ),
        (r#"{"s3": "s3://media/classes/"}"#, "prefix"),
        (
            r#"{"s3": "https://example.org/a.webm"}"#,
            "not an s3:// URL",
        ),
    ] {
        let (st, _, answer) = post(body, &format!("bad-{why}"));
        assert_eq!(st, 422, "{body}: {answer}");
        assert!(answer.contains(why), "{body}: {answer}");
    }
    let (st, _, answer) = post(r#"{"url": "s3://media/x.webm"}"#, "bad-field");
    assert_eq!(st, 400, "{answer}");
}
