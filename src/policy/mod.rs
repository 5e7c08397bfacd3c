//! The audit policy: every threshold, gate, text rule and decision mapping is data in a TOML file, so
//! tuning a deployment never needs a rebuild and every verdict can name the exact policy it used
//! ([`Policy::fingerprint`]).
//!
//! The shipped default is `pipelines/classroom.toml`, embedded at build time. Loading is strict:
//! unknown fields are errors (a misspelt threshold must not silently fall back to its default), and
//! [`Policy::validate`] range-checks values and compiles every text rule.

pub mod text;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::slice::sampling::SamplingConfig;
use crate::verdict::{Decision, Finding, Label, PolicyRef, Severity};

pub use text::{TextHit, TextPolicy, TextRule};

/// The embedded default policy.
pub const CLASSROOM_TOML: &str = include_str!("../../pipelines/classroom.toml");

/// A policy that could not be loaded. Every variant names the file (or `<embedded classroom.toml>`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: cannot read policy: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, wrong type or unknown field; the message carries the key and line.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{field}`: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

impl PolicyError {
    /// The offending field, where known (`face.identity_threshold`, `text_rules[3].pattern`).
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Face detector model. Both are permissively licensed; YuNet also gives landmarks for alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaceDetector {
    #[default]
    Yunet,
    Ultraface,
}

/// Nudity model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NudityModel {
    /// Yahoo open_nsfw classifier (BSD-2-Clause weights).
    #[default]
    OpenNsfw,
    /// NudeNet detector. Its bundled licence is AGPL-3.0, so it is opt-in only: choosing it may place
    /// obligations on whoever deploys the service.
    Nudenet,
}

/// Speech-to-text model; `off` disables transcription (VAD still runs for the silence check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WhisperModel {
    #[default]
    #[serde(rename = "tiny.en")]
    TinyEn,
    #[serde(rename = "base")]
    Base,
    #[serde(rename = "off")]
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub face_detector: FaceDetector,
    pub nudity: NudityModel,
    pub whisper: WhisperModel,
    /// Intra-op threads per model session; 0 lets the runtime decide.
    pub threads: usize,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            face_detector: FaceDetector::Yunet,
            nudity: NudityModel::OpenNsfw,
            whisper: WhisperModel::TinyEn,
            threads: 1,
        }
    }
}

/// Skip an expensive model on a slice that barely differs from the last one it ran on, but never for
/// longer than `max_gap_ms` (so a slow change cannot hide forever).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrameDiffGate {
    pub enabled: bool,
    /// Mean absolute difference (0..255) of a small grey thumbnail below which the slice counts as unchanged.
    pub threshold: f32,
    pub max_gap_ms: u64,
}

impl Default for FrameDiffGate {
    fn default() -> Self {
        FrameDiffGate {
            enabled: true,
            threshold: 2.0,
            max_gap_ms: 5_000,
        }
    }
}

/// Gates keep the expensive models off slices and audio that cannot change the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gates {
    pub frame_diff: FrameDiffGate,
    /// Run OCR only on desktop slices the sampler marked as a new slide.
    pub ocr_new_slides_only: bool,
    /// Run Whisper only over audio the VAD marked as speech.
    pub whisper_speech_only: bool,
    /// Whisper windows (30 s of speech each) decoded together. Each decoding step is bound by
    /// reading the 80 MB output projection, which a batch shares: 4 windows decode about 2.3x
    /// faster than one after the other, for ~18 MB of encoder output per extra window. 1 turns
    /// batching off.
    pub whisper_batch: usize,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            frame_diff: FrameDiffGate::default(),
            ocr_new_slides_only: true,
            whisper_speech_only: true,
            whisper_batch: 4,
        }
    }
}

/// "`k` of the last `n` samples" (see [`crate::audit::findings::SpanBuilder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corroboration {
    pub k: usize,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FacePolicy {
    /// Detections scoring below this are not faces.
    pub detection_score_min: f32,
    /// Faces smaller than this (shorter box side, slice pixels) are too small to identify.
    pub min_face_px: u32,
    /// Variance of the Laplacian of the face crop; below it the crop is too blurred to identify,
    /// so it neither confirms nor contradicts identity.
    pub blur_min: f32,
    /// Cosine similarity to an enrolled template at or above which the face is the teacher
    /// (0.363 is the published operating point of SFace).
    pub identity_threshold: f32,
    /// No face on camera for at least this long is `no_face`...
    pub no_face_min_s: f32,
    /// ...and so is no face for at least this share (0..1] of the recording, so that a camera
    /// empty for most of a short recording is flagged while short glances away in a long class
    /// are not.
    pub no_face_min_fraction: f32,
    pub multiple_faces_min_s: f32,
    pub identity_corroboration: Corroboration,
}

