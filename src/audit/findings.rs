//! Turns per-slice observations (in recording order) into findings: corroborated time spans for
//! faces and nudity, slide spans for screen text, and segment spans for speech.

use std::collections::VecDeque;
use std::sync::Arc;

use image::RgbImage;

use super::evidence::EvidenceSink;
use super::observe::{CameraObservation, DesktopObservation, Identity};
use crate::policy::text::TextHit;
use crate::policy::Policy;
use crate::verdict::{BBox, Evidence, Finding, Label, ModelRef, Severity, Track};

/// Presence checks (no face, several faces) need 2 of 3 consecutive slices: one missed detection
/// neither opens nor breaks a span, and the span still starts at the first slice that hit.
const PRESENCE_K: usize = 2;
const PRESENCE_N: usize = 3;

/// Index of the "faces too small or blurred" track in `VisualFindings::camera`.
const UNVERIFIED: usize = 2;

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

/// The slice that best illustrates a span, kept in memory until the span closes.
#[derive(Default)]
struct EvidencePicker {
    best: Option<(f32, u64, Arc<RgbImage>, Option<BBox>)>,
}

impl EvidencePicker {
    fn offer(&mut self, score: f32, pts: u64, image: &Arc<RgbImage>, bbox: Option<BBox>) {
        if self.best.as_ref().is_none_or(|b| score > b.0) {
            self.best = Some((score, pts, image.clone(), bbox));
        }
    }

    /// The best candidate inside `span`; clears candidates up to the span's end.
    fn take(&mut self, span: &Span) -> Option<(u64, Arc<RgbImage>, Option<BBox>)> {
        let hit = self
            .best
            .take()
            .filter(|b| b.1 >= span.start_ms && b.1 <= span.end_ms);
        hit.map(|(_, pts, img, bbox)| (pts, img, bbox))
    }
}

/// One corroborated label over one track.
struct SpanTrack {
    label: Label,
    rule_id: &'static str,
    track: Track,
    builder: SpanBuilder,
    picker: EvidencePicker,
    model: ModelRef,
    describe: fn(&Span) -> String,
}

/// A span that closed, with the slice picked to illustrate it (not yet written).
struct ClosedSpan {
    span: Span,
    best: Option<(u64, Arc<RgbImage>, Option<BBox>)>,
}

impl SpanTrack {
    /// Feeds one slice; returns the finding for a span this slice closed.
    fn push(
        &mut self,
        pts: u64,
        hit: Option<(f32, Option<BBox>)>,
        image: &Arc<RgbImage>,
        ev: &mut EvidenceSink,
        errors: &mut Vec<String>,
    ) -> Option<Finding> {
        let closed = self.push_span(pts, hit, image)?;
        Some(self.finding(closed, ev, errors))
    }

    /// Feeds one slice; returns a span this slice closed, its evidence not written yet.
    fn push_span(
        &mut self,
        pts: u64,
        hit: Option<(f32, Option<BBox>)>,
        image: &Arc<RgbImage>,
    ) -> Option<ClosedSpan> {
        if let Some((score, bbox)) = hit {
            self.picker.offer(score, pts, image, bbox);
        }
        let span = self.builder.push(pts, hit.is_some())?;
        Some(self.close(span))
    }

    fn close(&mut self, span: Span) -> ClosedSpan {
        ClosedSpan {
            best: self.picker.take(&span),
            span,
        }
    }

    /// Closes the span still open at the end of the recording.
    fn finish_span(&mut self) -> Option<ClosedSpan> {
        let span = self.builder.finish()?;
        Some(self.close(span))
    }

    /// The finding for a closed span, with the best slice inside it written as evidence.
    fn finding(
        &self,
        closed: ClosedSpan,
        ev: &mut EvidenceSink,
        errors: &mut Vec<String>,
    ) -> Finding {
        let ClosedSpan { span, best } = closed;
        let mut e = Evidence::default();
        if let Some((pts, image, bbox)) = best {
            match ev.slice(self.label.as_str(), pts, &image) {
                Ok(p) => e.slice_path = Some(p),
                Err(err) => errors.push(err.to_string()),
            }
            e.bbox = bbox;
        }
        Finding {
            label: self.label,
            severity: Default::default(),
            track: self.track,
            start_ms: span.start_ms,
            end_ms: span.end_ms,
            confidence: span.hit_ratio(),
            model: self.model.clone(),
            rule_id: self.rule_id.to_string(),
            evidence: e,
            reason: (self.describe)(&span),
        }
    }
}

