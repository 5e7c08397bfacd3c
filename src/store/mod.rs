//! The store: enrolled face templates, verdicts, review state of findings, the evidence files that
//! must be deleted on schedule or on request, and for service mode the API tokens, uploaded
//! recordings, durable audit jobs and webhook deliveries.
//!
//! One interface, [`Store`], over two backends that pass the same test suite (tests/store.rs):
//! SQLite ([`sqlite`], the embedded default: nothing to run) and PostgreSQL ([`postgres`], for a
//! service whose workers share one database). Both apply versioned migrations on open.
//!
//! Privacy: templates are embeddings only, never photos; tokens are stored as their sha256 only;
//! evidence files are tracked with an expiry so that [`Store::expire_evidence`] and
//! [`Store::erase_teacher`] can say which files to delete.

pub mod postgres;
mod review_sql;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use time::OffsetDateTime;

use crate::verdict::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no store path: set CLASSGUARD_STORE, XDG_DATA_HOME or HOME")]
    NoPath,
    #[error(
        "store schema version {found} is newer than this build knows ({known}); upgrade classguard"
    )]
    TooNew { found: i64, known: i64 },
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("database URL {0:?}: expected postgres://user@host:port/database")]
    BadUrl(String),
    #[error("verdict JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("finding {0} not found")]
    FindingNotFound(i64),
    #[error("invalid embedding: {0}")]
    InvalidEmbedding(&'static str),
    #[error("a token named {0:?} already exists")]
    TokenExists(String),
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("a staff account named {0:?} already exists")]
    UserExists(String),
}

/// Review state of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingStatus {
    Open,
    Confirmed,
    Dismissed,
}

impl FindingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingStatus::Open => "open",
            FindingStatus::Confirmed => "confirmed",
            FindingStatus::Dismissed => "dismissed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "open" => Ok(FindingStatus::Open),
            "confirmed" => Ok(FindingStatus::Confirmed),
            "dismissed" => Ok(FindingStatus::Dismissed),
            other => Err(StoreError::Corrupt {
                what: "finding status",
                detail: other.to_string(),
            }),
        }
    }
}

/// An evidence file to delete at `expires_at` (unix seconds), or when its teacher is erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceEntry {
    pub path: String,
    pub teacher_id: Option<String>,
    pub expires_at: i64,
}

/// A finding as the review page lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FindingRow {
    pub id: i64,
    pub recording_id: String,
    pub label: String,
    pub severity: String,
    pub track: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub rule_id: String,
    pub reason: String,
    pub status: FindingStatus,
    pub reviewer_note: Option<String>,
    pub evidence_path: Option<String>,
}

/// An API token. The token itself is never stored, only its sha256 (`hash`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub hash: String,
    pub webhook_url: Option<String>,
    /// HMAC key of this token's webhook signatures (the receiver needs it to verify, so it is kept).
    #[serde(skip)]
    pub webhook_secret: String,
    pub created_at: i64,
    pub revoked: bool,
}

/// Where an uploaded recording is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Bytes are arriving (tus upload not yet complete).
    Uploading,
    /// Every byte is in; the audit may still be running.
    Complete,
    /// The upload stopped and expired; audited up to where it ends, verdict partial.
    Expired,
    /// Deleted by the client (tus termination).
    Terminated,
    /// The final verdict is written.
    Audited,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Uploading => "uploading",
            RecordingState::Complete => "complete",
            RecordingState::Expired => "expired",
            RecordingState::Terminated => "terminated",
            RecordingState::Audited => "audited",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "uploading" => RecordingState::Uploading,
            "complete" => RecordingState::Complete,
            "expired" => RecordingState::Expired,
            "terminated" => RecordingState::Terminated,
            "audited" => RecordingState::Audited,
            other => {
                return Err(StoreError::Corrupt {
                    what: "recording state",
                    detail: other.to_string(),
                })
            }
        })
    }

    /// No more bytes will come.
    pub fn upload_ended(self) -> bool {
        !matches!(self, RecordingState::Uploading)
    }
}

/// What a client says about a recording when it creates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecording {
    pub id: String,
    pub token_id: i64,
    pub idempotency_key: Option<String>,
    /// `None`: tus creation-defer-length, told later.
    pub upload_length: Option<i64>,
    pub session_id: Option<String>,
    pub role: Option<String>,
    pub teacher_id: Option<String>,
    pub expires_at_ms: i64,
}

/// An uploaded recording and how far its upload and audit have come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRow {
    pub id: String,
    pub token_id: i64,
    pub idempotency_key: Option<String>,
    pub state: RecordingState,
    pub upload_length: Option<i64>,
    pub bytes_received: i64,
    pub media_ms_audited: i64,
    /// JSON array of the findings so far (the audit's progress).
    pub findings_json: String,
    pub session_id: Option<String>,
    pub role: Option<String>,
    pub teacher_id: Option<String>,
    /// Idempotency key of the final verdict in the verdicts table.
    pub verdict_key: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A durable audit job as a worker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub recording_id: String,
    /// Including this one.
    pub attempts: i64,
}

