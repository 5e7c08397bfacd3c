//! SQLite backend: one file in WAL mode, so a review UI can read while the auditor writes, and
//! several auditor processes can share it: every write is one `BEGIN IMMEDIATE` transaction (the
//! write lock is taken up front, so two writers queue on `busy_timeout` instead of failing on a lock
//! upgrade).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::review_sql::{act_audit, finding_status, next_state, refuse, ItemLock};
use super::{
    to_i64, Attempt, Backend, DeadLetterRow, DeliveryRow, EvidenceEntry, FindingRow, FindingStatus,
    JobRow, NewRecording, RecordingRow, RecordingState, StoreError, TokenRow,
};
use super::{
    ActOutcome, AuditEntry, AuditRow, ClaimState, DecisionRow, EvidenceRef, ItemDetail, Lockout,
    MetricsData, NewReviewItem, NewSession, NewUser, QueueFilter, ReviewAct, ReviewItemRow,
    SessionRow, UnsyncedVerdict, UserChange, UserRow,
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
    // 3: review page: staff accounts, sessions, queue items with leases and versions, the
    // append-only decision history and audit log, evidence ids.
    r#"
    CREATE TABLE review_users (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        role             TEXT NOT NULL CHECK (role IN ('reviewer', 'lead', 'admin')),
        password_hash    TEXT NOT NULL,          -- argon2id PHC string; the password is never stored
        failed_logins    INTEGER NOT NULL DEFAULT 0,
        locked_until_ms  INTEGER NOT NULL DEFAULT 0,
        reveal_default   INTEGER NOT NULL DEFAULT 0,
        disabled         INTEGER NOT NULL DEFAULT 0,
        created_at_ms    INTEGER NOT NULL
    );
    CREATE TABLE review_sessions (
        id_hash        TEXT PRIMARY KEY,         -- sha256 of the cookie value
        user_id        INTEGER NOT NULL REFERENCES review_users(id) ON DELETE CASCADE,
        csrf           TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL,
        last_seen_ms   INTEGER NOT NULL,
        expires_at_ms  INTEGER NOT NULL
    );
    CREATE INDEX review_sessions_user ON review_sessions(user_id);
    CREATE TABLE review_items (
        id                   INTEGER PRIMARY KEY,
        verdict_id           INTEGER NOT NULL UNIQUE REFERENCES verdicts(id),
        recording_id         TEXT NOT NULL,
        model_decision       TEXT NOT NULL,
        severity_rank        INTEGER NOT NULL,
        teacher_id           TEXT,
        created_at_ms        INTEGER NOT NULL,
        in_queue             INTEGER NOT NULL,
        qa_sample            INTEGER NOT NULL DEFAULT 0,
        state                TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'decided')),
        human_decision       TEXT,
        version              INTEGER NOT NULL DEFAULT 1,
        first_decided_at_ms  INTEGER,
        decided_at_ms        INTEGER,
        claimed_by           INTEGER REFERENCES review_users(id),
        claim_until_ms       INTEGER
    );
    CREATE INDEX review_items_queue ON review_items(in_queue, state, severity_rank, created_at_ms);
    CREATE INDEX review_items_recording ON review_items(recording_id);
    CREATE TABLE review_decisions (
        id             INTEGER PRIMARY KEY,
        item_id        INTEGER NOT NULL REFERENCES review_items(id),
        finding_id     INTEGER,
        action         TEXT NOT NULL CHECK (action IN ('confirm', 'dismiss', 'reopen')),
        reason_code    TEXT NOT NULL,
        note           TEXT,
        user_id        INTEGER NOT NULL REFERENCES review_users(id),
        item_version   INTEGER NOT NULL,
        outcome        TEXT,
        created_at_ms  INTEGER NOT NULL
    );
    CREATE INDEX review_decisions_item ON review_decisions(item_id, id);
    CREATE TABLE review_audit (
        id       INTEGER PRIMARY KEY,
        at_ms    INTEGER NOT NULL,
        user_id  INTEGER,
        action   TEXT NOT NULL,
        item_id  INTEGER,
        detail   TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE review_evidence (
        id       TEXT PRIMARY KEY,               -- random: evidence is never at a guessable URL
        item_id  INTEGER NOT NULL REFERENCES review_items(id),
        kind     TEXT NOT NULL CHECK (kind IN ('image', 'audio')),
        path     TEXT NOT NULL,
        UNIQUE (item_id, path)
    );
    CREATE TRIGGER review_decisions_no_update BEFORE UPDATE ON review_decisions
        BEGIN SELECT RAISE(ABORT, 'review_decisions is append-only'); END;
    CREATE TRIGGER review_decisions_no_delete BEFORE DELETE ON review_decisions
        BEGIN SELECT RAISE(ABORT, 'review_decisions is append-only'); END;
    CREATE TRIGGER review_audit_no_update BEFORE UPDATE ON review_audit
        BEGIN SELECT RAISE(ABORT, 'review_audit is append-only'); END;
    CREATE TRIGGER review_audit_no_delete BEFORE DELETE ON review_audit
        BEGIN SELECT RAISE(ABORT, 'review_audit is append-only'); END;
    "#,
    // 4: batch rescans: which content an object version holds, so a rescan can skip an object
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
    // 5: scale-out: the outbox of jobs handed to the queue, and jobs that failed every attempt.
    r#"
    ALTER TABLE jobs ADD COLUMN published_at_ms INTEGER;
    CREATE TABLE dead_letters (
        job_id        INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        recording_id  TEXT NOT NULL,
        attempts      INTEGER NOT NULL,
        reason        TEXT NOT NULL,
        at_ms         INTEGER NOT NULL
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

    fn put_verdict(
        &mut self,
        verdict: &Verdict,
        json: &str,
        evidence: &[EvidenceEntry],
        t: i64,
    ) -> Result<bool, StoreError> {
        let key = verdict.idempotency_key();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Evidence rows first, whether or not the verdict is new: a re-run after a crash between
        // writing the files and this commit registers the files it wrote again.
        for e in evidence {
            tx.execute(
                "INSERT INTO evidence (path, recording_id, teacher_id, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(path) DO UPDATE SET recording_id = excluded.recording_id,
                     teacher_id = excluded.teacher_id, expires_at = excluded.expires_at",
                params![e.path, verdict.recording.id, e.teacher_id, e.expires_at],
            )?;
        }
        let inserted = tx.execute(
            "INSERT INTO verdicts (idempotency_key, recording_id, sha256, decision, verdict_json, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(idempotency_key) DO NOTHING",
            params![key, verdict.recording.id, verdict.recording.sha256, verdict.decision.as_str(), json, t],
        )?;
        if inserted == 0 {
            tx.commit()?;
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
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {FINDING_COLUMNS} FROM findings WHERE ?1 IS NULL OR status = ?1
             ORDER BY recording_id, start_ms, id"
        ))?;
        let rows = stmt.query_map([status.map(FindingStatus::as_str)], finding_row)?;
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

    fn unpublished_jobs(&mut self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT j.id, j.recording_id, j.attempts FROM jobs j JOIN recordings r ON r.id = j.recording_id
             WHERE j.state = 'queued' AND j.published_at_ms IS NULL
               AND (r.bytes_received > 0 OR r.state <> 'uploading')
             ORDER BY j.id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(JobRow {
                id: r.get(0)?,
                recording_id: r.get(1)?,
                attempts: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn mark_published(&mut self, job_id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE jobs SET published_at_ms = ?2 WHERE id = ?1 AND published_at_ms IS NULL",
            params![job_id, now_ms],
        )?;
        Ok(())
    }

    fn start_attempt(
        &mut self,
        job_id: i64,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        max_attempts: i64,
    ) -> Result<Attempt, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT state, attempts, lease_until_ms FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((state, attempts, lease)) = row else {
            return Ok(Attempt::Finished);
        };
        let decision = match Attempt::decide(&state, attempts, lease, now_ms, max_attempts) {
            Some(d) => d,
            None => {
                tx.execute(
                    "UPDATE jobs SET state = 'running', worker = ?2, attempts = attempts + 1,
                         lease_until_ms = ?3 WHERE id = ?1",
                    params![job_id, worker, now_ms + lease_ms],
                )?;
                Attempt::Started(attempts + 1)
            }
        };
        tx.commit()?;
        Ok(decision)
    }

    fn release_attempt(&mut self, job_id: i64, worker: &str) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), worker = NULL,
                 lease_until_ms = NULL WHERE id = ?1 AND worker = ?2 AND state = 'running'",
            params![job_id, worker],
        )? > 0)
    }

    fn dead_letter(
        &mut self,
        job_id: i64,
        attempts: i64,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let added = tx.execute(
            "INSERT INTO dead_letters (job_id, recording_id, attempts, reason, at_ms)
             SELECT id, recording_id, ?2, ?3, ?4 FROM jobs WHERE id = ?1
             ON CONFLICT (job_id) DO NOTHING",
            params![job_id, attempts, reason, now_ms],
        )? > 0;
        tx.execute(
            "UPDATE jobs SET state = 'failed', error = ?2, lease_until_ms = NULL WHERE id = ?1",
            params![job_id, reason],
        )?;
        tx.commit()?;
        Ok(added)
    }

    fn dead_letters(&mut self) -> Result<Vec<DeadLetterRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT job_id, recording_id, attempts, reason, at_ms FROM dead_letters
             ORDER BY at_ms DESC, job_id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetterRow {
                job_id: r.get(0)?,
                recording_id: r.get(1)?,
                attempts: r.get(2)?,
                reason: r.get(3)?,
                at_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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

    fn review_add_user(&mut self, new: &NewUser, now_ms: i64) -> Result<UserRow, StoreError> {
        let r = self.conn.query_row(
            &format!(
                "INSERT INTO review_users (name, role, password_hash, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4) RETURNING {USER_COLUMNS}"
            ),
            params![new.name, new.role, new.password_hash, now_ms],
            user_row,
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, Some(m)))
                if e.code == rusqlite::ErrorCode::ConstraintViolation && m.contains("UNIQUE") =>
            {
                Err(StoreError::UserExists(new.name.clone()))
            }
            r => Ok(r?),
        }
    }

    fn review_user_by_name(&mut self, name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM review_users WHERE name = ?1"),
                [name],
                user_row,
            )
            .optional()?)
    }

    fn review_user_by_id(&mut self, id: i64) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM review_users WHERE id = ?1"),
                [id],
                user_row,
            )
            .optional()?)
    }

    fn review_list_users(&mut self) -> Result<Vec<UserRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM review_users ORDER BY name"
        ))?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn review_login_result(
        &mut self,
        user_id: i64,
        ok: bool,
        now_ms: i64,
        lockout: Lockout,
    ) -> Result<Option<UserRow>, StoreError> {
        let r = if ok {
            self.conn.query_row(
                &format!(
                    "UPDATE review_users SET failed_logins = 0, locked_until_ms = 0
                     WHERE id = ?1 RETURNING {USER_COLUMNS}"
                ),
                params![user_id],
                user_row,
            )
        } else {
            self.conn.query_row(
                &format!(
                    "UPDATE review_users SET failed_logins = failed_logins + 1,
                         locked_until_ms = CASE WHEN failed_logins + 1 >= ?2 THEN ?3 ELSE locked_until_ms END
                     WHERE id = ?1 RETURNING {USER_COLUMNS}"
                ),
                params![user_id, lockout.max_failures, now_ms + lockout.lock_ms],
                user_row,
            )
        };
        Ok(r.optional()?)
    }

    fn review_update_user(&mut self, id: i64, c: &UserChange) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE review_users SET
                 password_hash = COALESCE(?2, password_hash),
                 role = COALESCE(?3, role),
                 disabled = COALESCE(?4, disabled),
                 reveal_default = COALESCE(?5, reveal_default),
                 failed_logins = CASE WHEN ?6 THEN 0 ELSE failed_logins END,
                 locked_until_ms = CASE WHEN ?6 THEN 0 ELSE locked_until_ms END
             WHERE id = ?1",
            params![
                id,
                c.password_hash,
                c.role,
                c.disabled.map(i64::from),
                c.reveal_default.map(i64::from),
                c.unlock
            ],
        )? > 0)
    }

    fn review_create_session(&mut self, s: &NewSession) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO review_sessions (id_hash, user_id, csrf, created_at_ms, last_seen_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            params![s.id_hash, s.user_id, s.csrf, s.now_ms, s.expires_at_ms],
        )?;
        Ok(())
    }

    fn review_session(
        &mut self,
        id_hash: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>, StoreError> {
        let found = self
            .conn
            .query_row(
                &format!(
                    "SELECT s.user_id, s.csrf, s.created_at_ms, s.expires_at_ms, s.last_seen_ms, {}
                     FROM review_sessions s JOIN review_users u ON u.id = s.user_id WHERE s.id_hash = ?1",
                    prefixed_user_columns("u")
                ),
                [id_hash],
                |r| {
                    Ok((
                        SessionRow {
                            user_id: r.get(0)?,
                            csrf: r.get(1)?,
                            created_at_ms: r.get(2)?,
                            expires_at_ms: r.get(3)?,
                        },
                        r.get::<_, i64>(4)?,
                        user_row_at(r, 5)?,
                    ))
                },
            )
            .optional()?;
        let Some((session, last_seen, user)) = found else {
            return Ok(None);
        };
        if now_ms >= session.expires_at_ms || now_ms - last_seen > idle_ms || user.disabled {
            self.review_delete_session(id_hash)?;
            return Ok(None);
        }
        // One write a minute at most: enough for the idle timeout.
        if now_ms - last_seen > 60_000 {
            self.exec(
                "UPDATE review_sessions SET last_seen_ms = ?2 WHERE id_hash = ?1",
                params![id_hash, now_ms],
            )?;
        }
        Ok(Some((session, user)))
    }

    fn review_delete_session(&mut self, id_hash: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM review_sessions WHERE id_hash = ?1",
            params![id_hash],
        )?;
        Ok(())
    }

    fn review_unsynced_verdicts(&mut self, limit: i64) -> Result<Vec<UnsyncedVerdict>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT v.id, v.recording_id, v.decision, v.created_at * 1000,
                    COALESCE((SELECT r.teacher_id FROM recordings r WHERE r.id = v.recording_id),
                             (SELECT e.teacher_id FROM evidence e
                              WHERE e.recording_id = v.recording_id AND e.teacher_id IS NOT NULL LIMIT 1)),
                    COALESCE((SELECT MAX({SEVERITY_RANK}) FROM findings f WHERE f.verdict_id = v.id), -1)
             FROM verdicts v
             WHERE NOT EXISTS (SELECT 1 FROM review_items i WHERE i.verdict_id = v.id)
             ORDER BY v.id LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], |r| {
            Ok(UnsyncedVerdict {
                verdict_id: r.get(0)?,
                recording_id: r.get(1)?,
                decision: r.get(2)?,
                created_at_ms: r.get(3)?,
                teacher_id: r.get(4)?,
                severity_rank: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn review_insert_item(&mut self, item: &NewReviewItem) -> Result<bool, StoreError> {
        let v = &item.verdict;
        Ok(self.exec(
            "INSERT INTO review_items (verdict_id, recording_id, model_decision, severity_rank, teacher_id,
                                       created_at_ms, in_queue, qa_sample)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(verdict_id) DO NOTHING",
            params![
                v.verdict_id,
                v.recording_id,
                v.decision,
                v.severity_rank,
                v.teacher_id,
                v.created_at_ms,
                item.in_queue,
                item.qa_sample
            ],
        )? > 0)
    }

    fn review_queue(&mut self, f: &QueueFilter) -> Result<Vec<ReviewItemRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{ITEM_SELECT} WHERE {QUEUE_WHERE}
             ORDER BY i.severity_rank DESC, i.created_at_ms ASC, i.id ASC LIMIT ?8"
        ))?;
        let rows = stmt.query_map(
            params![f.state, f.label, f.track, f.decision, f.teacher, f.from_ms, f.to_ms, f.limit],
            item_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn review_label_counts(&mut self, f: &QueueFilter) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT l.label, COUNT(DISTINCT i.id)
             FROM review_items i JOIN findings l ON l.verdict_id = i.verdict_id
             WHERE {QUEUE_WHERE}
             GROUP BY l.label ORDER BY l.label"
        ))?;
        let none: Option<String> = None;
        let rows = stmt.query_map(
            params![f.state, none, f.track, f.decision, f.teacher, f.from_ms, f.to_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn review_item(&mut self, id: i64) -> Result<Option<ItemDetail>, StoreError> {
        let Some(item) = self
            .conn
            .query_row(&format!("{ITEM_SELECT} WHERE i.id = ?1"), [id], item_row)
            .optional()?
        else {
            return Ok(None);
        };
        let verdict_json: String = self.conn.query_row(
            "SELECT verdict_json FROM verdicts WHERE id = ?1",
            [item.verdict_id],
            |r| r.get(0),
        )?;
        let findings = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {FINDING_COLUMNS} FROM findings WHERE verdict_id = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map([item.verdict_id], finding_row)?;
            rows.map(|r| {
                let (mut f, status) = r?;
                f.status = FindingStatus::parse(&status)?;
                Ok(f)
            })
            .collect::<Result<Vec<_>, StoreError>>()?
        };
        let evidence_paths = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT path FROM evidence WHERE recording_id = ?1 ORDER BY path",
            )?;
            let rows = stmt.query_map([&item.recording_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(Some(ItemDetail {
            item,
            verdict_json,
            findings,
            evidence_paths,
        }))
    }

    fn review_claim(
        &mut self,
        item_id: i64,
        user_id: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimState>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE review_items SET claimed_by = ?2, claim_until_ms = ?4
             WHERE id = ?1 AND state = 'open'
               AND (claimed_by IS NULL OR claimed_by = ?2 OR claim_until_ms < ?3)",
            params![item_id, user_id, now_ms, now_ms + lease_ms],
        )?;
        let held = tx
            .query_row(
                "SELECT i.claimed_by, COALESCE(u.name, ''), COALESCE(i.claim_until_ms, 0)
                 FROM review_items i LEFT JOIN review_users u ON u.id = i.claimed_by WHERE i.id = ?1",
                [item_id],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()?;
        tx.commit()?;
        Ok(held.and_then(|(holder, name, until)| {
            holder.map(|h| ClaimState {
                holder: h,
                holder_name: name,
                until_ms: until,
                mine: h == user_id && until >= now_ms,
            })
        }))
    }

    fn review_release(&mut self, item_id: i64, user_id: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE review_items SET claimed_by = NULL, claim_until_ms = NULL WHERE id = ?1 AND claimed_by = ?2",
            params![item_id, user_id],
        )?;
        Ok(())
    }

    fn review_act(&mut self, act: &ReviewAct, now_ms: i64) -> Result<ActOutcome, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = tx
            .query_row(
                "SELECT state, version, claimed_by, claim_until_ms, verdict_id, human_decision
                 FROM review_items WHERE id = ?1",
                [act.item_id],
                |r| {
                    Ok(ItemLock {
                        state: r.get(0)?,
                        version: r.get(1)?,
                        claimed_by: r.get(2)?,
                        claim_until_ms: r.get(3)?,
                        verdict_id: r.get(4)?,
                        human_decision: r.get(5)?,
                    })
                },
            )
            .optional()?;
        let Some(cur) = current else {
            return Ok(ActOutcome::NoSuchItem);
        };
        if let Some(refused) = refuse(act, &cur, now_ms) {
            return Ok(refused);
        }
        if let Some(fid) = act.finding_id {
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM findings WHERE id = ?1 AND verdict_id = ?2",
                params![fid, cur.verdict_id],
                |r| r.get(0),
            )?;
            if n == 0 {
                return Ok(ActOutcome::NoSuchFinding);
            }
        }
        let t = now_ms / 1000;
        match (act.action.as_str(), act.finding_id) {
            ("reopen", _) => {
                tx.execute(
                    "UPDATE findings SET status = 'open', updated_at = ?2 WHERE verdict_id = ?1",
                    params![cur.verdict_id, t],
                )?;
            }
            (status, Some(fid)) => {
                tx.execute(
                    "UPDATE findings SET status = ?2, reviewer_note = COALESCE(?3, reviewer_note), updated_at = ?4
                     WHERE id = ?1",
                    params![fid, finding_status(status), act.note, t],
                )?;
            }
            ("confirm", None) => {
                tx.execute(
                    "UPDATE findings SET status = 'confirmed', updated_at = ?2 WHERE verdict_id = ?1 AND status = 'open'",
                    params![cur.verdict_id, t],
                )?;
            }
            (_, None) => {
                tx.execute(
                    "UPDATE findings SET status = 'dismissed', updated_at = ?2 WHERE verdict_id = ?1",
                    params![cur.verdict_id, t],
                )?;
            }
        }
        let (open, confirmed): (i64, i64) = tx.query_row(
            "SELECT COALESCE(SUM(status = 'open'), 0), COALESCE(SUM(status = 'confirmed'), 0)
             FROM findings WHERE verdict_id = ?1",
            [cur.verdict_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let next = next_state(act, &cur, open, confirmed);
        let version = cur.version + 1;
        tx.execute(
            "UPDATE review_items SET version = ?2, state = ?3, human_decision = ?4,
                 decided_at_ms = CASE WHEN ?3 = 'decided' THEN ?5 ELSE decided_at_ms END,
                 first_decided_at_ms = CASE WHEN ?3 = 'decided' THEN COALESCE(first_decided_at_ms, ?5)
                                            ELSE first_decided_at_ms END,
                 claimed_by = CASE WHEN ?3 = 'decided' THEN NULL ELSE claimed_by END,
                 claim_until_ms = CASE WHEN ?3 = 'decided' THEN NULL ELSE claim_until_ms END
             WHERE id = ?1",
            params![act.item_id, version, next.state, next.decision, now_ms],
        )?;
        tx.execute(
            "INSERT INTO review_decisions (item_id, finding_id, action, reason_code, note, user_id, item_version,
                                           outcome, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                act.item_id,
                act.finding_id,
                act.action,
                act.reason_code,
                act.note,
                act.user_id,
                act.version,
                next.outcome,
                now_ms
            ],
        )?;
        let e = act_audit(act);
        tx.execute(
            "INSERT INTO review_audit (at_ms, user_id, action, item_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms, e.user_id, e.action, e.item_id, e.detail],
        )?;
        tx.commit()?;
        Ok(ActOutcome::Applied {
            version,
            decision: next.decision,
        })
    }

    fn review_history(&mut self, item_id: i64) -> Result<Vec<DecisionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{DECISION_SELECT} WHERE d.item_id = ?1 ORDER BY d.id"
        ))?;
        let rows = stmt.query_map([item_id], decision_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn review_audit(&mut self, e: &AuditEntry, now_ms: i64) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO review_audit (at_ms, user_id, action, item_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms, e.user_id, e.action, e.item_id, e.detail],
        )?;
        Ok(())
    }

    fn review_audit_log(&mut self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at_ms, user_id, action, item_id, detail FROM review_audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                user_id: r.get(2)?,
                action: r.get(3)?,
                item_id: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn review_evidence_id(
        &mut self,
        item_id: i64,
        kind: &str,
        path: &str,
        new_id: &str,
    ) -> Result<String, StoreError> {
        self.exec(
            "INSERT INTO review_evidence (id, item_id, kind, path) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(item_id, path) DO NOTHING",
            params![new_id, item_id, kind, path],
        )?;
        Ok(self.conn.query_row(
            "SELECT id FROM review_evidence WHERE item_id = ?1 AND path = ?2",
            params![item_id, path],
            |r| r.get(0),
        )?)
    }

    fn review_evidence(&mut self, id: &str) -> Result<Option<EvidenceRef>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT re.id, re.item_id, i.recording_id, re.kind, re.path
                 FROM review_evidence re JOIN review_items i ON i.id = re.item_id
                 WHERE re.id = ?1 AND EXISTS (SELECT 1 FROM evidence e WHERE e.path = re.path)",
                [id],
                |r| {
                    Ok(EvidenceRef {
                        id: r.get(0)?,
                        item_id: r.get(1)?,
                        recording_id: r.get(2)?,
                        kind: r.get(3)?,
                        path: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn review_item_by_verdict_key(
        &mut self,
        key: &str,
    ) -> Result<Option<ReviewItemRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "{ITEM_SELECT} JOIN verdicts v ON v.id = i.verdict_id WHERE v.idempotency_key = ?1"
                ),
                [key],
                item_row,
            )
            .optional()?)
    }

    fn review_metrics(&mut self) -> Result<MetricsData, StoreError> {
        let items = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("{ITEM_SELECT} WHERE i.in_queue = 1 ORDER BY i.id"))?;
            let rows = stmt.query_map([], item_row)?;
            rows.collect::<Result<_, _>>()?
        };
        let history = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("{DECISION_SELECT} ORDER BY d.id"))?;
            let rows = stmt.query_map([], decision_row)?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(MetricsData { items, history })
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

