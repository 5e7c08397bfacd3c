//! The review page for trust-and-safety staff, served by `classguard serve` under `/review`:
//! sign-in, the queue of flagged verdicts, an item page with the evidence behind each finding,
//! decisions with reason codes, appeals, an audit log and aggregate metrics.
//!
//! Server-rendered HTML with one small script and one stylesheet embedded in the binary (no
//! build step); a strict Content-Security-Policy forbids inline script. One module per concern:
//! [`auth`] (accounts, sessions, CSRF, lockout), [`queue`], [`item`] (claims and evidence),
//! [`decisions`] (decisions, reopening, the verdict as the API shows it after review),
//! [`metrics`], [`users`] (account administration, the audit log, settings) and [`templates`].
//!
//! Roles nest: a `reviewer` decides, a `lead` also reopens decisions and sees metrics and the
//! audit log, an `admin` also manages accounts. Wellbeing: evidence images are served blurred
//! and grey unless the reviewer reveals them (or chose to see them by default), audio only on
//! reveal, and every reveal is audit-logged as "evidence viewed".

pub mod auth;
pub mod decisions;
pub mod item;
pub mod metrics;
pub mod queue;
pub mod templates;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::policy::Policy;
use crate::service::Shared;
use crate::store::{Lockout, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// No valid session: pages redirect to the sign-in page, everything else answers 401.
    #[error("sign in first")]
    SignedOut { page: bool },
    #[error("your role may not do this")]
    Forbidden,
    #[error("audio is only played after a reveal")]
    RevealRequired,
    #[error("missing or wrong anti-forgery token: reload the page and try again")]
    Csrf,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// Someone else holds the item, or it changed since the page was loaded.
    #[error("{0}")]
    Conflict(String),
    #[error("evidence file: {0}")]
    Evidence(String),
    #[error("password hash: {0}")]
    Hash(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ReviewError {
    pub fn status(&self) -> StatusCode {
        match self {
            ReviewError::SignedOut { .. } => StatusCode::UNAUTHORIZED,
            ReviewError::Forbidden | ReviewError::RevealRequired | ReviewError::Csrf => {
                StatusCode::FORBIDDEN
            }
            ReviewError::NotFound => StatusCode::NOT_FOUND,
            ReviewError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ReviewError::Conflict(_) => StatusCode::CONFLICT,
            ReviewError::Store(_)
            | ReviewError::Evidence(_)
            | ReviewError::Hash(_)
            | ReviewError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ReviewError {
    fn into_response(self) -> Response {
        if let ReviewError::SignedOut { page: true } = self {
            return secure(Redirect::to("/review/login").into_response());
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("review: {self}");
        }
        // Server errors are not detailed to the browser (paths, SQL); the log has them.
        let message = if status.is_server_error() {
            "Something went wrong on the server; the error is logged.".to_string()
        } else {
            self.to_string()
        };
        html(status, templates::error_page(status, &message))
    }
}

/// Knobs of the review page.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long opening an item holds it for the reviewer; the page renews it while open.
    pub claim_lease: Duration,
    /// A session ends this long after sign-in...
    pub session_ttl: Duration,
    /// ...or after this long without a request.
    pub session_idle: Duration,
    pub lockout: Lockout,
    /// Adds `Secure` to the cookies: set it when a TLS proxy is in front.
    pub secure_cookies: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            claim_lease: Duration::from_secs(300),
            session_ttl: Duration::from_secs(8 * 3600),
            session_idle: Duration::from_secs(3600),
            lockout: Lockout {
                max_failures: 5,
                lock_ms: 15 * 60 * 1000,
            },
            secure_cookies: false,
        }
    }
}

/// What the review handlers share.
pub struct Review {
    pub app: Shared,
    pub policy: Arc<Policy>,
    pub settings: Settings,
}

pub type ReviewShared = Arc<Review>;

impl Review {
    pub fn new(app: Shared, policy: Arc<Policy>) -> ReviewShared {
        let settings = app.config.review.clone();
        Arc::new(Review {
            app,
            policy,
            settings,
        })
    }

    /// Runs a store call off the async threads.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ReviewError> {
        let store = self.app.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ReviewError::Internal(format!("store task: {e}")))?
            .map_err(ReviewError::from)
    }
}

/// Every route of the review page, with its state applied (merged into the service router; the
/// list is repeated in [`crate::service::ROUTES`], which the OpenAPI check reads).
pub fn routes(review: ReviewShared) -> Router<Shared> {
    Router::new()
        .route("/review", get(queue::page))
        .route("/review/login", get(auth::login_page).post(auth::login))
        .route("/review/logout", post(auth::logout))
        .route("/review/items/{id}", get(item::page))
        .route("/review/items/{id}/claim", post(item::claim))
        .route("/review/items/{id}/decide", post(decisions::decide))
        .route("/review/items/{id}/reopen", post(decisions::reopen))
        .route("/review/evidence/{id}", get(item::evidence))
        .route("/review/evidence/{id}/reveal", post(item::reveal))
        .route("/review/metrics", get(metrics::page))
        .route("/review/audit", get(users::audit_page))
        .route("/review/users", get(users::page))
        .route("/review/users/{id}", post(users::change))
        .route(
            "/review/settings",
            get(users::settings_page).post(users::settings),
        )
        .route("/review/static/review.js", get(static_js))
        .route("/review/static/review.css", get(static_css))
        .with_state(review)
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   media-src 'self' blob:; connect-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The headers every review response carries: no caching of evidence or pages, no framing, no
/// inline script, no referrer leaking item ids to other sites.
pub fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter Chromium sends `Origin: null` on form
    // posts, which the CSRF check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// An HTML page with the review headers.
pub fn html(status: StatusCode, body: String) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

async fn static_js() -> Response {
    asset("text/javascript; charset=utf-8", templates::SCRIPT)
}

async fn static_css() -> Response {
    asset("text/css; charset=utf-8", templates::STYLE)
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, ctype)], body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    secure(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_and_hide_server_details() {
        assert_eq!(
            ReviewError::SignedOut { page: false }.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(ReviewError::Csrf.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            ReviewError::Conflict("x".into()).status(),
            StatusCode::CONFLICT
        );
        let r = ReviewError::SignedOut { page: true }.into_response();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()["location"], "/review/login");
        let r = ReviewError::Internal("SELECT secret FROM x".into()).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
    }
}
