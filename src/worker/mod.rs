//! `classguard worker`: a stateless audit worker of the scale-out mode. Any number run, on any
//! machine; each pulls jobs from the JetStream work queue, reads the recording from the shared
//! storage while it grows, audits it with models loaded once per process, writes the verdict to
//! the shared database (once: the verdict key and the recording's link are idempotent), uploads
//! the outputs, then acks.
//!
//! ```text
//!  queue ──job──▶ worker ──segments──◀ storage      the audit: src/audit, as `scan` runs it
//!    ▲   ◀─+WPI── (every ack_wait/3 while auditing)
//!    └── ack ◀── verdict in the database, outputs in storage
//! ```
//!
//! Failure handling: a worker that dies stops sending progress, so the queue redelivers the job
//! after `ack_wait` to another worker. Attempts are counted in the store with a lease the running
//! attempt renews (the queue's delivery count also counts redeliveries of audits that are still
//! running, after a broker restart or a late progress ack): a delivery whose job holds a live
//! lease waits, and the delivery after the last allowed attempt records a dead letter and an
//! `error` verdict instead of auditing again, so a recording that crashes every worker cannot
//! loop forever. SIGTERM
//! stops pulling, lets running audits finish for a grace period, then naks what is left (it is
//! redelivered at once to another worker) and exits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::{self, AuditModels};
use crate::ingest::IngestError;
use crate::policy::Policy;
use crate::queue::{Delivery, JobQueue, QueueConfig, QueueError};
use crate::service::files::End;
use crate::service::outbox::JobMessage;
use crate::service::worker::{
    audit_stored, commit_final, end_of, upload_recording, Heartbeat, JobEnv, JobError,
};
use crate::storage::{AckedFn, Storage, StorageError};
use crate::store::{Attempt, RecordingState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("loading models: {0}")]
    Models(String),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Knobs of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub queue: QueueConfig,
    /// `s3://bucket/prefix`, the same as `serve --storage`.
    pub storage: String,
    pub s3: crate::ingest::s3::S3Options,
    /// Recordings audited at once. A live upload's audit mostly waits for bytes, so this can be
    /// well above the core count; the models are shared.
    pub jobs: usize,
    /// Model workers per recording.
    pub model_workers: usize,
    /// Scratch space for one audit's outputs until they are uploaded.
    pub work_dir: PathBuf,
    pub policy: Option<PathBuf>,
    /// After SIGTERM, how long running audits may take before they are handed back.
    pub shutdown_grace: Duration,
    /// This worker's name in the store (which attempt ran where).
    pub name: String,
    /// Attempts (audits started and never finished: the worker died, or hung past its lease)
    /// before a job is a dead letter. Counted in the store, not by the queue: a broker restart
    /// or a late progress ack redelivers a job whose audit is still running.
    pub max_attempts: i64,
}

/// The process's name in the store: host and pid.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Runs until SIGINT/SIGTERM (then shuts down gracefully, see the module docs).
pub fn run(store: Store, cfg: WorkerConfig) -> Result<(), WorkerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("worker")
        .build()
        .map_err(WorkerError::Runtime)?;
    let result = rt.block_on(run_until(
        Arc::new(store),
        cfg,
        crate::app::serve::shutdown_signal(),
    ));
    // Audits handed back on shutdown may still be running on blocking threads: do not wait.
    rt.shutdown_background();
    result
}

/// What every job of this process shares.
struct Context {
    store: Arc<Store>,
    storage: Storage,
    models: AuditModels,
    policy: Policy,
    cfg: WorkerConfig,
}

/// Deliveries being audited (with their job), by stream sequence: handed back on a shutdown
/// that runs out of grace.
type InFlight = Arc<Mutex<HashMap<u64, (Arc<Delivery>, i64)>>>;

