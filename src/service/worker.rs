//! Audit workers: take a durable job, audit the recording from its persisted bytes while they
//! grow, write the verdict once, queue the webhook. A job's lease is renewed by a heartbeat; a
//! worker that dies (kill -9 of `serve`) stops renewing it and the job is taken again after
//! restart, from the bytes on disk. The verdict row is keyed by content, policy and models, and
//! the recording links it once, so a second run writes nothing twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::files::{End, GrowingReader};
use super::Shared;
use crate::audit::{self, AuditModels, AuditProgress, AuditRequest};
use crate::ingest::{IngestError, Recording};
use crate::policy::Policy;
use crate::slice::Role;
use crate::store::{JobRow, RecordingRow, RecordingState, Store, StoreError};

/// How often a running audit's progress is written to the store at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

pub fn start(state: Shared, models: Arc<AuditModels>, policy: Arc<Policy>) {
    for n in 0..state.config.audit_workers.max(1) {
        let worker = format!("{}-{}-{n}", hostname(), std::process::id());
        let (state, models, policy) = (state.clone(), models.clone(), policy.clone());
        std::thread::Builder::new()
            .name(format!("audit-{n}"))
            .spawn(move || run(state, models, policy, worker))
            .expect("spawning an audit worker");
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

fn run(state: Shared, models: Arc<AuditModels>, policy: Arc<Policy>, worker: String) {
    let lease = state.config.job_lease.as_millis() as i64;
    loop {
        let job = match state
            .store
            .claim_job(&worker, crate::store::now_ms(), lease)
        {
            Ok(Some(job)) => job,
            Ok(None) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => {
                tracing::error!("claiming a job: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        tracing::info!(recording = %job.recording_id, attempt = job.attempts, "audit job taken");
        let result = run_job(&state, &models, &policy, &worker, &job);
        let error = result.as_ref().err().map(|e| e.to_string());
        if let Some(e) = &error {
            tracing::warn!(recording = %job.recording_id, "audit job failed: {e}");
        }
        match state.store.finish_job(job.id, &worker, error.as_deref()) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(recording = %job.recording_id, "job lease lost before it finished")
            }
            Err(e) => tracing::error!(recording = %job.recording_id, "finishing job: {e}"),
        }
        state.files.forget(&job.recording_id);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("recording {0} is not in the store")]
    Missing(String),
    #[error("{0}")]
    Commit(#[from] crate::sink::SinkError),
    #[error("storage: {0}")]
    Storage(String),
}

/// Renews a job's lease until dropped.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(store: Arc<Store>, job: i64, worker: String, lease: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let every = (lease / 3).max(Duration::from_millis(100));
                let mut last = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() >= every {
                        last = Instant::now();
                        let until = crate::store::now_ms() + lease.as_millis() as i64;
                        if let Err(e) = store.heartbeat(job, &worker, until) {
                            tracing::warn!("heartbeat: {e}");
                        }
                    }
                }
            })
            .ok();
        Heartbeat { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_job(
    state: &Shared,
    models: &AuditModels,
    policy: &Policy,
    worker: &str,
    job: &JobRow,
) -> Result<(), JobError> {
    let store = &state.store;
    let id = job.recording_id.clone();
    let row = store
        .get_recording(&id)?
        .ok_or_else(|| JobError::Missing(id.clone()))?;
    if row.verdict_key.is_some() || row.state == RecordingState::Terminated {
        return Ok(()); // Already final (a retried job), or deleted by the client.
    }
    let _heartbeat = Heartbeat::start(
        store.clone(),
        job.id,
        worker.to_string(),
        state.config.job_lease,
    );
    let path = state.files.path(&id);
    let signal = state
        .files
        .signal(&id, row.bytes_received.max(0) as u64, end_of(&row));
    let open_path = path.clone();
    let open: Arc<audit::OpenFn> = Arc::new(move || {
        GrowingReader::open(&open_path, signal.clone())
            .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>)
            .map_err(|e| IngestError::Open {
                path: "upload".into(),
                reason: e.to_string(),
            })
    });
    let env = JobEnv {
        store,
        models,
        policy,
        model_workers: state.config.model_workers,
    };
    let out_dir = state.config.data_dir.join("recordings").join(&id);
    let started = Instant::now();
    let sha_of = || crate::app::scan::file_sha256(&path).unwrap_or_else(|_| "0".repeat(64));
    if let Some(done) = audit_stored(&env, &id, &out_dir, open, &sha_of)? {
        if done.newly_final {
            state.metrics.verdict(done.verdict.decision.as_str());
            state
                .metrics
                .record_realtime(done.verdict.recording.duration_ms, started.elapsed());
        }
    }
    Ok(())
}

/// What auditing one stored recording needs, in either mode (in-process workers of `serve`, or
/// `classguard worker` processes pulling from the queue).
pub struct JobEnv<'a> {
    pub store: &'a Arc<Store>,
    pub models: &'a AuditModels,
    pub policy: &'a Policy,
    pub model_workers: usize,
}