impl Default for FacePolicy {
    fn default() -> Self {
        FacePolicy {
            detection_score_min: 0.7,
            min_face_px: 40,
            blur_min: 40.0,
            identity_threshold: 0.363,
            no_face_min_s: 30.0,
            no_face_min_fraction: 0.3,
            multiple_faces_min_s: 10.0,
            identity_corroboration: Corroboration { k: 3, n: 5 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NudityPolicy {
    /// Model score (0..1) at or above which a slice is a hit.
    pub threshold: f32,
    pub corroboration: Corroboration,
}

impl Default for NudityPolicy {
    fn default() -> Self {
        NudityPolicy {
            threshold: 0.8,
            corroboration: Corroboration { k: 2, n: 3 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechPolicy {
    /// VAD probability that starts speech.
    pub vad_threshold: f32,
    /// VAD probability below which speech ends (hysteresis; at most `vad_threshold`).
    pub vad_neg_threshold: f32,
    /// Speech shorter than this is noise.
    pub min_speech_ms: u64,
    /// Pauses shorter than this do not split a speech segment.
    pub min_silence_ms: u64,
    /// Padding added around speech segments before transcription.
    pub speech_pad_ms: u64,
    /// Silence at least this long becomes a `silence` finding.
    pub silence_min_s: f32,
}

impl Default for SpeechPolicy {
    fn default() -> Self {
        SpeechPolicy {
            vad_threshold: 0.5,
            vad_neg_threshold: 0.35,
            min_speech_ms: 250,
            min_silence_ms: 500,
            speech_pad_ms: 200,
            silence_min_s: 120.0,
        }
    }
}

/// What a finding's label does to the recording's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pass,
    Review,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelDecision {
    pub action: Action,
    /// Severity given to findings of this label by the built-in checks (text rules carry their own).
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionPolicy {
    pub labels: BTreeMap<Label, LabelDecision>,
    /// Action for a label the table does not name (review: unknown means a human should look).
    pub unknown_label: Action,
    /// Least action for a partially audited recording.
    pub partial: Action,
}

impl DecisionPolicy {
    pub fn action_for(&self, label: Label) -> Action {
        self.labels
            .get(&label)
            .map_or(self.unknown_label, |l| l.action)
    }

    /// Default severity for findings of `label`.
    pub fn severity_for(&self, label: Label) -> Severity {
        self.labels
            .get(&label)
            .map_or(Severity::Medium, |l| l.severity)
    }
}

impl Default for DecisionPolicy {
    fn default() -> Self {
        let l = |action, severity| LabelDecision { action, severity };
        let labels = Label::ALL
            .into_iter()
            .map(|label| {
                let decision = match label {
                    Label::Nudity => l(Action::Block, Severity::Critical),
                    Label::IdentityMismatch => l(Action::Review, Severity::High),
                    Label::IdentityUnverified => l(Action::Review, Severity::Medium),
                    Label::NoFace => l(Action::Review, Severity::Medium),
                    Label::MultipleFaces => l(Action::Review, Severity::Low),
                    Label::ContactInfo => l(Action::Review, Severity::High),
                    Label::PaymentSolicitation => l(Action::Review, Severity::High),
                    Label::Profanity => l(Action::Review, Severity::Medium),
                    Label::Silence => l(Action::Pass, Severity::Info),
                };
                (label, decision)
            })
            .collect();
        DecisionPolicy {
            labels,
            unknown_label: Action::Review,
            partial: Action::Review,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidencePolicy {
    /// Evidence files (slices, clips) are deleted this many days after they were written.
    pub retention_days: u32,
    /// Face crops are biometric data: off unless a deployment has a reason and a legal basis.
    pub keep_face_crops: bool,
    /// Longest transcript/OCR excerpt copied into a finding, in characters.
    pub max_excerpt_chars: usize,
}

impl Default for EvidencePolicy {
    fn default() -> Self {
        EvidencePolicy {
            retention_days: 30,
            keep_face_crops: false,
            max_excerpt_chars: 200,
        }
    }
}

impl EvidencePolicy {
    pub fn expires_at(&self, written_at: time::OffsetDateTime) -> time::OffsetDateTime {
        written_at + time::Duration::days(i64::from(self.retention_days))
    }
}

/// What a reviewer does with a reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewActKind {
    /// The finding (or recording) is a violation.
    Confirm,
    /// It is not.
    Dismiss,
    /// A lead reopens a decided recording (an appeal).
    Reopen,
}

impl ReviewActKind {
    pub const ALL: [ReviewActKind; 3] = [
        ReviewActKind::Confirm,
        ReviewActKind::Dismiss,
        ReviewActKind::Reopen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewActKind::Confirm => "confirm",
            ReviewActKind::Dismiss => "dismiss",
            ReviewActKind::Reopen => "reopen",
        }
    }
}

impl std::str::FromStr for ReviewActKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReviewActKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown review action `{s}`"))
    }
}

/// A reason a reviewer must give for a decision: the data behind "why" in the history, so that
/// decisions can be counted by reason and audited against the policy's wording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonCode {
    /// Stable id stored with every decision: lower-case letters, digits and `_`.
    pub code: String,
    /// What the reviewer reads.
    pub title: String,
    pub applies_to: Vec<ReviewActKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewPolicy {
    /// Share (0..1) of `pass` verdicts put in the review queue at random, as a quality check of
    /// what the models let through.
    pub qa_sample_rate: f64,
    pub reasons: Vec<ReasonCode>,
}

impl ReviewPolicy {
    /// The reason codes a kind of act may use, in policy order.
    pub fn reasons_for(&self, kind: ReviewActKind) -> impl Iterator<Item = &ReasonCode> {
        self.reasons
            .iter()
            .filter(move |r| r.applies_to.contains(&kind))
    }

    /// Whether `code` may be given for `kind`.
    pub fn allows(&self, kind: ReviewActKind, code: &str) -> bool {
        self.reasons_for(kind).any(|r| r.code == code)
    }
}

impl Default for ReviewPolicy {
    fn default() -> Self {
        use ReviewActKind::{Confirm, Dismiss, Reopen};
        let r = |code: &str, title: &str, applies_to: &[ReviewActKind]| ReasonCode {
            code: code.into(),
            title: title.into(),
            applies_to: applies_to.to_vec(),
        };
        ReviewPolicy {
            qa_sample_rate: 0.05,
            reasons: vec![
                r(
                    "off_platform_contact",
                    "Contact details or an off-platform invitation",
                    &[Confirm],
                ),
                r(
                    "payment_solicitation",
                    "Payment requested off the platform",
                    &[Confirm],
                ),
                r("explicit_content", "Sexual or explicit content", &[Confirm]),
                r(
                    "identity_fraud",
                    "Someone other than the enrolled teacher",
                    &[Confirm],
                ),
                r(
                    "teacher_absent",
                    "Teacher absent from the class",
                    &[Confirm],
                ),
                r(
                    "abusive_language",
                    "Abusive or profane language",
                    &[Confirm],
                ),
                r(
                    "other_violation",
                    "Another policy violation (say which in the note)",
                    &[Confirm],
                ),
                r(
                    "false_positive",
                    "Model error: nothing of the kind is there",
                    &[Dismiss],
                ),
                r(
                    "allowed_in_context",
                    "There, but allowed in context (lesson material, a parent helping)",
                    &[Dismiss],
                ),
                r(
                    "insufficient_evidence",
                    "The evidence is too poor to tell",
                    &[Dismiss],
                ),
                r("appeal_received", "The teacher appealed", &[Reopen]),
                r("quality_check", "A lead's quality check", &[Reopen]),
                r("decided_in_error", "Decided in error", &[Reopen]),
            ],
        }
    }
}

/// Hard bounds on the input, so a hostile or broken upload cannot exhaust memory, disk or time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_duration_s: u64,
    pub max_tracks: usize,
    pub max_frame_width: u32,
    pub max_frame_height: u32,
    pub max_fps: f32,
    pub max_slices: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 8 << 30,
            max_duration_s: 6 * 3600,
            max_tracks: 8,
            max_frame_width: 3840,
            max_frame_height: 2160,
            max_fps: 120.0,
            max_slices: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub sampling: SamplingConfig,
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub gates: Gates,
    #[serde(default)]
    pub face: FacePolicy,
    #[serde(default)]
    pub nudity: NudityPolicy,
    #[serde(default)]
    pub speech: SpeechPolicy,
    #[serde(default)]
    pub text_rules: Vec<TextRule>,
    #[serde(default)]
    pub decision: DecisionPolicy,
    #[serde(default)]
    pub evidence: EvidencePolicy,
    #[serde(default)]
    pub limits: Limits,
    /// Review-page data (reason codes, the QA sample). Left out of [`Policy::fingerprint`]: it
    /// changes nothing an audit computes, so editing it must not make every verdict stale.
    #[serde(default, skip_serializing)]
    pub review: ReviewPolicy,
    /// `text_rules` compiled once at load.
    #[serde(skip)]
    text: TextPolicy,
}

const EMBEDDED_ORIGIN: &str = "<embedded classroom.toml>";

impl Policy {
    /// The shipped classroom policy.
    pub fn embedded() -> Result<Policy, PolicyError> {
        Policy::from_toml_str(CLASSROOM_TOML, EMBEDDED_ORIGIN)
    }

    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            origin: origin.clone(),
            source,
        })?;
        Policy::from_toml_str(&text, &origin)
    }

    /// The file at `path`, or the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Policy, PolicyError> {
        match path {
            Some(p) => Policy::from_file(p),
            None => Policy::embedded(),
        }
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        policy.validate(origin)?;
        Ok(policy)
    }

    /// Range-checks every value and compiles the text rules (kept for [`Policy::text`]).
    pub fn validate(&mut self, origin: &str) -> Result<(), PolicyError> {
        let invalid = |field: &str, message: String| PolicyError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            message,
        };
        let mut v = Checker { errors: Vec::new() };

        v.non_empty("name", &self.name);
        v.non_empty("version", &self.version);

        let s = &self.sampling;
        v.positive_u("sampling.camera.interval_ms", s.camera.interval_ms);
        v.positive_u(
            "sampling.desktop.check_interval_ms",
            s.desktop.check_interval_ms,
        );
        v.range(
            "sampling.desktop.change_threshold",
            s.desktop.change_threshold,
            0.0,
            255.0,
        );
        if s.desktop.max_gap_ms < s.desktop.check_interval_ms {
            v.fail(
                "sampling.desktop.max_gap_ms",
                "must be at least check_interval_ms".into(),
            );
        }

        v.at_most("models.threads", self.models.threads as u64, 256);

        let g = &self.gates;
        v.range(
            "gates.frame_diff.threshold",
            g.frame_diff.threshold,
            0.0,
            255.0,
        );
        v.positive_u("gates.frame_diff.max_gap_ms", g.frame_diff.max_gap_ms);
        v.positive_u("gates.whisper_batch", g.whisper_batch as u64);
        v.at_most("gates.whisper_batch", g.whisper_batch as u64, 16);

        let f = &self.face;
        v.range("face.detection_score_min", f.detection_score_min, 0.0, 1.0);
        v.positive_u("face.min_face_px", u64::from(f.min_face_px));
        v.range("face.blur_min", f.blur_min, 0.0, 1e6);
        v.range("face.identity_threshold", f.identity_threshold, -1.0, 1.0);
        v.range("face.no_face_min_s", f.no_face_min_s, 0.0, 86_400.0);
        v.range(
            "face.no_face_min_fraction",
            f.no_face_min_fraction,
            0.0,
            1.0,
        );
        v.positive_f("face.no_face_min_fraction", f.no_face_min_fraction);
        v.range(
            "face.multiple_faces_min_s",
            f.multiple_faces_min_s,
            0.0,
            86_400.0,
        );
        v.corroboration("face.identity_corroboration", f.identity_corroboration);

        v.range("nudity.threshold", self.nudity.threshold, 0.0, 1.0);
        v.corroboration("nudity.corroboration", self.nudity.corroboration);

        let sp = &self.speech;
        v.range("speech.vad_threshold", sp.vad_threshold, 0.0, 1.0);
        v.range(
            "speech.vad_neg_threshold",
            sp.vad_neg_threshold,
            0.0,
            sp.vad_threshold,
        );
        v.range("speech.silence_min_s", sp.silence_min_s, 0.0, 86_400.0);
        v.positive_f("speech.silence_min_s", sp.silence_min_s);

        for (i, r) in self.text_rules.iter().enumerate() {
            if !self.decision.labels.contains_key(&r.label) {
                v.fail(
                    &format!("text_rules[{i}].label"),
                    format!(
                        "label `{}` of rule `{}` is not in [decision.labels]",
                        r.label, r.id
                    ),
                );
            }
        }

        let e = &self.evidence;
        v.positive_u("evidence.retention_days", u64::from(e.retention_days));
        v.at_most("evidence.retention_days", u64::from(e.retention_days), 3650);

        let l = &self.limits;
        v.positive_u("limits.max_file_bytes", l.max_file_bytes);
        v.positive_u("limits.max_duration_s", l.max_duration_s);
        v.positive_u("limits.max_tracks", l.max_tracks as u64);
        v.positive_u("limits.max_frame_width", u64::from(l.max_frame_width));
        v.positive_u("limits.max_frame_height", u64::from(l.max_frame_height));
        v.range("limits.max_fps", l.max_fps, 0.0, 1000.0);
        v.positive_f("limits.max_fps", l.max_fps);
        v.positive_u("limits.max_slices", l.max_slices);

        let rv = &self.review;
        if !(0.0..=1.0).contains(&rv.qa_sample_rate) {
            v.fail(
                "review.qa_sample_rate",
                format!("{} is outside [0, 1]", rv.qa_sample_rate),
            );
        }
        for (i, r) in rv.reasons.iter().enumerate() {
            let ok = !r.code.is_empty()
                && r.code.len() <= 64
                && r.code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                v.fail(
                    &format!("review.reasons[{i}].code"),
                    format!("{:?} must be 1-64 of a-z, 0-9 and _", r.code),
                );
            }
            if rv.reasons[..i].iter().any(|o| o.code == r.code) {
                v.fail(
                    &format!("review.reasons[{i}].code"),
                    format!("`{}` is listed twice", r.code),
                );
            }
            v.non_empty(&format!("review.reasons[{i}].title"), &r.title);
            if r.applies_to.is_empty() {
                v.fail(
                    &format!("review.reasons[{i}].applies_to"),
                    "must name confirm, dismiss or reopen".into(),
                );
            }
        }
        for kind in ReviewActKind::ALL {
            if rv.reasons_for(kind).next().is_none() {
                v.fail(
                    "review.reasons",
                    format!("no reason code applies to `{}`", kind.as_str()),
                );
            }
        }

        if let Some((field, message)) = v.errors.into_iter().next() {
            return Err(invalid(&field, message));
        }
        self.text =
            TextPolicy::compile(&self.text_rules).map_err(|e| invalid(&e.field, e.message))?;
        Ok(())
    }

    /// The severity of a finding: a text rule's own (`[[text_rules]]` with this id), else its
    /// label's in `[decision.labels]`.
    pub fn severity_of(&self, rule_id: &str, label: Label) -> Severity {
        self.text_rules
            .iter()
            .find(|r| r.id == rule_id)
            .map_or_else(|| self.decision.severity_for(label), |r| r.severity)
    }

    /// The compiled `[[text_rules]]`.
    pub fn text(&self) -> &TextPolicy {
        &self.text
    }

    /// Canonical serialised form: JSON of the parsed policy with defaults filled in and maps sorted, so
    /// comments, key order and omitted defaults do not change it but any effective value does.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("policy serialises")
    }