pub async fn run_until(
    store: Arc<Store>,
    cfg: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let policy = Policy::load(cfg.policy.as_deref())?;
    let (url, opts) = (cfg.storage.clone(), cfg.s3.clone());
    let storage = tokio::task::spawn_blocking(move || Storage::new(&url, &opts))
        .await
        .map_err(|e| WorkerError::Models(e.to_string()))??;
    let queue = JobQueue::connect(&cfg.queue).await?;
    // Sessions for at most one job per core: more would only add memory (each session holds its
    // own arena), as a live upload's job mostly waits for bytes; the jobs share them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sessions = cfg.jobs.clamp(1, cores) * cfg.model_workers.max(1);
    let models = AuditModels::load_blocking(&policy, sessions)
        .await
        .map_err(WorkerError::Models)?;
    let ctx = Arc::new(Context {
        store,
        storage,
        models,
        policy,
        cfg: cfg.clone(),
    });
    tracing::info!(worker = %cfg.name, jobs = cfg.jobs, "worker ready");
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.jobs.max(1)));
    let in_flight: InFlight = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let next = tokio::select! {
            d = queue.next(Duration::from_secs(2)) => d,
            _ = stop.changed() => break,
        };
        match next {
            Ok(Some(delivery)) => {
                let delivery = Arc::new(delivery);
                let mut permit = permit;
                if delivery.delivered > 1 && cfg.jobs > 1 {
                    // A redelivered job may be the one that crashed its last worker, taking every
                    // job of that process down with it: it runs alone, so a crash costs an
                    // attempt of this job only, never of innocent neighbours.
                    // Neighbours that run long (live uploads) are not waited for beyond one
                    // `ack_wait`: the job goes back for a worker with room (attempts are counted
                    // in the store, so that costs none).
                    let pinger = progress_pinger(&ctx, &delivery);
                    let rest = tokio::select! {
                        p = permits.clone().acquire_many_owned(cfg.jobs as u32 - 1) => p.ok().map(Some),
                        _ = tokio::time::sleep(cfg.queue.ack_wait) => Some(None),
                        _ = stop.changed() => None,
                    };
                    pinger.abort();
                    match rest {
                        Some(Some(rest)) => permit.merge(rest),
                        Some(None) => {
                            let _ = delivery.nak(Some(Duration::from_secs(1))).await;
                            continue;
                        }
                        None => {
                            let _ = delivery.nak(None).await;
                            break;
                        }
                    }
                }
                let (ctx, in_flight) = (ctx.clone(), in_flight.clone());
                tasks.spawn(async move {
                    handle(ctx, delivery, in_flight).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                // The broker restarting: the client reconnects; pulling resumes after it.
                tracing::warn!("pulling a job: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!(running = tasks.len(), "shutting down: no more jobs pulled");
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left: Vec<(Arc<Delivery>, i64)> = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for (d, job) in left {
            // Not a failed attempt: released in the store first, so the next delivery starts it
            // at once instead of waiting out this worker's lease.
            let (store, name) = (ctx.store.clone(), cfg.name.clone());
            let released =
                tokio::task::spawn_blocking(move || store.release_attempt(job, &name)).await;
            if !matches!(released, Ok(Ok(true))) {
                tracing::warn!(
                    seq = d.stream_sequence,
                    "releasing the attempt: {released:?}"
                );
            }
            match d.nak(None).await {
                Ok(()) => tracing::info!(seq = d.stream_sequence, "job handed back"),
                Err(e) => tracing::warn!(seq = d.stream_sequence, "handing a job back: {e}"),
            }
        }
    }
    Ok(())
}

/// Sends a progress ack every third of `ack_wait` until aborted.
fn progress_pinger(ctx: &Context, delivery: &Arc<Delivery>) -> tokio::task::JoinHandle<()> {
    let every = (ctx.cfg.queue.ack_wait / 3).max(Duration::from_millis(200));
    let d = delivery.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = d.progress().await {
                tracing::warn!(seq = d.stream_sequence, "progress ack: {e}");
            }
        }
    })
}

