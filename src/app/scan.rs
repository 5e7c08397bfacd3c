//! `classguard scan`: recordings in (files, folders, `s3://bucket/prefix`), one verdict per
//! recording out (JSON file in a folder or under an S3 prefix, store row, optional JSON line on
//! stdout), resumable and safe to run twice or in parallel over the same output.
//!
//! Crash safety: every file is written atomically; a recording whose published `verdict.json`
//! already holds the same idempotency key (content sha256 + policy fingerprint + model hashes) is
//! skipped; a per-recording lock file (an flock, dropped by the kernel when its holder dies) keeps
//! two processes from auditing the same recording at once.
//!
//! S3 objects are streamed, never copied whole. Their content hash is only known once read, so
//! the store remembers it per object version (URI, ETag, size): a rescan computes the key of an
//! unchanged object from the store and skips it without a GET. What is written, in order: the
//! version's hash (once the whole object was read), the verdict and evidence to the output, the
//! verdict to the store. A run killed between any two of these audits nothing twice: an output
//! verdict with the right key is skipped (and copied to the store if it is missing there).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::audit::{self, AuditModels, AuditRequest};
use crate::ingest::s3::{ObjectInfo, S3Client, S3Error, S3Options, S3Url};
use crate::ingest::{self, Input, Recording};
use crate::models::ModelHome;
use crate::policy::Policy;
use crate::slice::Role;
use crate::store::Store;
use crate::verdict::{Decision, Verdict};

/// Where verdicts (and evidence, and the extracted microphone) go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// `<folder>/<recording id>/verdict.json`.
    Dir(PathBuf),
    /// `s3://bucket/prefix/<recording id>/verdict.json`; the audit writes to a local staging
    /// folder first, uploaded when the recording is done.
    S3(S3Url),
}

impl OutputTarget {
    /// `s3://...` is a prefix, anything else a folder.
    pub fn parse(s: &str) -> Result<OutputTarget, S3Error> {
        match S3Url::parse(s) {
            Some(u) => Ok(OutputTarget::S3(u?)),
            None => Ok(OutputTarget::Dir(PathBuf::from(s))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Files, folders and `s3://bucket/prefix` URLs.
    pub inputs: Vec<String>,
    pub teacher: Option<String>,
    pub policy: Option<PathBuf>,
    pub out: OutputTarget,
    pub store: Option<PathBuf>,
    pub session: Option<String>,
    pub role: Option<Role>,
    /// Recordings audited at the same time.
    pub jobs: usize,
    /// Model workers per recording.
    pub workers: usize,
    /// Print each verdict as one JSON line on stdout.
    pub jsonl: bool,
    /// S3 endpoint and retries (credentials and region come from the AWS environment).
    pub s3: S3Options,
    /// Show a progress bar (else one log line per recording). `None`: when stderr is a terminal.
    pub progress: Option<bool>,
}

/// Problems with the command line or the set-up rather than with a recording (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ScanSetupError {
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Models(String),
    #[error("teacher {0:?} has no enrolled face template for {1}; run `classguard enroll --teacher {0} PHOTO`")]
    NoTemplate(String, String),
    #[error("{0}")]
    Output(String),
    #[error("{0}")]
    S3(#[from] S3Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowStatus {
    Audited,
    /// Already audited with the same content, policy and models.
    Skipped,
    /// Another process holds the recording's lock.
    Busy,
    Failed,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub recording_id: String,
    pub session: String,
    pub status: RowStatus,
    pub decision: Option<Decision>,
    pub findings: usize,
    pub partial: bool,
    pub realtime_factor: f64,
    pub error: Option<String>,
}

impl Row {
    /// The row for a recording with a verdict: `ok` unless the verdict is an error verdict.
    fn fill_from(&mut self, v: &Verdict, ok: RowStatus) {
        self.status = if v.decision == Decision::Error {
            RowStatus::Failed
        } else {
            ok
        };
        self.decision = Some(v.decision);
        self.findings = v.findings.len();
        self.partial = v.recording.partial;
        self.realtime_factor = v.stats.realtime_factor;
        self.error = v.recording.error.clone();
    }
}

#[derive(Debug, Default)]
pub struct ScanSummary {
    pub rows: Vec<Row>,
    /// The verdict of every recording audited or skipped, in input order (what
    /// `--compare-with` compares).
    pub verdicts: Vec<Verdict>,
}

impl ScanSummary {
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == RowStatus::Failed)
            .count()
    }

    /// A plain table, one line per recording, then one line per session with its strictest decision.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<22} {:<18} {:<8} {:<7} {:>8} {:>7} {}\n",
            "RECORDING", "SESSION", "STATUS", "VERDICT", "FINDINGS", "RTF", "NOTE"
        );
        for r in &self.rows {
            let status = match r.status {
                RowStatus::Audited => "audited",
                RowStatus::Skipped => "skipped",
                RowStatus::Busy => "busy",
                RowStatus::Failed => "FAILED",
            };
            let note = r.error.clone().unwrap_or_else(|| {
                if r.partial {
                    "partial".into()
                } else {
                    String::new()
                }
            });
            s += &format!(
                "{:<22} {:<18} {:<8} {:<7} {:>8} {:>7} {}\n",
                r.recording_id,
                truncate(&r.session, 18),
                status,
                r.decision.map(|d| d.as_str()).unwrap_or("-"),
                r.findings,
                if r.realtime_factor > 0.0 {
                    format!("{:.1}x", r.realtime_factor)
                } else {
                    "-".into()
                },
                note
            );
        }
        let mut sessions: Vec<(&str, Decision)> = Vec::new();
        for r in &self.rows {
            let d = r.decision.unwrap_or(Decision::Error);
            match sessions.iter_mut().find(|(s, _)| *s == r.session) {
                Some((_, best)) => *best = strictest(*best, d),
                None => sessions.push((&r.session, d)),
            }
        }
        for (session, d) in sessions {
            s += &format!("session {session}: {}\n", d.as_str());
        }
        s += &format!(
            "{} recordings: {} audited, {} skipped, {} busy, {} failed\n",
            self.rows.len(),
            self.rows
                .iter()
                .filter(|r| r.status == RowStatus::Audited)
                .count(),
            self.rows
                .iter()
                .filter(|r| r.status == RowStatus::Skipped)
                .count(),
            self.rows
                .iter()
                .filter(|r| r.status == RowStatus::Busy)
                .count(),
            self.failed()
        );
        s
    }
}

