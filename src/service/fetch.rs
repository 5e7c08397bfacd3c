//! `POST /v1/recordings` with `{"s3": "s3://bucket/key"}`: the object is copied into the
//! recording's upload file as it streams in (ranged GETs pinned to the ETag seen first, resumed
//! after broken connections: [`crate::ingest::s3`]), so the audit follows it exactly as it follows
//! a tus upload, and the bytes are persisted before they are audited.

use std::io::{Read, Write};

use super::files::End;
use super::{ApiError, Shared};
use crate::ingest::s3::{ObjectInfo, S3Url};
use crate::store::RecordingState;
use axum::http::StatusCode;

/// Bytes copied between two offset updates.
const CHUNK: usize = 1 << 20;

/// The request body: which object to audit.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub s3: String,
}

/// Finds the object (`HeadObject`): its size and the ETag every later read is pinned to.
pub async fn resolve(state: &Shared, url: &str) -> Result<ObjectInfo, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let parsed = match S3Url::parse(url) {
        Some(Ok(u)) if !u.prefix.is_empty() && !u.prefix.ends_with('/') => u,
        Some(Ok(_)) => return Err(bad(format!("{url:?} names a prefix, not an object"))),
        Some(Err(e)) => return Err(bad(e.to_string())),
        None => return Err(bad(format!("{url:?} is not an s3:// URL"))),
    };
    let st = state.clone();
    let found = tokio::task::spawn_blocking(move || {
        let client = st.s3_client()?;
        client
            .head(&parsed.bucket, &parsed.prefix)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(format!("S3 task: {e}")))?;
    match found {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(bad(format!("{url}: no such object"))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("{url}: S3 answered: {e}"),
        )),
    }
}

/// Copies `object` into recording `id`'s upload file on a blocking thread. The upload completes
/// when the last byte is in; an object that cannot be read to the end (deleted, replaced, the
/// connection gone for good) ends the upload as expired, so the audit of what arrived is
/// partial, never `pass`.
pub fn start(state: Shared, id: String, object: ObjectInfo) {
    tokio::task::spawn_blocking(move || {
        let result = copy(&state, &id, &object);
        let (end, state_row) = match &result {
            Ok(_) => (End::Complete, RecordingState::Complete),
            Err(_) => (End::Expired, RecordingState::Expired),
        };
        if let Err(e) = state.store.set_recording_state(&id, state_row) {
            tracing::warn!(recording = %id, "recording state: {e}");
        }
        let persisted = *result.as_ref().unwrap_or(&0);
        let sig = state.files.signal(&id, persisted, end);
        sig.end(end);
        match result {
            Ok(n) => tracing::info!(recording = %id, bytes = n, "fetched from S3"),
            Err(e) => tracing::warn!(recording = %id, "S3 fetch stopped: {e}"),
        }
    });
}

fn copy(state: &Shared, id: &str, object: &ObjectInfo) -> Result<u64, String> {
    let client = state.s3_client()?;
    let path = state.files.path(id);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = client.open(object, 0);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let sig = state.files.signal(id, 0, End::Open);
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    return Err(format!(
                        "{} at byte {}: {e}",
                        object.uri(),
                        offset + filled as u64
                    ))
                }
            }
        }
        if filled == 0 {
            break;
        }
        file.write_all(&buf[..filled])
            .and_then(|_| file.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        state.store_segment_blocking(id, offset, offset + filled as u64)?;
        offset += filled as u64;
        let expires = crate::store::now_ms() + state.config.upload_expiry.as_millis() as i64;
        state
            .store
            .set_bytes_received(id, offset as i64, expires)
            .map_err(|e| e.to_string())?;
        sig.advance(offset);
        state.outbox.notify_one();
    }
    if offset != object.size {
        return Err(format!(
            "{}: {offset} of {} bytes read",
            object.uri(),
            object.size
        ));
    }
    Ok(offset)
}
