//! The per-recording verdict: findings with timestamps, the decision, and enough provenance
//! (policy fingerprint, model hashes) to say exactly what produced it.
//!
//! Plain types only, imported by everything else and importing nothing of the crate: the policy
//! decides ([`crate::policy::decide`]), the audit builds the findings.
//!
//! The JSON form is a public contract described by `docs/verdict.schema.json`; bump
//! [`SCHEMA_VERSION`] on any incompatible change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the verdict JSON layout (`schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// What a finding is about. The set is closed: the policy's `[decision.labels]` maps each to an
/// action and a severity, and every `[[text_rules]]` rule names one (a misspelt label is a policy
/// load error, not a finding nobody has a rule for). Serialised as the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Nudity,
    NoFace,
    MultipleFaces,
    IdentityMismatch,
    /// Verification of the enrolled teacher was asked for and could not be done.
    IdentityUnverified,
    ContactInfo,
    PaymentSolicitation,
    Profanity,
    Silence,
}

impl Label {
    pub const ALL: [Label; 9] = [
        Label::Nudity,
        Label::NoFace,
        Label::MultipleFaces,
        Label::IdentityMismatch,
        Label::IdentityUnverified,
        Label::ContactInfo,
        Label::PaymentSolicitation,
        Label::Profanity,
        Label::Silence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Nudity => "nudity",
            Label::NoFace => "no_face",
            Label::MultipleFaces => "multiple_faces",
            Label::IdentityMismatch => "identity_mismatch",
            Label::IdentityUnverified => "identity_unverified",
            Label::ContactInfo => "contact_info",
            Label::PaymentSolicitation => "payment_solicitation",
            Label::Profanity => "profanity",
            Label::Silence => "silence",
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown label `{s}`"))
    }
}

/// How serious a finding is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(format!("unknown severity `{other}`")),
        }
    }
}

/// Which recorded stream a finding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Track {
    Camera,
    Desktop,
    Microphone,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Camera => "camera",
            Track::Desktop => "desktop",
            Track::Microphone => "microphone",
        }
    }
}

impl std::str::FromStr for Track {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "camera" => Ok(Track::Camera),
            "desktop" => Ok(Track::Desktop),
            "microphone" => Ok(Track::Microphone),
            other => Err(format!("unknown track `{other}`")),
        }
    }
}

/// The outcome for a whole recording. Ordered by how much attention it needs:
/// `Pass < Review < Block < Error` (an error means nobody knows what is in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Pass,
    Review,
    Block,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Review => "review",
            Decision::Block => "block",
            Decision::Error => "error",
        }
    }
}

/// A model file, named by id and pinned by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub id: String,
    pub sha256: String,
}

/// Box in slice-image pixels (the slice written as evidence, not the decoded frame).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// What a reviewer can look at to check a finding. Paths are relative to the evidence directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_clip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_excerpt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr_excerpt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BBox>,
}

impl Evidence {
    /// The file a reviewer opens first (slice image, else audio clip).
    pub fn primary_path(&self) -> Option<&str> {
        self.slice_path.as_deref().or(self.audio_clip.as_deref())
    }
}

/// One timestamped observation on one track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub label: Label,
    pub severity: Severity,
    pub track: Track,
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0..1; for corroborated spans the share of samples that hit.
    pub confidence: f32,
    pub model: ModelRef,
    /// The policy rule that fired (a `[[text_rules]]` id, or e.g. `face.no_face` for built-in checks).
    pub rule_id: String,
    #[serde(default)]
    pub evidence: Evidence,
    /// One human-readable sentence for the review page.
    pub reason: String,
}

/// The recording a verdict is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingInfo {
    pub id: String,
    /// Where it was read from (path or URL), for operators; not part of the idempotency key.
    pub source: String,
    /// sha256 of the file bytes; empty only when the file could not be read at all.
    pub sha256: String,
    pub duration_ms: u64,
    /// Part of the recording could not be audited (damaged file, a limit hit, a track missing).
    pub partial: bool,
    /// The enrolled teacher the camera was checked against (an opaque id, never a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageStats {
    pub wall_ms: u64,
    pub frames: u64,
}

/// Cost figures, so that throughput regressions show up in the verdicts themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    pub duration_ms: u64,
    pub slices: u64,
    pub wall_ms: u64,
    /// Recording duration / wall time: 10 means audited ten times faster than playback.
    pub realtime_factor: f64,
    #[serde(default)]
    pub stages: BTreeMap<String, StageStats>,
    #[serde(default)]
    pub model_calls: BTreeMap<String, u64>,
    /// Model calls a gate avoided (e.g. OCR skipped because the slide did not change).
    #[serde(default)]
    pub gate_savings: BTreeMap<String, u64>,
}