fn strictest(a: Decision, b: Decision) -> Decision {
    let rank = |d: Decision| match d {
        Decision::Pass => 0,
        Decision::Review => 1,
        Decision::Block => 2,
        Decision::Error => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The class session of a recording: `--session`, else the file stem without a role word
/// ("class42-camera.webm" and "class42-screen.webm" are both "class42").
pub fn session_of(rec: &Recording, explicit: Option<&str>) -> String {
    if let Some(s) = explicit {
        return s.to_string();
    }
    let name = rec.file_name();
    let stem = name
        .rsplit_once('.')
        .map(|(s, _)| s)
        .unwrap_or(&name)
        .to_string();
    const ROLE_WORDS: [&str; 11] = [
        "camera",
        "cam",
        "webcam",
        "screen",
        "screenshare",
        "desktop",
        "whiteboard",
        "share",
        "mic",
        "audio",
        "video",
    ];
    let mut parts: Vec<&str> = stem.split(['-', '_', '.', ' ']).collect();
    while parts.len() > 1
        && parts
            .last()
            .is_some_and(|p| ROLE_WORDS.contains(&p.to_ascii_lowercase().as_str()))
    {
        parts.pop();
    }
    let joined = parts.join("-");
    // The session name may be shown in tables; ids stay the only thing logged.
    if joined.is_empty() {
        rec.id.clone()
    } else {
        joined
    }
}

/// sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// An exclusive per-recording lock: an flock on `<id>.lock`, held while the file is open. The
/// kernel drops it when the holder dies (kill -9 included), so there is no stale lock to take
/// over and no pid to trust.
struct RecordingLock {
    path: PathBuf,
    file: std::fs::File,
}

impl RecordingLock {
    fn acquire(path: &Path) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            // The holder before us unlinks the file before unlocking: a lock on an unlinked
            // file locks nothing, so check that the path is still the file we locked.
            let ours = file.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    return Ok(Some(Self {
                        path: path.to_path_buf(),
                        file,
                    }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for RecordingLock {
    fn drop(&mut self) {
        // Unlinked while still locked (see `acquire`); closing the file then unlocks.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// What a scan needs before its first recording: the policy, store, models and inputs.
struct Prepared {
    policy: Policy,
    store: Mutex<Store>,
    models: AuditModels,
    templates: Vec<Vec<f32>>,
    inputs: Vec<Input>,
    errors: Vec<ingest::IngestError>,
    out: Output,
    /// The client of the S3 inputs and output, if there are any.
    s3: Option<S3Client>,
}

fn prepare(opts: &ScanOptions, create_out: bool) -> Result<Prepared, ScanSetupError> {
    let policy = Policy::load(opts.policy.as_deref())?;
    let store = match &opts.store {
        Some(p) => Store::open(p)?,
        None => Store::open_default()?,
    };
    // One client for every S3 input and the S3 output, made only when one is asked for.
    let mut client: Option<S3Client> = None;
    let mut s3 = || -> Result<S3Client, S3Error> {
        if let Some(c) = &client {
            return Ok(c.clone());
        }
        let c = S3Client::new(&opts.s3)?;
        client = Some(c.clone());
        Ok(c)
    };
    let out = match &opts.out {
        OutputTarget::Dir(d) => {
            if create_out {
                std::fs::create_dir_all(d)
                    .map_err(|e| ScanSetupError::Output(format!("{}: {e}", d.display())))?;
            }
            Output::Dir(d.clone())
        }
        OutputTarget::S3(url) => {
            // Staging and locks live on this machine, named after the output prefix, so two
            // scans here into the same prefix still audit each recording once.
            let place = format!("{} {url}", opts.s3.endpoint_url.as_deref().unwrap_or(""));
            let tag = &hex::encode(Sha256::digest(place.as_bytes()))[..16];
            let staging = std::env::temp_dir().join(format!("classguard-stage-{tag}"));
            if create_out {
                std::fs::create_dir_all(&staging)
                    .map_err(|e| ScanSetupError::Output(format!("{}: {e}", staging.display())))?;
            }
            Output::S3 {
                client: s3()?,
                url: url.clone(),
                staging,
            }
        }
    };
    let jobs = opts.jobs.max(1);
    let home = ModelHome::locate();
    // One session per model per recording in flight: a recording's workers share them (they rarely
    // want the same model at once: the models are busy a fraction of the wall time, see
    // docs/benchmarks.md), and every extra session is another copy of the weights in memory.
    let models = AuditModels::load(&policy, &home, jobs)
        .map_err(|e| ScanSetupError::Models(e.to_string()))?;
    let templates = match &opts.teacher {
        Some(t) => {
            let model = models.face_embedder.id();
            let found = store.templates_for(t, model)?;
            if found.is_empty() {
                return Err(ScanSetupError::NoTemplate(t.clone(), model.to_string()));
            }
            found
        }
        None => Vec::new(),
    };
    let (inputs, errors) = ingest::expand_sources(&opts.inputs, &mut s3);
    Ok(Prepared {
        policy,
        store: Mutex::new(store),
        models,
        templates,
        inputs,
        errors,
        out,
        s3: client,
    })
}

fn error_row(e: &ingest::IngestError) -> Row {
    Row {
        recording_id: "-".into(),
        session: "-".into(),
        status: RowStatus::Failed,
        decision: None,
        findings: 0,
        partial: false,
        realtime_factor: 0.0,
        error: Some(e.to_string()),
    }
}

/// Runs a scan. `Err` only for set-up problems; per-recording failures are rows.
pub fn run(
    opts: &ScanOptions,
    mut on_verdict: impl FnMut(&Verdict) + Send,
) -> Result<ScanSummary, ScanSetupError> {
    let p = prepare(opts, true)?;
    let jobs = opts.jobs.max(1);
    let workers = opts.workers.max(1);
    let mut summary = ScanSummary::default();
    for e in &p.errors {
        report_error(&e.to_string());
        summary.rows.push(error_row(e));
    }
    let progress = Progress::new(
        &p.inputs,
        opts.progress
            .unwrap_or_else(|| std::io::stderr().is_terminal()),
    );
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<(usize, Row, Option<Verdict>)>> = Mutex::new(Vec::new());
    let emit = Mutex::new(&mut on_verdict);
    let ctx = Ctx {
        opts,
        policy: &p.policy,
        models: &p.models,
        templates: &p.templates,
        workers,
        store: &p.store,
        out: &p.out,
        s3: p.s3.as_ref(),
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(p.inputs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(input) = p.inputs.get(i) else { break };
                let session = session_of(&input.recording, opts.session.as_deref());
                let done = scan_one(input, session, &ctx);
                if let Some(v) = &done.emitted {
                    (emit.lock().unwrap_or_else(|p| p.into_inner()))(v);
                }
                let audited_ms = match done.row.status {
                    RowStatus::Audited => done.verdict.as_ref().map(|v| v.recording.duration_ms),
                    _ => None,
                };
                progress.finish_one(&input.recording.id, input_bytes(input), audited_ms);
                rows.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, done.row, done.verdict));
            });
        }
    });
    progress.end();
    let mut rows = rows.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.sort_by_key(|(i, _, _)| *i);
    for (_, row, verdict) in rows {
        summary.rows.push(row);
        summary.verdicts.extend(verdict);
    }
    Ok(summary)
}

/// What `--plan` says about one recording.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanRow {
    pub recording_id: String,
    pub source: String,
    pub bytes: u64,
    pub audit: bool,
    pub reason: String,
}

/// `scan --plan`: what a scan would audit or skip, and why, without reading media or running a
/// model (the models are loaded: their hashes are part of each verdict's key).
pub fn plan(opts: &ScanOptions) -> Result<(Vec<PlanRow>, Vec<String>), ScanSetupError> {
    let p = prepare(opts, false)?;
    let uses = p.models.uses();
    let fingerprint = p.policy.fingerprint();
    let store = p.store.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows = Vec::new();
    for input in &p.inputs {
        let rec = &input.recording;
        let bytes = input_bytes(input);
        let row = |audit: bool, reason: String| PlanRow {
            recording_id: rec.id.clone(),
            source: rec.source.clone(),
            bytes,
            audit,
            reason,
        };
        let sha = match &input.object {
            None => match file_sha256(&rec.path) {
                Ok(s) => s,
                Err(e) => {
                    rows.push(row(true, format!("cannot read ({e}): will fail")));
                    continue;
                }
            },
            Some(o) => match store.object_sha(&o.uri(), &o.etag, o.size)? {
                Some(s) => s,
                None => {
                    rows.push(row(
                        true,
                        "object version not read before (new or changed)".into(),
                    ));
                    continue;
                }
            },
        };
        let key = crate::verdict::idempotency_key(
            &rec.id,
            opts.teacher.as_deref(),
            &sha,
            &fingerprint,
            uses.iter().map(|m| m.sha256.as_str()),
        );
        let reason = match p.out.read_verdict(&rec.id) {
            Some(v) if v.idempotency_key() == key => {
                rows.push(row(
                    false,
                    format!(
                        "already audited with this content, policy and models: {}",
                        v.decision.as_str()
                    ),
                ));
                continue;
            }
            Some(v) if v.recording.sha256 != sha => "content changed since its verdict".to_string(),
            Some(v) if v.policy.fingerprint != fingerprint => format!(
                "policy changed ({} {} -> {} {})",
                v.policy.name, v.policy.version, p.policy.name, p.policy.version
            ),
            Some(_) => "models changed".to_string(),
            None => "no verdict in the output yet".to_string(),
        };
        rows.push(row(true, reason));
    }
    Ok((rows, p.errors.iter().map(|e| e.to_string()).collect()))
}

/// The plan as a table, then one line of totals.
pub fn plan_table(rows: &[PlanRow]) -> String {
    let mut s = format!(
        "{:<22} {:<6} {:>10}  {:<50} {}\n",
        "RECORDING", "ACTION", "BYTES", "REASON", "SOURCE"
    );
    for r in rows {
        s += &format!(
            "{:<22} {:<6} {:>10}  {:<50} {}\n",
            r.recording_id,
            if r.audit { "audit" } else { "skip" },
            r.bytes,
            r.reason,
            r.source
        );
    }
    let audit: Vec<&PlanRow> = rows.iter().filter(|r| r.audit).collect();
    s += &format!(
        "{} recordings: {} to audit ({:.1} MB to read), {} to skip\n",
        rows.len(),
        audit.len(),
        audit.iter().map(|r| r.bytes).sum::<u64>() as f64 / 1e6,
        rows.len() - audit.len()
    );
    s
}

fn input_bytes(input: &Input) -> u64 {
    match &input.object {
        Some(o) => o.size,
        None => std::fs::metadata(&input.recording.path)
            .map(|m| m.len())
            .unwrap_or(0),
    }
}

/// The output, as the scan uses it.
enum Output {
    Dir(PathBuf),
    S3 {
        client: S3Client,
        url: S3Url,
        staging: PathBuf,
    },
}

impl Output {
    /// Where the audit writes a recording's files.
    fn work_dir(&self, id: &str) -> PathBuf {
        match self {
            Output::Dir(d) => d.join(id),
            Output::S3 { staging, .. } => staging.join(id),
        }
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        match self {
            Output::Dir(d) => d.join(format!("{id}.lock")),
            Output::S3 { staging, .. } => staging.join(format!("{id}.lock")),
        }
    }

    /// The published verdict of a recording, if there is a readable one.
    fn read_verdict(&self, id: &str) -> Option<Verdict> {
        match self {
            Output::Dir(d) => read_verdict(&d.join(id).join("verdict.json")),
            Output::S3 { client, url, .. } => {
                match client.get_small(&url.bucket, &url.key(&format!("{id}/verdict.json"))) {
                    Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
                    Ok(None) => None,
                    Err(e) => {
                        warn!(recording = %id, "reading the published verdict failed: {e}");
                        None
                    }
                }
            }
        }
    }

    /// Publishes a finished recording: the verdict last, so a published verdict means its
    /// evidence is there too. For S3, the staged files are uploaded and then removed.
    fn publish(&self, id: &str, verdict: &Verdict) -> Result<(), String> {
        match self {
            Output::Dir(d) => {
                crate::sink::write_json_atomic(&d.join(id).join(crate::sink::VERDICT_FILE), verdict)
                    .map_err(|e| e.to_string())
            }
            Output::S3 {
                client,
                url,
                staging,
            } => {
                let dir = staging.join(id);
                let mut files = Vec::new();
                collect_files(&dir, &dir, &mut files)
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
                for rel in files {
                    client
                        .put_file(
                            &url.bucket,
                            &url.key(&format!("{id}/{rel}")),
                            &dir.join(&rel),
                            content_type(&rel),
                        )
                        .map_err(|e| e.to_string())?;
                }
                let json = serde_json::to_vec_pretty(verdict).map_err(|e| e.to_string())?;
                client
                    .put(
                        &url.bucket,
                        &url.key(&format!("{id}/verdict.json")),
                        json,
                        "application/json",
                    )
                    .map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            }
        }
    }

    /// Evidence the store tracks for expiry and erasure: local files only (an S3 output's
    /// evidence is governed by the bucket's lifecycle rules).
    fn is_local(&self) -> bool {
        matches!(self, Output::Dir(_))
    }
}

/// Files under `dir` (relative, '/'-separated), temp files left out.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &path, out)?;
        } else if !entry.file_name().to_string_lossy().ends_with(".tmp") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("json") => "application/json",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("wav") => "audio/wav",
        Some("webm") => "audio/webm",
        _ => "application/octet-stream",
    }
}

