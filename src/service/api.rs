//! The recordings API: upload a whole file in one request, and read a recording's progress and
//! verdict (also for tus uploads, by the id in their `Location`).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::Caller;
use super::tus::{finish_upload, new_recording_id, own_recording, receive, RecordingMeta};
use super::{ApiError, Shared};
use crate::store::{NewRecording, RecordingRow};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/recordings", post(upload))
        .route("/v1/recordings/{id}", get(status))
        .route("/v1/recordings/{id}/verdict", get(verdict))
}

/// A recording's progress as `GET /v1/recordings/{id}` shows it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RecordingStatus {
    pub id: String,
    pub state: String,
    pub bytes_received: i64,
    pub upload_length: Option<i64>,
    pub media_ms_audited: i64,
    /// Findings so far; the final list is in the verdict.
    pub findings: serde_json::Value,
    pub session_id: Option<String>,
    pub role: Option<String>,
    pub teacher_id: Option<String>,
    /// Set once the verdict is final.
    pub decision: Option<String>,
    pub verdict_url: Option<String>,
}

async fn describe(state: &Shared, row: RecordingRow) -> Result<RecordingStatus, ApiError> {
    let decision = match row.verdict_key.clone() {
        // The human decision once a reviewer decided, as in the verdict document.
        Some(key) => {
            state
                .db(move |s| crate::review::decisions::current_decision(s, &key))
                .await?
        }
        None => None,
    };
    Ok(RecordingStatus {
        verdict_url: decision
            .as_ref()
            .map(|_| format!("/v1/recordings/{}/verdict", row.id)),
        findings: serde_json::from_str(&row.findings_json)
            .unwrap_or(serde_json::Value::Array(vec![])),
        id: row.id,
        state: row.state.as_str().to_string(),
        bytes_received: row.bytes_received,
        upload_length: row.upload_length,
        media_ms_audited: row.media_ms_audited,
        session_id: row.session_id,
        role: row.role,
        teacher_id: row.teacher_id,
        decision,
    })
}

/// `POST /v1/recordings?session_id=..&role=..&teacher_id=..` with the whole file as the body.
/// `Idempotency-Key`: the same key (per token) gives the same recording id and stores nothing new.
async fn upload(
    State(state): State<Shared>,
    Caller(token): Caller,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let base = ctype.split(';').next().unwrap_or("").trim();
    let from_s3 = base == "application/json";
    if !from_s3
        && !matches!(
            base,
            "video/webm" | "audio/webm" | "video/x-matroska" | "application/octet-stream"
        )
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {ctype:?} is not accepted: send the recording as video/webm, audio/webm, \
                 video/x-matroska or application/octet-stream, or name an S3 object as \
                 application/json {{\"s3\": \"s3://bucket/key\"}}"
            ),
        ));
    }
    let meta = RecordingMeta::from_pairs(q.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1-200 characters".into(),
        ));
    }
    let _admitted = state.admit(token.id)?;
    let (object, body) = if from_s3 {
        use http_body_util::BodyExt;
        let bytes = http_body_util::Limited::new(body, 4096)
            .collect()
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {e}")))?
            .to_bytes();
        let req: super::fetch::FetchRequest = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"s3\": \"s3://bucket/key\"}}: {e}"),
            )
        })?;
        let object = super::fetch::resolve(&state, &req.s3).await?;
        if object.size > state.config.max_upload_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{}: {} bytes is over the upload limit of {} bytes",
                    req.s3, object.size, state.config.max_upload_bytes
                ),
            ));
        }
        (Some(object), Body::empty())
    } else {
        (None, body)
    };
    let expires = crate::store::now_ms() + state.config.upload_expiry.as_millis() as i64;
    let new = NewRecording {
        id: new_recording_id(),
        token_id: token.id,
        idempotency_key: key,
        upload_length: object.as_ref().map(|o| o.size as i64),
        session_id: meta.session_id,
        role: meta.role,
        teacher_id: meta.teacher_id,
        expires_at_ms: expires,
    };
    let (row, created) = state.db(move |s| s.create_recording(&new)).await?;
    if !created {
        // The same request again (a retry after a lost answer): same id, nothing new stored.
        let status = describe(&state, row).await?;
        return Ok((StatusCode::OK, Json(status)).into_response());
    }
    let id = row.id.clone();
    if let Some(object) = object {
        // Audited while it streams in: the job starts on the first bytes.
        let path = state.files.path(&id);
        tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
        let rid = id.clone();
        state.db(move |s| s.enqueue_job(&rid)).await?;
        tracing::info!(recording = %id, bytes = object.size, "fetching from S3");
        super::fetch::start(state.clone(), id.clone(), object);
        let row = own_recording(&state, token.id, id).await?;
        let status = describe(&state, row).await?;
        return Ok((StatusCode::ACCEPTED, Json(status)).into_response());
    }
    let _lock = state.lock_upload(&id)?;
    let received = match receive(&state, &id, 0, state.config.max_upload_bytes, body, None).await {
        Ok(r) => r,
        Err(e) => {
            // Nothing usable arrived: the recording is closed so the key is not stuck half-done.
            let rid = id.clone();
            let _ = state
                .db(move |s| s.set_recording_state(&rid, crate::store::RecordingState::Terminated))
                .await;
            let _ = tokio::fs::remove_file(state.files.path(&id)).await;
            return Err(ApiError { tus: false, ..e });
        }
    };
    if let Some(why) = received.cut_short {
        let rid = id.clone();
        let _ = state
            .db(move |s| s.set_recording_state(&rid, crate::store::RecordingState::Terminated))
            .await;
        let _ = tokio::fs::remove_file(state.files.path(&id)).await;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "request body incomplete ({why}); send the file again under a new Idempotency-Key"
            ),
        ));
    }
    let n = received.new_offset;
    state.store_segment(&id, 0, n).await?;
    let (rid, expires) = (id.clone(), crate::store::now_ms());
    state
        .db(move |s| {
            s.set_upload_length(&rid, n as i64)?;
            s.set_bytes_received(&rid, n as i64, expires)?;
            s.enqueue_job(&rid)?;
            Ok(())
        })
        .await?;
    finish_upload(&state, &id, n).await?;
    state.outbox.notify_one();
    let row = own_recording(&state, token.id, id).await?;
    let status = describe(&state, row).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

async fn status(
    State(state): State<Shared>,
    Caller(token): Caller,
    Path(id): Path<String>,
) -> Result<Json<RecordingStatus>, ApiError> {
    let row = own_recording(&state, token.id, id).await?;
    Ok(Json(describe(&state, row).await?))
}

async fn verdict(
    State(state): State<Shared>,
    Caller(token): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = own_recording(&state, token.id, id).await?;
    let Some(key) = row.verdict_key.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "no final verdict yet (state {}, {} ms audited)",
                row.state.as_str(),
                row.media_ms_audited
            ),
        ));
    };
    // After human review, the reviewed decision (the model's is kept alongside).
    let json = state
        .db(move |s| crate::review::decisions::api_verdict(s, &key))
        .await?
        .ok_or_else(|| ApiError::internal("verdict row missing".into()))?;
    Ok((StatusCode::OK, [("content-type", "application/json")], json).into_response())
}