impl Stats {
    /// `duration_ms / wall_ms`, 0 when nothing was timed.
    pub fn realtime_factor_of(duration_ms: u64, wall_ms: u64) -> f64 {
        if wall_ms == 0 {
            0.0
        } else {
            duration_ms as f64 / wall_ms as f64
        }
    }
}

/// The policy a verdict was decided under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    pub fingerprint: String,
}

/// A model that took part, by role (`face_detector`, `nudity`, `ocr_det`, `whisper_encoder`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUse {
    pub role: String,
    pub id: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub schema_version: u32,
    pub recording: RecordingInfo,
    pub decision: Decision,
    pub findings: Vec<Finding>,
    pub stats: Stats,
    pub policy: PolicyRef,
    pub models: Vec<ModelUse>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl Verdict {
    /// Same recording, bytes, teacher, policy and model files => same key, whatever the run's
    /// timing, source path or creation time. The store uses it to make re-runs write nothing
    /// new; two recordings with the same bytes (or one checked against another teacher) are
    /// audited, and stored, each in their own right.
    pub fn idempotency_key(&self) -> String {
        idempotency_key(
            &self.recording.id,
            self.recording.teacher_id.as_deref(),
            &self.recording.sha256,
            &self.policy.fingerprint,
            self.models.iter().map(|m| m.sha256.as_str()),
        )
    }
}

/// The key of a verdict from what produced it, computable before auditing (to skip work that is
/// already done): recording id, teacher checked against, content sha256, policy fingerprint and
/// the model files' hashes in any order.
pub fn idempotency_key<'a>(
    recording_id: &str,
    teacher_id: Option<&str>,
    recording_sha256: &str,
    policy_fingerprint: &str,
    model_hashes: impl Iterator<Item = &'a str>,
) -> String {
    let mut hashes: Vec<&str> = model_hashes.collect();
    hashes.sort_unstable();
    hashes.dedup();
    let mut h = Sha256::new();
    h.update(b"classguard-verdict-v2\n");
    h.update(recording_id.as_bytes());
    h.update(b"\n");
    h.update(teacher_id.unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(recording_sha256.as_bytes());
    h.update(b"\n");
    h.update(policy_fingerprint.as_bytes());
    for m in hashes {
        h.update(b"\n");
        h.update(m.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Current time as RFC 3339 UTC, the format of `created_at`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_serialise_as_their_names_and_parse_back() {
        for l in Label::ALL {
            assert_eq!(serde_json::to_value(l).unwrap(), l.as_str());
            assert_eq!(l.as_str().parse::<Label>(), Ok(l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert!("no-face".parse::<Label>().is_err());
        assert!(serde_json::from_str::<Label>("\"never_heard_of\"").is_err());
    }

    #[test]
    fn idempotency_key_ignores_run_details_and_model_order() {
        let mut v = Verdict {
            schema_version: SCHEMA_VERSION,
            recording: RecordingInfo {
                id: "r1".into(),
                source: "/a.webm".into(),
                sha256: "ab".repeat(32),
                duration_ms: 1000,
                partial: false,
                teacher_id: None,
                partial_reason: None,
                error: None,
            },
            decision: Decision::Pass,
            findings: vec![],
            stats: Stats::default(),
            policy: PolicyRef {
                name: "classroom".into(),
                version: "1".into(),
                fingerprint: "cd".repeat(32),
            },
            models: vec![
                ModelUse {
                    role: "a".into(),
                    id: "a".into(),
                    sha256: "11".repeat(32),
                },
                ModelUse {
                    role: "b".into(),
                    id: "b".into(),
                    sha256: "22".repeat(32),
                },
            ],
            created_at: now_rfc3339(),
        };
        let k1 = v.idempotency_key();
        v.models.reverse();
        v.recording.source = "/b.webm".into();
        v.stats.wall_ms = 99;
        v.created_at = "2000-01-01T00:00:00Z".into();
        assert_eq!(k1, v.idempotency_key());
        v.models[0].sha256 = "33".repeat(32);
        let k2 = v.idempotency_key();
        assert_ne!(k1, k2);
        v.recording.teacher_id = Some("t-2".into());
        assert_ne!(k2, v.idempotency_key(), "another teacher is another audit");
        v.recording.teacher_id = None;
        v.recording.id = "r2".into();
        assert_ne!(k2, v.idempotency_key(), "same bytes, another recording");
    }
}
