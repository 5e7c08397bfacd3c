//! PostgreSQL backend, for a service whose audit workers share one database. Same schema as the
//! SQLite backend (BIGINT for every integer, BYTEA for embeddings); migrations are applied under
//! an advisory lock so several processes can start at once.

use postgres::{Client, NoTls, Row};

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

/// Schema migrations; `classguard_schema.version` is the number applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE teachers (
        id          TEXT PRIMARY KEY,
        created_at  BIGINT NOT NULL
    );
    CREATE TABLE face_templates (
        id          BIGSERIAL PRIMARY KEY,
        teacher_id  TEXT NOT NULL REFERENCES teachers(id) ON DELETE CASCADE,
        model_id    TEXT NOT NULL,
        embedding   BYTEA NOT NULL,
        created_at  BIGINT NOT NULL
    );
    CREATE INDEX face_templates_teacher ON face_templates(teacher_id, model_id);
    CREATE TABLE verdicts (
        id               BIGSERIAL PRIMARY KEY,
        idempotency_key  TEXT NOT NULL UNIQUE,
        recording_id     TEXT NOT NULL,
        sha256           TEXT NOT NULL,
        decision         TEXT NOT NULL,
        verdict_json     TEXT NOT NULL,
        created_at       BIGINT NOT NULL
    );
    CREATE INDEX verdicts_recording ON verdicts(recording_id);
    CREATE TABLE findings (
        id             BIGSERIAL PRIMARY KEY,
        verdict_id     BIGINT NOT NULL REFERENCES verdicts(id) ON DELETE CASCADE,
        recording_id   TEXT NOT NULL,
        label          TEXT NOT NULL,
        severity       TEXT NOT NULL,
        track          TEXT NOT NULL,
        start_ms       BIGINT NOT NULL,
        end_ms         BIGINT NOT NULL,
        rule_id        TEXT NOT NULL,
        reason         TEXT NOT NULL,
        status         TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'confirmed', 'dismissed')),
        reviewer_note  TEXT,
        evidence_path  TEXT,
        updated_at     BIGINT NOT NULL
    );
    CREATE INDEX findings_status ON findings(status, recording_id);
    CREATE INDEX findings_evidence ON findings(evidence_path);
    CREATE TABLE evidence (
        path          TEXT PRIMARY KEY,
        recording_id  TEXT NOT NULL,
        teacher_id    TEXT,
        expires_at    BIGINT NOT NULL
    );
    CREATE INDEX evidence_expires ON evidence(expires_at);
    CREATE INDEX evidence_teacher ON evidence(teacher_id);
    "#,
    // 2: service mode: tokens, uploaded recordings, durable audit jobs, webhook deliveries.
    r#"
    CREATE TABLE tokens (
        id              BIGSERIAL PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        hash            TEXT NOT NULL UNIQUE,
        webhook_url     TEXT,
        webhook_secret  TEXT NOT NULL,
        created_at      BIGINT NOT NULL,
        revoked         BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE recordings (
        id                TEXT PRIMARY KEY,
        token_id          BIGINT NOT NULL REFERENCES tokens(id),
        idempotency_key   TEXT,
        state             TEXT NOT NULL,
        upload_length     BIGINT,
        bytes_received    BIGINT NOT NULL DEFAULT 0,
        media_ms_audited  BIGINT NOT NULL DEFAULT 0,
        findings_json     TEXT NOT NULL DEFAULT '[]',
        session_id        TEXT,
        role              TEXT,
        teacher_id        TEXT,
        verdict_key       TEXT,
        created_at_ms     BIGINT NOT NULL,
        expires_at_ms     BIGINT NOT NULL,
        UNIQUE (token_id, idempotency_key)
    );
    CREATE INDEX recordings_state ON recordings(state, expires_at_ms);
    CREATE TABLE jobs (
        id              BIGSERIAL PRIMARY KEY,
        recording_id    TEXT NOT NULL UNIQUE REFERENCES recordings(id) ON DELETE CASCADE,
        state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts        BIGINT NOT NULL DEFAULT 0,
        worker          TEXT,
        lease_until_ms  BIGINT,
        error           TEXT,
        created_at_ms   BIGINT NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state, lease_until_ms);
    CREATE TABLE webhook_deliveries (
        id              BIGSERIAL PRIMARY KEY,
        event_id        TEXT NOT NULL UNIQUE,
        token_id        BIGINT NOT NULL,
        recording_id    TEXT NOT NULL,
        url             TEXT NOT NULL,
        body            TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_at_ms      BIGINT NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX webhook_due ON webhook_deliveries(state, next_at_ms);
    "#,
    // 3: review page: staff accounts, sessions, queue items with leases and versions, the
    // append-only decision history and audit log, evidence ids.
    r#"
    CREATE TABLE review_users (
        id               BIGSERIAL PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        role             TEXT NOT NULL CHECK (role IN ('reviewer', 'lead', 'admin')),
        password_hash    TEXT NOT NULL,
        failed_logins    BIGINT NOT NULL DEFAULT 0,
        locked_until_ms  BIGINT NOT NULL DEFAULT 0,
        reveal_default   BIGINT NOT NULL DEFAULT 0,
        disabled         BIGINT NOT NULL DEFAULT 0,
        created_at_ms    BIGINT NOT NULL
    );
    CREATE TABLE review_sessions (
        id_hash        TEXT PRIMARY KEY,
        user_id        BIGINT NOT NULL REFERENCES review_users(id) ON DELETE CASCADE,
        csrf           TEXT NOT NULL,
        created_at_ms  BIGINT NOT NULL,
        last_seen_ms   BIGINT NOT NULL,
        expires_at_ms  BIGINT NOT NULL
    );
    CREATE INDEX review_sessions_user ON review_sessions(user_id);
    CREATE TABLE review_items (
        id                   BIGSERIAL PRIMARY KEY,
        verdict_id           BIGINT NOT NULL UNIQUE REFERENCES verdicts(id),
        recording_id         TEXT NOT NULL,
        model_decision       TEXT NOT NULL,
        severity_rank        BIGINT NOT NULL,
        teacher_id           TEXT,
        created_at_ms        BIGINT NOT NULL,
        in_queue             BIGINT NOT NULL,
        qa_sample            BIGINT NOT NULL DEFAULT 0,
        state                TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'decided')),
        human_decision       TEXT,
        version              BIGINT NOT NULL DEFAULT 1,
        first_decided_at_ms  BIGINT,
        decided_at_ms        BIGINT,
        claimed_by           BIGINT REFERENCES review_users(id),
        claim_until_ms       BIGINT
    );
    CREATE INDEX review_items_queue ON review_items(in_queue, state, severity_rank, created_at_ms);
    CREATE INDEX review_items_recording ON review_items(recording_id);
    CREATE TABLE review_decisions (
        id             BIGSERIAL PRIMARY KEY,
        item_id        BIGINT NOT NULL REFERENCES review_items(id),
        finding_id     BIGINT,
        action         TEXT NOT NULL CHECK (action IN ('confirm', 'dismiss', 'reopen')),
        reason_code    TEXT NOT NULL,
        note           TEXT,
        user_id        BIGINT NOT NULL REFERENCES review_users(id),
        item_version   BIGINT NOT NULL,
        outcome        TEXT,
        created_at_ms  BIGINT NOT NULL
    );
    CREATE INDEX review_decisions_item ON review_decisions(item_id, id);
    CREATE TABLE review_audit (
        id       BIGSERIAL PRIMARY KEY,
        at_ms    BIGINT NOT NULL,
        user_id  BIGINT,
        action   TEXT NOT NULL,
        item_id  BIGINT,
        detail   TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE review_evidence (
        id       TEXT PRIMARY KEY,
        item_id  BIGINT NOT NULL REFERENCES review_items(id),
        kind     TEXT NOT NULL CHECK (kind IN ('image', 'audio')),
        path     TEXT NOT NULL,
        UNIQUE (item_id, path)
    );
    CREATE FUNCTION review_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$;
    CREATE TRIGGER review_decisions_append_only BEFORE UPDATE OR DELETE ON review_decisions
        FOR EACH ROW EXECUTE FUNCTION review_append_only();
    CREATE TRIGGER review_audit_append_only BEFORE UPDATE OR DELETE ON review_audit
        FOR EACH ROW EXECUTE FUNCTION review_append_only();
    "#,
    // 4: batch rescans: which content an object version holds, so a rescan can skip an object
    // without reading it. Keyed by the version as listed (URI, ETag, size).
    r#"
    CREATE TABLE object_hashes (
        uri      TEXT NOT NULL,
        etag     TEXT NOT NULL,
        size     BIGINT NOT NULL,
        sha256   TEXT NOT NULL,
        seen_at  BIGINT NOT NULL,
        PRIMARY KEY (uri, etag, size)
    );
    "#,
    // 5: scale-out: the outbox of jobs handed to the queue, and jobs that failed every attempt.
    r#"
    ALTER TABLE jobs ADD COLUMN published_at_ms BIGINT;
    CREATE TABLE dead_letters (
        job_id        BIGINT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        recording_id  TEXT NOT NULL,
        attempts      BIGINT NOT NULL,
        reason        TEXT NOT NULL,
        at_ms         BIGINT NOT NULL
    );
    "#,
];

