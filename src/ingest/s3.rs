//! Recordings in S3 (or an S3-compatible server): listing, and reading an object as a plain
//! blocking byte stream for the push demuxer.
//!
//! The audit path is synchronous threads, so [`S3Client`] is a blocking facade over an internal
//! tokio runtime; do not call it from async code (use `spawn_blocking`).
//!
//! [`ObjectReader`] never copies an object to disk or holds more of it than one network chunk: it
//! streams ranged GETs, each pinned to the ETag seen when the object was listed (`If-Match`), so an
//! object replaced while it is being read fails with [`S3Error::Changed`] instead of splicing two
//! versions into one recording. A connection that breaks mid-object is reopened at the byte
//! offset reached, with exponential backoff, a bounded number of times in a row.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{0:?} is not an s3://bucket/prefix URL")]
    BadUrl(String),
    #[error("S3 client set-up: {0}")]
    Setup(String),
    #[error("{uri}: not found (deleted?)")]
    NotFound { uri: String },
    #[error("{uri}: the object changed while it was read (ETag {etag} no longer matches)")]
    Changed { uri: String, etag: String },
    #[error("{uri}: {op} failed after {attempts} attempts: {reason}")]
    Exhausted {
        uri: String,
        op: &'static str,
        attempts: u32,
        reason: String,
    },
    #[error("{uri}: {op}: {reason}")]
    Request {
        uri: String,
        op: &'static str,
        reason: String,
    },
    #[error("{uri}: unexpected answer from the server: {detail}")]
    Protocol { uri: String, detail: String },
}

/// `s3://bucket/prefix`: a bucket and a key prefix (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    /// `None` when `s` is not an `s3://` URL at all (a local path); `Err` when it is a bad one.
    pub fn parse(s: &str) -> Option<Result<S3Url, S3Error>> {
        let rest = s.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // Bucket names: 3-63 characters of lowercase letters, digits, '.' and '-'.
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        Some(if valid {
            Ok(S3Url {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        } else {
            Err(S3Error::BadUrl(s.to_string()))
        })
    }

    /// The key of `name` under this prefix, with exactly one '/' between them.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            format!("{}{name}", self.prefix)
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// One object as listed: the ETag and size pin the version that will be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub size: u64,
}

impl ObjectInfo {
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Where to connect. Region, credentials and (unless given here) the endpoint come from the
/// standard AWS chain: `AWS_*` variables, `~/.aws/config` and `credentials`, SSO-less profiles,
/// web identity, ECS and EC2 instance metadata.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// An S3-compatible server (MinIO, moto, ...): requests then use path-style addressing,
    /// which such servers expect.
    pub endpoint_url: Option<String>,
    pub retry: Retry,
}

/// Backoff for transient failures (connection errors, timeouts, 5xx, throttling): at most
/// `attempts` tries in a row, sleeping a random time up to `base * 2^n` (capped at `max`) between.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
    /// A body that sends nothing for this long counts as a broken connection.
    pub stall: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            stall: Duration::from_secs(30),
        }
    }
}

impl Retry {
    fn delay(&self, failures: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        // Full jitter: clients that failed together do not retry together.
        let ms = cap.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms.max(1)))
    }
}

/// A blocking S3 client. Cheap to clone; clones share the runtime and the connection pool.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    // Declared first so the client (whose connections live on the runtime) is dropped before it.
    client: aws_sdk_s3::Client,
    retry: Retry,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client").finish_non_exhaustive()
    }
}

/// Whether an error is worth another try.
fn transient<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, status: Option<u16>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            status.is_some_and(|c| c >= 500 || c == 429)
                || matches!(
                    s.err().code(),
                    Some("SlowDown" | "InternalError" | "RequestTimeout" | "ServiceUnavailable")
                )
        }
        _ => false,
    }
}

/// The HTTP status of a failed request, when there was a response.
fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// One line for an SDK error: its code and message when the server sent them.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => format!("{err}"),
            }
        }
        other => {
            // The SDK's Display is terse ("dispatch failure"); the source chain says why.
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(cause) = src {
                s = format!("{s}: {cause}");
                src = cause.source();
            }
            s
        }
    }
}