/// A verdict written by [`audit_stored`].
pub struct Finished {
    pub verdict: crate::verdict::Verdict,
    /// `false`: the recording already had its final verdict (a redelivered job): nothing was
    /// linked or sent twice.
    pub newly_final: bool,
}

/// An uploaded recording as the audit names it (its bytes come through an `open` function).
pub fn upload_recording(id: &str) -> Recording {
    Recording {
        id: id.to_string(),
        source: format!("upload:{id}"),
        path: PathBuf::from(format!("upload-{id}.webm")),
    }
}

/// The row's upload state as the reader sees it.
pub fn end_of(row: &RecordingRow) -> End {
    match row.state {
        RecordingState::Uploading => End::Open,
        RecordingState::Complete | RecordingState::Audited => End::Complete,
        RecordingState::Expired => End::Expired,
        RecordingState::Terminated => End::Terminated,
    }
}

/// Audits recording `id`, reading its bytes through `open` while they are acknowledged, and
/// writes its verdict once: findings, evidence rows and the recording's link in the store, the
/// webhook delivery queued. `sha_of` hashes the bytes stored so far (for an error verdict).
/// `Ok(None)`: nothing to do (already final, or terminated by the client).
pub fn audit_stored(
    env: &JobEnv<'_>,
    id: &str,
    out_dir: &Path,
    open: Arc<audit::OpenFn>,
    sha_of: &dyn Fn() -> String,
) -> Result<Option<Finished>, JobError> {
    let (store, models, policy) = (env.store, env.models, env.policy);
    let id = id.to_string();
    let row = store
        .get_recording(&id)?
        .ok_or_else(|| JobError::Missing(id.clone()))?;
    if row.verdict_key.is_some() || row.state == RecordingState::Terminated {
        return Ok(None);
    }
    let rec = upload_recording(&id);
    let templates = match &row.teacher_id {
        Some(t) => store.templates_for(t, models.face_embedder.id())?,
        None => Vec::new(),
    };
    let not_enrolled = row.teacher_id.is_some() && templates.is_empty();
    if not_enrolled {
        tracing::warn!(recording = %id, "teacher not enrolled: the verdict will be partial");
    }
    // Slices come many times a second, findings rarely: a new finding is written at once, the
    // media time at most every PROGRESS_EVERY.
    let last_write = Mutex::new((Instant::now() - PROGRESS_EVERY, 0usize));
    let progress_store = store.clone();
    let progress_id = id.clone();
    let progress: Arc<audit::ProgressFn> = Arc::new(move |p: &AuditProgress| {
        let mut last = last_write.lock().unwrap_or_else(|e| e.into_inner());
        if last.0.elapsed() < PROGRESS_EVERY && p.findings.len() == last.1 {
            return;
        }
        *last = (Instant::now(), p.findings.len());
        let json = serde_json::to_string(&p.findings).unwrap_or_else(|_| "[]".into());
        if let Err(e) = progress_store.set_audit_progress(&progress_id, p.media_ms as i64, &json) {
            tracing::warn!(recording = %progress_id, "writing progress: {e}");
        }
    });
    let req = AuditRequest {
        recording: &rec,
        out_dir: out_dir.to_path_buf(),
        teacher_id: row.teacher_id.clone(),
        templates,
        role: row.role.as_deref().map(|r| {
            if r == "desktop" {
                Role::Desktop
            } else {
                Role::Camera
            }
        }),
        workers: env.model_workers.max(1),
        open: Some(open),
        progress: Some(progress),
    };
    let outcome = audit::audit(models, policy, &req);
    // How the upload ended decides what the result means.
    let row = store
        .get_recording(&id)?
        .ok_or_else(|| JobError::Missing(id.clone()))?;
    if row.state == RecordingState::Terminated {
        tracing::info!(recording = %id, "upload terminated: no verdict");
        return Ok(None);
    }
    let (mut verdict, evidence) = match outcome {
        Ok(o) => (o.verdict, o.evidence),
        Err(e) => (
            audit::error_verdict(
                &rec,
                row.teacher_id.as_deref(),
                &sha_of(),
                policy,
                models,
                e.to_string(),
            ),
            Vec::new(),
        ),
    };
    // What the audit itself could not know also keeps the recording from `pass`.
    let mut incomplete = audit::Incomplete::default();
    if row.state == RecordingState::Expired {
        incomplete.add(format!("upload expired after {} bytes", row.bytes_received));
    }
    if let (Some(t), true) = (&row.teacher_id, not_enrolled) {
        incomplete.add(format!(
            "teacher {t} is not enrolled: the camera was not checked against them"
        ));
    }
    mark_incomplete(&mut verdict, policy, &incomplete);
    let newly_final = commit_final(store, policy, &row, &verdict, &evidence, out_dir)?;
    Ok(Some(Finished {
        verdict,
        newly_final,
    }))
}

