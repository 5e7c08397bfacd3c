//! SQLite backend: one file in WAL mode, so a review UI can read while the auditor writes, and
//! several auditor processes can share it: every write is one `BEGIN IMMEDIATE` transaction (the
//! write lock is taken up front, so two writers queue on `busy_timeout` instead of failing on a lock
//! upgrade).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{
    to_i64, Backend, DeliveryRow, FindingRow, FindingStatus, JobRow, NewRecording, RecordingRow,
    RecordingState, StoreError, TokenRow,
};
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
    // 2: service mode: tokens, uploaded recordings, durable audit jobs, webhook deliveries.
    r#"
    CREATE TABLE tokens (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        hash            TEXT NOT NULL UNIQUE,   -- hex sha256 of the token; the token is never stored
        webhook_url     TEXT,
        webhook_secret  TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        revoked         INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE recordings (
        id                TEXT PRIMARY KEY,
        token_id          INTEGER NOT NULL REFERENCES tokens(id),
        idempotency_key   TEXT,
        state             TEXT NOT NULL,
        upload_length     INTEGER,
        bytes_received    INTEGER NOT NULL DEFAULT 0,
        media_ms_audited  INTEGER NOT NULL DEFAULT 0,
        findings_json     TEXT NOT NULL DEFAULT '[]',
        session_id        TEXT,
        role              TEXT,
        teacher_id        TEXT,
        verdict_key       TEXT,
        created_at_ms     INTEGER NOT NULL,
        expires_at_ms     INTEGER NOT NULL,
        UNIQUE (token_id, idempotency_key)
    );
    CREATE INDEX recordings_state ON recordings(state, expires_at_ms);
    CREATE TABLE jobs (
        id              INTEGER PRIMARY KEY,
        recording_id    TEXT NOT NULL UNIQUE REFERENCES recordings(id) ON DELETE CASCADE,
        state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        worker          TEXT,
        lease_until_ms  INTEGER,
        error           TEXT,
        created_at_ms   INTEGER NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state, lease_until_ms);
    CREATE TABLE webhook_deliveries (
        id              INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL UNIQUE,
        token_id        INTEGER NOT NULL,
        recording_id    TEXT NOT NULL,
        url             TEXT NOT NULL,
        body            TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_at_ms      INTEGER NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX webhook_due ON webhook_deliveries(state, next_at_ms);
    "#,
    // 3: batch rescans: which content an object version holds, so a rescan can skip an object
    // without reading it. Keyed by the version as listed (URI, ETag, size).
    r#"
    CREATE TABLE object_hashes (
        uri      TEXT NOT NULL,
        etag     TEXT NOT NULL,
        size     INTEGER NOT NULL,
        sha256   TEXT NOT NULL,
        seen_at  INTEGER NOT NULL,
        PRIMARY KEY (uri, etag, size)
    );
    "#,
];

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SqliteBackend {
    conn: Connection,
}

const RECORDING_COLUMNS: &str = "id, token_id, idempotency_key, state, upload_length, bytes_received,
    media_ms_audited, findings_json, session_id, role, teacher_id, verdict_key, created_at_ms, expires_at_ms";

fn recording_row(r: &Row<'_>) -> rusqlite::Result<(RecordingRow, String)> {
    Ok((
        RecordingRow {
            id: r.get(0)?,
            token_id: r.get(1)?,
            idempotency_key: r.get(2)?,
            state: RecordingState::Uploading,
            upload_length: r.get(4)?,
            bytes_received: r.get(5)?,
            media_ms_audited: r.get(6)?,
            findings_json: r.get(7)?,
            session_id: r.get(8)?,
            role: r.get(9)?,
            teacher_id: r.get(10)?,
            verdict_key: r.get(11)?,
            created_at_ms: r.get(12)?,
            expires_at_ms: r.get(13)?,
        },
        r.get(3)?,
    ))
}

fn with_state((mut row, state): (RecordingRow, String)) -> Result<RecordingRow, StoreError> {
    row.state = RecordingState::parse(&state)?;
    Ok(row)
}

const TOKEN_COLUMNS: &str = "id, name, hash, webhook_url, webhook_secret, created_at, revoked";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        hash: r.get(2)?,
        webhook_url: r.get(3)?,
        webhook_secret: r.get(4)?,
        created_at: r.get(5)?,
        revoked: r.get::<_, i64>(6)? != 0,
    })
}

impl SqliteBackend {
    /// Opens (creating the file and its directory if needed) and migrates the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        let mut b = SqliteBackend { conn };
        b.migrate()?;
        Ok(b)
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

    fn remove_evidence(
        &mut self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
        also: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), StoreError>,
    ) -> Result<Vec<String>, StoreError> {
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
        Ok(paths)
    }

    fn exec(&mut self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<usize, StoreError> {
        Ok(self.conn.prepare_cached(sql)?.execute(args)?)
    }
}