/// Everything a recording's scan reads but does not own.
struct Ctx<'a> {
    opts: &'a ScanOptions,
    policy: &'a Policy,
    models: &'a AuditModels,
    templates: &'a [Vec<f32>],
    workers: usize,
    store: &'a Mutex<Store>,
    out: &'a Output,
    s3: Option<&'a S3Client>,
}

/// One recording's result: its row, its verdict (audited or skipped), and the verdict to print
/// (audited only).
struct Done {
    row: Row,
    verdict: Option<Verdict>,
    emitted: Option<Verdict>,
}

/// Content hash of everything a reader has passed on, readable after the reader moved into the
/// slicer's thread (an audit that fails early does not say how far it read).
#[derive(Default)]
struct Hashed {
    hasher: Sha256,
    bytes: u64,
}

struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<Hashed>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.hasher.update(&buf[..n]);
        st.bytes += n as u64;
        Ok(n)
    }
}

/// Reads what the audit left unread (it stops early on a hopeless stream) so the hash names the
/// whole object version, as the skip check of the next scan computes it.
fn finish_hash(
    client: &S3Client,
    o: &ObjectInfo,
    state: &Mutex<Hashed>,
) -> Result<String, S3Error> {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if st.bytes < o.size {
        let mut r = client.open(o, st.bytes);
        let status = r.status();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    st.hasher.update(&buf[..n]);
                    st.bytes += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(status.take_failure().unwrap_or(S3Error::Protocol {
                        uri: o.uri(),
                        detail: e.to_string(),
                    }))
                }
            }
        }
    }
    if st.bytes != o.size {
        return Err(S3Error::Protocol {
            uri: o.uri(),
            detail: format!("read {} bytes of a {}-byte object", st.bytes, o.size),
        });
    }
    Ok(hex::encode(st.hasher.clone().finalize()))
}