    /// sha256 (hex) of [`Policy::canonical_json`].
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().as_bytes()))
    }
}

impl From<Action> for Decision {
    fn from(a: Action) -> Self {
        match a {
            Action::Pass => Decision::Pass,
            Action::Review => Decision::Review,
            Action::Block => Decision::Block,
        }
    }
}

impl From<&Policy> for PolicyRef {
    fn from(p: &Policy) -> Self {
        PolicyRef {
            name: p.name.clone(),
            version: p.version.clone(),
            fingerprint: p.fingerprint(),
        }
    }
}

/// The decision the policy's `[decision]` table gives for these findings: the strictest action of any
/// finding's label (labels the table does not name get `unknown_label`), and at least `partial` when
/// part of the recording went unaudited, since absence of findings there proves nothing.
pub fn decide(policy: &Policy, findings: &[Finding], partial: bool) -> Decision {
    let d = &policy.decision;
    let mut action = findings
        .iter()
        .map(|f| d.action_for(f.label))
        .max()
        .unwrap_or(Action::Pass);
    if partial {
        action = action.max(d.partial);
    }
    action.into()
}

/// Collects validation failures; the first one is reported.
struct Checker {
    errors: Vec<(String, String)>,
}

impl Checker {
    fn fail(&mut self, field: &str, message: String) {
        self.errors.push((field.to_string(), message));
    }
    fn non_empty(&mut self, field: &str, v: &str) {
        if v.trim().is_empty() {
            self.fail(field, "must not be empty".into());
        }
    }
    fn range(&mut self, field: &str, v: f32, lo: f32, hi: f32) {
        if !(lo..=hi).contains(&v) {
            self.fail(field, format!("{v} is outside [{lo}, {hi}]"));
        }
    }
    fn positive_f(&mut self, field: &str, v: f32) {
        if v.is_nan() || v <= 0.0 {
            self.fail(field, format!("{v} must be greater than 0"));
        }
    }
    fn positive_u(&mut self, field: &str, v: u64) {
        if v == 0 {
            self.fail(field, "must be greater than 0".into());
        }
    }
    fn at_most(&mut self, field: &str, v: u64, hi: u64) {
        if v > hi {
            self.fail(field, format!("{v} is more than {hi}"));
        }
    }
    fn corroboration(&mut self, field: &str, c: Corroboration) {
        if c.n == 0 || c.n > 1000 {
            self.fail(
                &format!("{field}.n"),
                format!("{} is outside [1, 1000]", c.n),
            );
        } else if c.k == 0 || c.k > c.n {
            self.fail(
                &format!("{field}.k"),
                format!("{} is outside [1, n = {}]", c.k, c.n),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policy_loads_and_compiles_rules() {
        let p = Policy::embedded().unwrap();
        assert_eq!(p.name, "classroom");
        assert_eq!(p.models.nudity, NudityModel::OpenNsfw);
        assert!(!p.evidence.keep_face_crops);
        assert!(p.text().rule_count() > 5);
    }

    #[test]
    fn minimal_policy_gets_safe_defaults() {
        let p = Policy::from_toml_str("name = \"m\"\nversion = \"1\"\n", "mem").unwrap();
        assert_eq!(p.face.identity_threshold, 0.363);
        assert!(p.gates.frame_diff.enabled);
        assert_eq!(p.decision.action_for(Label::Nudity), Action::Block);
        assert_eq!(p.text().rule_count(), 0);
    }

    #[test]
    fn review_reasons_are_data_checked_at_load_and_not_fingerprinted() {
        let p = Policy::embedded().unwrap();
        assert!(p.review.allows(ReviewActKind::Dismiss, "false_positive"));
        assert!(!p.review.allows(ReviewActKind::Confirm, "false_positive"));
        assert!(p.review.reasons_for(ReviewActKind::Reopen).count() > 0);
        let base = "name = \"m\"\nversion = \"1\"\n";
        let with = |review: &str| Policy::from_toml_str(&format!("{base}{review}"), "mem");
        let custom = with(
            "[review]\nqa_sample_rate = 0.5\nreasons = [\n\
             { code = \"yes\", title = \"Y\", applies_to = [\"confirm\", \"reopen\"] },\n\
             { code = \"no\", title = \"N\", applies_to = [\"dismiss\"] } ]\n",
        )
        .unwrap();
        assert_eq!(custom.review.reasons.len(), 2);
        assert_eq!(
            custom.fingerprint(),
            with("").unwrap().fingerprint(),
            "review data does not change the fingerprint"
        );
        let err = with(
            "[review]\nreasons = [{ code = \"yes\", title = \"Y\", applies_to = [\"confirm\"] }]\n",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("review.reasons"));
        let err = with("[review]\nqa_sample_rate = 2.0\n").unwrap_err();
        assert_eq!(err.field(), Some("review.qa_sample_rate"));
        let err = with(
            "[review]\nreasons = [{ code = \"Bad Code\", title = \"Y\", applies_to = [\"confirm\"] }]\n",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("review.reasons[0].code"));
    }

    #[test]
    fn fingerprint_ignores_formatting_but_not_values() {
        let a = Policy::from_toml_str("name = \"m\"\nversion = \"1\"\n", "a").unwrap();
        let b = Policy::from_toml_str(
            "# comment\nversion = \"1\"\nname   = \"m\"\n[face]\nidentity_threshold = 0.363\n",
            "b",
        )
        .unwrap();
        let c = Policy::from_toml_str(
            "name = \"m\"\nversion = \"1\"\n[face]\nidentity_threshold = 0.4\n",
            "c",
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }
}