/// Advisory lock key of the migration step (any constant both processes agree on).
const MIGRATION_LOCK: i64 = 0x636c_6173_7367_7264;

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

pub struct PostgresBackend {
    client: Client,
}

const RECORDING_COLUMNS: &str = "id, token_id, idempotency_key, state, upload_length, bytes_received,
    media_ms_audited, findings_json, session_id, role, teacher_id, verdict_key, created_at_ms, expires_at_ms";

fn recording_row(r: &Row) -> Result<RecordingRow, StoreError> {
    Ok(RecordingRow {
        id: r.try_get(0)?,
        token_id: r.try_get(1)?,
        idempotency_key: r.try_get(2)?,
        state: RecordingState::parse(r.try_get(3)?)?,
        upload_length: r.try_get(4)?,
        bytes_received: r.try_get(5)?,
        media_ms_audited: r.try_get(6)?,
        findings_json: r.try_get(7)?,
        session_id: r.try_get(8)?,
        role: r.try_get(9)?,
        teacher_id: r.try_get(10)?,
        verdict_key: r.try_get(11)?,
        created_at_ms: r.try_get(12)?,
        expires_at_ms: r.try_get(13)?,
    })
}

const TOKEN_COLUMNS: &str = "id, name, hash, webhook_url, webhook_secret, created_at, revoked";

fn token_row(r: &Row) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        hash: r.try_get(2)?,
        webhook_url: r.try_get(3)?,
        webhook_secret: r.try_get(4)?,
        created_at: r.try_get(5)?,
        revoked: r.try_get(6)?,
    })
}