/// What a delivered job is to the worker that got it (see [`Store::start_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Audit it: attempt number `n` (1 for the first), leased to this worker.
    Started(i64),
    /// Another attempt holds a live lease until `until_ms`: not this worker's to run.
    Busy { until_ms: i64 },
    /// Done, failed or gone: nothing to do.
    Finished,
    /// `attempts` attempts started and none finished: a dead letter.
    Exhausted { attempts: i64 },
}

impl Attempt {
    /// The decision for a job row in `state` with `attempts` started and its lease; `None`:
    /// start attempt `attempts + 1` (both backends then write it in the same transaction).
    pub(crate) fn decide(
        state: &str,
        attempts: i64,
        lease_until_ms: Option<i64>,
        now_ms: i64,
        max_attempts: i64,
    ) -> Option<Attempt> {
        match state {
            "done" | "failed" => Some(Attempt::Finished),
            "running" if lease_until_ms.is_some_and(|l| l > now_ms) => Some(Attempt::Busy {
                until_ms: lease_until_ms.unwrap_or(now_ms),
            }),
            _ if attempts >= max_attempts => Some(Attempt::Exhausted { attempts }),
            _ => None,
        }
    }
}

/// A job that failed every attempt the queue allows (scale-out mode): shown to operators by
/// `classguard jobs dead`, never retried on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub job_id: i64,
    pub recording_id: String,
    pub attempts: i64,
    pub reason: String,
    pub at_ms: i64,
}

