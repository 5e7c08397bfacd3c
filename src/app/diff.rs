//! `classguard diff OLD NEW` and `scan --compare-with OLD`: what a policy or model change does to
//! the decisions before it is rolled out. Recordings are matched by id (ids derive from where a
//! recording was read, so two scans of the same folder or prefix line up); the report counts
//! each decision transition (pass -> review, review -> block, ...) and, per label, the recordings
//! that gain or lose it, each with the recordings listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::Store;
use crate::verdict::{Decision, Label, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("store {0}: {1}")]
    Store(String, crate::store::StoreError),
}

/// Where a set of verdicts is: a verdict folder (`<id>/verdict.json`, as `scan --out` writes it)
/// or a store (SQLite file or `postgres://` URL; its newest verdict per recording).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictSource {
    Dir(PathBuf),
    Store(String),
}

impl VerdictSource {
    /// A folder is a folder; a `postgres://` URL or an existing file is a store.
    pub fn parse(s: &str) -> VerdictSource {
        if !s.starts_with("postgres://") && !s.starts_with("postgresql://") && Path::new(s).is_dir()
        {
            VerdictSource::Dir(PathBuf::from(s))
        } else {
            VerdictSource::Store(s.to_string())
        }
    }

    pub fn load(&self) -> Result<Vec<Verdict>, DiffError> {
        match self {
            VerdictSource::Dir(d) => load_dir(d),
            VerdictSource::Store(s) => {
                if !s.contains("://") && !Path::new(s).is_file() {
                    return Err(DiffError::Read {
                        path: s.clone(),
                        reason: "neither a verdict folder nor a store file".into(),
                    });
                }
                let store = Store::open_any(s).map_err(|e| DiffError::Store(s.clone(), e))?;
                store
                    .latest_verdicts()
                    .map_err(|e| DiffError::Store(s.clone(), e))
            }
        }
    }
}

/// Every `<dir>/<id>/verdict.json`. An unreadable verdict is an error: a report that silently
/// drops recordings would understate the change.
fn load_dir(dir: &Path) -> Result<Vec<Verdict>, DiffError> {
    let err = |p: &Path, reason: String| DiffError::Read {
        path: p.display().to_string(),
        reason,
    };
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, e.to_string()))?;
        let path = entry.path().join("verdict.json");
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
        let v: Verdict = serde_json::from_slice(&bytes).map_err(|e| err(&path, e.to_string()))?;
        out.push(v);
    }
    out.sort_by(|a, b| a.recording.id.cmp(&b.recording.id));
    Ok(out)
}

/// Recordings that gained and lost one label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabelChange {
    /// Recordings with the label in OLD and in NEW.
    pub old: usize,
    pub new: usize,
    pub gained: Vec<String>,
    pub lost: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// Recordings in both.
    pub compared: usize,
    pub unchanged: usize,
    /// `(old, new)` decision -> recordings, for the decisions that changed.
    #[serde(serialize_with = "transitions_as_strings")]
    pub transitions: BTreeMap<(Decision, Decision), Vec<String>>,
    /// Labels whose set of recordings changed.
    pub labels: BTreeMap<Label, LabelChange>,
    pub only_old: Vec<String>,
    pub only_new: Vec<String>,
}

fn transitions_as_strings<S: serde::Serializer>(
    t: &BTreeMap<(Decision, Decision), Vec<String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(t.len()))?;
    for ((a, b), recs) in t {
        m.serialize_entry(&format!("{}->{}", a.as_str(), b.as_str()), recs)?;
    }
    m.end()
}

/// The labels a verdict has at least one finding of.
fn labels(v: &Verdict) -> BTreeSet<Label> {
    v.findings.iter().map(|f| f.label).collect()
}

/// Compares two sets of verdicts, matched by recording id. When one side holds several verdicts
/// of a recording, the last one counts.
pub fn diff(old: &[Verdict], new: &[Verdict]) -> DiffReport {
    let by_id = |vs: &[Verdict]| -> BTreeMap<String, Verdict> {
        vs.iter()
            .map(|v| (v.recording.id.clone(), v.clone()))
            .collect()
    };
    let (old, new) = (by_id(old), by_id(new));
    let mut r = DiffReport::default();
    for (id, o) in &old {
        let Some(n) = new.get(id) else {
            r.only_old.push(id.clone());
            continue;
        };
        r.compared += 1;
        if o.decision == n.decision {
            r.unchanged += 1;
        } else {
            r.transitions
                .entry((o.decision, n.decision))
                .or_default()
                .push(id.clone());
        }
        let (lo, ln) = (labels(o), labels(n));
        for l in lo.union(&ln) {
            let c = r.labels.entry(*l).or_default();
            c.old += usize::from(lo.contains(l));
            c.new += usize::from(ln.contains(l));
            match (lo.contains(l), ln.contains(l)) {
                (false, true) => c.gained.push(id.clone()),
                (true, false) => c.lost.push(id.clone()),
                _ => {}
            }
        }
    }
    r.labels
        .retain(|_, c| !c.gained.is_empty() || !c.lost.is_empty());
    r.only_new = new
        .keys()
        .filter(|id| !old.contains_key(*id))
        .cloned()
        .collect();
    r
}

impl DiffReport {
    pub fn changed(&self) -> usize {
        self.compared - self.unchanged
    }