async fn handle(ctx: Arc<Context>, delivery: Arc<Delivery>, in_flight: InFlight) {
    let msg: JobMessage = match serde_json::from_slice(&delivery.payload) {
        Ok(m) => m,
        Err(e) => {
            // Not ours to read, now or ever: dropped, not redelivered.
            tracing::error!(seq = delivery.stream_sequence, "malformed job message: {e}");
            let _ = delivery.term().await;
            return;
        }
    };
    let attempt = delivery.delivered;
    let seq = delivery.stream_sequence;
    in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(seq, (delivery.clone(), msg.job));
    // Progress acks keep a long (or live) audit from being redelivered while it runs.
    let pinger = progress_pinger(&ctx, &delivery);
    let job_ctx = ctx.clone();
    let job = msg.clone();
    let result = tokio::task::spawn_blocking(move || run_delivery(&job_ctx, &job)).await;
    pinger.abort();
    in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&seq);
    match result {
        Ok(Ok(After::Ack)) => {
            if let Err(e) = delivery.ack().await {
                // Redelivered later; the job is finished in the store, so that costs one lookup.
                tracing::warn!(recording = %msg.recording, "ack: {e}");
            }
        }
        Ok(Ok(After::Later(delay))) => {
            let _ = delivery.nak(Some(delay)).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(recording = %msg.recording, attempt, "job failed, handed back: {e}");
            let _ = delivery.nak(Some(Duration::from_secs(2))).await;
        }
        Err(e) => {
            tracing::error!(recording = %msg.recording, attempt, "job task: {e}");
            let _ = delivery.nak(Some(Duration::from_secs(2))).await;
        }
    }
}

/// How far recording `id` is acknowledged, from the shared database.
fn acked_from_store(store: Arc<Store>, id: String) -> Arc<AckedFn> {
    Arc::new(move || match store.get_recording(&id) {
        Ok(Some(r)) => Ok((r.bytes_received.max(0) as u64, end_of(&r))),
        Ok(None) => Err(format!("recording {id} is not in the store")),
        Err(e) => Err(e.to_string()),
    })
}

/// sha256 of the bytes of `id` acknowledged now (an error verdict's content hash).
fn stored_sha256(ctx: &Context, id: &str) -> String {
    use sha2::Digest;
    let (store, rid) = (ctx.store.clone(), id.to_string());
    let snapshot: Arc<AckedFn> = Arc::new(move || match store.get_recording(&rid) {
        Ok(Some(r)) if r.state == RecordingState::Terminated => Ok((0, End::Complete)),
        Ok(Some(r)) => Ok((r.bytes_received.max(0) as u64, End::Complete)),
        Ok(None) => Ok((0, End::Complete)),
        Err(e) => Err(e.to_string()),
    });
    let mut reader = ctx.storage.follow(id, snapshot);
    let mut h = sha2::Sha256::new();
    match std::io::copy(&mut reader, &mut h) {
        Ok(_) => hex::encode(h.finalize()),
        Err(_) => "0".repeat(64),
    }
}

/// What to tell the queue about a delivery once it is handled.
enum After {
    Ack,
    /// Deliver it again after this long (another worker's attempt is alive).
    Later(Duration),
}

fn run_delivery(ctx: &Context, job: &JobMessage) -> Result<After, JobError> {
    let id = job.recording.as_str();
    let lease_ms = ctx.cfg.queue.ack_wait.as_millis() as i64;
    match ctx
        .store
        .start_attempt(job.job, &ctx.cfg.name, lease_ms, ctx.cfg.max_attempts)?
    {
        Attempt::Finished => {
            tracing::info!(recording = %id, "job already finished: nothing to do");
            Ok(After::Ack)
        }
        Attempt::Busy { until_ms } => {
            // Redelivered while its audit still runs (a missed progress ack): that attempt's
            // worker is alive and renewing its lease. Look again when the lease would run out.
            let wait = (until_ms - crate::store::now_ms()).max(0) as u64 + 500;
            Ok(After::Later(Duration::from_millis(wait)))
        }
        Attempt::Exhausted { attempts } => {
            dead_letter(ctx, job, attempts)?;
            Ok(After::Ack)
        }
        Attempt::Started(n) => {
            let _lease = Heartbeat::start(
                ctx.store.clone(),
                job.job,
                ctx.cfg.name.clone(),
                ctx.cfg.queue.ack_wait,
            );
            audit_job(ctx, job, n)?;
            Ok(After::Ack)
        }
    }
}

