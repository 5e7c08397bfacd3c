//! `classguard scan`: recordings in, one verdict per recording out (JSON file, store row, optional
//! JSON line on stdout), resumable and safe to run twice or in parallel over the same output.
//!
//! Crash safety: every file is written atomically; a recording whose `verdict.json` already holds
//! the same idempotency key (content sha256 + policy fingerprint + model hashes) is skipped; a
//! per-recording lock file (created exclusively, holding the owner's pid) keeps two processes from
//! auditing the same recording at once, and a lock whose owner died is taken over.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::audit::{self, AuditModels, AuditRequest};
use crate::ingest::{self, Recording};
use crate::models::ModelHome;
use crate::policy::Policy;
use crate::slice::Role;
use crate::store::Store;
use crate::verdict::{Decision, Verdict};

#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub inputs: Vec<PathBuf>,
    pub teacher: Option<String>,
    pub policy: Option<PathBuf>,
    pub out: PathBuf,
    pub store: Option<PathBuf>,
    pub session: Option<String>,
    pub role: Option<Role>,
    /// Recordings audited at the same time.
    pub jobs: usize,
    /// Model workers per recording.
    pub workers: usize,
    /// Print each verdict as one JSON line on stdout.
    pub jsonl: bool,
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

/// Runs a scan. `Err` only for set-up problems; per-recording failures are rows.
pub fn run(
    opts: &ScanOptions,
    mut on_verdict: impl FnMut(&Verdict) + Send,
) -> Result<ScanSummary, ScanSetupError> {
    let policy = Policy::load(opts.policy.as_deref())?;
    let store = match &opts.store {
        Some(p) => Store::open(p)?,
        None => Store::open_default()?,
    };
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| ScanSetupError::Output(format!("{}: {e}", opts.out.display())))?;
    let jobs = opts.jobs.max(1);
    let workers = opts.workers.max(1);
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
    let (recordings, errors) = ingest::expand_inputs(&opts.inputs);
    let mut summary = ScanSummary::default();
    for e in errors {
        eprintln!("error: {e}");
        summary.rows.push(Row {
            recording_id: "-".into(),
            session: "-".into(),
            status: RowStatus::Failed,
            decision: None,
            findings: 0,
            partial: false,
            realtime_factor: 0.0,
            error: Some(e.to_string()),
        });
    }
    let store = Mutex::new(store);
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<(usize, Row)>> = Mutex::new(Vec::new());
    let emit = Mutex::new(&mut on_verdict);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(recordings.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(rec) = recordings.get(i) else { break };
                let session = session_of(rec, opts.session.as_deref());
                let (row, verdict) = scan_one(
                    rec, session, opts, &policy, &models, &templates, workers, &store,
                );
                if let Some(v) = &verdict {
                    (emit.lock().unwrap_or_else(|p| p.into_inner()))(v);
                }
                rows.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, row));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.sort_by_key(|(i, _)| *i);
    summary.rows.extend(rows.into_iter().map(|(_, r)| r));
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn scan_one(
    rec: &Recording,
    session: String,
    opts: &ScanOptions,
    policy: &Policy,
    models: &AuditModels,
    templates: &[Vec<f32>],
    workers: usize,
    store: &Mutex<Store>,
) -> (Row, Option<Verdict>) {
    let mut row = Row {
        recording_id: rec.id.clone(),
        session,
        status: RowStatus::Failed,
        decision: None,
        findings: 0,
        partial: false,
        realtime_factor: 0.0,
        error: None,
    };
    let dir = opts.out.join(&rec.id);
    let verdict_path = dir.join("verdict.json");
    let sha = match file_sha256(&rec.path) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("{}: {e}", rec.path.display());
            eprintln!("error: {msg}");
            row.error = Some(msg);
            return (row, None);
        }
    };
    let uses = models.uses();
    let key = crate::verdict::idempotency_key(
        &rec.id,
        opts.teacher.as_deref(),
        &sha,
        &policy.fingerprint(),
        uses.iter().map(|m| m.sha256.as_str()),
    );
    if let Some(existing) = read_verdict(&verdict_path).filter(|v| v.idempotency_key() == key) {
        info!(recording = %rec.id, "already audited with the same content, policy and models");
        row.fill_from(&existing, RowStatus::Skipped);
        return (row, None);
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        row.error = Some(format!("{}: {e}", dir.display()));
        return (row, None);
    }
    let lock = match RecordingLock::acquire(&opts.out.join(format!("{}.lock", rec.id))) {
        Ok(Some(l)) => l,
        Ok(None) => {
            info!(recording = %rec.id, "another process is auditing this recording");
            row.status = RowStatus::Busy;
            return (row, None);
        }
        Err(e) => {
            row.error = Some(format!("lock: {e}"));
            return (row, None);
        }
    };
    // Checked again under the lock: another process may have finished it since the first look.
    if read_verdict(&verdict_path).is_some_and(|v| v.idempotency_key() == key) {
        row.status = RowStatus::Skipped;
        return (row, None);
    }
    info!(recording = %rec.id, sha256 = %sha, "auditing");
    let req = AuditRequest {
        recording: rec,
        out_dir: dir.clone(),
        teacher_id: opts.teacher.clone(),
        templates: templates.to_vec(),
        role: opts.role,
        workers,
        open: None,
        progress: None,
    };
    let (verdict, evidence) = match audit::audit(models, policy, &req) {
        Ok(outcome) => (outcome.verdict, outcome.evidence),
        Err(e) => {
            let msg = format!("{}: {e}", rec.path.display());
            eprintln!("error: {msg}");
            warn!(recording = %rec.id, "audit failed");
            (
                audit::error_verdict(
                    rec,
                    opts.teacher.as_deref(),
                    &sha,
                    policy,
                    models,
                    e.to_string(),
                ),
                Vec::new(),
            )
        }
    };
    let committed = {
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        crate::sink::commit_audit(
            &store,
            &crate::sink::AuditRecord {
                out_dir: &dir,
                verdict: &verdict,
                evidence: &evidence,
                teacher_id: opts.teacher.as_deref(),
                expires_at: policy.evidence.expires_at(time::OffsetDateTime::now_utc()),
            },
        )
    };
    if let Err(e) = committed {
        warn!(recording = %rec.id, "commit failed: {e}");
        row.error = Some(e.to_string());
        drop(lock);
        return (row, Some(verdict));
    }
    drop(lock);
    info!(recording = %rec.id, decision = verdict.decision.as_str(), findings = verdict.findings.len(), "audited");
    row.fill_from(&verdict, RowStatus::Audited);
    (row, Some(verdict))
}

fn read_verdict(path: &Path) -> Option<Verdict> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
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