    /// The report for a terminal: totals, one line per transition and per changed label.
    pub fn text(&self) -> String {
        let list = |ids: &[String]| ids.join(" ");
        let mut s = format!(
            "{} recordings compared: {} decisions changed, {} unchanged\n",
            self.compared,
            self.changed(),
            self.unchanged
        );
        if !self.transitions.is_empty() {
            s += "decision changes:\n";
            for ((a, b), ids) in &self.transitions {
                let arrow = format!("{} -> {}", a.as_str(), b.as_str());
                s += &format!("  {arrow:<18} {:>5}  {}\n", ids.len(), list(ids));
            }
        }
        if !self.labels.is_empty() {
            s += "label changes (recordings with the label, old -> new):\n";
            for (label, c) in &self.labels {
                s += &format!("  {:<20} {:>5} -> {:<5}", label.as_str(), c.old, c.new);
                if !c.gained.is_empty() {
                    s += &format!("  +{}: {}", c.gained.len(), list(&c.gained));
                }
                if !c.lost.is_empty() {
                    s += &format!("  -{}: {}", c.lost.len(), list(&c.lost));
                }
                s += "\n";
            }
        }
        if !self.only_old.is_empty() {
            s += &format!(
                "only in OLD: {}  {}\n",
                self.only_old.len(),
                list(&self.only_old)
            );
        }
        if !self.only_new.is_empty() {
            s += &format!(
                "only in NEW: {}  {}\n",
                self.only_new.len(),
                list(&self.only_new)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{
        Evidence, Finding, ModelRef, PolicyRef, RecordingInfo, Severity, Stats, Track,
        SCHEMA_VERSION,
    };

    fn v(id: &str, decision: Decision, labels: &[Label]) -> Verdict {
        Verdict {
            schema_version: SCHEMA_VERSION,
            recording: RecordingInfo {
                id: id.into(),
                source: format!("s3://media/{id}.webm"),
                sha256: "0".repeat(64),
                duration_ms: 1000,
                partial: false,
                teacher_id: None,
                partial_reason: None,
                error: None,
            },
            decision,
            findings: labels
                .iter()
                .map(|l| Finding {
                    label: *l,
                    severity: Severity::High,
                    track: Track::Camera,
                    start_ms: 0,
                    end_ms: 1,
                    confidence: 1.0,
                    model: ModelRef {
                        id: "m".into(),
                        sha256: "0".repeat(64),
                    },
                    rule_id: "r".into(),
                    evidence: Evidence::default(),
                    reason: "r".into(),
                })
                .collect(),
            stats: Stats::default(),
            policy: PolicyRef {
                name: "p".into(),
                version: "1".into(),
                fingerprint: "f".into(),
            },
            models: Vec::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn transitions_and_labels_are_counted_per_recording() {
        use Decision::*;
        let old = [
            v("a", Pass, &[]),
            v("b", Review, &[Label::NoFace]),
            v("c", Review, &[Label::ContactInfo]),
            v("d", Pass, &[]),
            v("gone", Pass, &[]),
        ];
        let new = [
            v("a", Review, &[Label::ContactInfo]),
            v("b", Block, &[Label::NoFace, Label::Nudity]),
            v("c", Pass, &[]),
            v("d", Pass, &[]),
            v("fresh", Block, &[]),
        ];
        let r = diff(&old, &new);
        assert_eq!((r.compared, r.unchanged, r.changed()), (4, 1, 3));
        assert_eq!(r.transitions[&(Pass, Review)], ["a"]);
        assert_eq!(r.transitions[&(Review, Block)], ["b"]);
        assert_eq!(r.transitions[&(Review, Pass)], ["c"]);
        assert_eq!(r.transitions.len(), 3);
        let contact = &r.labels[&Label::ContactInfo];
        assert_eq!((contact.old, contact.new), (1, 1));
        assert_eq!(contact.gained, ["a"]);
        assert_eq!(contact.lost, ["c"]);
        assert_eq!(r.labels[&Label::Nudity].gained, ["b"]);
        assert!(
            !r.labels.contains_key(&Label::NoFace),
            "unchanged label is not listed"
        );
        assert_eq!(r.only_old, ["gone"]);
        assert_eq!(r.only_new, ["fresh"]);
        let text = r.text();
        assert!(text.contains("4 recordings compared: 3 decisions changed, 1 unchanged"));
        assert!(text.contains("review -> block"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["transitions"]["pass->review"][0], "a");
    }

    #[test]
    fn a_folder_with_a_broken_verdict_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rec-1")).unwrap();
        std::fs::write(dir.path().join("rec-1/verdict.json"), b"{not json").unwrap();
        assert!(matches!(
            VerdictSource::parse(dir.path().to_str().unwrap()).load(),
            Err(DiffError::Read { .. })
        ));
        std::fs::write(
            dir.path().join("rec-1/verdict.json"),
            serde_json::to_vec(&v("rec-1", Decision::Pass, &[])).unwrap(),
        )
        .unwrap();
        let loaded = VerdictSource::parse(dir.path().to_str().unwrap())
            .load()
            .unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(matches!(
            VerdictSource::parse("/nonexistent/x").load(),
            Err(DiffError::Read { .. })
        ));
    }
}
