//! Service mode (`classguard serve`): classroom servers push recordings over tus 1.0 (`/files/`) or
//! in one request (`POST /v1/recordings`); the bytes are persisted first and audited while they
//! arrive, by in-process workers taking durable jobs from the store; the final verdict goes to the
//! token's webhook. docs/service.md documents the API.
//!
//! ```text
//!  client ─PATCH─▶ tus ──fsync──▶ uploads/<id>.webm ──GrowingReader──▶ audit worker × N ──▶ store
//!                   │                 ▲ (signals: bytes persisted, upload ended)       │
//!                   └──── store: recordings, jobs (lease + heartbeat) ─────────────────┴─▶ webhook
//! ```
//! Each group of routes is its own module returning a `Router`, merged in [`router`]; a later
//! module (the review page) adds its routes the same way.

pub mod api;
pub mod auth;
pub mod fetch;
pub mod files;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod outbox;
pub mod tus;
pub mod webhook;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("loading models: {0}")]
    Models(String),
    #[error("queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// Limits and knobs of one `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where uploaded bytes and audit outputs live.
    pub data_dir: PathBuf,
    /// Largest upload accepted (bytes).
    pub max_upload_bytes: u64,
    /// Requests carrying bytes (PATCH, POST) in flight per token at once; more get 429.
    pub max_concurrent_uploads: usize,
    /// A request body that sends nothing for this long is cut off (the bytes so far are kept).
    pub body_timeout: Duration,
    /// An upload that receives nothing for this long expires and is audited as partial.
    pub upload_expiry: Duration,
    /// Audit workers (recordings audited at once).
    pub audit_workers: usize,
    /// Model workers per recording.
    pub model_workers: usize,
    /// A job whose worker stops heart-beating for this long is taken over by another worker.
    pub job_lease: Duration,
    pub policy: Option<PathBuf>,
    /// The review page's leases, sessions and lockout.
    pub review: crate::review::Settings,
    /// Where `POST /v1/recordings` with `{"s3": ...}` fetches from (credentials and region from
    /// the AWS environment).
    pub s3: crate::ingest::s3::S3Options,
    /// Scale-out mode: no audit here; jobs go to the queue and bytes to the shared storage, for
    /// `classguard worker` processes.
    pub scale_out: Option<ScaleOut>,
}

/// The queue and the shared storage of the scale-out mode (`--queue`, `--storage`).
#[derive(Debug, Clone)]
pub struct ScaleOut {
    pub queue: crate::queue::QueueConfig,
    /// `s3://bucket/prefix`.
    pub storage: String,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            max_upload_bytes: 4 << 30,
            max_concurrent_uploads: 64,
            body_timeout: Duration::from_secs(60),
            upload_expiry: Duration::from_secs(24 * 3600),
            audit_workers: 2,
            model_workers: 1,
            job_lease: Duration::from_secs(30),
            policy: None,
            review: crate::review::Settings::default(),
            s3: crate::ingest::s3::S3Options::default(),
            scale_out: None,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub store: Arc<Store>,
    pub config: Config,
    pub files: files::Uploads,
    pub metrics: metrics::Metrics,
    /// Byte-carrying requests in flight, per token id.
    in_flight: Mutex<HashMap<i64, usize>>,
    /// Uploads a PATCH is writing to right now (a second concurrent PATCH gets 409).
    locked: Mutex<HashSet<String>>,
    /// The S3 client, made on first use (it starts its own runtime).
    s3: std::sync::OnceLock<Result<Arc<crate::ingest::s3::S3Client>, String>>,
    /// Scale-out mode: where every acknowledged byte is stored for the workers.
    pub storage: Option<crate::storage::Storage>,
    /// Scale-out mode: wakes the outbox when a job may have become publishable.
    pub outbox: tokio::sync::Notify,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(
        store: Arc<Store>,
        config: Config,
        storage: Option<crate::storage::Storage>,
    ) -> Result<Shared, ServiceError> {
        let files = files::Uploads::new(config.data_dir.join("uploads")).map_err(|source| {
            ServiceError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            }
        })?;
        Ok(Arc::new(AppState {
            store,
            config,
            files,
            metrics: metrics::Metrics::default(),
            in_flight: Mutex::new(HashMap::new()),
            locked: Mutex::new(HashSet::new()),
            s3: std::sync::OnceLock::new(),
            storage,
            outbox: tokio::sync::Notify::new(),
        }))
    }

    /// Scale-out mode: stores bytes `from..to` of upload `id`, just persisted to the local spool
    /// file, as a segment in the shared storage. Called before the new offset is recorded and
    /// acknowledged, so an acknowledged byte is always readable by every worker. Blocking.
    pub fn store_segment_blocking(&self, id: &str, from: u64, to: u64) -> Result<(), String> {
        let Some(storage) = &self.storage else {
            return Ok(());
        };
        storage
            .put_segment(id, &self.files.path(id), from, to)
            .map_err(|e| format!("storing bytes {from}..{to} of upload {id}: {e}"))
    }

    /// [`Self::store_segment_blocking`] from async code.
    pub async fn store_segment(
        self: &Arc<Self>,
        id: &str,
        from: u64,
        to: u64,
    ) -> Result<(), ApiError> {
        if self.storage.is_none() || to <= from {
            return Ok(());
        }
        let (state, rid) = (self.clone(), id.to_string());
        tokio::task::spawn_blocking(move || state.store_segment_blocking(&rid, from, to))
            .await
            .map_err(|e| ApiError::internal(format!("storage task: {e}")))?
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
    }

    /// The S3 client; call from a blocking thread only (it blocks on its own runtime).
    pub fn s3_client(&self) -> Result<Arc<crate::ingest::s3::S3Client>, String> {
        self.s3
            .get_or_init(|| {
                crate::ingest::s3::S3Client::new(&self.config.s3)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Runs a store call off the async threads.
    pub async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::internal(format!("store task: {e}")))?
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Admits one byte-carrying request of `token_id`, or says why not.
    pub fn admit(self: &Arc<Self>, token_id: i64) -> Result<Admission, ApiError> {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(token_id).or_default();
        if *n >= self.config.max_concurrent_uploads {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token already has {} uploads in flight (the limit)",
                    self.config.max_concurrent_uploads
                ),
            ));
        }
        *n += 1;
        self.metrics.uploads_in_flight.inc();
        Ok(Admission {
            state: self.clone(),
            token_id,
        })
    }

    /// Takes the write lock of one upload, or 409 if another request holds it.
    pub fn lock_upload(self: &Arc<Self>, id: &str) -> Result<UploadLock, ApiError> {
        let mut m = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        if !m.insert(id.to_string()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "another request is writing to this upload".into(),
            ));
        }
        Ok(UploadLock {
            state: self.clone(),
            id: id.to_string(),
        })
    }
}