/// `no_face` is judged against the recording as well as the clock: a span counts when it lasts
/// `no_face_min_s`, or `no_face_min_fraction` of the recording. The recording's length is known
/// only at the end, so spans that only the fraction can make a finding wait here. The threshold
/// only grows as the recording does, so a span below it now never qualifies, and the ones that
/// wait (disjoint, each at least the fraction of the time seen so far) are at most 1 / fraction.
struct Absence {
    track: SpanTrack,
    min_ms: u64,
    min_fraction: f64,
    waiting: Vec<ClosedSpan>,
}

impl Absence {
    /// The least span length for a recording of `duration_ms`.
    fn threshold_ms(&self, duration_ms: u64) -> u64 {
        let by_fraction = (duration_ms as f64 * self.min_fraction).ceil() as u64;
        self.min_ms.min(by_fraction)
    }

    /// Sorts a closed span: a finding now, one to wait for the recording's end, or nothing.
    fn closed(&mut self, c: ClosedSpan, seen_ms: u64) -> Option<ClosedSpan> {
        let d = c.span.duration_ms();
        if d >= self.min_ms {
            Some(c)
        } else {
            if d >= self.threshold_ms(seen_ms) {
                self.waiting.push(c);
            }
            None
        }
    }

    fn push(
        &mut self,
        pts: u64,
        hit: Option<(f32, Option<BBox>)>,
        image: &Arc<RgbImage>,
    ) -> Option<ClosedSpan> {
        let closed = self.track.push_span(pts, hit, image);
        let seen_ms = pts;
        let min = self.threshold_ms(seen_ms);
        self.waiting.retain(|w| w.span.duration_ms() >= min);
        closed.and_then(|c| self.closed(c, seen_ms))
    }

    /// Every span that counts in a recording of `duration_ms`, in time order.
    fn finish(&mut self, duration_ms: u64) -> Vec<ClosedSpan> {
        let mut out: Vec<ClosedSpan> = Vec::new();
        if let Some(c) = self.track.finish_span() {
            out.extend(self.closed(c, duration_ms));
        }
        let min = self.threshold_ms(duration_ms);
        out.extend(
            self.waiting
                .drain(..)
                .filter(|w| w.span.duration_ms() >= min),
        );
        out.sort_by_key(|c| c.span.start_ms);
        out
    }
}

/// Whether the enrolled teacher was ever seen and recognised: `k` of `n` consecutive camera
/// slices matching the template (the identity corroboration) verify the recording.
struct Verification {
    requested: bool,
    teacher: SpanBuilder,
    verified: bool,
    camera_slices: u32,
    /// Slices with a face large and sharp enough to compare, and those that matched.
    usable: u32,
    matched: u32,
    first_camera_ms: Option<u64>,
    desktop_slices: u32,
}

impl Verification {
    fn camera(&mut self, pts: u64, identity: Identity) {
        self.camera_slices += 1;
        self.first_camera_ms.get_or_insert(pts);
        let teacher = matches!(identity, Identity::Teacher { .. });
        if teacher || matches!(identity, Identity::Mismatch { .. }) {
            self.usable += 1;
        }
        if teacher {
            self.matched += 1;
        }
        if self.teacher.push(pts, teacher).is_some() {
            self.verified = true;
        }
    }

    /// The unverified span of a recording that ends now: the whole camera timeline (or the whole
    /// recording when it has no camera video) unless the teacher was verified. Screen shares
    /// are not expected to show the teacher.
    fn finish(&mut self, end_ms: u64) -> Option<(u64, u64)> {
        if self.teacher.finish().is_some() {
            self.verified = true;
        }
        if !self.requested || self.verified {
            return None;
        }
        if self.camera_slices == 0 && self.desktop_slices > 0 {
            return None;
        }
        let start = self.first_camera_ms.unwrap_or(0).min(end_ms);
        Some((start, end_ms.max(start)))
    }