fn scan_one(input: &Input, session: String, ctx: &Ctx<'_>) -> Done {
    let rec = &input.recording;
    let mut done = Done {
        row: Row {
            recording_id: rec.id.clone(),
            session,
            status: RowStatus::Failed,
            decision: None,
            findings: 0,
            partial: false,
            realtime_factor: 0.0,
            error: None,
        },
        verdict: None,
        emitted: None,
    };
    let fail = |mut done: Done, msg: String| {
        report_error(&msg);
        done.row.error = Some(msg);
        done
    };
    let uses = ctx.models.uses();
    let fingerprint = ctx.policy.fingerprint();
    let key_of = |sha: &str| {
        crate::verdict::idempotency_key(
            &rec.id,
            ctx.opts.teacher.as_deref(),
            sha,
            &fingerprint,
            uses.iter().map(|m| m.sha256.as_str()),
        )
    };
    // The content hash, when a published verdict needs it to tell whether it is current: a
    // local file is hashed first; an object's comes from the store when this version was read
    // before. Otherwise the audit hashes the bytes as it reads them, so they are read once.
    let known_sha = match &input.object {
        None if ctx.out.read_verdict(&rec.id).is_none() => None,
        None => match file_sha256(&rec.path) {
            Ok(s) => Some(s),
            Err(e) => return fail(done, format!("{}: {e}", rec.path.display())),
        },
        Some(o) => {
            let found = ctx
                .store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .object_sha(&o.uri(), &o.etag, o.size);
            match found {
                Ok(s) => s,
                Err(e) => return fail(done, format!("{}: store: {e}", rec.id)),
            }
        }
    };
    let key = known_sha.as_deref().map(key_of);
    let published = |key: &str| {
        ctx.out
            .read_verdict(&rec.id)
            .filter(|v| v.idempotency_key() == key)
    };
    if let Some(existing) = key.as_deref().and_then(published) {
        info!(recording = %rec.id, "already audited with the same content, policy and models");
        // A run killed after publishing but before its store write left the store behind.
        if let Err(e) = ctx
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put_verdict(&existing)
        {
            warn!(recording = %rec.id, "store write failed: {e}");
        }
        done.row.fill_from(&existing, RowStatus::Skipped);
        done.verdict = Some(existing);
        return done;
    }
    let dir = ctx.out.work_dir(&rec.id);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(done, format!("{}: {e}", dir.display()));
    }
    let lock = match RecordingLock::acquire(&ctx.out.lock_path(&rec.id)) {
        Ok(Some(l)) => l,
        Ok(None) => {
            info!(recording = %rec.id, "another process is auditing this recording");
            done.row.status = RowStatus::Busy;
            return done;
        }
        Err(e) => return fail(done, format!("lock: {e}")),
    };
    // Checked again under the lock: another process may have finished it since the first look.
    if let Some(existing) = key.as_deref().and_then(published) {
        done.row.fill_from(&existing, RowStatus::Skipped);
        done.verdict = Some(existing);
        return done;
    }
    info!(recording = %rec.id, sha256 = known_sha.as_deref().unwrap_or("-"), "auditing");
    let hashed = Arc::new(Mutex::new(Hashed::default()));
    let mut read_status = None;
    let open: Option<Arc<audit::OpenFn>> = match (&input.object, ctx.s3) {
        (Some(o), Some(client)) => {
            let reader = client.open(o, 0);
            read_status = Some(reader.status());
            // The audit opens its input once; the reader is made here so its status is ours.
            let slot = Mutex::new(Some(reader));
            let state = hashed.clone();
            Some(Arc::new(move || {
                let reader = slot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or_else(|| ingest::IngestError::Open {
                        path: "s3 object".into(),
                        reason: "opened twice".into(),
                    })?;
                Ok(Box::new(HashingReader {
                    inner: reader,
                    state: state.clone(),
                }) as Box<dyn Read + Send>)
            }))
        }
        (Some(_), None) => return fail(done, format!("{}: no S3 client", rec.id)),
        (None, _) => None,
    };
    let req = AuditRequest {
        recording: rec,
        out_dir: dir.clone(),
        teacher_id: ctx.opts.teacher.clone(),
        templates: ctx.templates.to_vec(),
        role: ctx.opts.role,
        workers: ctx.workers,
        open,
        progress: None,
    };
    let outcome = audit::audit(ctx.models, ctx.policy, &req);
    // An object that could not be read to the end (deleted, replaced, the connection gone for
    // good) gets no verdict: the next scan tries it again.
    let sha = match (&input.object, ctx.s3) {
        (Some(o), Some(client)) => {
            let failure = read_status.as_ref().and_then(|s| s.take_failure());
            let sha = match failure {
                Some(e) => Err(e),
                None => finish_hash(client, o, &hashed),
            };
            match sha {
                Ok(sha) => {
                    let stored = ctx
                        .store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .put_object_sha(&o.uri(), &o.etag, o.size, &sha);
                    if let Err(e) = stored {
                        warn!(recording = %rec.id, "store write failed: {e}");
                    }
                    if let Some(s) = read_status.as_ref().filter(|s| s.resumes() > 0) {
                        info!(recording = %rec.id, resumes = s.resumes(), "read resumed after broken connections");
                    }
                    sha
                }
                Err(e) => {
                    warn!(recording = %rec.id, "object not read to the end; not audited");
                    drop(lock);
                    return fail(done, e.to_string());
                }
            }
        }
        _ => match (known_sha, &outcome) {
            (Some(sha), _) => sha,
            (None, Ok(o)) => o.verdict.recording.sha256.clone(),
            (None, Err(_)) => file_sha256(&rec.path).unwrap_or_default(),
        },
    };
    let (verdict, evidence) = match outcome {
        Ok(outcome) => (outcome.verdict, outcome.evidence),
        Err(e) => {
            // On the terminal, not in the logs: the operator needs to know which file.
            report_error(&format!("{}: {e}", rec.source));
            warn!(recording = %rec.id, "audit failed");
            (
                audit::error_verdict(
                    rec,
                    ctx.opts.teacher.as_deref(),
                    &sha,
                    ctx.policy,
                    ctx.models,
                    e.to_string(),
                ),
                Vec::new(),
            )
        }
    };
    // One commit: the verdict, its findings and the retention rows of local evidence and the
    // extracted microphone in one store transaction, then the verdict where it is published,
    // written last (a published verdict means everything before it is committed). An S3
    // output's evidence is governed by the bucket's lifecycle rules.
    let entries = if ctx.out.is_local() {
        crate::sink::retention_entries(
            &dir,
            &evidence,
            ctx.opts.teacher.as_deref(),
            ctx.policy
                .evidence
                .expires_at(time::OffsetDateTime::now_utc()),
        )
    } else {
        Vec::new()
    };
    let stored = ctx
        .store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record_verdict(&verdict, &entries);
    if let Err(e) = stored {
        warn!(recording = %rec.id, "store write failed: {e}");
        drop(lock);
        done.verdict = Some(verdict.clone());
        done.emitted = Some(verdict);
        return fail(done, format!("store: {e}"));
    }
    if let Err(e) = ctx.out.publish(&rec.id, &verdict) {
        drop(lock);
        done.verdict = Some(verdict.clone());
        done.emitted = Some(verdict);
        return fail(done, e);
    }
    drop(lock);
    info!(recording = %rec.id, decision = verdict.decision.as_str(), findings = verdict.findings.len(), "audited");
    done.row.fill_from(&verdict, RowStatus::Audited);
    done.verdict = Some(verdict.clone());
    done.emitted = Some(verdict);
    done
}

