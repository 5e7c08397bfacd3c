//! The per-recording verdict: findings with timestamps, the decision, and enough provenance
//! (policy fingerprint, model hashes) to say exactly what produced it.
//!
//! The JSON form is a public contract described by `docs/verdict.schema.json`; bump
//! [`SCHEMA_VERSION`] on any incompatible change.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::{Action, Policy};

/// Version of the verdict JSON layout (`schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// Finding labels produced by the built-in stages. Text rules may add their own labels; the policy's
/// `[decision.labels]` must map every label it can produce.
pub mod labels {
    pub const NUDITY: &str = "nudity";
    pub const NO_FACE: &str = "no_face";
    pub const MULTIPLE_FACES: &str = "multiple_faces";
    pub const IDENTITY_MISMATCH: &str = "identity_mismatch";
    pub const CONTACT_INFO: &str = "contact_info";
    pub const PAYMENT_SOLICITATION: &str = "payment_solicitation";
    pub const PROFANITY: &str = "profanity";
    pub const SILENCE: &str = "silence";
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

impl From<Action> for Decision {
    fn from(a: Action) -> Self {
        match a {
            Action::Pass => Decision::Pass,
            Action::Review => Decision::Review,
            Action::Block => Decision::Block,
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
    pub label: String,
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

impl From<&Policy> for PolicyRef {
    fn from(p: &Policy) -> Self {
        PolicyRef {
            name: p.name.clone(),
            version: p.version.clone(),
            fingerprint: p.fingerprint(),
        }
    }
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
    /// Same recording bytes + same policy + same model files => same key, whatever the run's timing,
    /// source path or creation time. The store uses it to make re-runs write nothing new.
    pub fn idempotency_key(&self) -> String {
        idempotency_key(
            &self.recording.sha256,
            &self.policy.fingerprint,
            self.models.iter().map(|m| m.sha256.as_str()),
        )
    }
}

/// The key of a verdict from what produced it, computable before auditing (to skip work that is
/// already done): content sha256, policy fingerprint and the model files' hashes in any order.
pub fn idempotency_key<'a>(
    recording_sha256: &str,
    policy_fingerprint: &str,
    model_hashes: impl Iterator<Item = &'a str>,
) -> String {
    let mut hashes: Vec<&str> = model_hashes.collect();
    hashes.sort_unstable();
    hashes.dedup();
    let mut h = Sha256::new();
    h.update(b"classguard-verdict-v1\n");
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

/// The decision the policy's `[decision]` table gives for these findings: the strictest action of any
/// finding's label (labels the table does not name get `unknown_label`), and at least `partial` when
/// part of the recording went unaudited, since absence of findings there proves nothing.
pub fn decide(policy: &Policy, findings: &[Finding], partial: bool) -> Decision {
    let d = &policy.decision;
    let mut action = findings
        .iter()
        .map(|f| d.action_for(&f.label))
        .max()
        .unwrap_or(Action::Pass);
    if partial {
        action = action.max(d.partial);
    }
    action.into()
}

/// A closed time range where a per-slice condition held, corroborated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Samples inside the span that hit, and all samples inside it.
    pub hits: u32,
    pub samples: u32,
}

impl Span {
    /// Share of samples that hit: a natural confidence for a span finding.
    pub fn hit_ratio(&self) -> f32 {
        if self.samples == 0 {
            0.0
        } else {
            self.hits as f32 / self.samples as f32
        }
    }
    pub fn duration_ms(&self) -> u64 {
        self.end_ms - self.start_ms
    }
}

/// Turns a series of per-slice results `(pts_ms, hit)` into spans with k-of-n corroboration, so one
/// odd frame (a blink, a hand over the lens, a false positive) neither opens nor breaks a finding.
///
/// - A span opens when `k` of the last `n` samples hit; it starts at the earliest hit in that window.
/// - It stays open while the last `n` samples hold at least `k` hits, and ends at the last hit plus one
///   sampling interval (each sample stands for the interval after it).
/// - A time gap longer than `max_gap_ms` (default twice the interval: frames lost or not decoded) closes
///   the open span and forgets the window: nothing is claimed about time nobody looked at.
/// - Spans shorter than `min_duration_ms` are dropped (e.g. `no_face_min_s`).
/// - Samples whose pts does not increase are ignored.
#[derive(Debug, Clone)]
pub struct SpanBuilder {
    interval_ms: u64,
    k: usize,
    n: usize,
    min_duration_ms: u64,
    max_gap_ms: u64,
    window: VecDeque<(u64, bool)>,
    last_pts: Option<u64>,
    open: Option<OpenSpan>,
}

#[derive(Debug, Clone, Copy)]
struct OpenSpan {
    start_ms: u64,
    last_hit_ms: u64,
    hits: u32,
    /// Samples from the start up to and including the last hit (trailing misses are not in the span).
    samples: u32,
    samples_after_last_hit: u32,
}

impl SpanBuilder {
    /// `k` is clamped to `1..=n` and `n` to at least 1, so a policy typo cannot make every sample a span.
    pub fn new(interval_ms: u64, k: usize, n: usize) -> Self {
        let n = n.max(1);
        let k = k.clamp(1, n);
        let interval_ms = interval_ms.max(1);
        SpanBuilder {
            interval_ms,
            k,
            n,
            min_duration_ms: 0,
            max_gap_ms: interval_ms.saturating_mul(2),
            window: VecDeque::with_capacity(n),
            last_pts: None,
            open: None,
        }
    }

    pub fn min_duration_ms(mut self, ms: u64) -> Self {
        self.min_duration_ms = ms;
        self
    }

    pub fn max_gap_ms(mut self, ms: u64) -> Self {
        self.max_gap_ms = ms.max(1);
        self
    }

    /// Feeds one sample; returns a span that this sample closed, if any.
    pub fn push(&mut self, pts_ms: u64, hit: bool) -> Option<Span> {
        let mut closed = None;
        match self.last_pts {
            Some(prev) if pts_ms <= prev => return None,
            Some(prev) if pts_ms - prev > self.max_gap_ms => {
                closed = self.close();
                self.window.clear();
            }
            _ => {}
        }
        self.last_pts = Some(pts_ms);
        if self.window.len() == self.n {
            self.window.pop_front();
        }
        self.window.push_back((pts_ms, hit));
        let hits_in_window = self.window.iter().filter(|(_, h)| *h).count();

        if let Some(open) = self.open.as_mut() {
            if hits_in_window >= self.k {
                if hit {
                    open.hits += 1;
                    open.samples += open.samples_after_last_hit + 1;
                    open.samples_after_last_hit = 0;
                    open.last_hit_ms = pts_ms;
                } else {
                    open.samples_after_last_hit += 1;
                }
            } else {
                // The sample that broke corroboration is not part of the span.
                closed = self.close();
            }
        } else if hits_in_window >= self.k {
            // Samples from the earliest hit in the window up to now form the span's beginning.
            let first = self.window.iter().position(|(_, h)| *h).unwrap_or(0);
            let in_span = self.window.iter().skip(first);
            let samples = in_span.clone().count() as u32;
            let hits = in_span.filter(|(_, h)| *h).count() as u32;
            self.open = Some(OpenSpan {
                start_ms: self.window[first].0,
                last_hit_ms: pts_ms,
                hits,
                samples,
                samples_after_last_hit: 0,
            });
        }
        closed
    }

    /// Ends the series: returns the span still open, if any.
    pub fn finish(&mut self) -> Option<Span> {
        let s = self.close();
        self.window.clear();
        self.last_pts = None;
        s
    }

    /// Convenience for a complete series.
    pub fn build(mut self, samples: impl IntoIterator<Item = (u64, bool)>) -> Vec<Span> {
        let mut out: Vec<Span> = samples
            .into_iter()
            .filter_map(|(t, h)| self.push(t, h))
            .collect();
        out.extend(self.finish());
        out
    }

    fn close(&mut self) -> Option<Span> {
        let o = self.open.take()?;
        let span = Span {
            start_ms: o.start_ms,
            end_ms: o.last_hit_ms + self.interval_ms,
            hits: o.hits,
            samples: o.samples,
        };
        (span.duration_ms() >= self.min_duration_ms).then_some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(pattern: &str, interval: u64) -> Vec<(u64, bool)> {
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| (i as u64 * interval, c == 'H'))
            .collect()
    }

    fn spans(pattern: &str, k: usize, n: usize) -> Vec<(u64, u64)> {
        SpanBuilder::new(1000, k, n)
            .build(series(pattern, 1000))
            .iter()
            .map(|s| (s.start_ms, s.end_ms))
            .collect()
    }

    #[test]
    fn one_of_one_is_every_run_of_hits() {
        assert_eq!(spans("HH..H", 1, 1), vec![(0, 2000), (4000, 5000)]);
        assert_eq!(spans(".....", 1, 1), vec![]);
        assert_eq!(spans("HHHHH", 1, 1), vec![(0, 5000)]);
    }

    #[test]
    fn single_outlier_neither_opens_nor_breaks() {
        // 2 of 3: a lone hit is ignored...
        assert_eq!(spans("..H....", 2, 3), vec![]);
        // ...and a lone miss inside a run does not split it.
        assert_eq!(spans("HHH.HHH", 2, 3), vec![(0, 7000)]);
    }

    #[test]
    fn two_misses_split_with_two_of_three() {
        assert_eq!(spans("HH..HH", 2, 3), vec![(0, 2000), (4000, 6000)]);
    }

    #[test]
    fn span_starts_at_first_hit_in_window() {
        // 3 of 5: opens at the third hit (t=4s) but starts at the first one (t=0).
        assert_eq!(spans("H.H.H", 3, 5), vec![(0, 5000)]);
        let s = SpanBuilder::new(1000, 3, 5).build(series("H.H.H", 1000));
        assert_eq!((s[0].hits, s[0].samples), (3, 5));
        assert!((s[0].hit_ratio() - 0.6).abs() < 1e-6);
    }

    #[test]
    fn span_ends_at_last_hit_plus_interval() {
        // Misses that keep the window corroborated do not extend the end.
        assert_eq!(spans("HHH.....", 2, 3), vec![(0, 3000)]);
    }

    #[test]
    fn min_duration_drops_short_spans() {
        let s = SpanBuilder::new(1000, 1, 1)
            .min_duration_ms(3000)
            .build(series("HH...HHH..", 1000));
        assert_eq!(
            s.iter().map(|s| (s.start_ms, s.end_ms)).collect::<Vec<_>>(),
            vec![(5000, 8000)]
        );
    }

    #[test]
    fn time_gap_closes_and_resets() {
        let samples = vec![
            (0, true),
            (1000, true),
            (2000, true),
            (10_000, true),
            (11_000, true),
        ];
        let s = SpanBuilder::new(1000, 2, 3).build(samples);
        assert_eq!(
            s.iter().map(|s| (s.start_ms, s.end_ms)).collect::<Vec<_>>(),
            vec![(0, 3000), (10_000, 12_000)]
        );
        // A custom gap tolerance bridges it.
        let samples = vec![(0, true), (1000, true), (5000, true)];
        let s = SpanBuilder::new(1000, 1, 1).max_gap_ms(5000).build(samples);
        assert_eq!(
            s.iter().map(|s| (s.start_ms, s.end_ms)).collect::<Vec<_>>(),
            vec![(0, 6000)]
        );
    }

    #[test]
    fn window_forgotten_after_gap() {
        // One hit before a gap and one after must not corroborate each other.
        let samples = vec![(0, true), (10_000, true), (11_000, false)];
        assert!(SpanBuilder::new(1000, 2, 3).build(samples).is_empty());
    }

    #[test]
    fn non_increasing_pts_ignored() {
        let samples = vec![
            (0, true),
            (1000, true),
            (1000, false),
            (500, false),
            (2000, true),
        ];
        let s = SpanBuilder::new(1000, 1, 1).build(samples);
        assert_eq!(
            s.iter().map(|s| (s.start_ms, s.end_ms)).collect::<Vec<_>>(),
            vec![(0, 3000)]
        );
    }

    #[test]
    fn streaming_push_reports_closed_spans() {
        let mut b = SpanBuilder::new(500, 1, 1);
        assert_eq!(b.push(0, true), None);
        assert_eq!(b.push(500, true), None);
        let closed = b.push(1000, false).expect("closed by a miss");
        assert_eq!(
            (closed.start_ms, closed.end_ms, closed.hits, closed.samples),
            (0, 1000, 2, 2)
        );
        assert_eq!(b.push(1500, true), None);
        assert_eq!(
            b.finish().map(|s| (s.start_ms, s.end_ms)),
            Some((1500, 2000))
        );
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn bad_k_n_are_clamped() {
        assert_eq!(spans("H.H", 0, 0), vec![(0, 1000), (2000, 3000)]);
        assert_eq!(spans("HHH", 5, 2), vec![(0, 3000)]);
    }

    #[test]
    fn idempotency_key_ignores_run_details_and_model_order() {
        let policy = Policy::embedded().unwrap();
        let mut v = Verdict {
            schema_version: SCHEMA_VERSION,
            recording: RecordingInfo {
                id: "r1".into(),
                source: "/a.webm".into(),
                sha256: "ab".repeat(32),
                duration_ms: 1000,
                partial: false,
                partial_reason: None,
                error: None,
            },
            decision: Decision::Pass,
            findings: vec![],
            stats: Stats::default(),
            policy: PolicyRef::from(&policy),
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
        assert_ne!(k1, v.idempotency_key());
    }
}