    fn reason(&self) -> String {
        if self.camera_slices == 0 {
            return "the enrolled teacher was never verified: no camera video".into();
        }
        format!(
            "the enrolled teacher was never verified: {} of {} camera slices showed a face \
             good enough to compare, {} matched",
            self.usable, self.camera_slices, self.matched
        )
    }
}

/// What the aggregator needs to know about the run.
pub struct FindingContext<'a> {
    pub policy: &'a Policy,
    pub face_model: ModelRef,
    pub embed_model: ModelRef,
    pub nudity_model: ModelRef,
    pub ocr_model: ModelRef,
    pub camera_interval_ms: u64,
    /// A teacher's templates were given: the recording must verify them or say it did not.
    pub verify_identity: bool,
}

/// Camera and desktop aggregation; call in pts order per track.
pub struct VisualFindings {
    no_face: Absence,
    camera: Vec<SpanTrack>,
    verification: Verification,
    desktop_nudity: SpanTrack,
    screen_text: ScreenText,
    /// Camera sample times with at least one face (for the silence check).
    pub presence: Vec<(u64, bool)>,
    pub findings: Vec<Finding>,
    errors: Vec<String>,
}

fn box_of(b: &[f32; 4]) -> BBox {
    BBox {
        x: b[0],
        y: b[1],
        w: b[2],
        h: b[3],
    }
}

