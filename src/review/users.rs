//! Account administration (admins), the audit log (leads and admins) and each user's own
//! settings.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{Role, Staff};
use super::{html, secure, templates, ReviewError, ReviewShared};
use crate::store::UserChange;

/// Audit entries the audit page shows (newest first).
pub const AUDIT_ROWS: i64 = 500;

pub async fn page(
    State(review): State<ReviewShared>,
    staff: Staff,
) -> Result<Response, ReviewError> {
    staff.require(Role::Admin)?;
    let users = review.db(|s| s.review_list_users()).await?;
    Ok(html(
        StatusCode::OK,
        templates::users_page(&staff, &users, crate::store::now_ms()),
    ))
}

#[derive(Debug, serde::Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    pub csrf: String,
    /// `unlock`, `disable`, `enable`, or `role:<role>`.
    pub op: String,
}

/// `POST /review/users/{id}`: unlock, disable, enable or change the role of an account.
pub async fn change(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ChangeForm>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, Some(&form.csrf))?;
    staff.require(Role::Admin)?;
    let change = match form.op.as_str() {
        "unlock" => UserChange {
            unlock: true,
            ..Default::default()
        },
        "disable" | "enable" if id == staff.user.id => {
            return Err(ReviewError::BadRequest(
                "you cannot disable or enable your own account".into(),
            ))
        }
        "disable" => UserChange {
            disabled: Some(true),
            ..Default::default()
        },
        "enable" => UserChange {
            disabled: Some(false),
            ..Default::default()
        },
        op => match op.strip_prefix("role:").map(str::parse::<Role>) {
            Some(Ok(role)) => UserChange {
                role: Some(role.as_str().into()),
                ..Default::default()
            },
            _ => return Err(ReviewError::BadRequest(format!("unknown operation {op:?}"))),
        },
    };
    let entry = staff.audit("user_changed", None, format!("user {id}: {}", form.op));
    let found = review
        .db(move |s| {
            let found = s.review_update_user(id, &change)?;
            if found {
                s.review_audit(&entry)?;
            }
            Ok(found)
        })
        .await?;
    if !found {
        return Err(ReviewError::NotFound);
    }
    Ok(secure(Redirect::to("/review/users").into_response()))
}

pub async fn audit_page(
    State(review): State<ReviewShared>,
    staff: Staff,
) -> Result<Response, ReviewError> {
    staff.require(Role::Lead)?;
    let (rows, users) = review
        .db(|s| Ok((s.review_audit_log(AUDIT_ROWS)?, s.review_list_users()?)))
        .await?;
    Ok(html(
        StatusCode::OK,
        templates::audit_page(&staff, &rows, &users),
    ))
}

pub async fn settings_page(staff: Staff) -> Response {
    html(StatusCode::OK, templates::settings_page(&staff))
}

#[derive(Debug, serde::Deserialize)]
pub struct SettingsForm {
    #[serde(default)]
    pub csrf: String,
    /// Present (checked) or absent.
    #[serde(default)]
    pub reveal_default: Option<String>,
}

pub async fn settings(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    Form(form): Form<SettingsForm>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, Some(&form.csrf))?;
    let reveal = form.reveal_default.is_some();
    let id = staff.user.id;
    let entry = staff.audit("settings_changed", None, format!("reveal_default={reveal}"));
    review
        .db(move |s| {
            s.review_update_user(
                id,
                &UserChange {
                    reveal_default: Some(reveal),
                    ..Default::default()
                },
            )?;
            s.review_audit(&entry)
        })
        .await?;
    Ok(secure(Redirect::to("/review/settings").into_response()))
}
