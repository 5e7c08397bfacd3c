//! tus 1.0 at `/files/`: core protocol plus creation, creation-defer-length, checksum (sha1),
//! termination and expiration. <https://tus.io/protocols/resumable-upload>
//!
//! A PATCH streams its body to the upload file, fsyncs, records the new offset in the store and
//! only then answers: an acknowledged byte survives a crash. A PATCH at the wrong offset gets 409
//! and changes nothing; a checksum mismatch gets 460 and the file is cut back to where it was.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::auth::Caller;
use super::files::End;
use super::{ApiError, Shared};
use crate::store::{NewRecording, RecordingRow, RecordingState};

pub const TUS_VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,creation-defer-length,checksum,termination,expiration";
/// tus's status for a checksum mismatch.
pub const CHECKSUM_MISMATCH: u16 = 460;
/// The first bytes of every WebM/Matroska file (EBML header ID).
const EBML_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/files/", post(create).options(options))
        .route(
            "/files/{id}",
            axum::routing::head(head)
                .patch(patch)
                .delete(terminate)
                .options(options),
        )
}

fn tus_err(status: StatusCode, m: impl Into<String>) -> ApiError {
    ApiError::new(status, m.into()).tus()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn check_version(h: &HeaderMap) -> Result<(), ApiError> {
    match header(h, "tus-resumable") {
        Some(TUS_VERSION) => Ok(()),
        Some(other) => Err(tus_err(
            StatusCode::PRECONDITION_FAILED,
            format!("Tus-Resumable {other} is not supported; this server speaks {TUS_VERSION}"),
        )),
        None => Err(tus_err(
            StatusCode::PRECONDITION_FAILED,
            "missing Tus-Resumable header",
        )),
    }
}

fn base_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
}

fn http_date(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&fmt).unwrap_or_default()
}

async fn options(State(state): State<Shared>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    base_headers(&mut r);
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    h.insert("tus-checksum-algorithm", HeaderValue::from_static("sha1"));
    h.insert("tus-max-size", state.config.max_upload_bytes.into());
    r
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
pub fn parse_metadata(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, ' ');
        let key = it.next().unwrap_or_default().to_string();
        let value = match it.next() {
            Some(v) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .map_err(|_| format!("Upload-Metadata value of {key:?} is not base64"))?;
                String::from_utf8(bytes)
                    .map_err(|_| format!("Upload-Metadata value of {key:?} is not UTF-8"))?
            }
            None => String::new(),
        };
        out.push((key, value));
    }
    Ok(out)
}

/// What a client may say about a recording (tus metadata or query parameters).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordingMeta {
    pub session_id: Option<String>,
    pub role: Option<String>,
    pub teacher_id: Option<String>,
}

impl RecordingMeta {
    pub fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut m = RecordingMeta::default();
        for (k, v) in pairs {
            let v = Some(v.to_string()).filter(|v| !v.is_empty());
            match k {
                "session_id" | "class_session_id" => m.session_id = v,
                "teacher_id" => m.teacher_id = v,
                "role" => {
                    if let Some(r) = &v {
                        if r != "camera" && r != "desktop" {
                            return Err(format!("role must be camera or desktop, not {r:?}"));
                        }
                    }
                    m.role = v
                }
                _ => {} // filename, filetype and the like: not needed, not stored.
            }
        }
        for (name, v) in [("session_id", &m.session_id), ("teacher_id", &m.teacher_id)] {
            if v.as_ref().is_some_and(|v| v.len() > 200) {
                return Err(format!("{name} is longer than 200 bytes"));
            }
        }
        Ok(m)
    }
}

/// `rec-` and 16 random hex digits: names nothing about the class.
pub fn new_recording_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    format!("rec-{}", hex::encode(b))
}