impl S3Client {
    pub fn new(opts: &S3Options) -> Result<S3Client, S3Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(|e| S3Error::Setup(e.to_string()))?;
        let client = rt.block_on(async {
            use aws_config::meta::region::RegionProviderChain;
            let region = RegionProviderChain::default_provider().or_else("us-east-1");
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(region)
                // Retries are ours (see `Retry`): the SDK's would multiply with them, and a
                // body that breaks mid-stream is beyond the SDK's retry anyway.
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        // A server that takes a request and never answers is a broken
                        // connection, not a reason to wait forever.
                        .read_timeout(opts.retry.stall)
                        .build(),
                );
            if let Some(url) = &opts.endpoint_url {
                loader = loader.endpoint_url(url);
            }
            let shared = loader.load().await;
            let conf = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(opts.endpoint_url.is_some())
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        });
        Ok(S3Client {
            inner: Arc::new(Inner {
                client,
                retry: opts.retry,
                rt,
            }),
        })
    }

    /// Runs `op` until it succeeds, fails permanently, or has failed `attempts` times in a row.
    fn retrying<T>(
        &self,
        uri: &str,
        op: &'static str,
        mut call: impl FnMut() -> Result<T, (S3Error, bool)>,
    ) -> Result<T, S3Error> {
        let retry = self.inner.retry;
        let mut failures = 0;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err((e, true)) => {
                    failures += 1;
                    if failures >= retry.attempts.max(1) {
                        return Err(S3Error::Exhausted {
                            uri: uri.to_string(),
                            op,
                            attempts: failures,
                            reason: e.to_string(),
                        });
                    }
                    tracing::debug!(op, failures, "transient S3 error, retrying: {e}");
                    std::thread::sleep(retry.delay(failures - 1));
                }
                Err((e, false)) => return Err(e),
            }
        }
    }

    /// Every object under `url` whose key ends in a media extension, in key order.
    pub fn list(&self, url: &S3Url) -> Result<Vec<ObjectInfo>, S3Error> {
        self.list_matching(url, super::is_media_name)
    }

    /// Every object under `url`, in key order.
    pub fn list_all(&self, url: &S3Url) -> Result<Vec<ObjectInfo>, S3Error> {
        self.list_matching(url, |_| true)
    }

    fn list_matching(
        &self,
        url: &S3Url,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<ObjectInfo>, S3Error> {
        let uri = url.to_string();
        self.retrying(&uri, "ListObjectsV2", || {
            self.inner.rt.block_on(async {
                let mut pages = self
                    .inner
                    .client
                    .list_objects_v2()
                    .bucket(&url.bucket)
                    .prefix(&url.prefix)
                    .into_paginator()
                    .send();
                let mut found = Vec::new();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| {
                        let status = status_of(&e);
                        let t = transient(&e, status);
                        let err = S3Error::Request {
                            uri: uri.clone(),
                            op: "ListObjectsV2",
                            reason: describe(&e),
                        };
                        (err, t)
                    })?;
                    for o in page.contents() {
                        let (Some(key), Some(etag)) = (o.key(), o.e_tag()) else {
                            continue;
                        };
                        if !keep(key) {
                            continue;
                        }
                        found.push(ObjectInfo {
                            bucket: url.bucket.clone(),
                            key: key.to_string(),
                            etag: etag.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                        });
                    }
                }
                found.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(found)
            })
        })
    }

    /// The current version of one object; `Ok(None)` when there is none.
    pub fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let uri = format!("s3://{bucket}/{key}");
        self.retrying(&uri, "HeadObject", || {
            self.inner.rt.block_on(async {
                match self
                    .inner
                    .client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(h) => Ok(Some(ObjectInfo {
                        bucket: bucket.to_string(),
                        key: key.to_string(),
                        etag: h.e_tag().unwrap_or_default().to_string(),
                        size: h.content_length().unwrap_or(0).max(0) as u64,
                    })),
                    Err(e) if status_of(&e) == Some(404) => Ok(None),
                    Err(e) => {
                        let t = transient(&e, status_of(&e));
                        Err((
                            S3Error::Request {
                                uri: uri.clone(),
                                op: "HeadObject",
                                reason: describe(&e),
                            },
                            t,
                        ))
                    }
                }
            })
        })
    }

    /// A small object read whole (a verdict); `Ok(None)` when there is none.
    pub fn get_small(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, S3Error> {
        let uri = format!("s3://{bucket}/{key}");
        self.retrying(&uri, "GetObject", || {
            self.inner.rt.block_on(async {
                let out = match self
                    .inner
                    .client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(o) => o,
                    Err(e) if status_of(&e) == Some(404) => return Ok(None),
                    Err(e) => {
                        let t = transient(&e, status_of(&e));
                        return Err((
                            S3Error::Request {
                                uri: uri.clone(),
                                op: "GetObject",
                                reason: describe(&e),
                            },
                            t,
                        ));
                    }
                };
                match out.body.collect().await {
                    Ok(b) => Ok(Some(b.into_bytes().to_vec())),
                    Err(e) => Err((
                        S3Error::Request {
                            uri: uri.clone(),
                            op: "GetObject",
                            reason: e.to_string(),
                        },
                        true,
                    )),
                }
            })
        })
    }

    /// Writes one small object (a verdict) from memory.
    pub fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), S3Error> {
        self.put_body(bucket, key, &Body::Bytes(Bytes::from(body)), content_type)
    }

    /// Writes one object streamed from a file (evidence, the extracted microphone), so a long
    /// recording's audio is never held in memory whole.
    pub fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<(), S3Error> {
        self.put_body(bucket, key, &Body::File(path), content_type)
    }

    /// Writes bytes `offset..offset + len` of a file as one object (a stored upload segment),
    /// streamed, never read into memory whole.
    pub fn put_file_range(
        &self,
        bucket: &str,
        key: &str,
        path: &std::path::Path,
        offset: u64,
        len: u64,
    ) -> Result<(), S3Error> {
        self.put_body(
            bucket,
            key,
            &Body::FileRange(path, offset, len),
            "application/octet-stream",
        )
    }

    /// Deletes one object (absent is fine: deleting twice changes nothing).
    pub fn delete(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        let uri = format!("s3://{bucket}/{key}");
        self.retrying(&uri, "DeleteObject", || {
            self.inner.rt.block_on(async {
                match self
                    .inner
                    .client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if status_of(&e) == Some(404) => Ok(()),
                    Err(e) => {
                        let t = transient(&e, status_of(&e));
                        Err((
                            S3Error::Request {
                                uri: uri.clone(),
                                op: "DeleteObject",
                                reason: describe(&e),
                            },
                            t,
                        ))
                    }
                }
            })
        })
    }

    fn put_body(
        &self,
        bucket: &str,
        key: &str,
        body: &Body<'_>,
        content_type: &str,
    ) -> Result<(), S3Error> {
        let uri = format!("s3://{bucket}/{key}");
        self.retrying(&uri, "PutObject", || {
            self.inner.rt.block_on(async {
                let request = |reason: String, transient: bool| {
                    (
                        S3Error::Request {
                            uri: uri.clone(),
                            op: "PutObject",
                            reason,
                        },
                        transient,
                    )
                };
                let stream = match body {
                    Body::Bytes(b) => ByteStream::from(b.clone()),
                    Body::File(p) => ByteStream::from_path(p)
                        .await
                        .map_err(|e| request(format!("{}: {e}", p.display()), false))?,
                    Body::FileRange(p, offset, len) => ByteStream::read_from()
                        .path(p)
                        .offset(*offset)
                        .length(aws_sdk_s3::primitives::Length::Exact(*len))
                        .build()
                        .await
                        .map_err(|e| request(format!("{}: {e}", p.display()), false))?,
                };
                self.inner
                    .client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(stream)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| request(describe(&e), transient(&e, status_of(&e))))
            })
        })
    }

    /// A blocking reader of `object` from byte `offset` on, pinned to its listed ETag.
    pub fn open(&self, object: &ObjectInfo, offset: u64) -> ObjectReader {
        ObjectReader {
            client: self.clone(),
            object: object.clone(),
            pos: offset.min(object.size),
            body: None,
            chunk: Bytes::new(),
            failed: None,
            status: ReadStatus::default(),
        }
    }

    /// One ranged GET from `pos` to the end, checked to be the range and the version asked for.
    async fn get_range(&self, o: &ObjectInfo, pos: u64) -> Result<ByteStream, (S3Error, bool)> {
        let uri = o.uri();
        let out = self
            .inner
            .client
            .get_object()
            .bucket(&o.bucket)
            .key(&o.key)
            .range(format!("bytes={pos}-"))
            .if_match(&o.etag)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let status = status_of(&e);
                let no_such_key = e.as_service_error().is_some_and(|s| s.is_no_such_key());
                return Err(match status {
                    _ if no_such_key => (S3Error::NotFound { uri }, false),
                    Some(404) => (S3Error::NotFound { uri }, false),
                    // 412: If-Match failed. 416: the object is now shorter than the listed size.
                    Some(412 | 416) => (
                        S3Error::Changed {
                            uri,
                            etag: o.etag.clone(),
                        },
                        false,
                    ),
                    _ => {
                        let t = transient(&e, status);
                        (
                            S3Error::Request {
                                uri,
                                op: "GetObject",
                                reason: describe(&e),
                            },
                            t,
                        )
                    }
                });
            }
        };
        // A server that ignores If-Match or Range must not get to splice versions or restart
        // the stream at byte 0 under our offset.
        if out.e_tag().is_some_and(|t| t != o.etag) {
            return Err((
                S3Error::Changed {
                    uri,
                    etag: o.etag.clone(),
                },
                false,
            ));
        }
        let range_ok = match out.content_range() {
            Some(r) => r.starts_with(&format!("bytes {pos}-")),
            None => pos == 0,
        };
        if !range_ok {
            return Err((
                S3Error::Protocol {
                    uri,
                    detail: format!(
                        "asked for bytes from {pos}, got Content-Range {:?}",
                        out.content_range()
                    ),
                },
                false,
            ));
        }
        Ok(out.body)
    }
}

