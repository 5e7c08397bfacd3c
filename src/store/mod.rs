//! The local store: enrolled face templates, verdicts, review state of findings, and the evidence files
//! that must be deleted on schedule or on request.
//!
//! One SQLite file in WAL mode, so a review UI can read while the auditor writes, and several auditor
//! processes can share it: every write is one `BEGIN IMMEDIATE` transaction (the write lock is taken up
//! front, so two writers queue on `busy_timeout` instead of failing on a lock upgrade).
//!
//! Privacy: templates are embeddings only, never photos; evidence files are tracked with an expiry so
//! that [`Store::expire_evidence`] and [`Store::erase_teacher`] can say which files to delete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;

use crate::verdict::Verdict;

/// Schema migrations; `PRAGMA user_version` is the number applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE teachers (
        id          TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE face_templates (
        id          INTEGER PRIMARY KEY,
        teacher_id  TEXT NOT NULL REFERENCES teachers(id) ON DELETE CASCADE,
        model_id    TEXT NOT NULL,
        embedding   BLOB NOT NULL,          -- f32 little-endian
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX face_templates_teacher ON face_templates(teacher_id, model_id);
    CREATE TABLE verdicts (
        id               INTEGER PRIMARY KEY,
        idempotency_key  TEXT NOT NULL UNIQUE,
        recording_id     TEXT NOT NULL,
        sha256           TEXT NOT NULL,
        decision         TEXT NOT NULL,
        verdict_json     TEXT NOT NULL,
        created_at       INTEGER NOT NULL
    );
    CREATE INDEX verdicts_recording ON verdicts(recording_id);
    CREATE TABLE findings (
        id             INTEGER PRIMARY KEY,
        verdict_id     INTEGER NOT NULL REFERENCES verdicts(id) ON DELETE CASCADE,
        recording_id   TEXT NOT NULL,
        label          TEXT NOT NULL,
        severity       TEXT NOT NULL,
        track          TEXT NOT NULL,
        start_ms       INTEGER NOT NULL,
        end_ms         INTEGER NOT NULL,
        rule_id        TEXT NOT NULL,
        reason         TEXT NOT NULL,
        status         TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'confirmed', 'dismissed')),
        reviewer_note  TEXT,
        evidence_path  TEXT,
        updated_at     INTEGER NOT NULL
    );
    CREATE INDEX findings_status ON findings(status, recording_id);
    CREATE INDEX findings_evidence ON findings(evidence_path);
    CREATE TABLE evidence (
        path          TEXT PRIMARY KEY,
        recording_id  TEXT NOT NULL,
        teacher_id    TEXT,
        expires_at    INTEGER NOT NULL
    );
    CREATE INDEX evidence_expires ON evidence(expires_at);
    CREATE INDEX evidence_teacher ON evidence(teacher_id);
    "#,
];

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("verdict JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("finding {0} not found")]
    FindingNotFound(i64),
    #[error("invalid embedding: {0}")]
    InvalidEmbedding(&'static str),
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
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

    fn parse(s: &str) -> Result<Self, StoreError> {
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

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn now() -> i64 {
    unix(OffsetDateTime::now_utc())
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

    /// Opens (creating the file and its directory if needed) and migrates the schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Switching to WAL needs a moment of exclusive access. SQLite returns SQLITE_BUSY at once,
        // without calling the busy handler, when a concurrent opener is switching too or running
        // WAL recovery, so those steps retry until the busy timeout.
        let mode: String =
            retry_busy(|| conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)))
                .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "store is not in WAL mode");
        }
        retry_busy(|| conn.pragma_update(None, "synchronous", "NORMAL")).map_err(open_err)?;
        retry_busy(|| conn.pragma_update(None, "foreign_keys", "ON")).map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version this store is at.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        // Re-read inside the write transaction: another process may have migrated meanwhile.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
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
        let t = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO teachers (id, created_at) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
            params![teacher_id, t],
        )?;
        tx.execute(
            "INSERT INTO face_templates (teacher_id, model_id, embedding, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![teacher_id, model_id, blob, t],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// A teacher's templates for one embedding model, oldest first. Templates of another model are
    /// useless for comparison (different embedding space), hence the filter.
    pub fn templates_for(
        &self,
        teacher_id: &str,
        model_id: &str,
    ) -> Result<Vec<Vec<f32>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT embedding FROM face_templates WHERE teacher_id = ?1 AND model_id = ?2 ORDER BY id")?;
        let rows = stmt.query_map(params![teacher_id, model_id], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|blob| {
            let blob = blob?;
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
        let key = verdict.idempotency_key();
        let json = serde_json::to_string(verdict)?;
        let t = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT INTO verdicts (idempotency_key, recording_id, sha256, decision, verdict_json, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(idempotency_key) DO NOTHING",
            params![key, verdict.recording.id, verdict.recording.sha256, verdict.decision.as_str(), json, t],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        let verdict_id = tx.last_insert_rowid();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO findings (verdict_id, recording_id, label, severity, track, start_ms, end_ms, rule_id,
                                       reason, evidence_path, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for f in &verdict.findings {
                stmt.execute(params![
                    verdict_id,
                    verdict.recording.id,
                    f.label.as_str(),
                    f.severity.as_str(),
                    f.track.as_str(),
                    to_i64(f.start_ms),
                    to_i64(f.end_ms),
                    f.rule_id,
                    f.reason,
                    f.evidence.primary_path(),
                    t,
                ])?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    pub fn get_verdict_by_key(&self, key: &str) -> Result<Option<Verdict>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT verdict_json FROM verdicts WHERE idempotency_key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| serde_json::from_str(&j).map_err(StoreError::from))
            .transpose()
    }

    /// Findings for the review page, `None` for all, in recording then time order.
    pub fn list_findings(
        &self,
        status: Option<FindingStatus>,
    ) -> Result<Vec<FindingRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, recording_id, label, severity, track, start_ms, end_ms, rule_id, reason, status,
                    reviewer_note, evidence_path
             FROM findings WHERE ?1 IS NULL OR status = ?1 ORDER BY recording_id, start_ms, id",
        )?;
        let rows = stmt.query_map([status.map(FindingStatus::as_str)], |r| {
            Ok((
                FindingRow {
                    id: r.get(0)?,
                    recording_id: r.get(1)?,
                    label: r.get(2)?,
                    severity: r.get(3)?,
                    track: r.get(4)?,
                    start_ms: r.get::<_, i64>(5)?.max(0) as u64,
                    end_ms: r.get::<_, i64>(6)?.max(0) as u64,
                    rule_id: r.get(7)?,
                    reason: r.get(8)?,
                    status: FindingStatus::Open,
                    reviewer_note: r.get(10)?,
                    evidence_path: r.get(11)?,
                },
                r.get::<_, String>(9)?,
            ))
        })?;
        rows.map(|row| {
            let (mut f, status) = row?;
            f.status = FindingStatus::parse(&status)?;
            Ok(f)
        })
        .collect()
    }

    /// Records a reviewer's judgement; `note` replaces the previous note (None keeps it).
    pub fn set_finding_status(
        &mut self,
        id: i64,
        status: FindingStatus,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE findings SET status = ?2, reviewer_note = COALESCE(?3, reviewer_note), updated_at = ?4 WHERE id = ?1",
            params![id, status.as_str(), note, now()],
        )?;
        if n == 0 {
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
        self.conn.execute(
            "INSERT INTO evidence (path, recording_id, teacher_id, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(path) DO UPDATE SET recording_id = excluded.recording_id,
                 teacher_id = excluded.teacher_id, expires_at = excluded.expires_at",
            params![path, recording_id, teacher_id, unix(expires_at)],
        )?;
        Ok(())
    }

    /// Right to erasure: removes the teacher, their templates and their evidence rows, and returns the
    /// evidence paths for the caller to delete (the store never touches files, so a failed delete can be
    /// retried from the returned list). Findings keep their text but lose the evidence link.
    pub fn erase_teacher(&mut self, teacher_id: &str) -> Result<Vec<PathBuf>, StoreError> {
        self.remove_evidence("teacher_id = ?1", params![teacher_id], |tx| {
            tx.execute(
                "DELETE FROM face_templates WHERE teacher_id = ?1",
                [teacher_id],
            )?;
            tx.execute("DELETE FROM teachers WHERE id = ?1", [teacher_id])?;
            Ok(())
        })
    }

    /// Removes evidence rows that expired at or before `now` and returns their paths to delete.
    pub fn expire_evidence(&mut self, now: OffsetDateTime) -> Result<Vec<PathBuf>, StoreError> {
        self.remove_evidence("expires_at <= ?1", params![unix(now)], |_| Ok(()))
    }

    fn remove_evidence(
        &mut self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
        also: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), StoreError>,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let paths: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT path FROM evidence WHERE {filter} ORDER BY path"
            ))?;
            let rows = stmt.query_map(args, |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        {
            let mut unlink = tx.prepare_cached(
                "UPDATE findings SET evidence_path = NULL WHERE evidence_path = ?1",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM evidence WHERE path = ?1")?;
            for p in &paths {
                unlink.execute([p])?;
                delete.execute([p])?;
            }
        }
        also(&tx)?;
        tx.commit()?;
        Ok(paths.into_iter().map(PathBuf::from).collect())
    }
}

/// SQLite integers are i64; times beyond 292 million years are clamped rather than wrapped.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Runs `f` again while SQLite reports the database busy or locked, up to [`BUSY_TIMEOUT`].
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}