/// A webhook event waiting to be (re)delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    /// Stable across retries: receivers deduplicate on it.
    pub event_id: String,
    pub token_id: i64,
    pub recording_id: String,
    pub url: String,
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// One backend's operations. Everything takes `&mut self` (a PostgreSQL client needs it);
/// [`Store`] serialises calls. Times are passed in where a test needs to control them.
pub trait Backend: Send {
    fn schema_version(&mut self) -> Result<i64, StoreError>;
    fn enroll_template(
        &mut self,
        teacher_id: &str,
        model_id: &str,
        blob: &[u8],
        now: i64,
    ) -> Result<i64, StoreError>;
    fn templates_for(
        &mut self,
        teacher_id: &str,
        model_id: &str,
    ) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The verdict, its findings and its evidence rows in one transaction.
    fn put_verdict(
        &mut self,
        verdict: &Verdict,
        json: &str,
        evidence: &[EvidenceEntry],
        now: i64,
    ) -> Result<bool, StoreError>;
    fn get_verdict_json(&mut self, key: &str) -> Result<Option<String>, StoreError>;
    fn list_findings(
        &mut self,
        status: Option<FindingStatus>,
    ) -> Result<Vec<FindingRow>, StoreError>;
    fn set_finding_status(
        &mut self,
        id: i64,
        status: FindingStatus,
        note: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError>;
    fn add_evidence(
        &mut self,
        path: &str,
        recording_id: &str,
        teacher_id: Option<&str>,
        expires_at: i64,
    ) -> Result<(), StoreError>;
    fn erase_teacher(&mut self, teacher_id: &str) -> Result<Vec<String>, StoreError>;
    fn expire_evidence(&mut self, now: i64) -> Result<Vec<String>, StoreError>;

    fn create_token(
        &mut self,
        name: &str,
        hash: &str,
        webhook_url: Option<&str>,
        webhook_secret: &str,
        now: i64,
    ) -> Result<TokenRow, StoreError>;
    fn list_tokens(&mut self) -> Result<Vec<TokenRow>, StoreError>;
    fn revoke_token(&mut self, name: &str) -> Result<bool, StoreError>;
    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRow>, StoreError>;
    fn token_by_id(&mut self, id: i64) -> Result<Option<TokenRow>, StoreError>;

    fn create_recording(
        &mut self,
        new: &NewRecording,
        now_ms: i64,
    ) -> Result<(RecordingRow, bool), StoreError>;
    fn get_recording(&mut self, id: &str) -> Result<Option<RecordingRow>, StoreError>;
    fn set_upload_length(&mut self, id: &str, length: i64) -> Result<(), StoreError>;
    fn set_bytes_received(
        &mut self,
        id: &str,
        bytes: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    fn set_recording_state(&mut self, id: &str, state: RecordingState) -> Result<(), StoreError>;
    fn set_audit_progress(
        &mut self,
        id: &str,
        media_ms: i64,
        findings_json: &str,
    ) -> Result<(), StoreError>;
    fn set_verdict_key(&mut self, id: &str, key: &str) -> Result<bool, StoreError>;
    fn count_uploading(&mut self, token_id: i64) -> Result<i64, StoreError>;
    fn expired_uploads(&mut self, now_ms: i64) -> Result<Vec<String>, StoreError>;

    fn enqueue_job(&mut self, recording_id: &str, now_ms: i64) -> Result<bool, StoreError>;
    fn claim_job(
        &mut self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<JobRow>, StoreError>;
    fn heartbeat(
        &mut self,
        job_id: i64,
        worker: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError>;
    fn finish_job(
        &mut self,
        job_id: i64,
        worker: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError>;
    fn queue_depth(&mut self) -> Result<i64, StoreError>;
    fn unpublished_jobs(&mut self, limit: i64) -> Result<Vec<JobRow>, StoreError>;
    fn mark_published(&mut self, job_id: i64, now_ms: i64) -> Result<(), StoreError>;
    fn start_attempt(
        &mut self,
        job_id: i64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        max_attempts: i64,
    ) -> Result<Attempt, StoreError>;
    fn release_attempt(&mut self, job_id: i64, worker: &str) -> Result<bool, StoreError>;
    fn dead_letter(
        &mut self,
        job_id: i64,
        attempts: i64,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    fn dead_letters(&mut self) -> Result<Vec<DeadLetterRow>, StoreError>;

    fn enqueue_delivery(
        &mut self,
        event_id: &str,
        token_id: i64,
        recording_id: &str,
        url: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    fn due_deliveries(&mut self, now_ms: i64, limit: i64) -> Result<Vec<DeliveryRow>, StoreError>;
    fn delivery_done(&mut self, id: i64) -> Result<(), StoreError>;
    /// `next_at_ms: None` gives up (state `failed`).
    fn delivery_failed(
        &mut self,
        id: i64,
        next_at_ms: Option<i64>,
        error: &str,
    ) -> Result<(), StoreError>;

    // ---- review page ----
    fn review_add_user(&mut self, new: &NewUser, now_ms: i64) -> Result<UserRow, StoreError>;
    fn review_user_by_name(&mut self, name: &str) -> Result<Option<UserRow>, StoreError>;
    fn review_user_by_id(&mut self, id: i64) -> Result<Option<UserRow>, StoreError>;
    fn review_list_users(&mut self) -> Result<Vec<UserRow>, StoreError>;
    fn review_login_result(
        &mut self,
        user_id: i64,
        ok: bool,
        now_ms: i64,
        lockout: Lockout,
    ) -> Result<Option<UserRow>, StoreError>;
    fn review_update_user(&mut self, id: i64, change: &UserChange) -> Result<bool, StoreError>;
    fn review_create_session(&mut self, s: &NewSession) -> Result<(), StoreError>;
    fn review_session(
        &mut self,
        id_hash: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>, StoreError>;
    fn review_delete_session(&mut self, id_hash: &str) -> Result<(), StoreError>;
    fn review_unsynced_verdicts(&mut self, limit: i64) -> Result<Vec<UnsyncedVerdict>, StoreError>;
    fn review_insert_item(&mut self, item: &NewReviewItem) -> Result<bool, StoreError>;
    fn review_queue(&mut self, filter: &QueueFilter) -> Result<Vec<ReviewItemRow>, StoreError>;
    fn review_label_counts(
        &mut self,
        filter: &QueueFilter,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    fn review_item(&mut self, id: i64) -> Result<Option<ItemDetail>, StoreError>;
    fn review_claim(
        &mut self,
        item_id: i64,
        user_id: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimState>, StoreError>;
    fn review_release(&mut self, item_id: i64, user_id: i64) -> Result<(), StoreError>;
    fn review_act(&mut self, act: &ReviewAct, now_ms: i64) -> Result<ActOutcome, StoreError>;
    fn review_history(&mut self, item_id: i64) -> Result<Vec<DecisionRow>, StoreError>;
    fn review_audit(&mut self, entry: &AuditEntry, now_ms: i64) -> Result<(), StoreError>;
    fn review_audit_log(&mut self, limit: i64) -> Result<Vec<AuditRow>, StoreError>;
    fn review_evidence_id(
        &mut self,
        item_id: i64,
        kind: &str,
        path: &str,
        new_id: &str,
    ) -> Result<String, StoreError>;
    fn review_evidence(&mut self, id: &str) -> Result<Option<EvidenceRef>, StoreError>;
    fn review_item_by_verdict_key(
        &mut self,
        key: &str,
    ) -> Result<Option<ReviewItemRow>, StoreError>;
    fn review_metrics(&mut self) -> Result<MetricsData, StoreError>;
    /// Batch rescans: the content sha256 last read from an object version.
    fn put_object_sha(
        &mut self,
        uri: &str,
        etag: &str,
        size: i64,
        sha256: &str,
        now: i64,
    ) -> Result<(), StoreError>;
    fn object_sha(
        &mut self,
        uri: &str,
        etag: &str,
        size: i64,
    ) -> Result<Option<String>, StoreError>;
    /// The newest verdict document of every recording, by recording id.
    fn latest_verdict_jsons(&mut self) -> Result<Vec<String>, StoreError>;
}

/// The store, over either backend. Safe to share between threads (calls are serialised).
pub struct Store {
    backend: Mutex<Box<dyn Backend>>,
    location: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish()
    }
}

pub(crate) fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Milliseconds since the epoch: leases, expiries and retries.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Integers are i64 in both databases; times beyond 292 million years are clamped rather than wrapped.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// `$CLASSGUARD_STORE`, else `$XDG_DATA_HOME/classguard/classguard.sqlite`, else
    /// `$HOME/.local/share/classguard/classguard.sqlite`.
    pub fn default_path() -> Result<PathBuf, StoreError> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("CLASSGUARD_STORE") {
            return Ok(p);
        }
        let data = var("XDG_DATA_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".local/share")))
            .ok_or(StoreError::NoPath)?;
        Ok(data.join("classguard").join("classguard.sqlite"))
    }

    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(&Store::default_path()?)
    }

    /// Opens (creating the file and its directory if needed) and migrates a SQLite store.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Mutex::new(Box::new(sqlite::SqliteBackend::open(path)?)),
            location: path.to_path_buf(),
        })
    }

    /// Connects to and migrates a PostgreSQL store (`postgres://user@host:port/database`).
    pub fn connect(url: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Mutex::new(Box::new(postgres::PostgresBackend::connect(url)?)),
            location: PathBuf::from(postgres::redact(url)),
        })
    }

    /// A `postgres://` or `postgresql://` URL connects to PostgreSQL; anything else is a SQLite path.
    pub fn open_any(location: &str) -> Result<Store, StoreError> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Store::connect(location)
        } else {
            Store::open(Path::new(location))
        }
    }