const USER_COLUMNS: &str =
    "id, name, role, password_hash, failed_logins, locked_until_ms, reveal_default, disabled, created_at_ms";

fn prefixed_user_columns(p: &str) -> String {
    USER_COLUMNS
        .split(", ")
        .map(|c| format!("{p}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    user_row_at(r, 0)
}

fn user_row_at(r: &Row<'_>, o: usize) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(o)?,
        name: r.get(o + 1)?,
        role: r.get(o + 2)?,
        password_hash: r.get(o + 3)?,
        failed_logins: r.get(o + 4)?,
        locked_until_ms: r.get(o + 5)?,
        reveal_default: r.get::<_, i64>(o + 6)? != 0,
        disabled: r.get::<_, i64>(o + 7)? != 0,
        created_at_ms: r.get(o + 8)?,
    })
}

/// `severity` of `findings f` as a queue rank (see [`super::severity_rank`]).
const SEVERITY_RANK: &str =
    "CASE f.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2
     WHEN 'low' THEN 1 ELSE 0 END";

const ITEM_SELECT: &str =
    "SELECT i.id, i.verdict_id, i.recording_id, i.model_decision, i.severity_rank,
        i.teacher_id, i.created_at_ms, i.qa_sample, i.state, i.human_decision, i.version,
        i.first_decided_at_ms, i.decided_at_ms, i.claimed_by, u.name, i.claim_until_ms,
        (SELECT GROUP_CONCAT(DISTINCT f.label) FROM findings f WHERE f.verdict_id = i.verdict_id),
        (SELECT COUNT(*) FROM findings f WHERE f.verdict_id = i.verdict_id)
    FROM review_items i LEFT JOIN review_users u ON u.id = i.claimed_by";