impl VisualFindings {
    pub fn new(ctx: &FindingContext<'_>) -> Self {
        let p = ctx.policy;
        let interval = ctx.camera_interval_ms.max(1);
        let presence = |min_s: f32| {
            SpanBuilder::new(interval, PRESENCE_K, PRESENCE_N)
                .min_duration_ms((min_s * 1000.0) as u64)
        };
        let ic = p.face.identity_corroboration;
        let nc = p.nudity.corroboration;
        let span = |label, rule_id, track, builder, model: &ModelRef, describe| SpanTrack {
            label,
            rule_id,
            track,
            builder,
            picker: EvidencePicker::default(),
            model: model.clone(),
            describe,
        };
        let no_face = Absence {
            track: span(
                Label::NoFace,
                "face.no_face",
                Track::Camera,
                SpanBuilder::new(interval, PRESENCE_K, PRESENCE_N),
                &ctx.face_model,
                |s| {
                    format!(
                        "no face on camera for {:.0} s",
                        s.duration_ms() as f64 / 1000.0
                    )
                },
            ),
            min_ms: (p.face.no_face_min_s * 1000.0) as u64,
            min_fraction: f64::from(p.face.no_face_min_fraction),
            waiting: Vec::new(),
        };
        let verification = Verification {
            requested: ctx.verify_identity,
            teacher: SpanBuilder::new(interval, ic.k, ic.n),
            verified: false,
            camera_slices: 0,
            usable: 0,
            matched: 0,
            first_camera_ms: None,
            desktop_slices: 0,
        };
        let camera = vec![
            span(
                Label::MultipleFaces,
                "face.multiple_faces",
                Track::Camera,
                presence(p.face.multiple_faces_min_s),
                &ctx.face_model,
                |s| {
                    format!(
                        "two or more faces on camera for {:.0} s",
                        s.duration_ms() as f64 / 1000.0
                    )
                },
            ),
            span(
                Label::IdentityMismatch,
                "face.identity_mismatch",
                Track::Camera,
                SpanBuilder::new(interval, ic.k, ic.n),
                &ctx.embed_model,
                |s| {
                    format!(
                    "the enrolled teacher is not the person on camera ({} of {} slices) for {:.0} s",
                    s.hits,
                    s.samples,
                    s.duration_ms() as f64 / 1000.0
                )
                },
            ),
            span(
                Label::IdentityUnverified,
                "face.identity_unverified",
                Track::Camera,
                presence(p.face.multiple_faces_min_s),
                &ctx.embed_model,
                |s| {
                    format!(
                        "faces too small or blurred to verify the teacher for {:.0} s",
                        s.duration_ms() as f64 / 1000.0
                    )
                },
            ),
            span(
                Label::Nudity,
                "nudity.camera",
                Track::Camera,
                SpanBuilder::new(interval, nc.k, nc.n),
                &ctx.nudity_model,
                |s| format!("nudity on camera in {} of {} slices", s.hits, s.samples),
            ),
        ];
        let desktop_interval = p.sampling.desktop.check_interval_ms.max(1);
        let desktop_nudity = span(
            Label::Nudity,
            "nudity.desktop",
            Track::Desktop,
            SpanBuilder::new(desktop_interval, nc.k, nc.n)
                .max_gap_ms(p.sampling.desktop.max_gap_ms.max(desktop_interval) * 2),
            &ctx.nudity_model,
            |s| {
                format!(
                    "nudity on the shared screen in {} of {} slides",
                    s.hits, s.samples
                )
            },
        );
        Self {
            no_face,
            camera,
            verification,
            desktop_nudity,
            screen_text: ScreenText::new(ctx.ocr_model.clone()),
            presence: Vec::new(),
            findings: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn camera(
        &mut self,
        ctx: &FindingContext<'_>,
        pts: u64,
        obs: &CameraObservation,
        image: &Arc<RgbImage>,
        ev: &mut EvidenceSink,
    ) {
        let p = ctx.policy;
        let largest = obs.faces.first().map(|f| box_of(&f.bbox));
        self.presence.push((pts, !obs.faces.is_empty()));
        self.verification.camera(pts, obs.identity);
        let nobody = obs.faces.is_empty().then_some((1.0, None));
        if let Some(c) = self.no_face.push(pts, nobody, image) {
            let f = self.no_face.track.finding(c, ev, &mut self.errors);
            self.findings.push(f);
        }
        let hits: [Option<(f32, Option<BBox>)>; 4] = [
            (obs.faces.len() >= 2).then_some((obs.faces.len() as f32, largest)),
            match obs.identity {
                Identity::Mismatch { best_similarity } => Some((1.0 - best_similarity, largest)),
                _ => None,
            },
            matches!(obs.identity, Identity::Unverified).then_some((1.0, largest)),
            obs.nudity
                .filter(|&s| s >= p.nudity.threshold)
                .map(|s| (s, None)),
        ];
        for (i, hit) in hits.into_iter().enumerate() {
            if let Some(f) = self.camera[i].push(pts, hit, image, ev, &mut self.errors) {
                self.findings.push(f);
            }
        }
    }

    pub fn desktop(
        &mut self,
        ctx: &FindingContext<'_>,
        pts: u64,
        obs: &DesktopObservation,
        image: &Arc<RgbImage>,
        ev: &mut EvidenceSink,
    ) {
        self.verification.desktop_slices += 1;
        let hit = obs
            .nudity
            .filter(|&s| s >= ctx.policy.nudity.threshold)
            .map(|s| (s, None));
        if let Some(f) = self
            .desktop_nudity
            .push(pts, hit, image, ev, &mut self.errors)
        {
            self.findings.push(f);
        }
        if let Some(lines) = &obs.ocr {
            let text: Vec<(String, [[f32; 2]; 4])> =
                lines.iter().map(|l| (l.text.clone(), l.bbox)).collect();
            let closed = self.screen_text.slide(ctx.policy, pts, &text, image);
            self.close_text(closed, ev);
        }
    }

    fn close_text(&mut self, closed: Vec<PendingText>, ev: &mut EvidenceSink) {
        for t in closed {
            let slice_path = match ev.slice(t.label.as_str(), t.start_ms, &t.image) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.errors.push(e.to_string());
                    None
                }
            };
            self.findings.push(Finding {
                label: t.label,
                severity: t.severity,
                track: Track::Desktop,
                start_ms: t.start_ms,
                end_ms: t.end_ms,
                confidence: t.confidence,
                model: self.screen_text.model.clone(),
                rule_id: t.rule_id.clone(),
                evidence: Evidence {
                    slice_path,
                    ocr_excerpt: Some(t.line.clone()),
                    bbox: t.bbox,
                    ..Default::default()
                },
                reason: format!(
                    "{} '{}' on the shared screen",
                    describe_label(t.label),
                    redact(&t.matched)
                ),
            });
        }
    }

