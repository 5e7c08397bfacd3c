//! A moto S3 server of a test's own (moto comes from scripts/setup, pinned; installed here the
//! same way when missing, and the test skips with a note only if that fails).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Pinned like every other tool the tests use.
const MOTO: &str = "moto[server]==5.2.5";

pub fn moto_server() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let venv = std::env::var_os("CLASSGUARD_MOTO_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/classguard-tools/moto")
                });
            let bin = venv.join("bin/moto_server");
            if !bin.is_file() {
                eprintln!("note: installing {MOTO} into {}", venv.display());
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success())
                    && Command::new(venv.join("bin/pip"))
                        .args(["install", "-q", MOTO])
                        .status()
                        .is_ok_and(|s| s.success());
                if !ok || !bin.is_file() {
                    eprintln!("note: moto could not be installed; S3 scan tests skipped");
                    return None;
                }
            }
            Some(bin)
        })
        .clone()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server of this test's own, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Option<Moto> {
        let bin = moto_server()?;
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(m.port, "GET", "/", &[]).is_none() {
            assert!(Instant::now() < deadline, "moto did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request (moto takes unsigned requests); the status code.
/// moto does not check signatures, but refuses some unsigned requests (DELETE).
const FAKE_SIGV4: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                          SignedHeaders=host, Signature=0";

pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Authorization: {FAKE_SIGV4}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let line = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn put(port: u16, path: &str, body: &[u8]) {
    let status = http(port, "PUT", path, body).expect("PUT");
    assert_eq!(status, 200, "PUT {path}");
}

/// Credentials for moto, and nothing from this machine's AWS set-up.
pub const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/aws-credentials",
    ),
];

/// [`S3_ENV`] on a command, with the variables that would point it elsewhere removed.
pub fn s3_env(c: &mut Command) {
    c.env("RUST_LOG", "classguard=info")
        .envs(S3_ENV.iter().copied())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("CLASSGUARD_S3_ENDPOINT");
}

impl Moto {
    /// The endpoint URL for `--endpoint-url` / `--s3-endpoint-url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