/// Turns `verdict` partial with `incomplete`'s reasons, if it has any.
pub fn mark_incomplete(
    verdict: &mut crate::verdict::Verdict,
    policy: &Policy,
    incomplete: &audit::Incomplete,
) {
    if let Some(why) = incomplete.reason() {
        verdict.recording.partial = true;
        let reason = match verdict.recording.partial_reason.take() {
            Some(r) => format!("{r}; {why}"),
            None => why,
        };
        verdict.recording.partial_reason = Some(reason);
        if verdict.decision != crate::verdict::Decision::Error {
            verdict.decision = crate::policy::decide(policy, &verdict.findings, true);
        }
    }
}

/// Writes the verdict (store transaction, then verdict.json), links it to the recording once and
/// queues the webhook; `false` when the recording already had a final verdict.
pub fn commit_final(
    store: &Arc<Store>,
    policy: &Policy,
    row: &RecordingRow,
    verdict: &crate::verdict::Verdict,
    evidence: &[String],
    out_dir: &Path,
) -> Result<bool, JobError> {
    let id = &row.id;
    let key = verdict.idempotency_key();
    crate::sink::commit_audit(
        store,
        &crate::sink::AuditRecord {
            out_dir,
            verdict,
            evidence,
            teacher_id: row.teacher_id.as_deref(),
            expires_at: policy.evidence.expires_at(time::OffsetDateTime::now_utc()),
        },
    )?;
    let findings_json = serde_json::to_string(&verdict.findings).unwrap_or_else(|_| "[]".into());
    store.set_audit_progress(id, verdict.recording.duration_ms as i64, &findings_json)?;
    if store.set_verdict_key(id, &key)? {
        super::webhook::queue(store, row.token_id, id, verdict)?;
        tracing::info!(recording = %id, decision = verdict.decision.as_str(),
            findings = verdict.findings.len(), partial = verdict.recording.partial, "verdict final");
        Ok(true)
    } else {
        tracing::info!(recording = %id, "verdict was already final; nothing written twice");
        Ok(false)
    }
}