impl PostgresBackend {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let config: postgres::Config = url.parse().map_err(|_| StoreError::BadUrl(redact(url)))?;
        let client = config.connect(NoTls)?;
        let mut b = PostgresBackend { client };
        b.migrate()?;
        Ok(b)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS classguard_schema (version BIGINT NOT NULL)")?;
        let found: i64 = match tx.query_opt("SELECT version FROM classguard_schema", &[])? {
            Some(r) => r.try_get(0)?,
            None => {
                tx.execute("INSERT INTO classguard_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql)?;
            tx.execute(
                "UPDATE classguard_schema SET version = $1",
                &[&((i + 1) as i64)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_evidence(
        &mut self,
        filter: &str,
        arg: &(dyn postgres::types::ToSql + Sync),
        teacher: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.client.transaction()?;
        let paths: Vec<String> = tx
            .query(
                &format!("SELECT path FROM evidence WHERE {filter} ORDER BY path FOR UPDATE"),
                &[arg],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        tx.execute(
            "UPDATE findings SET evidence_path = NULL WHERE evidence_path = ANY($1)",
            &[&paths],
        )?;
        tx.execute("DELETE FROM evidence WHERE path = ANY($1)", &[&paths])?;
        if let Some(t) = teacher {
            tx.execute("DELETE FROM face_templates WHERE teacher_id = $1", &[&t])?;
            tx.execute("DELETE FROM teachers WHERE id = $1", &[&t])?;
        }
        tx.commit()?;
        Ok(paths)
    }
}

impl Backend for PostgresBackend {
    fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .client
            .query_one("SELECT version FROM classguard_schema", &[])?
            .try_get(0)?)
    }

    fn enroll_template(
        &mut self,
        teacher_id: &str,
        model_id: &str,
        blob: &[u8],
        t: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.client.transaction()?;
        tx.execute(
            "INSERT INTO teachers (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&teacher_id, &t],
        )?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO face_templates (teacher_id, model_id, embedding, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&teacher_id, &model_id, &blob, &t],
            )?
            .try_get(0)?;
        tx.commit()?;
        Ok(id)
    }

    fn templates_for(
        &mut self,
        teacher_id: &str,
        model_id: &str,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT embedding FROM face_templates WHERE teacher_id = $1 AND model_id = $2 ORDER BY id",
                &[&teacher_id, &model_id],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    fn put_verdict(
        &mut self,
        verdict: &Verdict,
        json: &str,
        evidence: &[EvidenceEntry],
        t: i64,
    ) -> Result<bool, StoreError> {
        let key = verdict.idempotency_key();
        let mut tx = self.client.transaction()?;
        // Evidence rows first, whether or not the verdict is new (see the SQLite backend).
        for e in evidence {
            tx.execute(
                "INSERT INTO evidence (path, recording_id, teacher_id, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (path) DO UPDATE SET recording_id = excluded.recording_id,
                     teacher_id = excluded.teacher_id, expires_at = excluded.expires_at",
                &[&e.path, &verdict.recording.id, &e.teacher_id, &e.expires_at],
            )?;
        }
        let inserted = tx.query_opt(
            "INSERT INTO verdicts (idempotency_key, recording_id, sha256, decision, verdict_json, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[&key, &verdict.recording.id, &verdict.recording.sha256, &verdict.decision.as_str(), &json, &t],
        )?;
        let Some(row) = inserted else {
            tx.commit()?;
            return Ok(false);
        };
        let verdict_id: i64 = row.try_get(0)?;
        let stmt = tx.prepare(
            "INSERT INTO findings (verdict_id, recording_id, label, severity, track, start_ms, end_ms, rule_id,
                                   reason, evidence_path, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )?;
        for f in &verdict.findings {
            tx.execute(
                &stmt,
                &[
                    &verdict_id,
                    &verdict.recording.id,
                    &f.label.as_str(),
                    &f.severity.as_str(),
                    &f.track.as_str(),
                    &to_i64(f.start_ms),
                    &to_i64(f.end_ms),
                    &f.rule_id,
                    &f.reason,
                    &f.evidence.primary_path(),
                    &t,
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn get_verdict_json(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .client
            .query_opt(
                "SELECT verdict_json FROM verdicts WHERE idempotency_key = $1",
                &[&key],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    fn list_findings(
        &mut self,
        status: Option<FindingStatus>,
    ) -> Result<Vec<FindingRow>, StoreError> {
        let status = status.map(FindingStatus::as_str);
        self.client
            .query(
                &format!(
                    "SELECT {FINDING_COLUMNS} FROM findings WHERE $1::TEXT IS NULL OR status = $1
                     ORDER BY recording_id, start_ms, id"
                ),
                &[&status],
            )?
            .iter()
            .map(finding_row)
            .collect()
    }

    fn set_finding_status(
        &mut self,
        id: i64,
        status: FindingStatus,
        note: Option<&str>,
        t: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "UPDATE findings SET status = $2, reviewer_note = COALESCE($3, reviewer_note), updated_at = $4 WHERE id = $1",
            &[&id, &status.as_str(), &note, &t],
        )? > 0)
    }

    fn add_evidence(
        &mut self,
        path: &str,
        recording_id: &str,
        teacher_id: Option<&str>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO evidence (path, recording_id, teacher_id, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (path) DO UPDATE SET recording_id = excluded.recording_id,
                 teacher_id = excluded.teacher_id, expires_at = excluded.expires_at",
            &[&path, &recording_id, &teacher_id, &expires_at],
        )?;
        Ok(())
    }

    fn erase_teacher(&mut self, teacher_id: &str) -> Result<Vec<String>, StoreError> {
        self.remove_evidence("teacher_id = $1", &teacher_id, Some(teacher_id))
    }

    fn expire_evidence(&mut self, now: i64) -> Result<Vec<String>, StoreError> {
        self.remove_evidence("expires_at <= $1", &now, None)
    }

    fn create_token(
        &mut self,
        name: &str,
        hash: &str,
        webhook_url: Option<&str>,
        webhook_secret: &str,
        now: i64,
    ) -> Result<TokenRow, StoreError> {
        let row = self.client.query_opt(
            &format!(
                "INSERT INTO tokens (name, hash, webhook_url, webhook_secret, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING {TOKEN_COLUMNS}"
            ),
            &[&name, &hash, &webhook_url, &webhook_secret, &now],
        )?;
        match row {
            Some(r) => token_row(&r),
            None => Err(StoreError::TokenExists(name.to_string())),
        }
    }

    fn list_tokens(&mut self) -> Result<Vec<TokenRow>, StoreError> {
        self.client
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"),
                &[],
            )?
            .iter()
            .map(token_row)
            .collect()
    }

    fn revoke_token(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "UPDATE tokens SET revoked = TRUE WHERE name = $1 AND NOT revoked",
            &[&name],
        )? > 0)
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        self.client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
                &[&hash],
            )?
            .map(|r| token_row(&r))
            .transpose()
    }

    fn token_by_id(&mut self, id: i64) -> Result<Option<TokenRow>, StoreError> {
        self.client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"),
                &[&id],
            )?
            .map(|r| token_row(&r))
            .transpose()
    }

    fn create_recording(
        &mut self,
        new: &NewRecording,
        now_ms: i64,
    ) -> Result<(RecordingRow, bool), StoreError> {
        let inserted = self.client.query_opt(
            &format!(
                "INSERT INTO recordings (id, token_id, idempotency_key, state, upload_length, session_id, role,
                                         teacher_id, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, 'uploading', $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (token_id, idempotency_key) DO NOTHING RETURNING {RECORDING_COLUMNS}"
            ),
            &[
                &new.id,
                &new.token_id,
                &new.idempotency_key,
                &new.upload_length,
                &new.session_id,
                &new.role,
                &new.teacher_id,
                &now_ms,
                &new.expires_at_ms,
            ],
        )?;
        if let Some(r) = inserted {
            return Ok((recording_row(&r)?, true));
        }
        // Only an idempotency key can conflict: the recording made under it before.
        let r = self.client.query_one(
            &format!(
                "SELECT {RECORDING_COLUMNS} FROM recordings WHERE token_id = $1 AND idempotency_key = $2"
            ),
            &[&new.token_id, &new.idempotency_key],
        )?;
        Ok((recording_row(&r)?, false))
    }

    fn get_recording(&mut self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        self.client
            .query_opt(
                &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = $1"),
                &[&id],
            )?
            .map(|r| recording_row(&r))
            .transpose()
    }

    fn set_upload_length(&mut self, id: &str, length: i64) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE recordings SET upload_length = $2 WHERE id = $1",
            &[&id, &length],
        )?;
        Ok(())
    }

    fn set_bytes_received(
        &mut self,
        id: &str,
        bytes: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE recordings SET bytes_received = $2, expires_at_ms = $3 WHERE id = $1",
            &[&id, &bytes, &expires_at_ms],
        )?;
        Ok(())
    }