fn audit_job(ctx: &Context, job: &JobMessage, attempt: i64) -> Result<(), JobError> {
    let id = job.recording.as_str();
    tracing::info!(recording = %id, attempt, "audit job taken");
    if let Some(row) = ctx.store.get_recording(id)? {
        crate::fault::crash_if_session(row.session_id.as_deref());
    }
    let acked = acked_from_store(ctx.store.clone(), id.to_string());
    let (storage, rid) = (ctx.storage.clone(), id.to_string());
    let open: Arc<audit::OpenFn> = Arc::new(move || {
        Ok::<_, IngestError>(
            Box::new(storage.follow(&rid, acked.clone())) as Box<dyn std::io::Read + Send>
        )
    });
    let out_dir = ctx.cfg.work_dir.join("recordings").join(id);
    let env = JobEnv {
        store: &ctx.store,
        models: &ctx.models,
        policy: &ctx.policy,
        model_workers: ctx.cfg.model_workers,
    };
    let sha_of = || stored_sha256(ctx, id);
    audit_stored(&env, id, &out_dir, open, &sha_of)?;
    upload_outputs(ctx, id, &out_dir)?;
    assemble(ctx, id)?;
    ctx.store.finish_job(job.job, &ctx.cfg.name, None)?;
    Ok(())
}

/// Keeps an ended recording whole in storage (`recordings/<id>.webm`) for rescans, in place of
/// its segments. A terminated upload was deleted by its client: its segments go, nothing is kept.
fn assemble(ctx: &Context, id: &str) -> Result<(), JobError> {
    let Some(row) = ctx.store.get_recording(id)? else {
        return Ok(());
    };
    if row.state == RecordingState::Uploading {
        return Ok(());
    }
    let storage_err = |e: StorageError| JobError::Storage(format!("{id}: {e}"));
    if row.state == RecordingState::Terminated {
        return ctx.storage.delete_segments(id).map_err(storage_err);
    }
    let bytes = row.bytes_received.max(0) as u64;
    let acked: Arc<AckedFn> = Arc::new(move || Ok((bytes, End::Complete)));
    let n = ctx
        .storage
        .assemble(id, acked, &ctx.cfg.work_dir.join("spool"))
        .map_err(storage_err)?;
    tracing::info!(recording = %id, bytes = n, "recording stored whole");
    Ok(())
}

/// Moves the outputs of an audit from the scratch folder to the shared storage.
fn upload_outputs(ctx: &Context, id: &str, out_dir: &std::path::Path) -> Result<(), JobError> {
    if !out_dir.exists() {
        return Ok(());
    }
    let n = ctx
        .storage
        .put_outputs(id, out_dir)
        .map_err(|e| JobError::Storage(format!("{id}: uploading outputs: {e}")))?;
    tracing::info!(recording = %id, files = n, "outputs stored");
    let _ = std::fs::remove_dir_all(out_dir);
    Ok(())
}

/// The delivery after the last allowed attempt: no audit, a dead letter for operators and an
/// `error` verdict, so the recording still ends with exactly one verdict and its client hears.
fn dead_letter(ctx: &Context, job: &JobMessage, attempts: i64) -> Result<(), JobError> {
    let id = job.recording.as_str();
    let reason = format!(
        "dead letter: the audit did not finish in {attempts} attempts (each worker crashed, was \
         killed or stopped answering the queue); not retried automatically"
    );
    if ctx.store.dead_letter(job.job, attempts, &reason)? {
        tracing::error!(recording = %id, attempts, "job is a dead letter");
    }
    let Some(row) = ctx.store.get_recording(id)? else {
        return Ok(());
    };
    if row.verdict_key.is_some() || row.state == RecordingState::Terminated {
        return Ok(());
    }
    let rec = upload_recording(id);
    let verdict = audit::error_verdict(
        &rec,
        row.teacher_id.as_deref(),
        &stored_sha256(ctx, id),
        &ctx.policy,
        &ctx.models,
        reason,
    );
    let out_dir = ctx.cfg.work_dir.join("recordings").join(id);
    commit_final(&ctx.store, &ctx.policy, &row, &verdict, &[], &out_dir)?;
    upload_outputs(ctx, id, &out_dir)
    // The segments stay: an operator looking into a dead letter wants the bytes as they came.
}
