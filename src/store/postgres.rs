//! PostgreSQL backend, for a service whose audit workers share one database. Same schema as the
//! SQLite backend (BIGINT for every integer, BYTEA for embeddings); migrations are applied under
//! an advisory lock so several processes can start at once.

use postgres::{Client, NoTls, Row};

use super::{
    to_i64, Backend, DeliveryRow, FindingRow, FindingStatus, JobRow, NewRecording, RecordingRow,
    RecordingState, StoreError, TokenRow,
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
    // 3: batch rescans: which content an object version holds, so a rescan can skip an object
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

    fn put_verdict(&mut self, verdict: &Verdict, json: &str, t: i64) -> Result<bool, StoreError> {
        let key = verdict.idempotency_key();
        let mut tx = self.client.transaction()?;
        let inserted = tx.query_opt(
            "INSERT INTO verdicts (idempotency_key, recording_id, sha256, decision, verdict_json, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[&key, &verdict.recording.id, &verdict.recording.sha256, &verdict.decision.as_str(), &json, &t],
        )?;
        let Some(row) = inserted else {
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
                "SELECT id, recording_id, label, severity, track, start_ms, end_ms, rule_id, reason, status,
                        reviewer_note, evidence_path
                 FROM findings WHERE $1::TEXT IS NULL OR status = $1 ORDER BY recording_id, start_ms, id",
                &[&status],
            )?
            .iter()
            .map(|r| {
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
