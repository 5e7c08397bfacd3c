//! Webhooks end to end: a real `classguard serve` delivers the final verdict to a receiver that
//! fails at first, over plain HTTP and over TLS with a private CA (made with openssl), signed
//! with the token's secret; retried with the same event id until it is taken.

mod common;

use common::serve::{http, Serve};
use hmac::{Hmac, Mac};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Receiver {
    child: Child,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(log: &Path, fail_first: u32, tls: Option<(&Path, &Path)>) -> Receiver {
    let mut cmd = Command::new("python3");
    cmd.arg(common::root().join("tests/clients/webhook_receiver.py"))
        .arg(log)
        .arg(fail_first.to_string());
    if let Some((cert, key)) = tls {
        cmd.arg(cert).arg(key);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("receiver did not start: {line:?}"));
    Receiver { child, port }
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
fn private_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=classguard test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn token_with_webhook(serve: &Serve, name: &str, url: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_classguard"))
        .args([
            "token",
            "create",
            "--name",
            name,
            "--webhook",
            url,
            "--database",
            &serve.db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let get = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
            .to_string()
    };
    (get("token: "), get("webhook secret: "))
}

fn upload(serve: &Serve, token: &str, key: &str) -> String {
    let bytes = std::fs::read(common::fixture("browser/camera-vp8-opus.webm")).unwrap();
    let auth = format!("Bearer {token}");
    let (st, _, body) = http(
        &serve.base,
        "POST",
        "/v1/recordings?role=camera",
        &[
            ("Authorization", &auth),
            ("Content-Type", "video/webm"),
            ("Idempotency-Key", key),
        ],
        &bytes,
    );
    assert_eq!(st, 201, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn deliveries(log: &Path, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= want {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} deliveries",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_delivered(
    lines: &[serde_json::Value],
    secret: &str,
    id: &str,
    serve: &Serve,
    token: &str,
) {
    // The receiver failed the first attempt: the second carries the same event, re-signed.
    assert_eq!(lines[0]["answered"], 500);
    assert_eq!(lines[1]["answered"], 204);
    assert_eq!(
        lines[0]["event_id"], lines[1]["event_id"],
        "stable event id"
    );
    assert_eq!(lines[0]["body"], lines[1]["body"]);
    for l in &lines[..2] {
        let ts = l["timestamp"].as_str().unwrap();
        let body = l["body"].as_str().unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(l["signature"].as_str().unwrap(), want, "signature");
        assert_eq!(l["content_type"], "application/json");
    }
    let event: serde_json::Value =
        serde_json::from_str(lines[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(event["recording_id"], id);
    let verdict = serve.wait_verdict(token, id, Duration::from_secs(60));
    assert_eq!(event["decision"], verdict["decision"]);
    assert_eq!(
        event["verdict"]["recording"]["sha256"],
        verdict["recording"]["sha256"]
    );
}

#[test]
fn webhook_over_http_is_signed_retried_and_delivered_once_taken() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("http.jsonl");
    let rx = receiver(&log, 1, None);
    let serve = Serve::start(dir.path(), &[]);
    let (token, secret) = token_with_webhook(
        &serve,
        "school-a",
        &format!("http://127.0.0.1:{}/hook", rx.port),
    );
    let id = upload(&serve, &token, "wh-http");
    let lines = deliveries(&log, 2);
    check_delivered(&lines, &secret, &id, &serve, &token);
    // Taken once: no further attempt.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(deliveries(&log, 2).len(), 2, "delivered again after a 2xx");
}

#[test]
fn webhook_over_https_verifies_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let log = dir.path().join("https.jsonl");
    let rx = receiver(&log, 1, Some((&cert, &key)));
    let url = format!("https://127.0.0.1:{}/hook", rx.port);

    // Trusting the private CA: delivered over TLS.
    let trusted = dir.path().join("trusted");
    let ca_env = ca.to_string_lossy().into_owned();
    let serve = Serve::start_env(&trusted, &[], &[("SSL_CERT_FILE", &ca_env)]);
    let (token, secret) = token_with_webhook(&serve, "school-a", &url);
    let id = upload(&serve, &token, "wh-https");
    let lines = deliveries(&log, 2);
    check_delivered(&lines, &secret, &id, &serve, &token);
    drop(serve);

    // Not trusting it: nothing reaches the receiver, the failure is counted.
    let untrusted = dir.path().join("untrusted");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty_env = empty.to_string_lossy().into_owned();
    let serve = Serve::start_env(&untrusted, &[], &[("SSL_CERT_FILE", &empty_env)]);
    let (token, _) = token_with_webhook(&serve, "school-b", &url);
    let id = upload(&serve, &token, "wh-untrusted");
    serve.wait_verdict(&token, &id, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, metrics) = http(&serve.base, "GET", "/metrics", &[], b"");
        let failures: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("classguard_webhook_failures_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if failures >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook failure counted:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        deliveries(&log, 2).len(),
        2,
        "an unverified receiver got a POST"
    );
}