async fn create(
    State(state): State<Shared>,
    Caller(token): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let length = match (
        header(&headers, "upload-length"),
        header(&headers, "upload-defer-length"),
    ) {
        (Some(l), _) => Some(l.parse::<u64>().map_err(|_| {
            tus_err(
                StatusCode::BAD_REQUEST,
                format!("Upload-Length {l:?} is not a number"),
            )
        })?),
        (None, Some("1")) => None,
        (None, Some(_)) => {
            return Err(tus_err(
                StatusCode::BAD_REQUEST,
                "Upload-Defer-Length must be 1",
            ))
        }
        (None, None) => {
            return Err(tus_err(
                StatusCode::BAD_REQUEST,
                "need Upload-Length or Upload-Defer-Length: 1",
            ))
        }
    };
    if let Some(l) = length.filter(|&l| l > state.config.max_upload_bytes) {
        return Err(tus_err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Upload-Length {l} exceeds the limit of {} bytes",
                state.config.max_upload_bytes
            ),
        ));
    }
    let pairs = parse_metadata(header(&headers, "upload-metadata").unwrap_or(""))
        .map_err(|m| tus_err(StatusCode::BAD_REQUEST, m))?;
    let meta = RecordingMeta::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|m| tus_err(StatusCode::BAD_REQUEST, m))?;
    let expires = crate::store::now_ms() + state.config.upload_expiry.as_millis() as i64;
    let new = NewRecording {
        id: new_recording_id(),
        token_id: token.id,
        idempotency_key: header(&headers, "idempotency-key").map(str::to_string),
        upload_length: length.map(|l| l as i64),
        session_id: meta.session_id,
        role: meta.role,
        teacher_id: meta.teacher_id,
        expires_at_ms: expires,
    };
    let (row, created) = state
        .db(move |s| {
            let (row, created) = s.create_recording(&new)?;
            if created {
                // The audit starts with the first bytes, not after the last.
                s.enqueue_job(&row.id)?;
            }
            Ok((row, created))
        })
        .await
        .map_err(ApiError::tus)?;
    if created {
        tracing::info!(recording = %row.id, deferred = length.is_none(), "upload created");
        if length == Some(0) {
            finish_upload(&state, &row.id, 0).await?;
        }
    }
    let mut r = StatusCode::CREATED.into_response();
    base_headers(&mut r);
    let h = r.headers_mut();
    h.insert(
        "location",
        HeaderValue::from_str(&format!("/files/{}", row.id)).expect("ascii id"),
    );
    if let Ok(v) = HeaderValue::from_str(&http_date(row.expires_at_ms)) {
        h.insert("upload-expires", v);
    }
    Ok(r)
}

/// The caller's recording, or 404 (another token's recording does not exist for this caller).
pub async fn own_recording(
    state: &Shared,
    token_id: i64,
    id: String,
) -> Result<RecordingRow, ApiError> {
    match state.db(move |s| s.get_recording(&id)).await? {
        Some(r) if r.token_id == token_id => Ok(r),
        _ => Err(ApiError::not_found()),
    }
}

fn gone(row: &RecordingRow) -> Option<ApiError> {
    match row.state {
        RecordingState::Terminated => Some(tus_err(StatusCode::GONE, "upload was terminated")),
        RecordingState::Expired => Some(tus_err(StatusCode::GONE, "upload expired")),
        _ => None,
    }
}