/// Parameters ?1..?7: state, label, track, model decision, teacher, from, to (NULL: any).
const QUEUE_WHERE: &str = "i.in_queue = 1
    AND (?1 IS NULL OR i.state = ?1)
    AND (?2 IS NULL OR EXISTS (SELECT 1 FROM findings f WHERE f.verdict_id = i.verdict_id AND f.label = ?2))
    AND (?3 IS NULL OR EXISTS (SELECT 1 FROM findings f WHERE f.verdict_id = i.verdict_id AND f.track = ?3))
    AND (?4 IS NULL OR i.model_decision = ?4)
    AND (?5 IS NULL OR i.teacher_id = ?5)
    AND (?6 IS NULL OR i.created_at_ms >= ?6)
    AND (?7 IS NULL OR i.created_at_ms < ?7)";

fn item_row(r: &Row<'_>) -> rusqlite::Result<ReviewItemRow> {
    Ok(ReviewItemRow {
        id: r.get(0)?,
        verdict_id: r.get(1)?,
        recording_id: r.get(2)?,
        model_decision: r.get(3)?,
        severity_rank: r.get(4)?,
        teacher_id: r.get(5)?,
        created_at_ms: r.get(6)?,
        qa_sample: r.get::<_, i64>(7)? != 0,
        state: r.get(8)?,
        human_decision: r.get(9)?,
        version: r.get(10)?,
        first_decided_at_ms: r.get(11)?,
        decided_at_ms: r.get(12)?,
        claimed_by: r.get(13)?,
        claimed_by_name: r.get(14)?,
        claim_until_ms: r.get(15)?,
        labels: super::review_sql::split_labels(r.get::<_, Option<String>>(16)?),
        findings: r.get(17)?,
    })
}

const FINDING_COLUMNS: &str =
    "id, recording_id, label, severity, track, start_ms, end_ms, rule_id, reason, status,
    reviewer_note, evidence_path";

fn finding_row(r: &Row<'_>) -> rusqlite::Result<(FindingRow, String)> {
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
        r.get(9)?,
    ))
}

const DECISION_SELECT: &str =
    "SELECT d.id, d.item_id, d.finding_id, d.action, d.reason_code, d.note, d.user_id,
        COALESCE(u.name, ''), d.item_version, d.outcome, d.created_at_ms
    FROM review_decisions d LEFT JOIN review_users u ON u.id = d.user_id";

fn decision_row(r: &Row<'_>) -> rusqlite::Result<DecisionRow> {
    Ok(DecisionRow {
        id: r.get(0)?,
        item_id: r.get(1)?,
        finding_id: r.get(2)?,
        action: r.get(3)?,
        reason_code: r.get(4)?,
        note: r.get(5)?,
        user_id: r.get(6)?,
        user_name: r.get(7)?,
        item_version: r.get(8)?,
        outcome: r.get(9)?,
        created_at_ms: r.get(10)?,
    })
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