    fn set_recording_state(&mut self, id: &str, state: RecordingState) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE recordings SET state = $2 WHERE id = $1 AND state <> 'audited'",
            &[&id, &state.as_str()],
        )?;
        Ok(())
    }

    fn set_audit_progress(
        &mut self,
        id: &str,
        media_ms: i64,
        findings_json: &str,
    ) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE recordings SET media_ms_audited = $2, findings_json = $3 WHERE id = $1",
            &[&id, &media_ms, &findings_json],
        )?;
        Ok(())
    }

    fn set_verdict_key(&mut self, id: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "UPDATE recordings SET verdict_key = $2, state = 'audited' WHERE id = $1 AND verdict_key IS NULL",
            &[&id, &key],
        )? > 0)
    }

    fn count_uploading(&mut self, token_id: i64) -> Result<i64, StoreError> {
        Ok(self
            .client
            .query_one(
                "SELECT COUNT(*) FROM recordings WHERE token_id = $1 AND state = 'uploading'",
                &[&token_id],
            )?
            .try_get(0)?)
    }

    fn expired_uploads(&mut self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT id FROM recordings WHERE state = 'uploading' AND expires_at_ms <= $1 ORDER BY id",
                &[&now_ms],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    fn enqueue_job(&mut self, recording_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "INSERT INTO jobs (recording_id, state, created_at_ms) VALUES ($1, 'queued', $2)
             ON CONFLICT (recording_id) DO NOTHING",
            &[&recording_id, &now_ms],
        )? > 0)
    }

    fn claim_job(
        &mut self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let until = now_ms + lease_ms;
        self.client
            .query_opt(
                "UPDATE jobs SET state = 'running', worker = $1, lease_until_ms = $2, attempts = attempts + 1
                 WHERE id = (SELECT id FROM jobs
                             WHERE state = 'queued' OR (state = 'running' AND lease_until_ms < $3)
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, recording_id, attempts",
                &[&worker, &until, &now_ms],
            )?
            .map(|r| {
                Ok(JobRow {
                    id: r.try_get(0)?,
                    recording_id: r.try_get(1)?,
                    attempts: r.try_get(2)?,
                })
            })
            .transpose()
    }

    fn heartbeat(
        &mut self,
        job_id: i64,
        worker: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "UPDATE jobs SET lease_until_ms = $3 WHERE id = $1 AND worker = $2 AND state = 'running'",
            &[&job_id, &worker, &lease_until_ms],
        )? > 0)
    }

    fn finish_job(
        &mut self,
        job_id: i64,
        worker: &str,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let state = if error.is_some() { "failed" } else { "done" };
        Ok(self.client.execute(
            "UPDATE jobs SET state = $3, error = $4, lease_until_ms = NULL
             WHERE id = $1 AND worker = $2 AND state = 'running'",
            &[&job_id, &worker, &state, &error],
        )? > 0)
    }

    fn queue_depth(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .client
            .query_one(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')",
                &[],
            )?
            .try_get(0)?)
    }

    fn unpublished_jobs(&mut self, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        self.client
            .query(
                "SELECT j.id, j.recording_id, j.attempts FROM jobs j JOIN recordings r ON r.id = j.recording_id
                 WHERE j.state = 'queued' AND j.published_at_ms IS NULL
                   AND (r.bytes_received > 0 OR r.state <> 'uploading')
                 ORDER BY j.id LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| {
                Ok(JobRow {
                    id: r.try_get(0)?,
                    recording_id: r.try_get(1)?,
                    attempts: r.try_get(2)?,
                })
            })
            .collect()
    }

    fn mark_published(&mut self, job_id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE jobs SET published_at_ms = $2 WHERE id = $1 AND published_at_ms IS NULL",
            &[&job_id, &now_ms],
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
        let mut tx = self.client.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, attempts, lease_until_ms FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job_id],
        )?
        else {
            return Ok(Attempt::Finished);
        };
        let (state, attempts, lease): (String, i64, Option<i64>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let decision = match Attempt::decide(&state, attempts, lease, now_ms, max_attempts) {
            Some(d) => d,
            None => {
                tx.execute(
                    "UPDATE jobs SET state = 'running', worker = $2, attempts = attempts + 1,
                         lease_until_ms = $3 WHERE id = $1",
                    &[&job_id, &worker, &(now_ms + lease_ms)],
                )?;
                Attempt::Started(attempts + 1)
            }
        };
        tx.commit()?;
        Ok(decision)
    }

    fn release_attempt(&mut self, job_id: i64, worker: &str) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "UPDATE jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0), worker = NULL,
                 lease_until_ms = NULL WHERE id = $1 AND worker = $2 AND state = 'running'",
            &[&job_id, &worker],
        )? > 0)
    }

    fn dead_letter(
        &mut self,
        job_id: i64,
        attempts: i64,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.client.transaction()?;
        let added = tx.execute(
            "INSERT INTO dead_letters (job_id, recording_id, attempts, reason, at_ms)
             SELECT id, recording_id, $2, $3, $4 FROM jobs WHERE id = $1
             ON CONFLICT (job_id) DO NOTHING",
            &[&job_id, &attempts, &reason, &now_ms],
        )? > 0;
        tx.execute(
            "UPDATE jobs SET state = 'failed', error = $2, lease_until_ms = NULL WHERE id = $1",
            &[&job_id, &reason],
        )?;
        tx.commit()?;
        Ok(added)
    }

    fn dead_letters(&mut self) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.client
            .query(
                "SELECT job_id, recording_id, attempts, reason, at_ms FROM dead_letters
                 ORDER BY at_ms DESC, job_id DESC",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(DeadLetterRow {
                    job_id: r.try_get(0)?,
                    recording_id: r.try_get(1)?,
                    attempts: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    at_ms: r.try_get(4)?,
                })
            })
            .collect()
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
        Ok(self.client.execute(
            "INSERT INTO webhook_deliveries (event_id, token_id, recording_id, url, body, state, next_at_ms)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6) ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &token_id, &recording_id, &url, &body, &now_ms],
        )? > 0)
    }

    fn due_deliveries(&mut self, now_ms: i64, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        self.client
            .query(
                "SELECT id, event_id, token_id, recording_id, url, body, attempts FROM webhook_deliveries
                 WHERE state = 'pending' AND next_at_ms <= $1 ORDER BY next_at_ms, id LIMIT $2",
                &[&now_ms, &limit],
            )?
            .iter()
            .map(|r| {
                Ok(DeliveryRow {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    token_id: r.try_get(2)?,
                    recording_id: r.try_get(3)?,
                    url: r.try_get(4)?,
                    body: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                })
            })
            .collect()
    }

    fn delivery_done(&mut self, id: i64) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1 WHERE id = $1",
            &[&id],
        )?;
        Ok(())
    }

    fn delivery_failed(
        &mut self,
        id: i64,
        next_at_ms: Option<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $3,
                 state = CASE WHEN $2::BIGINT IS NULL THEN 'failed' ELSE 'pending' END,
                 next_at_ms = COALESCE($2, next_at_ms)
             WHERE id = $1",
            &[&id, &next_at_ms, &error],
        )?;
        Ok(())
    }

    fn review_add_user(&mut self, new: &NewUser, now_ms: i64) -> Result<UserRow, StoreError> {
        let row = self.client.query_opt(
            &format!(
                "INSERT INTO review_users (name, role, password_hash, created_at_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING RETURNING {USER_COLUMNS}"
            ),
            &[&new.name, &new.role, &new.password_hash, &now_ms],
        )?;
        match row {
            Some(r) => user_row(&r, 0),
            None => Err(StoreError::UserExists(new.name.clone())),
        }
    }

    fn review_user_by_name(&mut self, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM review_users WHERE name = $1"),
                &[&name],
            )?
            .map(|r| user_row(&r, 0))
            .transpose()
    }

    fn review_user_by_id(&mut self, id: i64) -> Result<Option<UserRow>, StoreError> {
        self.client
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM review_users WHERE id = $1"),
                &[&id],
            )?
            .map(|r| user_row(&r, 0))
            .transpose()
    }

    fn review_list_users(&mut self) -> Result<Vec<UserRow>, StoreError> {
        self.client
            .query(
                &format!("SELECT {USER_COLUMNS} FROM review_users ORDER BY name"),
                &[],
            )?
            .iter()
            .map(|r| user_row(r, 0))
            .collect()
    }

    fn review_login_result(
        &mut self,
        user_id: i64,
        ok: bool,
        now_ms: i64,
        lockout: Lockout,
    ) -> Result<Option<UserRow>, StoreError> {
        let row = if ok {
            self.client.query_opt(
                &format!(
                    "UPDATE review_users SET failed_logins = 0, locked_until_ms = 0
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&user_id],
            )?
        } else {
            self.client.query_opt(
                &format!(
                    "UPDATE review_users SET failed_logins = failed_logins + 1,
                         locked_until_ms = CASE WHEN failed_logins + 1 >= $2 THEN $3 ELSE locked_until_ms END
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&user_id, &lockout.max_failures, &(now_ms + lockout.lock_ms)],
            )?
        };
        row.map(|r| user_row(&r, 0)).transpose()
    }

    fn review_update_user(&mut self, id: i64, c: &UserChange) -> Result<bool, StoreError> {
        Ok(self.client.execute(
            "UPDATE review_users SET
                 password_hash = COALESCE($2, password_hash),
                 role = COALESCE($3, role),
                 disabled = COALESCE($4, disabled),
                 reveal_default = COALESCE($5, reveal_default),
                 failed_logins = CASE WHEN $6 THEN 0 ELSE failed_logins END,
                 locked_until_ms = CASE WHEN $6 THEN 0 ELSE locked_until_ms END
             WHERE id = $1",
            &[
                &id,
                &c.password_hash,
                &c.role,
                &c.disabled.map(i64::from),
                &c.reveal_default.map(i64::from),
                &c.unlock,
            ],
        )? > 0)
    }

    fn review_create_session(&mut self, s: &NewSession) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO review_sessions (id_hash, user_id, csrf, created_at_ms, last_seen_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $4, $5)",
            &[&s.id_hash, &s.user_id, &s.csrf, &s.now_ms, &s.expires_at_ms],
        )?;
        Ok(())
    }

    fn review_session(
        &mut self,
        id_hash: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Option<(SessionRow, UserRow)>, StoreError> {
        let Some(r) = self.client.query_opt(
            &format!(
                "SELECT s.user_id, s.csrf, s.created_at_ms, s.expires_at_ms, s.last_seen_ms, {}
                 FROM review_sessions s JOIN review_users u ON u.id = s.user_id WHERE s.id_hash = $1",
                prefixed_user_columns("u")
            ),
            &[&id_hash],
        )?
        else {
            return Ok(None);
        };
        let session = SessionRow {
            user_id: r.try_get(0)?,
            csrf: r.try_get(1)?,
            created_at_ms: r.try_get(2)?,
            expires_at_ms: r.try_get(3)?,
        };
        let last_seen: i64 = r.try_get(4)?;
        let user = user_row(&r, 5)?;
        if now_ms >= session.expires_at_ms || now_ms - last_seen > idle_ms || user.disabled {
            self.review_delete_session(id_hash)?;
            return Ok(None);
        }
        if now_ms - last_seen > 60_000 {
            self.client.execute(
                "UPDATE review_sessions SET last_seen_ms = $2 WHERE id_hash = $1",
                &[&id_hash, &now_ms],
            )?;
        }
        Ok(Some((session, user)))
    }

    fn review_delete_session(&mut self, id_hash: &str) -> Result<(), StoreError> {
        self.client.execute(
            "DELETE FROM review_sessions WHERE id_hash = $1",
            &[&id_hash],
        )?;
        Ok(())
    }

    fn review_unsynced_verdicts(&mut self, limit: i64) -> Result<Vec<UnsyncedVerdict>, StoreError> {
        self.client
            .query(
                &format!(
                    "SELECT v.id, v.recording_id, v.decision, v.created_at * 1000,
                            COALESCE((SELECT r.teacher_id FROM recordings r WHERE r.id = v.recording_id),
                                     (SELECT e.teacher_id FROM evidence e
                                      WHERE e.recording_id = v.recording_id AND e.teacher_id IS NOT NULL LIMIT 1)),
                            COALESCE((SELECT MAX({SEVERITY_RANK}) FROM findings f WHERE f.verdict_id = v.id), -1)::BIGINT
                     FROM verdicts v
                     WHERE NOT EXISTS (SELECT 1 FROM review_items i WHERE i.verdict_id = v.id)
                     ORDER BY v.id LIMIT $1"
                ),
                &[&limit],
            )?
            .iter()
            .map(|r| {
                Ok(UnsyncedVerdict {
                    verdict_id: r.try_get(0)?,
                    recording_id: r.try_get(1)?,
                    decision: r.try_get(2)?,
                    created_at_ms: r.try_get(3)?,
                    teacher_id: r.try_get(4)?,
                    severity_rank: r.try_get(5)?,
                })
            })
            .collect()
    }

    fn review_insert_item(&mut self, item: &NewReviewItem) -> Result<bool, StoreError> {
        let v = &item.verdict;
        Ok(self.client.execute(
            "INSERT INTO review_items (verdict_id, recording_id, model_decision, severity_rank, teacher_id,
                                       created_at_ms, in_queue, qa_sample)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (verdict_id) DO NOTHING",
            &[
                &v.verdict_id,
                &v.recording_id,
                &v.decision,
                &v.severity_rank,
                &v.teacher_id,
                &v.created_at_ms,
                &i64::from(item.in_queue),
                &i64::from(item.qa_sample),
            ],
        )? > 0)
    }

    fn review_queue(&mut self, f: &QueueFilter) -> Result<Vec<ReviewItemRow>, StoreError> {
        self.client
            .query(
                &format!(
                    "{ITEM_SELECT} WHERE {QUEUE_WHERE}
                     ORDER BY i.severity_rank DESC, i.created_at_ms ASC, i.id ASC LIMIT $8"
                ),
                &[
                    &f.state,
                    &f.label,
                    &f.track,
                    &f.decision,
                    &f.teacher,
                    &f.from_ms,
                    &f.to_ms,
                    &f.limit,
                ],
            )?
            .iter()
            .map(item_row)
            .collect()
    }

    fn review_label_counts(&mut self, f: &QueueFilter) -> Result<Vec<(String, i64)>, StoreError> {
        let none: Option<String> = None;
        self.client
            .query(
                &format!(
                    "SELECT l.label, COUNT(DISTINCT i.id)
                     FROM review_items i JOIN findings l ON l.verdict_id = i.verdict_id
                     WHERE {QUEUE_WHERE}
                     GROUP BY l.label ORDER BY l.label"
                ),
                &[
                    &f.state,
                    &none,
                    &f.track,
                    &f.decision,
                    &f.teacher,
                    &f.from_ms,
                    &f.to_ms,
                ],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn review_item(&mut self, id: i64) -> Result<Option<ItemDetail>, StoreError> {
        let Some(r) = self
            .client
            .query_opt(&format!("{ITEM_SELECT} WHERE i.id = $1"), &[&id])?
        else {
            return Ok(None);
        };
        let item = item_row(&r)?;
        let verdict_json: String = self
            .client
            .query_one(
                "SELECT verdict_json FROM verdicts WHERE id = $1",
                &[&item.verdict_id],
            )?
            .try_get(0)?;
        let findings = self
            .client
            .query(
                &format!(
                    "SELECT {FINDING_COLUMNS} FROM findings WHERE verdict_id = $1 ORDER BY id"
                ),
                &[&item.verdict_id],
            )?
            .iter()
            .map(finding_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let evidence_paths = self
            .client
            .query(
                "SELECT path FROM evidence WHERE recording_id = $1 ORDER BY path",
                &[&item.recording_id],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
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
        let mut tx = self.client.transaction()?;
        tx.execute(
            "UPDATE review_items SET claimed_by = $2, claim_until_ms = $4
             WHERE id = $1 AND state = 'open'
               AND (claimed_by IS NULL OR claimed_by = $2 OR claim_until_ms < $3)",
            &[&item_id, &user_id, &now_ms, &(now_ms + lease_ms)],
        )?;
        let held = tx.query_opt(
            "SELECT i.claimed_by, COALESCE(u.name, ''), COALESCE(i.claim_until_ms, 0)
             FROM review_items i LEFT JOIN review_users u ON u.id = i.claimed_by WHERE i.id = $1",
            &[&item_id],
        )?;
        tx.commit()?;
        let Some(r) = held else {
            return Ok(None);
        };
        let holder: Option<i64> = r.try_get(0)?;
        let until: i64 = r.try_get(2)?;
        Ok(match holder {
            Some(h) => Some(ClaimState {
                holder: h,
                holder_name: r.try_get(1)?,
                until_ms: until,
                mine: h == user_id && until >= now_ms,
            }),
            None => None,
        })
    }

    fn review_release(&mut self, item_id: i64, user_id: i64) -> Result<(), StoreError> {
        self.client.execute(
            "UPDATE review_items SET claimed_by = NULL, claim_until_ms = NULL WHERE id = $1 AND claimed_by = $2",
            &[&item_id, &user_id],
        )?;
        Ok(())
    }

    fn review_act(&mut self, act: &ReviewAct, now_ms: i64) -> Result<ActOutcome, StoreError> {
        let mut tx = self.client.transaction()?;
        let Some(r) = tx.query_opt(
            "SELECT state, version, claimed_by, claim_until_ms, verdict_id, human_decision
             FROM review_items WHERE id = $1 FOR UPDATE",
            &[&act.item_id],
        )?
        else {
            return Ok(ActOutcome::NoSuchItem);
        };
        let cur = ItemLock {
            state: r.try_get(0)?,
            version: r.try_get(1)?,
            claimed_by: r.try_get(2)?,
            claim_until_ms: r.try_get(3)?,
            verdict_id: r.try_get(4)?,
            human_decision: r.try_get(5)?,
        };
        if let Some(refused) = refuse(act, &cur, now_ms) {
            return Ok(refused);
        }
        if let Some(fid) = act.finding_id {
            let n: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM findings WHERE id = $1 AND verdict_id = $2",
                    &[&fid, &cur.verdict_id],
                )?
                .try_get(0)?;
            if n == 0 {
                return Ok(ActOutcome::NoSuchFinding);
            }
        }
        let t = now_ms / 1000;
        match (act.action.as_str(), act.finding_id) {
            ("reopen", _) => {
                tx.execute(
                    "UPDATE findings SET status = 'open', updated_at = $2 WHERE verdict_id = $1",
                    &[&cur.verdict_id, &t],
                )?;
            }
            (status, Some(fid)) => {
                tx.execute(
                    "UPDATE findings SET status = $2, reviewer_note = COALESCE($3, reviewer_note), updated_at = $4
                     WHERE id = $1",
                    &[&fid, &finding_status(status), &act.note, &t],
                )?;
            }
            ("confirm", None) => {
                tx.execute(
                    "UPDATE findings SET status = 'confirmed', updated_at = $2 WHERE verdict_id = $1 AND status = 'open'",
                    &[&cur.verdict_id, &t],
                )?;
            }
            (_, None) => {
                tx.execute(
                    "UPDATE findings SET status = 'dismissed', updated_at = $2 WHERE verdict_id = $1",
                    &[&cur.verdict_id, &t],
                )?;
            }
        }
        let counts = tx.query_one(
            "SELECT COUNT(*) FILTER (WHERE status = 'open'), COUNT(*) FILTER (WHERE status = 'confirmed')
             FROM findings WHERE verdict_id = $1",
            &[&cur.verdict_id],
        )?;
        let (open, confirmed): (i64, i64) = (counts.try_get(0)?, counts.try_get(1)?);
        let next = next_state(act, &cur, open, confirmed);
        let version = cur.version + 1;
        tx.execute(
            "UPDATE review_items SET version = $2, state = $3, human_decision = $4,
                 decided_at_ms = CASE WHEN $3 = 'decided' THEN $5 ELSE decided_at_ms END,
                 first_decided_at_ms = CASE WHEN $3 = 'decided' THEN COALESCE(first_decided_at_ms, $5)
                                            ELSE first_decided_at_ms END,
                 claimed_by = CASE WHEN $3 = 'decided' THEN NULL ELSE claimed_by END,
                 claim_until_ms = CASE WHEN $3 = 'decided' THEN NULL ELSE claim_until_ms END
             WHERE id = $1",
            &[&act.item_id, &version, &next.state, &next.decision, &now_ms],
        )?;
        tx.execute(
            "INSERT INTO review_decisions (item_id, finding_id, action, reason_code, note, user_id, item_version,
                                           outcome, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &act.item_id,
                &act.finding_id,
                &act.action,
                &act.reason_code,
                &act.note,
                &act.user_id,
                &act.version,
                &next.outcome,
                &now_ms,
            ],
        )?;
        let e = act_audit(act);
        tx.execute(
            "INSERT INTO review_audit (at_ms, user_id, action, item_id, detail) VALUES ($1, $2, $3, $4, $5)",
            &[&now_ms, &e.user_id, &e.action, &e.item_id, &e.detail],
        )?;
        tx.commit()?;
        Ok(ActOutcome::Applied {
            version,
            decision: next.decision,
        })
    }

    fn review_history(&mut self, item_id: i64) -> Result<Vec<DecisionRow>, StoreError> {
        self.client
            .query(
                &format!("{DECISION_SELECT} WHERE d.item_id = $1 ORDER BY d.id"),
                &[&item_id],
            )?
            .iter()
            .map(decision_row)
            .collect()
    }

    fn review_audit(&mut self, e: &AuditEntry, now_ms: i64) -> Result<(), StoreError> {
        self.client.execute(
            "INSERT INTO review_audit (at_ms, user_id, action, item_id, detail) VALUES ($1, $2, $3, $4, $5)",
            &[&now_ms, &e.user_id, &e.action, &e.item_id, &e.detail],
        )?;
        Ok(())
    }

    fn review_audit_log(&mut self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.client
            .query(
                "SELECT id, at_ms, user_id, action, item_id, detail FROM review_audit ORDER BY id DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    user_id: r.try_get(2)?,
                    action: r.try_get(3)?,
                    item_id: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
    }

    fn review_evidence_id(
        &mut self,
        item_id: i64,
        kind: &str,
        path: &str,
        new_id: &str,
    ) -> Result<String, StoreError> {
        self.client.execute(
            "INSERT INTO review_evidence (id, item_id, kind, path) VALUES ($1, $2, $3, $4)
             ON CONFLICT (item_id, path) DO NOTHING",
            &[&new_id, &item_id, &kind, &path],
        )?;
        Ok(self
            .client
            .query_one(
                "SELECT id FROM review_evidence WHERE item_id = $1 AND path = $2",
                &[&item_id, &path],
            )?
            .try_get(0)?)
    }

    fn review_evidence(&mut self, id: &str) -> Result<Option<EvidenceRef>, StoreError> {
        self.client
            .query_opt(
                "SELECT re.id, re.item_id, i.recording_id, re.kind, re.path
                 FROM review_evidence re JOIN review_items i ON i.id = re.item_id
                 WHERE re.id = $1 AND EXISTS (SELECT 1 FROM evidence e WHERE e.path = re.path)",
                &[&id],
            )?
            .map(|r| {
                Ok(EvidenceRef {
                    id: r.try_get(0)?,
                    item_id: r.try_get(1)?,
                    recording_id: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    path: r.try_get(4)?,
                })
            })
            .transpose()
    }

    fn review_item_by_verdict_key(
        &mut self,
        key: &str,
    ) -> Result<Option<ReviewItemRow>, StoreError> {
        self.client
            .query_opt(
                &format!(
                    "{ITEM_SELECT} JOIN verdicts v ON v.id = i.verdict_id WHERE v.idempotency_key = $1"
                ),
                &[&key],
            )?
            .map(|r| item_row(&r))
            .transpose()
    }

    fn review_metrics(&mut self) -> Result<MetricsData, StoreError> {
        let items = self
            .client
            .query(
                &format!("{ITEM_SELECT} WHERE i.in_queue = 1 ORDER BY i.id"),
                &[],
            )?
            .iter()
            .map(item_row)
            .collect::<Result<_, _>>()?;
        let history = self
            .client
            .query(&format!("{DECISION_SELECT} ORDER BY d.id"), &[])?
            .iter()
            .map(decision_row)
            .collect::<Result<_, _>>()?;
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
        self.client.execute(
            "INSERT INTO object_hashes (uri, etag, size, sha256, seen_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (uri, etag, size) DO UPDATE SET sha256 = EXCLUDED.sha256, seen_at = EXCLUDED.seen_at",
            &[&uri, &etag, &size, &sha256, &now],
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
            .client
            .query_opt(
                "SELECT sha256 FROM object_hashes WHERE uri = $1 AND etag = $2 AND size = $3",
                &[&uri, &etag, &size],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    fn latest_verdict_jsons(&mut self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT DISTINCT ON (recording_id) verdict_json FROM verdicts
                 ORDER BY recording_id, id DESC",
                &[],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
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

fn user_row(r: &Row, o: usize) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        id: r.try_get(o)?,
        name: r.try_get(o + 1)?,
        role: r.try_get(o + 2)?,
        password_hash: r.try_get(o + 3)?,
        failed_logins: r.try_get(o + 4)?,
        locked_until_ms: r.try_get(o + 5)?,
        reveal_default: r.try_get::<_, i64>(o + 6)? != 0,
        disabled: r.try_get::<_, i64>(o + 7)? != 0,
        created_at_ms: r.try_get(o + 8)?,
    })
}

/// `severity` of `findings f` as a queue rank (see [`super::severity_rank`]).
const SEVERITY_RANK: &str =
    "CASE f.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2
     WHEN 'low' THEN 1 ELSE 0 END";

const ITEM_SELECT: &str = "SELECT i.id, i.verdict_id, i.recording_id, i.model_decision, i.severity_rank,
        i.teacher_id, i.created_at_ms, i.qa_sample, i.state, i.human_decision, i.version,
        i.first_decided_at_ms, i.decided_at_ms, i.claimed_by, u.name, i.claim_until_ms,
        (SELECT string_agg(DISTINCT f.label, ',') FROM findings f WHERE f.verdict_id = i.verdict_id),
        (SELECT COUNT(*) FROM findings f WHERE f.verdict_id = i.verdict_id)
    FROM review_items i LEFT JOIN review_users u ON u.id = i.claimed_by";

/// Parameters $1..$7: state, label, track, model decision, teacher, from, to (NULL: any).
const QUEUE_WHERE: &str = "i.in_queue = 1
    AND ($1::TEXT IS NULL OR i.state = $1)
    AND ($2::TEXT IS NULL OR EXISTS (SELECT 1 FROM findings f WHERE f.verdict_id = i.verdict_id AND f.label = $2))
    AND ($3::TEXT IS NULL OR EXISTS (SELECT 1 FROM findings f WHERE f.verdict_id = i.verdict_id AND f.track = $3))
    AND ($4::TEXT IS NULL OR i.model_decision = $4)
    AND ($5::TEXT IS NULL OR i.teacher_id = $5)
    AND ($6::BIGINT IS NULL OR i.created_at_ms >= $6)
    AND ($7::BIGINT IS NULL OR i.created_at_ms < $7)";

fn item_row(r: &Row) -> Result<ReviewItemRow, StoreError> {
    Ok(ReviewItemRow {
        id: r.try_get(0)?,
        verdict_id: r.try_get(1)?,
        recording_id: r.try_get(2)?,
        model_decision: r.try_get(3)?,
        severity_rank: r.try_get(4)?,
        teacher_id: r.try_get(5)?,
        created_at_ms: r.try_get(6)?,
        qa_sample: r.try_get::<_, i64>(7)? != 0,
        state: r.try_get(8)?,
        human_decision: r.try_get(9)?,
        version: r.try_get(10)?,
        first_decided_at_ms: r.try_get(11)?,
        decided_at_ms: r.try_get(12)?,
        claimed_by: r.try_get(13)?,
        claimed_by_name: r.try_get(14)?,
        claim_until_ms: r.try_get(15)?,
        labels: super::review_sql::split_labels(r.try_get(16)?),
        findings: r.try_get(17)?,
    })
}

const FINDING_COLUMNS: &str =
    "id, recording_id, label, severity, track, start_ms, end_ms, rule_id, reason, status,
    reviewer_note, evidence_path";

fn finding_row(r: &Row) -> Result<FindingRow, StoreError> {
    Ok(FindingRow {
        id: r.try_get(0)?,
        recording_id: r.try_get(1)?,
        label: r.try_get(2)?,
        severity: r.try_get(3)?,
        track: r.try_get(4)?,
        start_ms: r.try_get::<_, i64>(5)?.max(0) as u64,
        end_ms: r.try_get::<_, i64>(6)?.max(0) as u64,
        rule_id: r.try_get(7)?,
        reason: r.try_get(8)?,
        status: FindingStatus::parse(r.try_get(9)?)?,
        reviewer_note: r.try_get(10)?,
        evidence_path: r.try_get(11)?,
    })
}

const DECISION_SELECT: &str =
    "SELECT d.id, d.item_id, d.finding_id, d.action, d.reason_code, d.note, d.user_id,
        COALESCE(u.name, ''), d.item_version, d.outcome, d.created_at_ms
    FROM review_decisions d LEFT JOIN review_users u ON u.id = d.user_id";

fn decision_row(r: &Row) -> Result<DecisionRow, StoreError> {
    Ok(DecisionRow {
        id: r.try_get(0)?,
        item_id: r.try_get(1)?,
        finding_id: r.try_get(2)?,
        action: r.try_get(3)?,
        reason_code: r.try_get(4)?,
        note: r.try_get(5)?,
        user_id: r.try_get(6)?,
        user_name: r.try_get(7)?,
        item_version: r.try_get(8)?,
        outcome: r.try_get(9)?,
        created_at_ms: r.try_get(10)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
    }
}