fn read_verdict(path: &Path) -> Option<Verdict> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Recordings and media hours done, realtime factor and ETA: a bar on a terminal, else a log
/// line per recording.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    total_bytes: u64,
    started: Instant,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    done: usize,
    bytes: u64,
    /// Media time of the recordings audited (skipped ones cost nothing, so they do not count
    /// towards the realtime factor).
    media_ms: u64,
}

impl Progress {
    fn new(inputs: &[Input], bar: bool) -> Progress {
        let total_bytes = inputs.iter().map(input_bytes).sum();
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(total_bytes);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {msg}, ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            set_active_bar(Some(b.clone()));
            b
        });
        let p = Progress {
            bar,
            total: inputs.len(),
            total_bytes,
            started: Instant::now(),
            state: Mutex::new(ProgressState::default()),
        };
        p.show(&ProgressState::default());
        p
    }

    fn realtime(&self, st: &ProgressState) -> f64 {
        let elapsed = self.started.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            st.media_ms as f64 / 1000.0 / elapsed
        } else {
            0.0
        }
    }

    fn line(&self, st: &ProgressState) -> String {
        format!(
            "{}/{} recordings, {:.2} h media audited, {:.1}x realtime",
            st.done,
            self.total,
            st.media_ms as f64 / 3_600_000.0,
            self.realtime(st)
        )
    }

    fn show(&self, st: &ProgressState) {
        if let Some(b) = &self.bar {
            b.set_position(st.bytes);
            b.set_message(self.line(st));
        }
    }

    fn finish_one(&self, recording: &str, bytes: u64, audited_media_ms: Option<u64>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.done += 1;
        st.bytes += bytes;
        st.media_ms += audited_media_ms.unwrap_or(0);
        self.show(&st);
        if self.bar.is_none() {
            // The ETA assumes the bytes still to read go as fast as those read so far.
            let elapsed = self.started.elapsed().as_secs_f64();
            let left = self.total_bytes.saturating_sub(st.bytes) as f64;
            let eta_s = if st.bytes > 0 {
                (elapsed / st.bytes as f64 * left).round() as u64
            } else {
                0
            };
            info!(
                recording,
                done = st.done,
                total = self.total,
                media_h = %format!("{:.2}", st.media_ms as f64 / 3_600_000.0),
                realtime = %format!("{:.1}", self.realtime(&st)),
                eta_s,
                "progress"
            );
        }
    }

    fn end(&self) {
        if let Some(b) = &self.bar {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            b.finish_with_message(self.line(&st));
            set_active_bar(None);
        }
    }
}

