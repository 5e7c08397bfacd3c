//! Metrics for leads: time to decision, how often reviewers overturn the model and leads
//! overturn reviewers on appeal, and how old the queue is. Aggregates only: nothing here is per
//! reviewer (no leaderboard).

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::auth::{Role, Staff};
use super::{html, templates, ReviewError, ReviewShared};
use crate::store::MetricsData;

/// The figures of the metrics page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Items decided at least once.
    pub decided: usize,
    /// Verdict to first decision, ms.
    pub p50_decision_ms: Option<i64>,
    pub p99_decision_ms: Option<i64>,
    /// Decided items where the human and the model disagree on whether it is a violation
    /// (model `review`/`block` and human `pass`, or model `pass` and human `block`).
    pub overturned: usize,
    pub reopened: usize,
    /// Reopened items decided again, and how many of those came out differently.
    pub appeals_resolved: usize,
    pub appeals_overturned: usize,
    pub open: usize,
    pub p50_queue_age_ms: Option<i64>,
    pub oldest_queue_age_ms: Option<i64>,
    /// Decisions and reopenings per reason code.
    pub by_reason: BTreeMap<String, usize>,
}

impl Summary {
    pub fn overturn_rate(&self) -> Option<f64> {
        (self.decided > 0).then(|| self.overturned as f64 / self.decided as f64)
    }

    pub fn appeal_overturn_rate(&self) -> Option<f64> {
        (self.appeals_resolved > 0)
            .then(|| self.appeals_overturned as f64 / self.appeals_resolved as f64)
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values.
pub fn percentile(values: &[i64], p: f64) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub fn summarize(data: &MetricsData, now_ms: i64) -> Summary {
    let mut s = Summary::default();
    let mut to_decision = Vec::new();
    let mut ages = Vec::new();
    for item in &data.items {
        if let Some(first) = item.first_decided_at_ms {
            s.decided += 1;
            to_decision.push((first - item.created_at_ms).max(0));
        }
        if item.state == "decided" {
            let flagged_by_model = item.model_decision != "pass";
            let flagged_by_human = item.human_decision.as_deref() == Some("block");
            if flagged_by_model != flagged_by_human {
                s.overturned += 1;
            }
        } else {
            s.open += 1;
            ages.push((now_ms - item.created_at_ms).max(0));
        }
    }
    s.p50_decision_ms = percentile(&to_decision, 50.0);
    s.p99_decision_ms = percentile(&to_decision, 99.0);
    s.p50_queue_age_ms = percentile(&ages, 50.0);
    s.oldest_queue_age_ms = ages.iter().copied().max();
    // An appeal: a reopening (which records the decision it reopened) and the next decision
    // that closed the item again.
    let mut pending: HashMap<i64, Option<String>> = HashMap::new();
    for d in &data.history {
        *s.by_reason.entry(d.reason_code.clone()).or_default() += 1;
        if d.action == "reopen" {
            s.reopened += 1;
            pending.insert(d.item_id, d.outcome.clone());
        } else if let Some(new) = d.outcome.as_ref() {
            if let Some(before) = pending.remove(&d.item_id) {
                s.appeals_resolved += 1;
                if before.as_ref() != Some(new) {
                    s.appeals_overturned += 1;
                }
            }
        }
    }
    s
}

pub async fn page(
    State(review): State<ReviewShared>,
    staff: Staff,
) -> Result<Response, ReviewError> {
    staff.require(Role::Lead)?;
    let policy = review.policy.clone();
    let data = review
        .db(move |s| {
            super::queue::sync(s, &policy)?;
            s.review_metrics()
        })
        .await?;
    let summary = summarize(&data, crate::store::now_ms());
    Ok(html(
        StatusCode::OK,
        templates::metrics_page(&staff, &summary),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DecisionRow, ReviewItemRow};

    fn item(
        id: i64,
        model: &str,
        state: &str,
        human: Option<&str>,
        created: i64,
        first: Option<i64>,
    ) -> ReviewItemRow {
        ReviewItemRow {
            id,
            verdict_id: id,
            recording_id: format!("rec-{id}"),
            model_decision: model.into(),
            severity_rank: 2,
            teacher_id: None,
            created_at_ms: created,
            qa_sample: model == "pass",
            state: state.into(),
            human_decision: human.map(str::to_string),
            version: 1,
            first_decided_at_ms: first,
            decided_at_ms: first,
            claimed_by: None,
            claimed_by_name: None,
            claim_until_ms: None,
            labels: vec![],
            findings: 0,
        }
    }

    fn act(item_id: i64, action: &str, reason: &str, outcome: Option<&str>) -> DecisionRow {
        DecisionRow {
            id: 0,
            item_id,
            finding_id: None,
            action: action.into(),
            reason_code: reason.into(),
            note: None,
            user_id: 1,
            user_name: "u".into(),
            item_version: 1,
            outcome: outcome.map(str::to_string),
            created_at_ms: 0,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
    }

    #[test]
    fn summary_counts_overturns_appeals_and_queue_age() {
        let data = MetricsData {
            items: vec![
                item(1, "review", "decided", Some("pass"), 0, Some(1_000)), // overturned
                item(2, "block", "decided", Some("block"), 0, Some(3_000)),
                item(3, "pass", "decided", Some("block"), 0, Some(2_000)), // QA sample overturned
                item(4, "review", "open", None, 5_000, None),
                item(5, "review", "open", None, 9_000, None),
            ],
            history: vec![
                act(2, "confirm", "explicit_content", Some("block")),
                act(2, "reopen", "appeal_received", Some("block")),
                act(2, "confirm", "explicit_content", Some("block")), // upheld
                act(1, "dismiss", "false_positive", Some("pass")),
                act(1, "reopen", "quality_check", Some("pass")),
                act(1, "confirm", "off_platform_contact", Some("block")), // overturned on appeal
                act(3, "reopen", "appeal_received", Some("block")),       // not resolved yet
            ],
        };
        let s = summarize(&data, 10_000);
        assert_eq!(s.decided, 3);
        assert_eq!(s.p50_decision_ms, Some(2_000));
        assert_eq!(s.p99_decision_ms, Some(3_000));
        assert_eq!(s.overturned, 2);
        assert_eq!(s.overturn_rate(), Some(2.0 / 3.0));
        assert_eq!(
            (s.reopened, s.appeals_resolved, s.appeals_overturned),
            (3, 2, 1)
        );
        assert_eq!(s.appeal_overturn_rate(), Some(0.5));
        assert_eq!(s.open, 2);
        assert_eq!(s.oldest_queue_age_ms, Some(5_000));
        assert_eq!(s.p50_queue_age_ms, Some(1_000));
        assert_eq!(s.by_reason["explicit_content"], 2);
    }
}