    /// The SQLite file, or the PostgreSQL URL without its password.
    pub fn path(&self) -> &Path {
        &self.location
    }

    fn b(&self) -> MutexGuard<'_, Box<dyn Backend>> {
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schema version this store is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.b().schema_version()
    }

    /// Stores one face embedding for a teacher (creating the teacher); returns the template id.
    pub fn enroll_template(
        &mut self,
        teacher_id: &str,
        model_id: &str,
        embedding: &[f32],
    ) -> Result<i64, StoreError> {
        if embedding.is_empty() {
            return Err(StoreError::InvalidEmbedding("empty"));
        }
        if !embedding.iter().all(|x| x.is_finite()) {
            return Err(StoreError::InvalidEmbedding("not finite"));
        }
        let blob: Vec<u8> = embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.b().enroll_template(teacher_id, model_id, &blob, now())
    }

    /// A teacher's templates for one embedding model, oldest first. Templates of another model are
    /// useless for comparison (different embedding space), hence the filter.
    pub fn templates_for(
        &self,
        teacher_id: &str,
        model_id: &str,
    ) -> Result<Vec<Vec<f32>>, StoreError> {
        self.b()
            .templates_for(teacher_id, model_id)?
            .into_iter()
            .map(|blob| {
                if blob.len() % 4 != 0 {
                    return Err(StoreError::Corrupt {
                        what: "face template",
                        detail: format!("{} bytes", blob.len()),
                    });
                }
                Ok(blob
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            })
            .collect()
    }

    /// Writes a verdict and its findings once per idempotency key. Returns `true` if it was new; a
    /// re-run of the same recording under the same policy and models changes nothing and returns `false`
    /// (the first verdict, and any review work on its findings, is kept).
    pub fn put_verdict(&mut self, verdict: &Verdict) -> Result<bool, StoreError> {
        self.put_verdict_shared(verdict)
    }

    /// [`Store::put_verdict`] for a store shared behind an `Arc` (calls are serialised inside).
    pub fn put_verdict_shared(&self, verdict: &Verdict) -> Result<bool, StoreError> {
        self.record_verdict(verdict, &[])
    }

    /// The verdict and the retention rows of its evidence files, in one transaction: a crash
    /// never leaves a verdict whose evidence would outlive its retention period or an erasure.
    /// The evidence rows are written even when the verdict was already there.
    pub fn record_verdict(
        &self,
        verdict: &Verdict,
        evidence: &[EvidenceEntry],
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(verdict)?;
        self.b().put_verdict(verdict, &json, evidence, now())
    }

    pub fn get_verdict_by_key(&self, key: &str) -> Result<Option<Verdict>, StoreError> {
        self.b()
            .get_verdict_json(key)?
            .map(|j| serde_json::from_str(&j).map_err(StoreError::from))
            .transpose()
    }

    /// The stored verdict document, as written.
    pub fn get_verdict_json(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.b().get_verdict_json(key)
    }

    /// Findings for the review page, `None` for all, in recording then time order.
    pub fn list_findings(
        &self,
        status: Option<FindingStatus>,
    ) -> Result<Vec<FindingRow>, StoreError> {
        self.b().list_findings(status)
    }

    /// Records a reviewer's judgement; `note` replaces the previous note (None keeps it).
    pub fn set_finding_status(
        &mut self,
        id: i64,
        status: FindingStatus,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        if !self.b().set_finding_status(id, status, note, now())? {
            return Err(StoreError::FindingNotFound(id));
        }
        Ok(())
    }

    /// Registers an evidence file so it is deleted at `expires_at`, or when its teacher is erased.
    pub fn add_evidence(
        &mut self,
        path: &str,
        recording_id: &str,
        teacher_id: Option<&str>,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_evidence_shared(path, recording_id, teacher_id, expires_at)
    }

    /// [`Store::add_evidence`] for a store shared behind an `Arc`.
    pub fn add_evidence_shared(
        &self,
        path: &str,
        recording_id: &str,
        teacher_id: Option<&str>,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.b()
            .add_evidence(path, recording_id, teacher_id, expires_at.unix_timestamp())
    }

    /// Right to erasure: removes the teacher, their templates and their evidence rows, and returns the
    /// evidence paths for the caller to delete (the store never touches files, so a failed delete can be
    /// retried from the returned list). Findings keep their text but lose the evidence link.
    pub fn erase_teacher(&mut self, teacher_id: &str) -> Result<Vec<PathBuf>, StoreError> {
        Ok(self
            .b()
            .erase_teacher(teacher_id)?
            .into_iter()
            .map(PathBuf::from)
            .collect())
    }

    /// Removes evidence rows that expired at or before `now` and returns their paths to delete.
    pub fn expire_evidence(&mut self, now: OffsetDateTime) -> Result<Vec<PathBuf>, StoreError> {
        Ok(self
            .b()
            .expire_evidence(now.unix_timestamp())?
            .into_iter()
            .map(PathBuf::from)
            .collect())
    }

    // ---- service mode: tokens ----

    /// `hash`: hex sha256 of the token; names are unique.
    pub fn create_token(
        &self,
        name: &str,
        hash: &str,
        webhook_url: Option<&str>,
        webhook_secret: &str,
    ) -> Result<TokenRow, StoreError> {
        self.b()
            .create_token(name, hash, webhook_url, webhook_secret, now())
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.b().list_tokens()
    }

    /// `false` if no live token has that name.
    pub fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.b().revoke_token(name)
    }

    /// A live (not revoked) token by the sha256 of its value.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        Ok(self.b().token_by_hash(hash)?.filter(|t| !t.revoked))
    }

    pub fn token_by_id(&self, id: i64) -> Result<Option<TokenRow>, StoreError> {
        self.b().token_by_id(id)
    }

    // ---- service mode: recordings ----

    /// Creates a recording, or with an idempotency key already used by this token returns that
    /// recording (`false`: not new).
    pub fn create_recording(&self, new: &NewRecording) -> Result<(RecordingRow, bool), StoreError> {
        self.b().create_recording(new, now_ms())
    }

    pub fn get_recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        self.b().get_recording(id)
    }

    pub fn set_upload_length(&self, id: &str, length: i64) -> Result<(), StoreError> {
        self.b().set_upload_length(id, length)
    }

    /// After the bytes are on disk: the new offset and when the upload now expires.
    pub fn set_bytes_received(
        &self,
        id: &str,
        bytes: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.b().set_bytes_received(id, bytes, expires_at_ms)
    }

    pub fn set_recording_state(&self, id: &str, state: RecordingState) -> Result<(), StoreError> {
        self.b().set_recording_state(id, state)
    }

    pub fn set_audit_progress(
        &self,
        id: &str,
        media_ms: i64,
        findings_json: &str,
    ) -> Result<(), StoreError> {
        self.b().set_audit_progress(id, media_ms, findings_json)
    }

    /// Links the final verdict and marks the recording audited, once: `false` if it already was.
    pub fn set_verdict_key(&self, id: &str, key: &str) -> Result<bool, StoreError> {
        self.b().set_verdict_key(id, key)
    }

    /// Uploads of this token still receiving bytes.
    pub fn count_uploading(&self, token_id: i64) -> Result<i64, StoreError> {
        self.b().count_uploading(token_id)
    }

    /// Uploads still receiving whose expiry passed.
    pub fn expired_uploads(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.b().expired_uploads(now_ms)
    }

    // ---- service mode: durable jobs ----

    /// One audit job per recording; `false` if it already has one.
    pub fn enqueue_job(&self, recording_id: &str) -> Result<bool, StoreError> {
        self.b().enqueue_job(recording_id, now_ms())
    }

    /// Takes the oldest queued job, or one whose lease ran out (its worker died), for `lease_ms`.
    pub fn claim_job(
        &self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        self.b().claim_job(worker, now_ms, lease_ms)
    }

    /// Extends the lease; `false` if the job is no longer this worker's.
    pub fn heartbeat(
        &self,
        job_id: i64,
        worker: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.b().heartbeat(job_id, worker, lease_until_ms)
    }

    /// Marks the job done (or failed with `error`); `false` if it is no longer this worker's.
    pub fn finish_job(
        &self,
        job_id: i64,
        worker: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.b().finish_job(job_id, worker, error)
    }

    /// Jobs queued or running.
    pub fn queue_depth(&self) -> Result<i64, StoreError> {
        self.b().queue_depth()
    }

    // ---- scale-out mode: the queue's outbox and dead letters ----

    /// Queued jobs not yet handed to the queue whose recording has bytes to audit (a live
    /// upload's job goes out with its first stored bytes, not at creation), oldest first.
    pub fn unpublished_jobs(&self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        self.b().unpublished_jobs(limit)
    }

    /// The queue acknowledged the job's message: the outbox does not send it again.
    pub fn mark_published(&self, job_id: i64) -> Result<(), StoreError> {
        self.b().mark_published(job_id, now_ms())
    }

    /// A worker took a delivery of the job: decides, in one transaction, whether it audits (a
    /// new attempt, leased for `lease_ms` and renewed by [`Store::heartbeat`]), leaves it to the
    /// worker that holds a live lease (the queue redelivered because an ack was missed, not
    /// because a worker died), finds it finished, or finds its attempts used up (dead letter).
    /// Attempts are counted here, not by the queue's delivery count, for that reason.
    pub fn start_attempt(
        &self,
        job_id: i64,
        worker: &str,
        lease_ms: i64,
        max_attempts: i64,
    ) -> Result<Attempt, StoreError> {
        self.b()
            .start_attempt(job_id, worker, now_ms(), lease_ms, max_attempts)
    }

    /// Hands a running attempt back unfinished and uncounted (a worker shutting down gracefully):
    /// the job is queued again with no lease, so the next delivery starts it at once. `false` if
    /// the attempt is no longer this worker's.
    pub fn release_attempt(&self, job_id: i64, worker: &str) -> Result<bool, StoreError> {
        self.b().release_attempt(job_id, worker)
    }

    /// Records the job as a dead letter and fails it; `false` if it already was one.
    pub fn dead_letter(
        &self,
        job_id: i64,
        attempts: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.b().dead_letter(job_id, attempts, reason, now_ms())
    }

    /// Every dead letter, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.b().dead_letters()
    }

    // ---- service mode: webhook deliveries ----

    /// One delivery per event id; `false` if the event was already queued.
    pub fn enqueue_delivery(
        &self,
        event_id: &str,
        token_id: i64,
        recording_id: &str,
        url: &str,
        body: &str,
    ) -> Result<bool, StoreError> {
        self.b()
            .enqueue_delivery(event_id, token_id, recording_id, url, body, now_ms())
    }

    pub fn due_deliveries(&self, now_ms: i64, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        self.b().due_deliveries(now_ms, limit)
    }

    pub fn delivery_done(&self, id: i64) -> Result<(), StoreError> {
        self.b().delivery_done(id)
    }

    pub fn delivery_failed(
        &self,
        id: i64,
        next_at_ms: Option<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        self.b().delivery_failed(id, next_at_ms, error)
    }

    // ---- batch rescans ----

    /// Remembers that the object version `(uri, etag, size)` holds content `sha256`, so a rescan
    /// can compute its verdict's idempotency key without reading it again.
    pub fn put_object_sha(
        &self,
        uri: &str,
        etag: &str,
        size: u64,
        sha256: &str,
    ) -> Result<(), StoreError> {
        self.b()
            .put_object_sha(uri, etag, to_i64(size), sha256, now())
    }

    /// The content sha256 of an object version, if it was read before.
    pub fn object_sha(
        &self,
        uri: &str,
        etag: &str,
        size: u64,
    ) -> Result<Option<String>, StoreError> {
        self.b().object_sha(uri, etag, to_i64(size))
    }

    /// The newest verdict of every recording in the store, by recording id (what `diff` compares).
    pub fn latest_verdicts(&self) -> Result<Vec<Verdict>, StoreError> {
        self.b()
            .latest_verdict_jsons()?
            .iter()
            .map(|j| serde_json::from_str(j).map_err(StoreError::from))
            .collect()
    }
}

