//! The microphone: VAD over every sample, Whisper only over speech, the text policy over the
//! transcript. Runs on its own thread, fed in recording order through a bounded channel.
//!
//! Memory: audio is buffered only from the start of the oldest untranscribed speech (or the last
//! second, during silence), and speech is transcribed in groups of at most 30 s, so a long
//! recording holds at most a few tens of seconds of samples.
//!
//! With the `whisper_speech_only` gate off, the VAD still runs (speech spans, silence findings)
//! but Whisper transcribes all audio, in consecutive 30 s windows, whatever the VAD heard.

use crossbeam_channel::Receiver;

use super::evidence::EvidenceSink;
use super::findings::{describe_label, redact};
use super::AuditModels;
use crate::models::vad::SpeechSegment;
use crate::models::whisper::TranscriptSegment;
use crate::policy::Policy;
use crate::slice::AudioChunk;
use crate::verdict::{Evidence, Finding, ModelRef, Track};

const RATE: u64 = 16_000;
/// A pause this long ends a speech group early. Shorter pauses stay inside the group, so several
/// phrases share one 30 s encoder window instead of paying a padded window each.
const MAX_SILENCE_IN_GROUP_MS: u64 = 10_000;
/// Speech groups handed to Whisper are at most this long (one encoder window).
const GROUP_MS: u64 = 28_000;
/// Window of the ungated path (`whisper_speech_only = false`): all audio, in 30 s pieces.
const ALL_AUDIO_WINDOW_MS: u64 = 30_000;
/// Audio history kept for speech the VAD has not closed yet; longer unbroken speech is
/// transcribed from its last two minutes only.
const MAX_BUFFER_MS: u64 = 120_000;

#[derive(Debug, Default)]
pub struct SpeechResult {
    /// Speech segments in recording ms.
    pub speech: Vec<(u64, u64)>,
    pub transcript: Vec<TranscriptSegment>,
    pub findings: Vec<Finding>,
    pub audio_end_ms: u64,
    pub vad_chunks: u64,
    pub whisper_windows: u64,
    /// Audio (ms) Whisper did not have to look at because the VAD heard no speech.
    pub skipped_audio_ms: u64,
    pub errors: Vec<String>,
    pub busy_ms: u64,
}

struct Buffer {
    /// Recording ms of sample 0 of the stream.
    offset_ms: u64,
    /// Stream sample index of `samples[0]`.
    base: u64,
    samples: Vec<f32>,
    /// Stream ms up to which all audio was transcribed (ungated path only).
    transcribed_ms: u64,
}

impl Buffer {
    fn end(&self) -> u64 {
        self.base + self.samples.len() as u64
    }
    fn range(&self, start: u64, end: u64) -> &[f32] {
        let s = start
            .saturating_sub(self.base)
            .min(self.samples.len() as u64) as usize;
        let e = end.saturating_sub(self.base).min(self.samples.len() as u64) as usize;
        &self.samples[s..e.max(s)]
    }
    fn drop_before(&mut self, sample: u64) {
        let n = sample
            .saturating_sub(self.base)
            .min(self.samples.len() as u64) as usize;
        self.samples.drain(..n);
        self.base += n as u64;
    }
}

pub fn run(
    models: &AuditModels,
    policy: &Policy,
    rx: Receiver<AudioChunk>,
    ev: &mut EvidenceSink,
) -> SpeechResult {
    let mut r = SpeechResult::default();
    let Some(vad) = &models.vad else {
        for _ in rx {}
        return r;
    };
    let t0 = std::time::Instant::now();
    let mut stream = vad.stream();
    let mut buf: Option<Buffer> = None;
    let mut pending: Vec<SpeechSegment> = Vec::new();
    let whisper_ref = models
        .whisper
        .as_ref()
        .map(|w| super::model_ref(w.id(), w.sha256()));
    for chunk in rx {
        let b = buf.get_or_insert_with(|| Buffer {
            offset_ms: chunk.start_ms.max(0) as u64,
            base: 0,
            samples: Vec::new(),
            transcribed_ms: 0,
        });
        b.samples.extend_from_slice(&chunk.samples);
        r.vad_chunks += (chunk.samples.len() as u64).div_ceil(512);
        match stream.feed(&chunk.samples) {
            Ok(closed) => pending.extend(closed),
            Err(e) => {
                r.errors.push(format!("vad: {e}"));
                break;
            }
        }
        flush(
            models,
            policy,
            b,
            &mut pending,
            false,
            whisper_ref.as_ref(),
            ev,
            &mut r,
        );
    }
    if let Some(b) = buf.as_mut() {
        match stream.finish() {
            Ok(closed) => pending.extend(closed),
            Err(e) => r.errors.push(format!("vad: {e}")),
        }
        flush(
            models,
            policy,
            b,
            &mut pending,
            true,
            whisper_ref.as_ref(),
            ev,
            &mut r,
        );
        r.audio_end_ms = b.offset_ms + b.end() * 1000 / RATE;
        let speech_ms: u64 = r.speech.iter().map(|(s, e)| e - s).sum();
        r.skipped_audio_ms = if policy.gates.whisper_speech_only {
            (b.end() * 1000 / RATE).saturating_sub(speech_ms)
        } else {
            0
        };
    }
    r.busy_ms = t0.elapsed().as_millis() as u64;
    r
}

