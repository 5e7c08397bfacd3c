//! The queue: verdicts a human should look at (`review` and `block`, plus a random sample of
//! `pass` for quality checks), worst severity first, then oldest first, with filters and counts
//! per label.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use rand::Rng;

use super::auth::Staff;
use super::{html, templates, ReviewError, ReviewShared};
use crate::policy::Policy;
use crate::store::{NewReviewItem, QueueFilter, Store, StoreError};

/// Rows shown at most on one page of the queue.
pub const PAGE_ROWS: i64 = 200;

/// Gives every verdict without a review item one, deciding once whether it is queued: a `pass`
/// is sampled at the policy's `qa_sample_rate`, so reloading the page does not re-draw it.
pub fn sync(store: &Store, policy: &Policy) -> Result<usize, StoreError> {
    let mut added = 0;
    loop {
        let batch = store.review_unsynced_verdicts(500)?;
        if batch.is_empty() {
            return Ok(added);
        }
        let mut rng = rand::rng();
        for verdict in batch {
            let (in_queue, qa_sample) = match verdict.decision.as_str() {
                "review" | "block" => (true, false),
                "pass" => {
                    let s = rng.random::<f64>() < policy.review.qa_sample_rate;
                    (s, s)
                }
                // `error`: nothing was audited, so there is nothing to review; operators see it.
                _ => (false, false),
            };
            if store.review_insert_item(&NewReviewItem {
                verdict,
                in_queue,
                qa_sample,
            })? {
                added += 1;
            }
        }
    }
}

/// The queue's query string (every field optional; empty means any).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct QueueQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub track: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub teacher: Option<String>,
    /// `YYYY-MM-DD`, UTC, inclusive.
    #[serde(default)]
    pub from: Option<String>,
    /// `YYYY-MM-DD`, UTC, inclusive.
    #[serde(default)]
    pub to: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Milliseconds of UTC midnight of a `YYYY-MM-DD` date.
pub fn day_start_ms(date: &str) -> Result<i64, ReviewError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(date, &fmt)
        .map_err(|_| ReviewError::BadRequest(format!("date {date:?} is not YYYY-MM-DD")))?;
    Ok(d.midnight().assume_utc().unix_timestamp() * 1000)
}

impl QueueQuery {
    /// The store filter, checking every value against its closed set.
    pub fn filter(&self) -> Result<QueueFilter, ReviewError> {
        let one_of = |v: Option<String>, allowed: &[&str], what: &str| match v {
            Some(s) if s == "all" => Ok(None),
            Some(s) if !allowed.contains(&s.as_str()) => {
                Err(ReviewError::BadRequest(format!("unknown {what} {s:?}")))
            }
            other => Ok(other),
        };
        let labels: Vec<&str> = crate::verdict::Label::ALL
            .iter()
            .map(|l| l.as_str())
            .collect();
        let state = match non_empty(&self.state) {
            None => Some("open".to_string()),
            s => one_of(s, &["open", "decided"], "state")?,
        };
        Ok(QueueFilter {
            state,
            label: one_of(non_empty(&self.label), &labels, "label")?,
            track: one_of(
                non_empty(&self.track),
                &["camera", "desktop", "microphone"],
                "track",
            )?,
            decision: one_of(
                non_empty(&self.decision),
                &["pass", "review", "block"],
                "decision",
            )?,
            teacher: non_empty(&self.teacher),
            from_ms: non_empty(&self.from)
                .map(|d| day_start_ms(&d))
                .transpose()?,
            to_ms: non_empty(&self.to)
                .map(|d| day_start_ms(&d).map(|t| t + 86_400_000))
                .transpose()?,
            limit: PAGE_ROWS,
        })
    }
}

pub async fn page(
    State(review): State<ReviewShared>,
    staff: Staff,
    Query(q): Query<QueueQuery>,
) -> Result<Response, ReviewError> {
    let filter = q.filter()?;
    let policy = review.policy.clone();
    let f = filter.clone();
    let (rows, counts) = review
        .db(move |s| {
            sync(s, &policy)?;
            Ok((s.review_queue(&f)?, s.review_label_counts(&f)?))
        })
        .await?;
    let body = templates::queue_page(&staff, &q, &rows, &counts, crate::store::now_ms());
    Ok(html(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_becomes_a_checked_filter() {
        let f = QueueQuery::default().filter().unwrap();
        assert_eq!(f.state.as_deref(), Some("open"), "open items by default");
        assert_eq!(f.label, None);
        let q = QueueQuery {
            state: Some("all".into()),
            label: Some("nudity".into()),
            track: Some("camera".into()),
            decision: Some("block".into()),
            teacher: Some(" t-1 ".into()),
            from: Some("2026-12-01".into()),
            to: Some("2026-12-01".into()),
        };
        let f = q.filter().unwrap();
        assert_eq!(f.state, None);
        assert_eq!(f.label.as_deref(), Some("nudity"));
        assert_eq!(f.teacher.as_deref(), Some("t-1"));
        assert_eq!(f.from_ms, Some(1_796_083_200_000));
        assert_eq!(f.to_ms, Some(1_796_083_200_000 + 86_400_000));
        for bad in [
            QueueQuery {
                label: Some("nudity'--".into()),
                ..Default::default()
            },
            QueueQuery {
                from: Some("yesterday".into()),
                ..Default::default()
            },
            QueueQuery {
                track: Some("screen".into()),
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.filter(), Err(ReviewError::BadRequest(_))));
        }
    }
}