// ---- review page (src/review): staff accounts, sessions, the queue, claims, decisions, audit ----

/// A staff account of the review page. The password is kept only as an argon2 PHC string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    /// `reviewer`, `lead` or `admin`.
    pub role: String,
    pub password_hash: String,
    /// Failed sign-ins since the last good one.
    pub failed_logins: i64,
    /// Sign-in is refused until then (0: not locked).
    pub locked_until_ms: i64,
    /// Evidence is shown unblurred and unmuted without a click (the user's own choice).
    pub reveal_default: bool,
    pub disabled: bool,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    pub role: String,
    pub password_hash: String,
}

/// After `max_failures` failed sign-ins in a row, the account is locked for `lock_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub max_failures: i64,
    pub lock_ms: i64,
}

/// `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChange {
    pub password_hash: Option<String>,
    pub role: Option<String>,
    pub disabled: Option<bool>,
    pub reveal_default: Option<bool>,
    /// Clears the failure count and any lock.
    pub unlock: bool,
}

/// A signed-in browser. The cookie value is never stored, only its sha256 (`id_hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id_hash: String,
    pub user_id: i64,
    /// Anti-CSRF token every state-changing request of this session must carry.
    pub csrf: String,
    pub now_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user_id: i64,
    pub csrf: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A verdict that has no review item yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsyncedVerdict {
    pub verdict_id: i64,
    pub recording_id: String,
    pub decision: String,
    pub created_at_ms: i64,
    pub teacher_id: Option<String>,
    /// Worst finding severity: 0 info .. 4 critical, -1 without findings.
    pub severity_rank: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReviewItem {
    pub verdict: UnsyncedVerdict,
    /// Shown in the queue (review/block, and the sampled passes).
    pub in_queue: bool,
    /// A `pass` picked at random for quality checks.
    pub qa_sample: bool,
}

/// Which queue items to list; `None` filters nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    /// `open` or `decided`.
    pub state: Option<String>,
    pub label: Option<String>,
    pub track: Option<String>,
    /// The model's decision.
    pub decision: Option<String>,
    pub teacher: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: i64,
}