    /// Closes every open span at the end of the recording (`end_ms`).
    pub fn finish(&mut self, end_ms: u64, ev: &mut EvidenceSink) -> Vec<String> {
        for c in self.no_face.finish(end_ms) {
            let f = self.no_face.track.finding(c, ev, &mut self.errors);
            self.findings.push(f);
        }
        for track in self
            .camera
            .iter_mut()
            .chain(std::iter::once(&mut self.desktop_nudity))
        {
            if let Some(c) = track.finish_span() {
                let f = track.finding(c, ev, &mut self.errors);
                self.findings.push(f);
            }
        }
        if let Some((start_ms, end_ms)) = self.verification.finish(end_ms) {
            let f = self.unverified(start_ms, end_ms);
            self.findings.push(f);
        }
        let closed = self.screen_text.finish(end_ms);
        self.close_text(closed, ev);
        std::mem::take(&mut self.errors)
    }

    /// `identity_unverified` over the whole span nobody was verified in. It takes the place of
    /// the shorter "faces too small or blurred" spans inside it, keeping the first one's slice.
    fn unverified(&mut self, start_ms: u64, end_ms: u64) -> Finding {
        let track = &self.camera[UNVERIFIED];
        let mut evidence = Evidence::default();
        self.findings.retain(|f| {
            let inside = f.rule_id == track.rule_id;
            if inside && evidence.slice_path.is_none() {
                evidence = f.evidence.clone();
            }
            !inside
        });
        let v = &self.verification;
        let confidence = if v.camera_slices == 0 {
            1.0
        } else {
            1.0 - v.matched as f32 / v.camera_slices as f32
        };
        Finding {
            label: track.label,
            severity: Default::default(),
            track: Track::Camera,
            start_ms,
            end_ms,
            confidence,
            model: track.model.clone(),
            rule_id: "face.identity_never_verified".into(),
            evidence,
            reason: v.reason(),
        }
    }
}

pub fn describe_label(label: Label) -> &'static str {
    match label {
        Label::ContactInfo => "contact details",
        Label::PaymentSolicitation => "off-platform payment request",
        Label::Profanity => "profanity",
        _ => "policy text",
    }
}

/// Shows enough of a match for a reviewer to recognise it in the evidence, not the whole value:
/// numbers and addresses are cut to a prefix, plain words are shown (up to 40 characters).
pub fn redact(matched: &str) -> String {
    let chars: Vec<char> = matched.chars().collect();
    let digits = chars.iter().filter(|c| c.is_ascii_digit()).count();
    let identifying = digits >= 5 || matched.contains('@');
    let keep = if identifying {
        (chars.len() / 2).clamp(4, 10)
    } else {
        40
    };
    if chars.len() <= keep || (!identifying && chars.len() <= 40) {
        return matched.to_string();
    }
    format!("{}…", chars[..keep].iter().collect::<String>().trim_end())
}

/// A text hit on the current slide, open until the slide changes.
struct PendingText {
    rule_id: String,
    label: Label,
    severity: Severity,
    matched: String,
    line: String,
    bbox: Option<BBox>,
    confidence: f32,
    start_ms: u64,
    end_ms: u64,
    image: Arc<RgbImage>,
}

/// Screen text: each OCR'd slide is scanned; a hit lasts from its slide until the next slide
/// that no longer shows it.
struct ScreenText {
    model: ModelRef,
    open: Vec<PendingText>,
}

impl ScreenText {
    fn new(model: ModelRef) -> Self {
        Self {
            model,
            open: Vec::new(),
        }
    }