async fn head(
    State(state): State<Shared>,
    Caller(token): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let row = own_recording(&state, token.id, id)
        .await
        .map_err(ApiError::tus)?;
    if let Some(e) = gone(&row) {
        return Err(e);
    }
    let mut r = StatusCode::OK.into_response();
    base_headers(&mut r);
    let h = r.headers_mut();
    h.insert("upload-offset", row.bytes_received.into());
    match row.upload_length {
        Some(l) => {
            h.insert("upload-length", l.into());
        }
        None => {
            h.insert("upload-defer-length", HeaderValue::from_static("1"));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(row.expires_at_ms)) {
        h.insert("upload-expires", v);
    }
    Ok(r)
}

/// A parsed `Upload-Checksum: sha1 <base64>`.
fn parse_checksum(h: &HeaderMap) -> Result<Option<[u8; 20]>, ApiError> {
    let Some(v) = header(h, "upload-checksum") else {
        return Ok(None);
    };
    let (algo, sum) = v.split_once(' ').ok_or_else(|| {
        tus_err(
            StatusCode::BAD_REQUEST,
            "Upload-Checksum must be: sha1 <base64>",
        )
    })?;
    if !algo.eq_ignore_ascii_case("sha1") {
        return Err(tus_err(
            StatusCode::BAD_REQUEST,
            format!("checksum algorithm {algo:?} is not supported (sha1 is)"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sum.trim())
        .map_err(|_| {
            tus_err(
                StatusCode::BAD_REQUEST,
                "Upload-Checksum value is not base64",
            )
        })?;
    let arr: [u8; 20] = bytes
        .try_into()
        .map_err(|_| tus_err(StatusCode::BAD_REQUEST, "a sha1 checksum is 20 bytes"))?;
    Ok(Some(arr))
}

/// How a body stream into an upload file ended.
pub struct Received {
    pub new_offset: u64,
    /// Why the body stopped early (client gone, timeout); the bytes before it are kept.
    pub cut_short: Option<String>,
}

/// Streams `body` into the upload file from `offset`, fsyncs and returns the new offset.
/// `limit`: the most bytes the file may end up with. `checksum`: all-or-nothing (a mismatch or
/// an interrupted body keeps nothing); without one, an interrupted body keeps what came.
pub async fn receive(
    state: &Shared,
    id: &str,
    offset: u64,
    limit: u64,
    body: Body,
    checksum: Option<[u8; 20]>,
) -> Result<Received, ApiError> {
    use http_body_util::BodyExt;
    let path = state.files.path(id);
    let io = |e: std::io::Error| ApiError::internal(format!("writing upload {id}: {e}"));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .await
        .map_err(io)?;
    // Anything past the acknowledged offset is a leftover of a request that never got its answer.
    file.set_len(offset).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(io)?;
    let mut body = body;
    let mut sha = Sha1::new();
    let mut written = 0u64;
    let mut cut_short = None;
    let mut first = offset == 0;
    let mut head = Vec::new();
    loop {
        let frame = match tokio::time::timeout(state.config.body_timeout, body.frame()).await {
            Err(_) => {
                cut_short = Some(format!(
                    "no bytes for {} s",
                    state.config.body_timeout.as_secs()
                ));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                cut_short = Some(format!("request body: {e}"));
                break;
            }
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(b) => b,
                Err(_) => continue, // trailers
            },
        };
        if offset + written + frame.len() as u64 > limit {
            let _ = file.set_len(offset).await;
            return Err(tus_err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body goes past the upload's length ({limit} bytes)"),
            ));
        }
        if first {
            head.extend_from_slice(&frame[..frame.len().min(4 - head.len().min(4))]);
            if head.len() >= 4 {
                first = false;
                if head[..4] != EBML_MAGIC {
                    let _ = file.set_len(offset).await;
                    return Err(tus_err(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "not a WebM/Matroska stream: the first bytes are not an EBML header",
                    ));
                }
            }
        }
        sha.update(&frame);
        file.write_all(&frame).await.map_err(io)?;
        written += frame.len() as u64;
        state.metrics.upload_bytes.add(frame.len() as u64);
    }
    if let Some(expected) = checksum {
        let got: [u8; 20] = sha.finalize().into();
        if cut_short.is_some() || got != expected {
            file.set_len(offset).await.map_err(io)?;
            file.sync_data().await.map_err(io)?;
            if let Some(why) = cut_short {
                return Err(tus_err(
                    StatusCode::BAD_REQUEST,
                    format!("body incomplete ({why}); nothing kept"),
                ));
            }
            return Err(tus_err(
                StatusCode::from_u16(CHECKSUM_MISMATCH).expect("valid"),
                "checksum mismatch: nothing of this request was kept",
            ));
        }
    }
    file.sync_data().await.map_err(io)?;
    Ok(Received {
        new_offset: offset + written,
        cut_short,
    })
}

/// Every byte is in: the store says so and the auditor reads to the end.
pub async fn finish_upload(state: &Shared, id: &str, offset: u64) -> Result<(), ApiError> {
    let rid = id.to_string();
    state
        .db(move |s| s.set_recording_state(&rid, RecordingState::Complete))
        .await?;
    let sig = state.files.signal(id, offset, End::Complete);
    sig.advance(offset);
    sig.end(End::Complete);
    state.outbox.notify_one();
    tracing::info!(recording = %id, bytes = offset, "upload complete");
    Ok(())
}

async fn patch(
    State(state): State<Shared>,
    Caller(token): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    if header(&headers, "content-type") != Some("application/offset+octet-stream") {
        return Err(tus_err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH needs Content-Type: application/offset+octet-stream",
        ));
    }
    let offset: u64 = header(&headers, "upload-offset")
        .ok_or_else(|| tus_err(StatusCode::BAD_REQUEST, "missing Upload-Offset"))?
        .parse()
        .map_err(|_| tus_err(StatusCode::BAD_REQUEST, "Upload-Offset is not a number"))?;
    let checksum = parse_checksum(&headers)?;
    let _admitted = state.admit(token.id).map_err(ApiError::tus)?;
    let _lock = state.lock_upload(&id).map_err(ApiError::tus)?;
    let mut row = own_recording(&state, token.id, id.clone())
        .await
        .map_err(ApiError::tus)?;
    if let Some(e) = gone(&row) {
        return Err(e);
    }
    if row.state != RecordingState::Uploading {
        return Err(tus_err(StatusCode::FORBIDDEN, "upload is already complete"));
    }
    if offset != row.bytes_received as u64 {
        return Err(tus_err(
            StatusCode::CONFLICT,
            format!(
                "Upload-Offset {offset} does not match the upload's offset {}",
                row.bytes_received
            ),
        ));
    }
    if let Some(l) = header(&headers, "upload-length") {
        let l: u64 = l
            .parse()
            .map_err(|_| tus_err(StatusCode::BAD_REQUEST, "Upload-Length is not a number"))?;
        match row.upload_length {
            Some(known) if known as u64 != l => {
                return Err(tus_err(
                    StatusCode::BAD_REQUEST,
                    format!("Upload-Length {l} differs from the length set before ({known})"),
                ))
            }
            Some(_) => {}
            None => {
                if l > state.config.max_upload_bytes || l < offset {
                    return Err(tus_err(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Upload-Length {l} is out of range"),
                    ));
                }
                let rid = id.clone();
                state
                    .db(move |s| s.set_upload_length(&rid, l as i64))
                    .await
                    .map_err(ApiError::tus)?;
                row.upload_length = Some(l as i64);
            }
        }
    }
    let limit = row
        .upload_length
        .map(|l| l as u64)
        .unwrap_or(state.config.max_upload_bytes);
    let received = receive(&state, &id, offset, limit, body, checksum).await?;
    let new_offset = received.new_offset;
    state
        .store_segment(&id, offset, new_offset)
        .await
        .map_err(ApiError::tus)?;
    let expires = crate::store::now_ms() + state.config.upload_expiry.as_millis() as i64;
    let rid = id.clone();
    state
        .db(move |s| s.set_bytes_received(&rid, new_offset as i64, expires))
        .await
        .map_err(ApiError::tus)?;
    let sig = state.files.signal(&id, new_offset, End::Open);
    sig.advance(new_offset);
    state.outbox.notify_one();
    if row.upload_length == Some(new_offset as i64) {
        finish_upload(&state, &id, new_offset)
            .await
            .map_err(ApiError::tus)?;
    }
    if let Some(why) = &received.cut_short {
        tracing::info!(recording = %id, offset = new_offset, "PATCH cut short ({why}); bytes so far kept");
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    base_headers(&mut r);
    let h = r.headers_mut();
    h.insert("upload-offset", new_offset.into());
    if let Ok(v) = HeaderValue::from_str(&http_date(expires)) {
        h.insert("upload-expires", v);
    }
    Ok(r)
}

async fn terminate(
    State(state): State<Shared>,
    Caller(token): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let row = own_recording(&state, token.id, id.clone())
        .await
        .map_err(ApiError::tus)?;
    if row.state == RecordingState::Terminated {
        return Err(tus_err(StatusCode::GONE, "upload was terminated"));
    }
    let rid = id.clone();
    state
        .db(move |s| s.set_recording_state(&rid, RecordingState::Terminated))
        .await
        .map_err(ApiError::tus)?;
    state
        .files
        .signal(&id, row.bytes_received as u64, End::Terminated)
        .end(End::Terminated);
    let _ = tokio::fs::remove_file(state.files.path(&id)).await;
    tracing::info!(recording = %id, "upload terminated");
    let mut r = StatusCode::NO_CONTENT.into_response();
    base_headers(&mut r);
    Ok(r)
}

/// Marks uploads that received nothing for `upload_expiry` as expired: their audit ends where
/// their bytes end, as partial.
pub fn start_expiry_sweeper(state: Shared) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = crate::store::now_ms();
            let expired = match state
                .db(move |s| {
                    let ids = s.expired_uploads(now)?;
                    for id in &ids {
                        s.set_recording_state(id, RecordingState::Expired)?;
                    }
                    Ok(ids)
                })
                .await
            {
                Ok(ids) => ids,
                Err(_) => continue,
            };
            for id in expired {
                tracing::info!(recording = %id, "upload expired; auditing what arrived");
                if let Some(sig) = state.files.existing(&id) {
                    sig.end(End::Expired);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_decode_and_bad_values_are_named() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let raw = format!(
            "session_id {},role {},filename {}, empty",
            b64("class-7"),
            b64("camera"),
            b64("x.webm")
        );
        let pairs = parse_metadata(&raw).unwrap();
        assert_eq!(pairs.len(), 4);
        let meta =
            RecordingMeta::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(meta.session_id.as_deref(), Some("class-7"));
        assert_eq!(meta.role.as_deref(), Some("camera"));
        assert!(parse_metadata("role %%%").unwrap_err().contains("role"));
        let bad = RecordingMeta::from_pairs([("role", "phone")].into_iter()).unwrap_err();
        assert!(bad.contains("camera or desktop"), "{bad}");
    }

    #[test]
    fn http_dates_are_rfc_7231() {
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