/// One recording's verdict as the review queue tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewItemRow {
    pub id: i64,
    pub verdict_id: i64,
    pub recording_id: String,
    pub model_decision: String,
    pub severity_rank: i64,
    pub teacher_id: Option<String>,
    pub created_at_ms: i64,
    pub qa_sample: bool,
    /// `open` or `decided`.
    pub state: String,
    /// `pass` or `block` once decided.
    pub human_decision: Option<String>,
    /// Bumped by every decision and reopening: a decision names the version it was made on.
    pub version: i64,
    pub first_decided_at_ms: Option<i64>,
    pub decided_at_ms: Option<i64>,
    pub claimed_by: Option<i64>,
    pub claimed_by_name: Option<String>,
    pub claim_until_ms: Option<i64>,
    /// Distinct finding labels, sorted.
    pub labels: Vec<String>,
    pub findings: i64,
}

/// An item with what its page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemDetail {
    pub item: ReviewItemRow,
    pub verdict_json: String,
    /// In verdict order (the order of `findings` in the verdict JSON).
    pub findings: Vec<FindingRow>,
    /// Evidence files of the recording still registered (not expired or erased).
    pub evidence_paths: Vec<String>,
}

/// Who holds an item's lease after a claim attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimState {
    pub holder: i64,
    pub holder_name: String,
    pub until_ms: i64,
    pub mine: bool,
}

