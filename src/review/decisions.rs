//! Decisions: confirm or dismiss one finding or the whole recording, with a reason code from the
//! policy and an optional note, made on the item version the reviewer saw; a lead reopens a
//! decided item (an appeal). The history is append-only (the store refuses updates and deletes).
//!
//! Once a recording is decided, the API and the webhook show the human decision as the verdict's
//! `decision`, with the model's kept as `model_decision` and the review under `review`.

use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{Role, Staff};
use super::{secure, ReviewError, ReviewShared};
use crate::policy::ReviewActKind;
use crate::store::{now_ms, ActOutcome, ReviewAct, ReviewItemRow, Store, StoreError};

/// Longest note kept with a decision, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;

#[derive(Debug, serde::Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    pub csrf: String,
    pub version: i64,
    /// `recording` or a finding id.
    pub target: String,
    pub action: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, serde::Deserialize)]
pub struct ReopenForm {
    #[serde(default)]
    pub csrf: String,
    pub version: i64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub note: String,
}

fn note(n: &str) -> Result<Option<String>, ReviewError> {
    let n = n.trim();
    if n.chars().count() > MAX_NOTE_CHARS {
        return Err(ReviewError::BadRequest(format!(
            "the note is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    Ok((!n.is_empty()).then(|| n.to_string()))
}

fn checked_reason(
    review: &ReviewShared,
    kind: ReviewActKind,
    code: &str,
) -> Result<String, ReviewError> {
    if code.is_empty() {
        return Err(ReviewError::BadRequest(format!(
            "a reason code is required to {}",
            kind.as_str()
        )));
    }
    if !review.policy.review.allows(kind, code) {
        return Err(ReviewError::BadRequest(format!(
            "reason code {code:?} is not one the policy allows for {}",
            kind.as_str()
        )));
    }
    Ok(code.to_string())
}

/// What an act's outcome means for the browser.
fn answer(item_id: i64, version_seen: i64, outcome: ActOutcome) -> Result<Response, ReviewError> {
    match outcome {
        ActOutcome::Applied { .. } => Ok(secure(
            Redirect::to(&format!("/review/items/{item_id}")).into_response(),
        )),
        ActOutcome::Stale { current } => Err(ReviewError::Conflict(format!(
            "This recording changed since you opened it (you saw version {version_seen}, it is now \
             at {current}). Reload it to see what changed; nothing was saved."
        ))),
        ActOutcome::NotClaimed { holder: Some(_) } => Err(ReviewError::Conflict(
            "Another reviewer is working on this recording; nothing was saved.".into(),
        )),
        ActOutcome::NotClaimed { holder: None } => Err(ReviewError::Conflict(
            "Your hold on this recording ran out; reopen it to take it again. Nothing was saved."
                .into(),
        )),
        ActOutcome::WrongState { state } if state == "decided" => Err(ReviewError::Conflict(
            "This recording is already decided; a lead can reopen it.".into(),
        )),
        ActOutcome::WrongState { .. } => Err(ReviewError::Conflict(
            "This recording is not decided, so there is nothing to reopen.".into(),
        )),
        ActOutcome::NoSuchItem => Err(ReviewError::NotFound),
        ActOutcome::NoSuchFinding => Err(ReviewError::BadRequest(
            "that finding is not part of this recording".into(),
        )),
    }
}

/// After an act that changed the recording's outcome: queue the `verdict.reviewed` webhook event
/// of an uploaded recording whose token has a webhook (once per item version, so a retried
/// delivery keeps its event id).
fn notify(store: &Store, item_id: i64, version: i64) -> Result<(), StoreError> {
    let Some(detail) = store.review_item(item_id)? else {
        return Ok(());
    };
    let Some(recording) = store.get_recording(&detail.item.recording_id)? else {
        return Ok(()); // Audited by `scan`, not uploaded: no token, no webhook.
    };
    let Some(token) = store.token_by_id(recording.token_id)? else {
        return Ok(());
    };
    let Some(url) = token.webhook_url else {
        return Ok(());
    };
    let verdict = reviewed_verdict(&detail.verdict_json, &detail.item, &detail.findings)?;
    let event_id = format!("evt-{}-review-{version}", recording.id);
    let body = serde_json::json!({
        "event_id": event_id,
        "type": "verdict.reviewed",
        "recording_id": recording.id,
        "decision": verdict["decision"],
        "verdict": verdict,
    })
    .to_string();
    store.enqueue_delivery(&event_id, token.id, &recording.id, &url, &body)?;
    Ok(())
}

async fn apply(
    review: &ReviewShared,
    staff: &Staff,
    act: ReviewAct,
) -> Result<Response, ReviewError> {
    let (item_id, version_seen) = (act.item_id, act.version);
    let outcome = review
        .db(move |s| {
            let outcome = s.review_act(&act, now_ms())?;
            // Only a change of the recording's outcome is news for the platform: a decision that
            // closed the item, or a reopening that withdrew one.
            if let ActOutcome::Applied { version, decision } = &outcome {
                let changed = decision.is_some() || act.action == "reopen";
                if let Err(e) = changed
                    .then(|| notify(s, act.item_id, *version))
                    .transpose()
                {
                    tracing::warn!(item = act.item_id, "queueing the review webhook: {e}");
                }
            }
            Ok(outcome)
        })
        .await?;
    match &outcome {
        ActOutcome::Applied { version, decision } => tracing::info!(
            user = staff.user.id,
            item = item_id,
            version,
            decision = decision.as_deref().unwrap_or("-"),
            "review act applied"
        ),
        refused => tracing::info!(
            user = staff.user.id,
            item = item_id,
            "review act refused: {refused:?}"
        ),
    }
    answer(item_id, version_seen, outcome)
}

/// `POST /review/items/{id}/decide`.
pub async fn decide(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<DecideForm>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, Some(&form.csrf))?;
    staff.require(Role::Reviewer)?;
    let kind = match form.action.as_str() {
        "confirm" => ReviewActKind::Confirm,
        "dismiss" => ReviewActKind::Dismiss,
        other => {
            return Err(ReviewError::BadRequest(format!(
                "action {other:?} is not confirm or dismiss"
            )))
        }
    };
    let finding_id = match form.target.as_str() {
        "recording" => None,
        f => Some(f.parse::<i64>().map_err(|_| {
            ReviewError::BadRequest(format!("target {f:?} is not `recording` or a finding id"))
        })?),
    };
    let act = ReviewAct {
        item_id: id,
        user_id: staff.user.id,
        finding_id,
        action: kind.as_str().into(),
        reason_code: checked_reason(&review, kind, form.reason.trim())?,
        note: note(&form.note)?,
        version: form.version,
    };
    apply(&review, &staff, act).await
}

/// `POST /review/items/{id}/reopen` (leads): an appeal or a quality check reopens a decision.
pub async fn reopen(
    State(review): State<ReviewShared>,
    staff: Staff,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ReopenForm>,
) -> Result<Response, ReviewError> {
    staff.check_csrf(&headers, Some(&form.csrf))?;
    staff.require(Role::Lead)?;
    let act = ReviewAct {
        item_id: id,
        user_id: staff.user.id,
        finding_id: None,
        action: "reopen".into(),
        reason_code: checked_reason(&review, ReviewActKind::Reopen, form.reason.trim())?,
        note: note(&form.note)?,
        version: form.version,
    };
    apply(&review, &staff, act).await
}

/// The verdict JSON as the API shows it after review: `decision` is the human one once the
/// recording is decided, `model_decision` keeps the model's, and `review` says where the review
/// stands and what became of each finding (by index in `findings`).
pub fn reviewed_verdict(
    verdict_json: &str,
    item: &ReviewItemRow,
    findings: &[crate::store::FindingRow],
) -> Result<serde_json::Value, StoreError> {
    let mut v: serde_json::Value = serde_json::from_str(verdict_json)?;
    let statuses: Vec<serde_json::Value> = findings
        .iter()
        .enumerate()
        .map(|(i, f)| serde_json::json!({ "index": i, "status": f.status.as_str() }))
        .collect();
    let decided_at = item.decided_at_ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    });
    let status = if item.state == "decided" {
        "decided"
    } else {
        "in_review"
    };
    if let Some(obj) = v.as_object_mut() {
        let model = obj.get("decision").cloned().unwrap_or_default();
        obj.insert("model_decision".into(), model);
        if let (Some(human), "decided") = (&item.human_decision, item.state.as_str()) {
            obj.insert("decision".into(), serde_json::Value::String(human.clone()));
        }
        obj.insert(
            "review".into(),
            serde_json::json!({
                "status": status,
                "decision": item.human_decision.as_ref().filter(|_| item.state == "decided"),
                "decided_at": decided_at.filter(|_| item.state == "decided"),
                "version": item.version,
                "findings": statuses,
            }),
        );
    }
    Ok(v)
}

/// The verdict document of `key` for the API: as stored, or [`reviewed_verdict`] once a reviewer
/// has acted on it.
pub fn api_verdict(store: &Store, key: &str) -> Result<Option<String>, StoreError> {
    let Some(json) = store.get_verdict_json(key)? else {
        return Ok(None);
    };
    match store.review_item_by_verdict_key(key)? {
        Some(item) if item.version > 1 => {
            let findings = store
                .review_item(item.id)?
                .map(|d| d.findings)
                .unwrap_or_default();
            Ok(Some(reviewed_verdict(&json, &item, &findings)?.to_string()))
        }
        _ => Ok(Some(json)),
    }
}

/// The decision of the verdict of `key` as the API reports it: the reviewer's once the recording
/// is decided, else the model's.
pub fn current_decision(store: &Store, key: &str) -> Result<Option<String>, StoreError> {
    if let Some(item) = store.review_item_by_verdict_key(key)? {
        if let (Some(d), "decided") = (&item.human_decision, item.state.as_str()) {
            return Ok(Some(d.clone()));
        }
    }
    Ok(store
        .get_verdict_by_key(key)?
        .map(|v| v.decision.as_str().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FindingRow, FindingStatus};

    fn item(state: &str, human: Option<&str>, version: i64) -> ReviewItemRow {
        ReviewItemRow {
            id: 1,
            verdict_id: 1,
            recording_id: "rec-1".into(),
            model_decision: "review".into(),
            severity_rank: 3,
            teacher_id: None,
            created_at_ms: 0,
            qa_sample: false,
            state: state.into(),
            human_decision: human.map(str::to_string),
            version,
            first_decided_at_ms: None,
            decided_at_ms: Some(1_796_083_200_000),
            claimed_by: None,
            claimed_by_name: None,
            claim_until_ms: None,
            labels: vec![],
            findings: 1,
        }
    }

    fn finding(status: FindingStatus) -> FindingRow {
        FindingRow {
            id: 5,
            recording_id: "rec-1".into(),
            label: "contact_info".into(),
            severity: "high".into(),
            track: "microphone".into(),
            start_ms: 0,
            end_ms: 1,
            rule_id: "r".into(),
            reason: "x".into(),
            status,
            reviewer_note: None,
            evidence_path: None,
        }
    }

    #[test]
    fn the_api_verdict_carries_the_human_decision_and_keeps_the_model_one() {
        let json = r#"{"decision":"review","findings":[{"label":"contact_info"}]}"#;
        let v = reviewed_verdict(
            json,
            &item("decided", Some("pass"), 2),
            &[finding(FindingStatus::Dismissed)],
        )
        .unwrap();
        assert_eq!(v["decision"], "pass");
        assert_eq!(v["model_decision"], "review");
        assert_eq!(v["review"]["status"], "decided");
        assert_eq!(v["review"]["decided_at"], "2026-12-01T00:00:00Z");
        assert_eq!(v["review"]["findings"][0]["status"], "dismissed");
        // Reopened: the model decision stands until a new human one.
        let v = reviewed_verdict(
            json,
            &item("open", None, 3),
            &[finding(FindingStatus::Open)],
        )
        .unwrap();
        assert_eq!(v["decision"], "review");
        assert_eq!(v["review"]["status"], "in_review");
        assert!(v["review"]["decision"].is_null());
    }

    #[test]
    fn notes_are_trimmed_and_bounded() {
        assert_eq!(note("  ").unwrap(), None);
        assert_eq!(note(" ok ").unwrap().as_deref(), Some("ok"));
        assert!(note(&"x".repeat(MAX_NOTE_CHARS + 1)).is_err());
    }

    #[test]
    fn outcomes_answer_409_or_redirect() {
        assert_eq!(
            answer(
                3,
                1,
                ActOutcome::Applied {
                    version: 2,
                    decision: None
                }
            )
            .unwrap()
            .status(),
            axum::http::StatusCode::SEE_OTHER
        );
        for o in [
            ActOutcome::Stale { current: 2 },
            ActOutcome::NotClaimed { holder: Some(9) },
            ActOutcome::WrongState {
                state: "decided".into(),
            },
        ] {
            assert!(matches!(answer(3, 1, o), Err(ReviewError::Conflict(_))));
        }
    }
}
