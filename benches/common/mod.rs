//! What the end-to-end benches share: the release `classguard` binary they run, the generated
//! inputs, a real `classguard serve` with its token, a hand-written HTTP/1.1 client with the tus
//! requests, and what `/proc` says about a process (CPU time, peak RSS).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// `fixtures/generated/camera-<secs>s.webm`, made by `scripts/fixtures/make-long.sh` unless it
/// is already there (640x480 30 fps VP8 + Opus, a face and continuous speech).
pub fn generated_camera(secs: u64) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(root.join("scripts/fixtures/make-long.sh"))
        .arg(secs.to_string())
        .status()
        .expect("make-long.sh");
    assert!(st.success(), "make-long.sh {secs} failed");
    root.join(format!("fixtures/generated/camera-{secs}s.webm"))
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

/// One HTTP/1.1 request on a connection of its own; returns status, lower-cased head and body.
pub fn http(
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

/// A header's value in a head returned by [`http`] (`name` lower-case).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

/// Peak resident set (`VmHWM`) of process `pid` so far, in MiB; NaN once it is gone.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds process `pid` has used so far, every thread: user + system time, plus that of
/// its children it waited for (`utime + stime + cutime + cstime` of `/proc/PID/stat`).
pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so utime (14) .. cstime (17) are fields[11..15].
    let ticks: u64 = fields
        .get(11..15)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// CPU seconds the whole machine has been busy (every core, every process: `/proc/stat`'s
/// `cpu` line less idle and iowait), to tell how much of a run's machine other work took.
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 =
        ticks.iter().take(8).sum::<u64>() - ticks.get(3..5).map_or(0, |t| t.iter().sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    busy as f64 / hz as f64
}

/// A running `classguard serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.pid())
    }

    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.pid())
    }
}

/// Starts the embedded `serve` (SQLite store, local files, models loaded in-process) on a free
/// loopback port with a fresh store and data dir under `dir`, after creating a token on that
/// store; returns once it listens (its models are loaded by then), with the token. `extra` are
/// more `serve` flags. Its log goes to `dir/serve.log`.
pub fn start_serve(bin: &Path, dir: &Path, extra: &[&str]) -> (Serve, String) {
    let db = dir.join("store.sqlite");
    let token = create_token(bin, &db.to_string_lossy());
    let log = dir.join("serve.log");
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(&db)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("serve log"))
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("serve did not start: {line:?}\n{log}")
        })
        .to_string();
    (Serve { child, addr, log }, token)
}

/// The headers every tus request carries.
pub fn tus_headers(auth: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", auth.to_string()),
        ("Tus-Resumable", "1.0.0".to_string()),
    ]
}

/// tus creation (`POST /files/`) of an upload of `length` bytes with `metadata` (the
/// `Upload-Metadata` value, e.g. `role Y2FtZXJh` for role=camera); its path (`/files/<id>`).
pub fn tus_create(addr: &str, auth: &str, length: usize, metadata: &str) -> String {
    let mut h = tus_headers(auth);
    h.push(("Upload-Length", length.to_string()));
    h.push(("Upload-Metadata", metadata.to_string()));
    let (st, head, body) = http(addr, "POST", "/files/", &h, b"");
    assert_eq!(st, 201, "tus create: {body}");
    let location = header(&head, "location").expect("Location").to_string();
    // `Location` may be absolute: keep the path.
    match location.split_once("://") {
        Some((_, rest)) => rest
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap_or_default(),
        None => location,
    }
}

/// The recording id of a tus upload path (`/files/<id>`).
pub fn tus_id(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_string()
}

/// One tus `PATCH` of `chunk` at `offset`; the offset the server acknowledged.
pub fn tus_patch(addr: &str, auth: &str, path: &str, offset: usize, chunk: &[u8]) -> usize {
    let mut h = tus_headers(auth);
    h.push(("Upload-Offset", offset.to_string()));
    h.push((
        "Content-Type",
        "application/offset+octet-stream".to_string(),
    ));
    let (st, head, body) = http(addr, "PATCH", path, &h, chunk);
    assert_eq!(st, 204, "PATCH at {offset}: {body}");
    header(&head, "upload-offset")
        .and_then(|v| v.parse().ok())
        .expect("Upload-Offset")
}

/// The final verdict of recording `id`, or `None` while it is not final.
pub fn final_verdict(addr: &str, auth: &str, id: &str) -> Option<serde_json::Value> {
    let (st, _, body) = http(
        addr,
        "GET",
        &format!("/v1/recordings/{id}/verdict"),
        &[("Authorization", auth.to_string())],
        b"",
    );
    (st == 200).then(|| serde_json::from_str(&body).expect("verdict JSON"))
}
