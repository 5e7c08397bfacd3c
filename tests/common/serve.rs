//! A real `classguard serve` for the service tests: its own SQLite store, data dir and free port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Serve {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
    pub db: String,
}

impl Serve {
    /// Starts `serve` on a free loopback port with its own SQLite store and data dir.
    pub fn start(dir: &Path, extra: &[&str]) -> Serve {
        let db = dir.join("store.sqlite").to_string_lossy().into_owned();
        Self::start_with(dir, &db, extra)
    }

    pub fn start_with(dir: &Path, db: &str, extra: &[&str]) -> Serve {
        Self::spawn(dir, db, extra, &[])
    }

    /// [`Serve::start`] with extra environment variables for the server.
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join("store.sqlite").to_string_lossy().into_owned();
        Self::spawn(dir, &db, extra, env)
    }

    /// `serve` on a given store (e.g. a postgres:// URL) with extra environment variables.
    pub fn start_with_env(dir: &Path, db: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        std::fs::create_dir_all(dir).unwrap();
        Self::spawn(dir, db, extra, env)
    }

    fn spawn(dir: &Path, db: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_classguard"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                db,
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
            .to_string();
        Serve {
            child,
            base,
            dir: dir.to_path_buf(),
            db: db.to_string(),
        }
    }

    pub fn token(&self, name: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_classguard"))
            .args(["token", "create", "--name", name, "--database", &self.db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("token: "))
            .unwrap()
            .to_string()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request by hand (curl is not guaranteed on CI machines; this checks our headers).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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

impl Serve {
    /// Peak resident memory of the serve process so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("serve is running");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        kib / 1024.0
    }

    /// The final verdict of `id` if it has one yet.
    pub fn verdict(&self, token: &str, id: &str) -> Option<serde_json::Value> {
        let (st, _, v) = http(
            &self.base,
            "GET",
            &format!("/v1/recordings/{id}/verdict"),
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        );
        (st == 200).then(|| serde_json::from_str(&v).expect("verdict JSON"))
    }

    /// Waits for the final verdict of `id` (polling the API), as JSON.
    pub fn wait_verdict(&self, token: &str, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.verdict(token, id) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "no verdict for {id}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}