/// The body of an upload, made afresh for every attempt.
enum Body<'a> {
    Bytes(Bytes),
    File(&'a std::path::Path),
    /// `len` bytes of the file from `offset`.
    FileRange(&'a std::path::Path, u64, u64),
}

/// What a reader has done, readable after the reader itself moved to another thread.
#[derive(Debug, Clone, Default)]
pub struct ReadStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// Offset reached (the next byte to read).
    offset: AtomicU64,
    requests: AtomicU64,
    resumes: AtomicU64,
    failure: Mutex<Option<S3Error>>,
}

impl ReadStatus {
    pub fn offset(&self) -> u64 {
        self.inner.offset.load(Ordering::Acquire)
    }

    /// GET requests made.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Times the stream broke and was reopened at the offset reached.
    pub fn resumes(&self) -> u64 {
        self.inner.resumes.load(Ordering::Relaxed)
    }

    /// The error that ended the read, if one did (taken: asked once).
    pub fn take_failure(&self) -> Option<S3Error> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// A blocking `Read` over ranged GETs of one object version (see the module docs).
pub struct ObjectReader {
    client: S3Client,
    object: ObjectInfo,
    pos: u64,
    body: Option<ByteStream>,
    chunk: Bytes,
    /// Once failed, every later read repeats the error without another request.
    failed: Option<String>,
    status: ReadStatus,
}

impl ObjectReader {
    pub fn status(&self) -> ReadStatus {
        self.status.clone()
    }