/// A confirm/dismiss (of one finding, or of the whole recording with `finding_id: None`) or a
/// reopening, made on item version `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewAct {
    pub item_id: i64,
    pub user_id: i64,
    pub finding_id: Option<i64>,
    /// `confirm`, `dismiss` or `reopen`.
    pub action: String,
    pub reason_code: String,
    pub note: Option<String>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActOutcome {
    Applied {
        version: i64,
        /// The recording's human decision when this closed the item.
        decision: Option<String>,
    },
    /// The item changed since the page was loaded.
    Stale {
        current: i64,
    },
    /// Another reviewer holds the lease (or the caller's ran out).
    NotClaimed {
        holder: Option<i64>,
    },
    /// A decision on a decided item (it must be reopened first), or a reopening of an open one.
    WrongState {
        state: String,
    },
    NoSuchItem,
    NoSuchFinding,
}

/// One entry of an item's append-only history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRow {
    pub id: i64,
    pub item_id: i64,
    pub finding_id: Option<i64>,
    pub action: String,
    pub reason_code: String,
    pub note: Option<String>,
    pub user_id: i64,
    pub user_name: String,
    pub item_version: i64,
    /// After a decision: the recording's decision if it closed the item. After a reopening:
    /// the decision it reopened.
    pub outcome: Option<String>,
    pub created_at_ms: i64,
}

/// An audit log entry to write. `detail` carries ids and codes, never names or passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub user_id: Option<i64>,
    pub action: String,
    pub item_id: Option<i64>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at_ms: i64,
    pub user_id: Option<i64>,
    pub action: String,
    pub item_id: Option<i64>,
    pub detail: String,
}

/// An evidence file as the review page serves it, by its random id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRef {
    pub id: String,
    pub item_id: i64,
    pub recording_id: String,
    /// `image` or `audio`.
    pub kind: String,
    pub path: String,
}

/// What the metrics page aggregates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsData {
    /// Every queued item.
    pub items: Vec<ReviewItemRow>,
    /// Every decision and reopening, oldest first.
    pub history: Vec<DecisionRow>,
}