    fn slide(
        &mut self,
        policy: &Policy,
        pts: u64,
        lines: &[(String, [[f32; 2]; 4])],
        image: &Arc<RgbImage>,
    ) -> Vec<PendingText> {
        let mut hits: Vec<(TextHit, &str, [[f32; 2]; 4])> = Vec::new();
        for (text, quad) in lines {
            for hit in policy.text().scan(text) {
                hits.push((hit, text.as_str(), *quad));
            }
        }
        // The whole slide as one text too: a phone number can wrap over two lines.
        let joined: String = lines
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        for hit in policy.text().scan(&joined) {
            if !hits.iter().any(|(h, ..)| {
                h.rule_id == hit.rule_id
                    && (h.matched.contains(&hit.matched) || hit.matched.contains(&h.matched))
            }) {
                hits.push((hit, "", [[0.0; 2]; 4]));
            }
        }
        let mut closed = Vec::new();
        let mut still_open = Vec::new();
        for mut p in self.open.drain(..) {
            if hits
                .iter()
                .any(|(h, ..)| h.rule_id == p.rule_id && h.matched == p.matched)
            {
                still_open.push(p);
            } else {
                p.end_ms = pts;
                closed.push(p);
            }
        }
        for (hit, line, quad) in hits {
            if still_open
                .iter()
                .any(|p| p.rule_id == hit.rule_id && p.matched == hit.matched)
            {
                continue;
            }
            let bbox = (!line.is_empty()).then(|| {
                let xs = quad.iter().map(|p| p[0]);
                let ys = quad.iter().map(|p| p[1]);
                let (x0, x1) = (
                    xs.clone().fold(f32::MAX, f32::min),
                    xs.fold(f32::MIN, f32::max),
                );
                let (y0, y1) = (
                    ys.clone().fold(f32::MAX, f32::min),
                    ys.fold(f32::MIN, f32::max),
                );
                BBox {
                    x: x0,
                    y: y0,
                    w: x1 - x0,
                    h: y1 - y0,
                }
            });
            still_open.push(PendingText {
                rule_id: hit.rule_id,
                label: hit.label,
                severity: hit.severity,
                matched: hit.matched,
                line: if line.is_empty() {
                    joined.chars().take(200).collect()
                } else {
                    line.to_string()
                },
                bbox,
                confidence: 1.0,
                start_ms: pts,
                end_ms: pts,
                image: image.clone(),
            });
        }
        self.open = still_open;
        closed
    }

    fn finish(&mut self, end_ms: u64) -> Vec<PendingText> {
        self.open
            .drain(..)
            .map(|mut p| {
                p.end_ms = end_ms.max(p.start_ms);
                p
            })
            .collect()
    }
}