impl Backend for SqliteBackend {
    fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn enroll_template(
        &mut self,
        teacher_id: &str,
        model_id: &str,
        blob: &[u8],
        t: i64,
    ) -> Result<i64, StoreError> {
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

    fn templates_for(
        &mut self,
        teacher_id: &str,
        model_id: &str,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT embedding FROM face_templates WHERE teacher_id = ?1 AND model_id = ?2 ORDER BY id")?;
        let rows = stmt.query_map(params![teacher_id, model_id], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_verdict(&mut self, verdict: &Verdict, json: &str, t: i64) -> Result<bool, StoreError> {
        let key = verdict.idempotency_key();
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

    fn get_verdict_json(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT verdict_json FROM verdicts WHERE idempotency_key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn list_findings(
        &mut self,
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

    fn set_finding_status(
        &mut self,
        id: i64,
        status: FindingStatus,
        note: Option<&str>,
        t: i64,
    ) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE findings SET status = ?2, reviewer_note = COALESCE(?3, reviewer_note), updated_at = ?4 WHERE id = ?1",
            params![id, status.as_str(), note, t],
        )?;
        Ok(n > 0)
    }

    fn add_evidence(
        &mut self,
        path: &str,
        recording_id: &str,
        teacher_id: Option<&str>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO evidence (path, recording_id, teacher_id, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(path) DO UPDATE SET recording_id = excluded.recording_id,
                 teacher_id = excluded.teacher_id, expires_at = excluded.expires_at",
            params![path, recording_id, teacher_id, expires_at],
        )?;
        Ok(())
    }

    fn erase_teacher(&mut self, teacher_id: &str) -> Result<Vec<String>, StoreError> {
        self.remove_evidence("teacher_id = ?1", params![teacher_id], |tx| {
            tx.execute(
                "DELETE FROM face_templates WHERE teacher_id = ?1",
                [teacher_id],
            )?;
            tx.execute("DELETE FROM teachers WHERE id = ?1", [teacher_id])?;
            Ok(())
        })
    }

    fn expire_evidence(&mut self, now: i64) -> Result<Vec<String>, StoreError> {
        self.remove_evidence("expires_at <= ?1", params![now], |_| Ok(()))
    }

    fn create_token(
        &mut self,
        name: &str,
        hash: &str,
        webhook_url: Option<&str>,
        webhook_secret: &str,
        now: i64,
    ) -> Result<TokenRow, StoreError> {
        let r = self.conn.query_row(
            &format!(
                "INSERT INTO tokens (name, hash, webhook_url, webhook_secret, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING {TOKEN_COLUMNS}"
            ),
            params![name, hash, webhook_url, webhook_secret, now],
            token_row,
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::TokenExists(name.to_string()))
            }
            r => Ok(r?),
        }
    }

    fn list_tokens(&mut self) -> Result<Vec<TokenRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"))?;
        let rows = stmt.query_map([], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_token(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE tokens SET revoked = 1 WHERE name = ?1 AND revoked = 0",
            params![name],
        )? > 0)
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
                [hash],
                token_row,
            )
            .optional()?)
    }

    fn token_by_id(&mut self, id: i64) -> Result<Option<TokenRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                token_row,
            )
            .optional()?)
    }

    fn create_recording(
        &mut self,
        new: &NewRecording,
        now_ms: i64,
    ) -> Result<(RecordingRow, bool), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(key) = &new.idempotency_key {
            let existing = tx
                .query_row(
                    &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE token_id = ?1 AND idempotency_key = ?2"),
                    params![new.token_id, key],
                    recording_row,
                )
                .optional()?;
            if let Some(row) = existing {
                return Ok((with_state(row)?, false));
            }
        }
        let row = tx.query_row(
            &format!(
                "INSERT INTO recordings (id, token_id, idempotency_key, state, upload_length, session_id, role,
                                         teacher_id, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, 'uploading', ?4, ?5, ?6, ?7, ?8, ?9) RETURNING {RECORDING_COLUMNS}"
            ),
            params![
                new.id,
                new.token_id,
                new.idempotency_key,
                new.upload_length,
                new.session_id,
                new.role,
                new.teacher_id,
                now_ms,
                new.expires_at_ms
            ],
            recording_row,
        )?;
        tx.commit()?;
        Ok((with_state(row)?, true))
    }

    fn get_recording(&mut self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = ?1"),
                [id],
                recording_row,
            )
            .optional()?
            .map(with_state)
            .transpose()
    }

    fn set_upload_length(&mut self, id: &str, length: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE recordings SET upload_length = ?2 WHERE id = ?1",
            params![id, length],
        )?;
        Ok(())
    }

    fn set_bytes_received(
        &mut self,
        id: &str,
        bytes: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE recordings SET bytes_received = ?2, expires_at_ms = ?3 WHERE id = ?1",
            params![id, bytes, expires_at_ms],
        )?;
        Ok(())
    }

    fn set_recording_state(&mut self, id: &str, state: RecordingState) -> Result<(), StoreError> {
        // An audited recording stays audited: the verdict is final.
        self.exec(
            "UPDATE recordings SET state = ?2 WHERE id = ?1 AND state <> 'audited'",
            params![id, state.as_str()],
        )?;
        Ok(())
    }

    fn set_audit_progress(
        &mut self,
        id: &str,
        media_ms: i64,
        findings_json: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE recordings SET media_ms_audited = ?2, findings_json = ?3 WHERE id = ?1",
            params![id, media_ms, findings_json],
        )?;
        Ok(())
    }

    fn set_verdict_key(&mut self, id: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE recordings SET verdict_key = ?2, state = 'audited' WHERE id = ?1 AND verdict_key IS NULL",
            params![id, key],
        )? > 0)
    }

    fn count_uploading(&mut self, token_id: i64) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM recordings WHERE token_id = ?1 AND state = 'uploading'",
            [token_id],
            |r| r.get(0),
        )?)
    }

    fn expired_uploads(&mut self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM recordings WHERE state = 'uploading' AND expires_at_ms <= ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([now_ms], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn enqueue_job(&mut self, recording_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.exec(
            "INSERT INTO jobs (recording_id, state, created_at_ms) VALUES (?1, 'queued', ?2)
             ON CONFLICT(recording_id) DO NOTHING",
            params![recording_id, now_ms],
        )? > 0)
    }

    fn claim_job(
        &mut self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = tx
            .query_row(
                "UPDATE jobs SET state = 'running', worker = ?1, lease_until_ms = ?2, attempts = attempts + 1
                 WHERE id = (SELECT id FROM jobs
                             WHERE state = 'queued' OR (state = 'running' AND lease_until_ms < ?3)
                             ORDER BY id LIMIT 1)
                 RETURNING id, recording_id, attempts",
                params![worker, now_ms + lease_ms, now_ms],
                |r| {
                    Ok(JobRow {
                        id: r.get(0)?,
                        recording_id: r.get(1)?,
                        attempts: r.get(2)?,
                    })
                },
            )
            .optional()?;
        tx.commit()?;
        Ok(job)
    }

    fn heartbeat(
        &mut self,
        job_id: i64,
        worker: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE jobs SET lease_until_ms = ?3 WHERE id = ?1 AND worker = ?2 AND state = 'running'",
            params![job_id, worker, lease_until_ms],
        )? > 0)
    }

    fn finish_job(
        &mut self,
        job_id: i64,
        worker: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let state = if error.is_some() { "failed" } else { "done" };
        Ok(self.exec(
            "UPDATE jobs SET state = ?3, error = ?4, lease_until_ms = NULL
             WHERE id = ?1 AND worker = ?2 AND state = 'running'",
            params![job_id, worker, state, error],
        )? > 0)
    }

    fn queue_depth(&mut self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')",
            [],
            |r| r.get(0),
        )?)
    }

    fn enqueue_delivery(
        &mut self,
        event_id: &str,
        token_id: i64,
        recording_id: &str,
        url: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.exec(
            "INSERT INTO webhook_deliveries (event_id, token_id, recording_id, url, body, state, next_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6) ON CONFLICT(event_id) DO NOTHING",
            params![event_id, token_id, recording_id, url, body, now_ms],
        )? > 0)
    }

    fn due_deliveries(&mut self, now_ms: i64, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, event_id, token_id, recording_id, url, body, attempts FROM webhook_deliveries
             WHERE state = 'pending' AND next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms, limit], |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                event_id: r.get(1)?,
                token_id: r.get(2)?,
                recording_id: r.get(3)?,
                url: r.get(4)?,
                body: r.get(5)?,
                attempts: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delivery_done(&mut self, id: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    fn delivery_failed(
        &mut self,
        id: i64,
        next_at_ms: Option<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?3,
                 state = CASE WHEN ?2 IS NULL THEN 'failed' ELSE 'pending' END,
                 next_at_ms = COALESCE(?2, next_at_ms)
             WHERE id = ?1",
            params![id, next_at_ms, error],
        )?;
        Ok(())
    }

    fn put_object_sha(
        &mut self,
        uri: &str,
        etag: &str,
        size: i64,
        sha256: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO object_hashes (uri, etag, size, sha256, seen_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(uri, etag, size) DO UPDATE SET sha256 = excluded.sha256, seen_at = excluded.seen_at",
            params![uri, etag, size, sha256, now],
        )?;
        Ok(())
    }

    fn object_sha(
        &mut self,
        uri: &str,
        etag: &str,
        size: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT sha256 FROM object_hashes WHERE uri = ?1 AND etag = ?2 AND size = ?3",
            )?
            .query_row(params![uri, etag, size], |r| r.get(0))
            .optional()?)
    }

    fn latest_verdict_jsons(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT verdict_json FROM verdicts v
             WHERE id = (SELECT MAX(id) FROM verdicts w WHERE w.recording_id = v.recording_id)
             ORDER BY recording_id",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
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
