//! Staff accounts and sessions: argon2id password hashes, random session ids kept in the store as
//! their sha256 only, a per-session anti-CSRF token, lockout after repeated failures.
//!
//! Cookies are `HttpOnly` (no script reads them), `SameSite=Strict` (no other site's page sends
//! them) and scoped to `/review`. Every state-changing request also carries the session's token
//! (a form field or the `X-CSRF-Token` header) and, when the browser sends one, an `Origin`
//! matching the host.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{html, secure, templates, ReviewError, ReviewShared};
use crate::store::{now_ms, AuditEntry, NewSession, SessionRow, UserRow};

pub const SESSION_COOKIE: &str = "cg_review";
/// Double-submit token of the sign-in form (there is no session yet to hold one).
pub const LOGIN_COOKIE: &str = "cg_review_login";
pub const MIN_PASSWORD_CHARS: usize = 10;

/// What an account may do. Roles nest: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reviewer,
    Lead,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::Lead => "lead",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reviewer" => Ok(Role::Reviewer),
            "lead" => Ok(Role::Lead),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}` (reviewer, lead or admin)")),
        }
    }
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// An argon2id PHC string (salt and parameters included).
pub fn hash_password(password: &str) -> Result<String, ReviewError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| ReviewError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ReviewError::Hash(e.to_string()))
}

/// `false` for a wrong password and for a hash that does not parse.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Verified against for unknown names, so that an unknown name takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// Equal length and bytes, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let s = format!(
        "{name}={value}; Path=/review; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The signed-in user of a request and their session.
pub struct Staff {
    pub user: UserRow,
    pub role: Role,
    pub session: SessionRow,
    pub session_hash: String,
}

impl Staff {
    /// `Forbidden` unless the user's role includes `role`.
    pub fn require(&self, role: Role) -> Result<(), ReviewError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ReviewError::Forbidden)
        }
    }

    /// Checks the anti-CSRF token of a state-changing request (`form_token` from its body, or
    /// the `X-CSRF-Token` header) and its `Origin`.
    pub fn check_csrf(
        &self,
        headers: &HeaderMap,
        form_token: Option<&str>,
    ) -> Result<(), ReviewError> {
        check_origin(headers)?;
        let sent = form_token.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
        match sent {
            Some(t) if same_token(t, &self.session.csrf) => Ok(()),
            _ => Err(ReviewError::Csrf),
        }
    }

    pub fn audit(&self, action: &str, item_id: Option<i64>, detail: String) -> AuditEntry {
        AuditEntry {
            user_id: Some(self.user.id),
            action: action.into(),
            item_id,
            detail,
        }
    }
}

/// A browser sends `Origin` on cross-site and same-site POSTs; it must name this host.
fn check_origin(headers: &HeaderMap) -> Result<(), ReviewError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let matches = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host);
    if matches {
        Ok(())
    } else {
        Err(ReviewError::Csrf)
    }
}

impl FromRequestParts<ReviewShared> for Staff {
    type Rejection = ReviewError;

    async fn from_request_parts(
        parts: &mut Parts,
        review: &ReviewShared,
    ) -> Result<Self, ReviewError> {
        // Pages send a signed-out browser to the sign-in page; evidence and posts answer 401.
        let page = parts.method == Method::GET && !parts.uri.path().starts_with("/review/evidence");
        let signed_out = ReviewError::SignedOut { page };
        let Some(value) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(signed_out);
        };
        let hash = sha256_hex(value);
        let idle = review.settings.session_idle.as_millis() as i64;
        let h = hash.clone();
        let found = review
            .db(move |s| s.review_session(&h, now_ms(), idle))
            .await?;
        let Some((session, user)) = found else {
            return Err(signed_out);
        };
        let role = user.role.parse().map_err(|e: String| {
            ReviewError::Store(crate::store::StoreError::Corrupt {
                what: "staff role",
                detail: e,
            })
        })?;
        Ok(Staff {
            user,
            role,
            session,
            session_hash: hash,
        })
    }
}

pub async fn login_page(State(review): State<ReviewShared>) -> Response {
    login_form(&review, StatusCode::OK, None)
}

fn login_form(review: &ReviewShared, status: StatusCode, message: Option<&str>) -> Response {
    let token = random_token();
    let mut r = html(status, templates::login_page(&token, message));
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, 1800, review.settings.secure_cookies),
    );
    r
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub csrf: String,
}

pub async fn login(
    State(review): State<ReviewShared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ReviewError> {
    check_origin(&headers)?;
    match cookie(&headers, LOGIN_COOKIE) {
        Some(c) if same_token(c, &form.csrf) => {}
        _ => return Err(ReviewError::Csrf),
    }
    let name = form.username.trim().to_string();
    let n = name.clone();
    let user = review.db(move |s| s.review_user_by_name(&n)).await?;
    let now = now_ms();
    if let Some(u) = &user {
        if u.locked_until_ms > now {
            let uid = u.id;
            review
                .db(move |s| {
                    s.review_audit(&AuditEntry {
                        user_id: Some(uid),
                        action: "sign_in_refused_locked".into(),
                        item_id: None,
                        detail: String::new(),
                    })
                })
                .await?;
            let minutes = (u.locked_until_ms - now + 59_999) / 60_000;
            return Ok(login_form(
                &review,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many failed sign-ins: this account is locked for {minutes} more minute(s)."
                )),
            ));
        }
    }
    let hash = user
        .as_ref()
        .filter(|u| !u.disabled)
        .map(|u| u.password_hash.clone());
    let password = form.password;
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&h, &password),
        None => {
            verify_password(dummy_hash(), &password);
            false
        }
    })
    .await
    .map_err(|e| ReviewError::Internal(e.to_string()))?;
    let Some(user) = user else {
        tracing::info!("review sign-in failed: unknown account");
        review
            .db(|s| {
                s.review_audit(&AuditEntry {
                    user_id: None,
                    action: "sign_in_failed".into(),
                    item_id: None,
                    detail: "unknown account".into(),
                })
            })
            .await?;
        return Ok(login_form(
            &review,
            StatusCode::UNAUTHORIZED,
            Some("Wrong name or password."),
        ));
    };
    let lockout = review.settings.lockout;
    let uid = user.id;
    let after = review
        .db(move |s| {
            let after = s.review_login_result(uid, ok, now, lockout)?;
            let locked = after.as_ref().is_some_and(|u| u.locked_until_ms > now);
            let action = match (ok, locked) {
                (true, _) => "sign_in",
                (false, true) => "locked_out",
                (false, false) => "sign_in_failed",
            };
            s.review_audit(&AuditEntry {
                user_id: Some(uid),
                action: action.into(),
                item_id: None,
                detail: String::new(),
            })?;
            Ok(after)
        })
        .await?;
    if !ok {
        tracing::info!(user = uid, "review sign-in failed");
        let locked = after.is_some_and(|u| u.locked_until_ms > now);
        let message = if locked {
            "Too many failed sign-ins: this account is locked for a while."
        } else {
            "Wrong name or password."
        };
        let status = if locked {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::UNAUTHORIZED
        };
        return Ok(login_form(&review, status, Some(message)));
    }
    let value = random_token();
    let ttl = review.settings.session_ttl;
    let session = NewSession {
        id_hash: sha256_hex(&value),
        user_id: uid,
        csrf: random_token(),
        now_ms: now,
        expires_at_ms: now + ttl.as_millis() as i64,
    };
    review
        .db(move |s| s.review_create_session(&session))
        .await?;
    tracing::info!(user = uid, "review sign-in");
    let secure_cookies = review.settings.secure_cookies;
    let mut r = Redirect::to("/review").into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &value, ttl.as_secs(), secure_cookies),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", 0, secure_cookies),
    );
    Ok(secure(r))
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, Some(&form.csrf))?;
    let hash = staff.session_hash.clone();
    let entry = staff.audit("sign_out", None, String::new());
    review
        .db(move |s| {
            s.review_delete_session(&hash)?;
            s.review_audit(&entry)
        })
        .await?;
    let mut r = Redirect::to("/review/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, review.settings.secure_cookies),
    );
    Ok(secure(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify_password(&a, "correct horse battery"));
        assert!(!verify_password(&a, "correct horse batterz"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; cg_review_login=xyz".parse().unwrap());
        h.append(header::COOKIE, "cg_review=abc".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "cg"), None);
    }

    #[test]
    fn set_cookie_is_httponly_strict_and_scoped() {
        let v = set_cookie(SESSION_COOKIE, "v", 60, true);
        let v = v.to_str().unwrap();
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/review",
            "Secure",
            "Max-Age=60",
        ] {
            assert!(v.contains(part), "{v} lacks {part}");
        }
        assert!(!set_cookie(SESSION_COOKIE, "v", 60, false)
            .to_str()
            .unwrap()
            .contains("Secure"));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", ""), "an empty token never matches");
        assert_eq!(random_token().len(), 64);
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn origin_must_name_the_host_when_sent() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(check_origin(&h).is_ok(), "no Origin: not a browser post");
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(matches!(check_origin(&h), Err(ReviewError::Csrf)));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(check_origin(&h).is_err());
    }

    #[test]
    fn roles_nest() {
        assert!(Role::Admin > Role::Lead && Role::Lead > Role::Reviewer);
        assert_eq!("lead".parse::<Role>(), Ok(Role::Lead));
        assert!("root".parse::<Role>().is_err());
    }
}