/// Silence: stretches of at least `min_ms` without speech, reported only while the camera shows
/// someone (an empty room is `no_face`, not a silent class). Without a camera track, every long
/// silence is reported.
pub fn silence_spans(
    speech: &[(u64, u64)],
    audio_end_ms: u64,
    presence: &[(u64, bool)],
    min_ms: u64,
) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut cursor = 0u64;
    for &(s, e) in speech {
        if s > cursor {
            gaps.push((cursor, s));
        }
        cursor = cursor.max(e);
    }
    if audio_end_ms > cursor {
        gaps.push((cursor, audio_end_ms));
    }
    let mut out = Vec::new();
    for (s, e) in gaps {
        if presence.is_empty() {
            if e - s >= min_ms {
                out.push((s, e));
            }
            continue;
        }
        // Split the gap into runs where the camera showed someone.
        let mut run: Option<(u64, u64)> = None;
        for &(pts, present) in presence.iter().filter(|(p, _)| *p >= s && *p < e) {
            match (present, run) {
                (true, None) => run = Some((pts, pts)),
                (true, Some((a, _))) => run = Some((a, pts)),
                (false, Some((a, _))) => {
                    // The run lasted until this sample showed nobody.
                    if pts - a >= min_ms {
                        out.push((a, pts));
                    }
                    run = None;
                }
                (false, None) => {}
            }
        }
        if let Some((a, b)) = run {
            let b = e.min(b + 1000);
            if b - a >= min_ms {
                out.push((a, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absence(min_s: u64, fraction: f64) -> Absence {
        Absence {
            track: SpanTrack {
                label: Label::NoFace,
                rule_id: "face.no_face",
                track: Track::Camera,
                builder: SpanBuilder::new(1000, PRESENCE_K, PRESENCE_N),
                picker: EvidencePicker::default(),
                model: ModelRef {
                    id: "m".into(),
                    sha256: "0".repeat(64),
                },
                describe: |_| String::new(),
            },
            min_ms: min_s * 1000,
            min_fraction: fraction,
            waiting: Vec::new(),
        }
    }

    /// No-face spans for one sample a second: `.` = nobody on camera, `F` = a face.
    fn absences(pattern: &str, min_s: u64, fraction: f64) -> Vec<(u64, u64)> {
        let mut a = absence(min_s, fraction);
        let img = Arc::new(RgbImage::new(1, 1));
        let mut out = Vec::new();
        for (i, c) in pattern.chars().enumerate() {
            let hit = (c == '.').then_some((1.0, None));
            out.extend(a.push(i as u64 * 1000, hit, &img));
        }
        out.extend(a.finish(pattern.len() as u64 * 1000));
        assert!(a.waiting.is_empty());
        out.iter()
            .map(|c| (c.span.start_ms, c.span.end_ms))
            .collect()
    }

    #[test]
    fn absence_is_judged_against_the_recording_and_the_clock() {
        // Nobody for a whole 20 s recording: under 30 s, but all of it.
        assert_eq!(absences(&".".repeat(20), 30, 0.3), vec![(0, 20_000)]);
        // 12 s face, 13 s nobody: 52 % of the recording.
        let p = format!("{}{}", "F".repeat(12), ".".repeat(13));
        assert_eq!(absences(&p, 30, 0.3), vec![(12_000, 25_000)]);
        // 5 s glances in a 100 s class stay under both.
        let glance = format!("{}{}", "F".repeat(20), ".".repeat(5));
        assert!(absences(&glance.repeat(4), 30, 0.3).is_empty());
        // 35 s away in a long class is over the clock limit, found when it closes.
        let p = format!("{}{}{}", "F".repeat(100), ".".repeat(35), "F".repeat(200));
        assert_eq!(absences(&p, 30, 0.3), vec![(100_000, 135_000)]);
    }

    #[test]
    fn a_short_absence_early_in_a_recording_stops_waiting_once_it_is_too_short() {
        let mut a = absence(30, 0.3);
        let img = Arc::new(RgbImage::new(1, 1));
        // 4 s of nobody at the start of what is, so far, a 6 s recording: it might count...
        for t in 0..7u64 {
            let hit = (t < 4).then_some((1.0, None));
            assert!(a.push(t * 1000, hit, &img).is_none());
        }
        assert_eq!(a.waiting.len(), 1);
        // ...until the recording is long enough that 4 s is under 30 % of it.
        for t in 7..20u64 {
            assert!(a.push(t * 1000, None, &img).is_none());
        }
        assert!(a.waiting.is_empty());
        assert!(a.finish(20_000).is_empty());
    }

    #[test]
    fn redaction_keeps_a_recognisable_prefix() {
        assert_eq!(redact("+86 138 0013 8000"), "+86 138…");
        assert_eq!(redact("teacher.li@example.com"), "teacher.li…");
        assert_eq!(redact("add me on we chat"), "add me on we chat");
        assert_eq!(redact("abc"), "abc");
    }

    #[test]
    fn silence_needs_someone_on_camera() {
        let presence: Vec<(u64, bool)> = (0..300).map(|s| (s * 1000, s < 200)).collect();
        let spans = silence_spans(&[(0, 10_000)], 300_000, &presence, 120_000);
        assert_eq!(spans, vec![(10_000, 200_000)]);
        assert_eq!(
            silence_spans(&[(0, 10_000)], 300_000, &[], 120_000),
            vec![(10_000, 300_000)]
        );
        assert!(silence_spans(&[(0, 290_000)], 300_000, &[], 120_000).is_empty());
    }
}

#[cfg(test)]
mod span_tests {
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
}
