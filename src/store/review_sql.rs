//! What both backends decide the same way about a review act, around their own SQL: whether it
//! is refused, and the item's state after it.

use super::{ActOutcome, AuditEntry, ReviewAct};

/// The item row as read (and locked) at the start of an act's transaction.
pub(crate) struct ItemLock {
    pub state: String,
    pub version: i64,
    pub claimed_by: Option<i64>,
    pub claim_until_ms: Option<i64>,
    pub verdict_id: i64,
    pub human_decision: Option<String>,
}

/// Why `act` may not be applied to `cur`, if it may not: a decision needs the caller's live
/// lease on an open item, a reopening a decided item; both need the version the caller saw.
pub(crate) fn refuse(act: &ReviewAct, cur: &ItemLock, now_ms: i64) -> Option<ActOutcome> {
    let reopen = act.action == "reopen";
    if !reopen {
        let live = cur.claim_until_ms.is_some_and(|t| t >= now_ms);
        let holder = cur.claimed_by.filter(|_| live);
        if holder != Some(act.user_id) {
            return Some(ActOutcome::NotClaimed { holder });
        }
    }
    if cur.version != act.version {
        return Some(ActOutcome::Stale {
            current: cur.version,
        });
    }
    let wanted = if reopen { "decided" } else { "open" };
    if cur.state != wanted {
        return Some(ActOutcome::WrongState {
            state: cur.state.clone(),
        });
    }
    None
}

/// The finding status a decision action sets.
pub(crate) fn finding_status(action: &str) -> &'static str {
    if action == "confirm" {
        "confirmed"
    } else {
        "dismissed"
    }
}

pub(crate) struct NextState {
    pub state: &'static str,
    pub decision: Option<String>,
    /// What the history row records (see [`super::DecisionRow::outcome`]).
    pub outcome: Option<String>,
}

/// The item after `act`, given the finding counts after it. A recording-level confirm blocks and a
/// recording-level dismiss passes; per-finding decisions close the item once no finding is open,
/// as `block` if any finding was confirmed and `pass` otherwise.
pub(crate) fn next_state(act: &ReviewAct, cur: &ItemLock, open: i64, confirmed: i64) -> NextState {
    let decided = |d: &str| NextState {
        state: "decided",
        decision: Some(d.to_string()),
        outcome: Some(d.to_string()),
    };
    match (act.action.as_str(), act.finding_id) {
        ("reopen", _) => NextState {
            state: "open",
            decision: None,
            outcome: cur.human_decision.clone(),
        },
        ("confirm", None) => decided("block"),
        (_, None) => decided("pass"),
        (_, Some(_)) if open == 0 => decided(if confirmed > 0 { "block" } else { "pass" }),
        (_, Some(_)) => NextState {
            state: "open",
            decision: None,
            outcome: None,
        },
    }
}

/// The audit entry of an applied act: ids and codes only.
pub(crate) fn act_audit(act: &ReviewAct) -> AuditEntry {
    let target = act
        .finding_id
        .map_or_else(|| "recording".to_string(), |f| format!("finding {f}"));
    AuditEntry {
        user_id: Some(act.user_id),
        action: if act.action == "reopen" {
            "reopen".into()
        } else {
            "decision".into()
        },
        item_id: Some(act.item_id),
        detail: format!(
            "{} {target} reason={} version={}",
            act.action, act.reason_code, act.version
        ),
    }
}

/// A comma-joined label list as a sorted, de-duplicated list.
pub(crate) fn split_labels(joined: Option<String>) -> Vec<String> {
    let mut v: Vec<String> = joined
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(action: &str, finding: Option<i64>, user: i64, version: i64) -> ReviewAct {
        ReviewAct {
            item_id: 1,
            user_id: user,
            finding_id: finding,
            action: action.into(),
            reason_code: "r".into(),
            note: None,
            version,
        }
    }

    fn lock(state: &str, holder: Option<i64>, until: Option<i64>) -> ItemLock {
        ItemLock {
            state: state.into(),
            version: 3,
            claimed_by: holder,
            claim_until_ms: until,
            verdict_id: 9,
            human_decision: Some("block".into()),
        }
    }

    #[test]
    fn decisions_need_a_live_lease_of_the_caller_and_the_current_version() {
        let open = lock("open", Some(7), Some(1_000));
        assert_eq!(refuse(&act("confirm", None, 7, 3), &open, 999), None);
        assert_eq!(
            refuse(&act("confirm", None, 8, 3), &open, 999),
            Some(ActOutcome::NotClaimed { holder: Some(7) })
        );
        assert_eq!(
            refuse(&act("confirm", None, 7, 3), &open, 1_001),
            Some(ActOutcome::NotClaimed { holder: None }),
            "an expired lease is nobody's"
        );
        assert_eq!(
            refuse(&act("dismiss", Some(4), 7, 2), &open, 999),
            Some(ActOutcome::Stale { current: 3 })
        );
        let decided = lock("decided", None, None);
        assert_eq!(refuse(&act("reopen", None, 8, 3), &decided, 0), None);
        assert!(matches!(
            refuse(&act("reopen", None, 7, 3), &open, 999),
            Some(ActOutcome::WrongState { .. })
        ));
    }

    #[test]
    fn recording_and_finding_decisions_close_the_item_as_documented() {
        let cur = lock("open", Some(7), Some(1));
        let n = next_state(&act("confirm", None, 7, 3), &cur, 2, 0);
        assert_eq!((n.state, n.decision.as_deref()), ("decided", Some("block")));
        let n = next_state(&act("dismiss", None, 7, 3), &cur, 0, 0);
        assert_eq!((n.state, n.decision.as_deref()), ("decided", Some("pass")));
        let n = next_state(&act("dismiss", Some(1), 7, 3), &cur, 1, 0);
        assert_eq!((n.state, n.decision), ("open", None));
        let n = next_state(&act("dismiss", Some(1), 7, 3), &cur, 0, 1);
        assert_eq!(n.decision.as_deref(), Some("block"));
        let n = next_state(&act("reopen", None, 8, 3), &cur, 0, 1);
        assert_eq!((n.state, n.decision), ("open", None));
        assert_eq!(
            n.outcome.as_deref(),
            Some("block"),
            "records what it reopened"
        );
    }

    #[test]
    fn labels_split_sorted_and_unique() {
        assert_eq!(
            split_labels(Some("nudity,contact_info,nudity".into())),
            vec!["contact_info", "nudity"]
        );
        assert!(split_labels(None).is_empty());
    }
}