    /// Fills `self.chunk` with the next bytes (called with `pos < size`).
    fn fill(&mut self) -> Result<(), S3Error> {
        let retry = self.client.inner.retry;
        let uri = self.object.uri();
        let mut failures = 0u32;
        let mut last = String::new();
        loop {
            if failures > 0 {
                if failures >= retry.attempts.max(1) {
                    return Err(S3Error::Exhausted {
                        uri,
                        op: "GetObject",
                        attempts: failures,
                        reason: format!("at byte {}: {last}", self.pos),
                    });
                }
                tracing::debug!(
                    offset = self.pos,
                    failures,
                    "S3 read broke, resuming: {last}"
                );
                std::thread::sleep(retry.delay(failures - 1));
            }
            let body = match &mut self.body {
                Some(b) => b,
                None => {
                    self.status.inner.requests.fetch_add(1, Ordering::Relaxed);
                    if failures > 0 {
                        self.status.inner.resumes.fetch_add(1, Ordering::Relaxed);
                    }
                    let got = self
                        .client
                        .inner
                        .rt
                        .block_on(self.client.get_range(&self.object, self.pos));
                    match got {
                        Ok(b) => self.body.insert(b),
                        Err((e, true)) => {
                            last = e.to_string();
                            failures += 1;
                            continue;
                        }
                        Err((e, false)) => return Err(e),
                    }
                }
            };
            let next = self
                .client
                .inner
                .rt
                .block_on(async { tokio::time::timeout(retry.stall, body.next()).await });
            match next {
                Ok(Some(Ok(bytes))) if bytes.is_empty() => continue,
                Ok(Some(Ok(bytes))) => {
                    let end = self.pos.saturating_add(bytes.len() as u64);
                    if end > self.object.size {
                        return Err(S3Error::Protocol {
                            uri,
                            detail: format!(
                                "more bytes than the listed size of {}",
                                self.object.size
                            ),
                        });
                    }
                    self.chunk = bytes;
                    return Ok(());
                }
                Ok(Some(Err(e))) => {
                    last = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(cause) = src {
                        last = format!("{last}: {cause}");
                        src = cause.source();
                    }
                }
                Ok(None) => last = "connection closed before the end of the object".into(),
                Err(_) => last = format!("no bytes for {} s", retry.stall.as_secs()),
            }
            self.body = None;
            failures += 1;
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            if self.pos >= self.object.size {
                return Ok(0);
            }
            if let Err(e) = self.fill() {
                let msg = e.to_string();
                *self
                    .status
                    .inner
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.body = None;
                self.failed = Some(msg.clone());
                return Err(io::Error::other(msg));
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        self.pos += n as u64;
        self.status.inner.offset.store(self.pos, Ordering::Release);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        let u = S3Url::parse("s3://media-2026/classes/week1")
            .unwrap()
            .unwrap();
        assert_eq!(u.bucket, "media-2026");
        assert_eq!(u.prefix, "classes/week1");
        assert_eq!(
            u.key("rec-1/verdict.json"),
            "classes/week1/rec-1/verdict.json"
        );
        let root = S3Url::parse("s3://media").unwrap().unwrap();
        assert_eq!(root.prefix, "");
        assert_eq!(root.key("a"), "a");
        assert_eq!(
            S3Url::parse("s3://media/x/").unwrap().unwrap().key("a"),
            "x/a"
        );
        assert!(S3Url::parse("recordings/a.webm").is_none());
        assert!(matches!(
            S3Url::parse("s3://Bad_Bucket/x"),
            Some(Err(S3Error::BadUrl(_)))
        ));
        assert!(matches!(
            S3Url::parse("s3://"),
            Some(Err(S3Error::BadUrl(_)))
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = Retry {
            base: Duration::from_millis(100),
            max: Duration::from_millis(800),
            ..Retry::default()
        };
        for n in 0..20 {
            let d = r.delay(n);
            let cap = (100u64 << n.min(16)).min(800);
            assert!(d <= Duration::from_millis(cap), "{n}: {d:?}");
            assert!(d >= Duration::from_millis(cap / 2), "{n}: {d:?}");
        }
    }
}