/// Queue rank of a severity name (`critical` 4 .. `info` 0).
pub fn severity_rank(severity: &str) -> i64 {
    match severity {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

impl Store {
    /// Creates a staff account; names are unique.
    pub fn review_add_user(&self, new: &NewUser) -> Result<UserRow, StoreError> {
        self.b().review_add_user(new, now_ms())
    }

    pub fn review_user_by_name(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.b().review_user_by_name(name)
    }

    pub fn review_user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        self.b().review_user_by_id(id)
    }

    pub fn review_list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.b().review_list_users()
    }

    /// Counts a failed sign-in (locking the account at the limit) or clears the count after a good
    /// one, in one statement so concurrent attempts cannot under-count. Returns the updated user.
    pub fn review_login_result(
        &self,
        user_id: i64,
        ok: bool,
        now_ms: i64,
        lockout: Lockout,
    ) -> Result<Option<UserRow>, StoreError> {
        self.b().review_login_result(user_id, ok, now_ms, lockout)
    }

    /// `false` if there is no such user.
    pub fn review_update_user(&self, id: i64, change: &UserChange) -> Result<bool, StoreError> {
        self.b().review_update_user(id, change)
    }

    pub fn review_create_session(&self, s: &NewSession) -> Result<(), StoreError> {
        self.b().review_create_session(s)
    }

    /// The live session with this hash and its (enabled) user; a session idle for more than
    /// `idle_ms` or past its expiry is deleted and not returned. Touches `last_seen`.
    pub fn review_session(
        &self,
        id_hash: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>, StoreError> {
        self.b().review_session(id_hash, now_ms, idle_ms)
    }

    pub fn review_delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.b().review_delete_session(id_hash)
    }

    /// Verdicts the review queue has not seen yet, oldest first.
    pub fn review_unsynced_verdicts(&self, limit: i64) -> Result<Vec<UnsyncedVerdict>, StoreError> {
        self.b().review_unsynced_verdicts(limit)
    }

    /// One item per verdict; `false` if it already had one.
    pub fn review_insert_item(&self, item: &NewReviewItem) -> Result<bool, StoreError> {
        self.b().review_insert_item(item)
    }

    /// Queued items, worst severity first, then oldest first.
    pub fn review_queue(&self, filter: &QueueFilter) -> Result<Vec<ReviewItemRow>, StoreError> {
        self.b().review_queue(filter)
    }

    /// Queued items per finding label under `filter` (its `label` is ignored).
    pub fn review_label_counts(
        &self,
        filter: &QueueFilter,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.b().review_label_counts(filter)
    }

    pub fn review_item(&self, id: i64) -> Result<Option<ItemDetail>, StoreError> {
        self.b().review_item(id)
    }

    /// Takes (or renews) the lease of an item for `lease_ms` unless another user holds a live one;
    /// returns who holds it now. `None`: no such item.
    pub fn review_claim(
        &self,
        item_id: i64,
        user_id: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimState>, StoreError> {
        self.b().review_claim(item_id, user_id, now_ms, lease_ms)
    }

    /// Gives the lease back if this user holds it.
    pub fn review_release(&self, item_id: i64, user_id: i64) -> Result<(), StoreError> {
        self.b().review_release(item_id, user_id)
    }

    /// Applies a decision or reopening in one transaction, if the item is still at `act.version`
    /// and (for decisions) the caller holds its lease: finding statuses, the item's state and
    /// version, the history row and the audit entry change together or not at all.
    pub fn review_act(&self, act: &ReviewAct, now_ms: i64) -> Result<ActOutcome, StoreError> {
        self.b().review_act(act, now_ms)
    }

    pub fn review_history(&self, item_id: i64) -> Result<Vec<DecisionRow>, StoreError> {
        self.b().review_history(item_id)
    }

    pub fn review_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.b().review_audit(entry, now_ms())
    }

    /// The newest `limit` audit entries, newest first.
    pub fn review_audit_log(&self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.b().review_audit_log(limit)
    }

    /// The id of an evidence file of an item: `new_id` the first time, the stored one after.
    pub fn review_evidence_id(
        &self,
        item_id: i64,
        kind: &str,
        path: &str,
        new_id: &str,
    ) -> Result<String, StoreError> {
        self.b().review_evidence_id(item_id, kind, path, new_id)
    }

    /// An evidence file by id, only while it is still registered (retention and erasure win).
    pub fn review_evidence(&self, id: &str) -> Result<Option<EvidenceRef>, StoreError> {
        self.b().review_evidence(id)
    }

    /// The review item of the verdict with this idempotency key.
    pub fn review_item_by_verdict_key(
        &self,
        key: &str,
    ) -> Result<Option<ReviewItemRow>, StoreError> {
        self.b().review_item_by_verdict_key(key)
    }

    pub fn review_metrics(&self) -> Result<MetricsData, StoreError> {
        self.b().review_metrics()
    }
}
