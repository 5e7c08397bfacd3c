//! Turns per-slice observations (in recording order) into findings: corroborated time spans for
//! faces and nudity, slide spans for screen text, and segment spans for speech.

use std::sync::Arc;

use image::RgbImage;

use super::evidence::EvidenceSink;
use super::observe::{CameraObservation, DesktopObservation, Identity};
use crate::policy::text::TextHit;
use crate::policy::Policy;
use crate::verdict::{BBox, Evidence, Finding, ModelRef, Span, SpanBuilder, Track};

/// Presence checks (no face, several faces) need 2 of 3 consecutive slices: one missed detection
/// neither opens nor breaks a span, and the span still starts at the first slice that hit.
const PRESENCE_K: usize = 2;
const PRESENCE_N: usize = 3;

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
    label: &'static str,
    rule_id: &'static str,
    track: Track,
    builder: SpanBuilder,
    picker: EvidencePicker,
    model: ModelRef,
    describe: fn(&Span) -> String,
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
        if let Some((score, bbox)) = hit {
            self.picker.offer(score, pts, image, bbox);
        }
        let span = self.builder.push(pts, hit.is_some())?;
        Some(self.finding(span, ev, errors))
    }

    /// Closes the span still open at the end of the recording.
    fn finish(&mut self, ev: &mut EvidenceSink, errors: &mut Vec<String>) -> Option<Finding> {
        let span = self.builder.finish()?;
        Some(self.finding(span, ev, errors))
    }

    /// The finding for a closed span, with the best slice inside it written as evidence.
    fn finding(&mut self, span: Span, ev: &mut EvidenceSink, errors: &mut Vec<String>) -> Finding {
        let mut e = Evidence::default();
        if let Some((pts, image, bbox)) = self.picker.take(&span) {
            match ev.slice(self.label, pts, &image) {
                Ok(p) => e.slice_path = Some(p),
                Err(err) => errors.push(err.to_string()),
            }
            e.bbox = bbox;
        }
        Finding {
            label: self.label.to_string(),
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

/// What the aggregator needs to know about the run.
pub struct FindingContext<'a> {
    pub policy: &'a Policy,
    pub face_model: ModelRef,
    pub embed_model: ModelRef,
    pub nudity_model: ModelRef,
    pub ocr_model: ModelRef,
    pub camera_interval_ms: u64,
}

/// Camera and desktop aggregation; call in pts order per track.
pub struct VisualFindings {
    camera: Vec<SpanTrack>,
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
        let camera = vec![
            span(
                "no_face",
                "face.no_face",
                Track::Camera,
                presence(p.face.no_face_min_s),
                &ctx.face_model,
                |s| {
                    format!(
                        "no face on camera for {:.0} s",
                        s.duration_ms() as f64 / 1000.0
                    )
                },
            ),
            span(
                "multiple_faces",
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
                "identity_mismatch",
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
                "identity_unverified",
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
                "nudity",
                "nudity.camera",
                Track::Camera,
                SpanBuilder::new(interval, nc.k, nc.n),
                &ctx.nudity_model,
                |s| format!("nudity on camera in {} of {} slices", s.hits, s.samples),
            ),
        ];
        let desktop_interval = p.sampling.desktop.check_interval_ms.max(1);
        let desktop_nudity = span(
            "nudity",
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
            camera,
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
        let hits: [Option<(f32, Option<BBox>)>; 5] = [
            obs.faces.is_empty().then_some((1.0, None)),
            (obs.faces.len() >= 2).then(|| (obs.faces.len() as f32, largest)),
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
            let slice_path = match ev.slice(&t.label, t.start_ms, &t.image) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.errors.push(e.to_string());
                    None
                }
            };
            self.findings.push(Finding {
                label: t.label.clone(),
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
                    describe_label(&t.label),
                    redact(&t.matched)
                ),
            });
        }
    }

    /// Closes every open span at the end of the recording (`end_ms`).
    pub fn finish(&mut self, end_ms: u64, ev: &mut EvidenceSink) -> Vec<String> {
        for track in self
            .camera
            .iter_mut()
            .chain(std::iter::once(&mut self.desktop_nudity))
        {
            if let Some(f) = track.finish(ev, &mut self.errors) {
                self.findings.push(f);
            }
        }
        let closed = self.screen_text.finish(end_ms);
        self.close_text(closed, ev);
        std::mem::take(&mut self.errors)
    }
}

pub fn describe_label(label: &str) -> &'static str {
    match label {
        "contact_info" => "contact details",
        "payment_solicitation" => "off-platform payment request",
        "profanity" => "profanity",
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
    label: String,
    severity: crate::verdict::Severity,
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