/// The bar being drawn, so log lines can be printed above it instead of through it.
static ACTIVE_BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

fn set_active_bar(bar: Option<indicatif::ProgressBar>) {
    *ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()) = bar;
}

/// One `error: ...` line on stderr, above the progress bar if one is drawn.
fn report_error(msg: &str) {
    use std::io::Write;
    // One write: the bar is suspended once for the whole line.
    let _ = LogWriter.write_all(format!("error: {msg}\n").as_bytes());
}

/// Stderr for log lines, printed above a scan's progress bar rather than through it (give it to
/// `tracing_subscriber::fmt().with_writer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_group_camera_and_screen_files() {
        let rec = |name: &str| Recording {
            id: "rec-x".into(),
            source: name.into(),
            path: PathBuf::from(name),
        };
        assert_eq!(session_of(&rec("/d/class42-camera.webm"), None), "class42");
        assert_eq!(session_of(&rec("/d/class42_screen.webm"), None), "class42");
        assert_eq!(
            session_of(&rec("/d/class42-whiteboard.webm"), None),
            "class42"
        );
        assert_eq!(session_of(&rec("/d/lesson.webm"), None), "lesson");
        assert_eq!(session_of(&rec("/d/camera.webm"), None), "camera");
        assert_eq!(session_of(&rec("/d/a-camera.webm"), Some("s1")), "s1");
    }

    #[test]
    fn progress_counts_recordings_and_audited_media_only() {
        let inputs: Vec<Input> = ["a", "b", "c"]
            .iter()
            .map(|k| {
                let o = ObjectInfo {
                    bucket: "media".into(),
                    key: format!("{k}.webm"),
                    etag: "\"e\"".into(),
                    size: 100,
                };
                Input {
                    recording: Recording::from_object(&o),
                    object: Some(o),
                }
            })
            .collect();
        let p = Progress::new(&inputs, false);
        assert_eq!(p.total_bytes, 300);
        p.finish_one("rec-a", 100, Some(1_800_000));
        p.finish_one("rec-b", 100, None);
        let st = p.state.lock().unwrap();
        assert_eq!((st.done, st.bytes, st.media_ms), (2, 200, 1_800_000));
        let line = p.line(&st);
        assert!(
            line.starts_with("2/3 recordings, 0.50 h media audited, "),
            "{line}"
        );
        assert!(
            p.realtime(&st) > 1.0,
            "half an hour of media in well under that"
        );
    }

    #[test]
    fn s3_outputs_name_objects_under_their_prefix() {
        assert_eq!(
            OutputTarget::parse("s3://verdicts/2026").unwrap(),
            OutputTarget::S3(S3Url {
                bucket: "verdicts".into(),
                prefix: "2026".into()
            })
        );
        assert_eq!(
            OutputTarget::parse("out/dir").unwrap(),
            OutputTarget::Dir(PathBuf::from("out/dir"))
        );
        assert!(OutputTarget::parse("s3://x").is_err());
        assert_eq!(content_type("evidence/contact_info-1.wav"), "audio/wav");
        assert_eq!(content_type("mic.webm"), "audio/webm");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("evidence")).unwrap();
        std::fs::write(dir.path().join("mic.webm"), b"x").unwrap();
        std::fs::write(dir.path().join("evidence/a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join(".verdict.json.1.tmp"), b"x").unwrap();
        let mut files = Vec::new();
        collect_files(dir.path(), dir.path(), &mut files).unwrap();
        assert_eq!(files, ["evidence/a.jpg", "mic.webm"]);
    }

    #[test]
    fn locks_are_exclusive_and_a_left_over_file_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.lock");
        let a = RecordingLock::acquire(&p).unwrap().expect("first");
        assert!(RecordingLock::acquire(&p).unwrap().is_none(), "held");
        drop(a);
        assert!(!p.exists(), "removed on release");
        // A file left by a killed process (the kernel dropped its flock) is free to take.
        std::fs::write(&p, "999999999\n").unwrap();
        let b = RecordingLock::acquire(&p).unwrap().expect("left-over file");
        drop(b);
    }
}