/// Held while a byte-carrying request runs.
pub struct Admission {
    state: Shared,
    token_id: i64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut m = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.token_id) {
            *n = n.saturating_sub(1);
        }
        self.state.metrics.uploads_in_flight.dec();
    }
}

pub struct UploadLock {
    state: Shared,
    id: String,
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        self.state
            .locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// An HTTP error with a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// tus routes answer every response with `Tus-Resumable`.
    pub tus: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError {
            status,
            message,
            tus: false,
        }
    }

    pub fn internal(message: String) -> Self {
        tracing::error!("internal error: {message}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "no such recording".into())
    }

    pub fn tus(mut self) -> Self {
        self.tus = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.tus {
            r.headers_mut()
                .insert("tus-resumable", tus::TUS_VERSION.parse().expect("static"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static"));
        }
        r
    }
}

/// Every route of the service: the OpenAPI document must list each (checked in tests).
pub const ROUTES: &[(&str, &str)] = &[
    ("options", "/files/"),
    ("post", "/files/"),
    ("head", "/files/{id}"),
    ("patch", "/files/{id}"),
    ("delete", "/files/{id}"),
    ("options", "/files/{id}"),
    ("post", "/v1/recordings"),
    ("get", "/v1/recordings/{id}"),
    ("get", "/v1/recordings/{id}/verdict"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    // The review page (src/review).
    ("get", "/review"),
    ("get", "/review/login"),
    ("post", "/review/login"),
    ("post", "/review/logout"),
    ("get", "/review/items/{id}"),
    ("post", "/review/items/{id}/claim"),
    ("post", "/review/items/{id}/decide"),
    ("post", "/review/items/{id}/reopen"),
    ("get", "/review/evidence/{id}"),
    ("post", "/review/evidence/{id}/reveal"),
    ("get", "/review/metrics"),
    ("get", "/review/audit"),
    ("get", "/review/users"),
    ("post", "/review/users/{id}"),
    ("get", "/review/settings"),
    ("post", "/review/settings"),
    ("get", "/review/static/review.js"),
    ("get", "/review/static/review.css"),
];

/// The whole HTTP surface.
pub fn router(state: Shared, review: crate::review::ReviewShared) -> Router {
    Router::new()
        .merge(tus::routes())
        .merge(api::routes())
        .merge(ops::routes())
        .merge(crate::review::routes(review))
        .with_state(state)
}

/// Binds, starts the workers, the expiry sweeper and the webhook sender, and serves until
/// `shutdown` resolves; `on_listening` is told the bound address (port 0 picks one).
pub async fn serve(
    store: Arc<Store>,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServiceError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServiceError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let policy = Arc::new(crate::policy::Policy::load(config.policy.as_deref())?);
    let storage = match &config.scale_out {
        Some(so) => {
            let (url, opts) = (so.storage.clone(), config.s3.clone());
            // The S3 client runs its own runtime: made off the async threads.
            Some(
                tokio::task::spawn_blocking(move || crate::storage::Storage::new(&url, &opts))
                    .await
                    .map_err(|e| ServiceError::Serve(std::io::Error::other(e)))??,
            )
        }
        None => None,
    };
    let state = AppState::new(store, config.clone(), storage)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServiceError::Serve)?;
    let review = crate::review::Review::new(state.clone(), policy.clone());
    match &config.scale_out {
        Some(so) => {
            // Audits run in `classguard worker` processes: this node loads no model.
            let queue = crate::queue::JobQueue::connect(&so.queue).await?;
            outbox::start(state.clone(), queue);
        }
        None => {
            let n = config.audit_workers.max(1) * config.model_workers.max(1);
            let models = crate::audit::AuditModels::load_blocking(&policy, n)
                .await
                .map_err(ServiceError::Models)?;
            worker::start(state.clone(), Arc::new(models), policy);
        }
    }
    tus::start_expiry_sweeper(state.clone());
    webhook::start(state.clone());
    state
        .metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%addr, "listening");
    on_listening(addr);
    axum::serve(listener, router(state, review))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServiceError::Serve)
}