#[allow(clippy::too_many_arguments)]
fn flush(
    models: &AuditModels,
    policy: &Policy,
    b: &mut Buffer,
    pending: &mut Vec<SpeechSegment>,
    at_end: bool,
    whisper_ref: Option<&ModelRef>,
    ev: &mut EvidenceSink,
    r: &mut SpeechResult,
) {
    let buffered_ms = b.end() * 1000 / RATE;
    // Transcribe a group when it is long enough, when speech stopped a while ago, or at the end.
    let ready = match (pending.first(), pending.last()) {
        (Some(first), Some(last)) => {
            at_end
                || last.end_ms - first.start_ms >= GROUP_MS
                || buffered_ms.saturating_sub(last.end_ms) > MAX_SILENCE_IN_GROUP_MS
        }
        _ => false,
    };
    if ready {
        let group: Vec<SpeechSegment> = std::mem::take(pending);
        for s in &group {
            r.speech
                .push((b.offset_ms + s.start_ms, b.offset_ms + s.end_ms));
        }
        if policy.gates.whisper_speech_only {
            transcribe_group(models, policy, b, &group, whisper_ref, ev, r);
        }
    }
    if !policy.gates.whisper_speech_only {
        // Ungated: every full 30 s window as soon as it is buffered, the remainder at the end.
        while buffered_ms >= b.transcribed_ms + ALL_AUDIO_WINDOW_MS
            || (at_end && buffered_ms > b.transcribed_ms)
        {
            let start_ms = b.transcribed_ms;
            let end_ms = (start_ms + ALL_AUDIO_WINDOW_MS).min(buffered_ms);
            let window = [SpeechSegment { start_ms, end_ms }];
            transcribe_group(models, policy, b, &window, whisper_ref, ev, r);
            b.transcribed_ms = end_ms;
        }
    }
    // The VAD reports a segment only once it has ended, so keep enough history for speech that is
    // still going on, and everything from the oldest segment not yet transcribed.
    let history_from = buffered_ms.saturating_sub(MAX_BUFFER_MS);
    let mut keep_from_ms = pending
        .first()
        .map_or(history_from, |s| s.start_ms.min(history_from));
    if !policy.gates.whisper_speech_only {
        keep_from_ms = keep_from_ms.min(b.transcribed_ms);
    }
    b.drop_before(keep_from_ms * RATE / 1000);
}

fn transcribe_group(
    models: &AuditModels,
    policy: &Policy,
    b: &Buffer,
    group: &[SpeechSegment],
    whisper_ref: Option<&ModelRef>,
    ev: &mut EvidenceSink,
    r: &mut SpeechResult,
) {
    let (Some(whisper), Some(model)) = (&models.whisper, whisper_ref) else {
        return;
    };
    let start_ms = group[0].start_ms;
    let end_ms = group.last().map(|s| s.end_ms).unwrap_or(start_ms);
    let start_sample = start_ms * RATE / 1000;
    let samples = b.range(start_sample, end_ms * RATE / 1000);
    if samples.is_empty() {
        return;
    }
    let regions: Vec<SpeechSegment> = group
        .iter()
        .map(|s| SpeechSegment {
            start_ms: s.start_ms - start_ms,
            end_ms: s.end_ms - start_ms,
        })
        .collect();
    r.whisper_windows += 1;
    let transcript = match whisper.transcribe_regions(samples, &regions) {
        Ok(t) => t,
        Err(e) => {
            r.errors.push(format!("whisper: {e}"));
            return;
        }
    };
    let abs = b.offset_ms + start_ms;
    let segs: Vec<TranscriptSegment> = transcript
        .segments
        .into_iter()
        .map(|s| TranscriptSegment {
            start_ms: abs + s.start_ms,
            end_ms: abs + s.end_ms,
            text: s.text,
        })
        .collect();
    // Scan each segment, and the whole group (a phrase can straddle two segments).
    let whole: String = segs
        .iter()
        .map(|s| s.text.trim())
        .collect::<Vec<_>>()
        .join(" ");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut hits = Vec::new();
    for s in &segs {
        for h in policy.text().scan(&s.text) {
            hits.push((h, s.start_ms, s.end_ms, s.text.trim().to_string()));
        }
    }
    for h in policy.text().scan(&whole) {
        hits.push((h, abs, abs + (end_ms - start_ms), whole.clone()));
    }
    for (hit, s, e, excerpt) in hits {
        if seen.iter().any(|(id, m)| {
            *id == hit.rule_id && (m.contains(&hit.matched) || hit.matched.contains(m.as_str()))
        }) {
            continue;
        }
        seen.push((hit.rule_id.clone(), hit.matched.clone()));
        let clip = b.range(
            start_sample.max((s - b.offset_ms) * RATE / 1000),
            (e - b.offset_ms) * RATE / 1000,
        );
        let audio_clip = match ev.audio(&hit.label, s, clip) {
            Ok(p) => Some(p),
            Err(err) => {
                r.errors.push(err.to_string());
                None
            }
        };
        let max = policy.evidence.max_excerpt_chars;
        r.findings.push(Finding {
            label: hit.label.clone(),
            severity: hit.severity,
            track: Track::Microphone,
            start_ms: s,
            end_ms: e,
            confidence: 1.0,
            model: model.clone(),
            rule_id: hit.rule_id.clone(),
            evidence: Evidence {
                audio_clip,
                transcript_excerpt: Some(excerpt.chars().take(max).collect()),
                ..Default::default()
            },
            reason: format!(
                "{} '{}' said on the microphone",
                describe_label(&hit.label),
                redact(&hit.matched)
            ),
        });
    }
    r.transcript.extend(segs);
}
