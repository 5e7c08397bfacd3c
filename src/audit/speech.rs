//! The microphone: VAD over every sample, Whisper only over speech, the text policy over the
//! transcript. Runs on its own thread, fed in recording order through a bounded channel.
//!
//! Memory: audio is buffered only from the start of the oldest speech the VAD has not closed (or
//! the last two minutes of unbroken speech), and closed groups (at most one window of speech
//! within a minute of recording) are copied out and queued until `gates.whisper_batch` of them
//! can be decoded together, so a long recording holds at most a few minutes of samples.
//!
//! With the `whisper_speech_only` gate off, the VAD still runs (speech spans, silence findings)
//! but Whisper transcribes all audio, in consecutive 30 s windows, whatever the VAD heard.

use crossbeam_channel::Receiver;

use super::evidence::EvidenceSink;
use super::findings::{describe_label, redact};
use super::AuditModels;
use crate::models::vad::SpeechSegment;
use crate::models::whisper::{self, AudioJob, Transcript, TranscriptSegment};
use crate::policy::Policy;
use crate::slice::AudioChunk;
use crate::verdict::{Evidence, Finding, ModelRef, Track};

const RATE: u64 = 16_000;
/// A pause longer than this ends a speech group: a group is one stretch of talk, and the text
/// rules read its transcript as one text.
const MAX_SILENCE_IN_GROUP_MS: u64 = 8_000;
/// Speech per group at most, once padded as Whisper packs it: one encoder window's worth
/// ([`whisper::PACK_MS`]). The pauses between phrases are not sent to Whisper, so they do not
/// count.
const GROUP_MS: u64 = whisper::PACK_MS;
/// Recording time a group spans at most (speech and pauses): bounds the audio held for it.
const MAX_GROUP_SPAN_MS: u64 = 60_000;
/// Window of the ungated path (`whisper_speech_only = false`): all audio, in 30 s pieces.
const ALL_AUDIO_WINDOW_MS: u64 = 30_000;
/// Audio history kept for speech the VAD has not closed yet; longer unbroken speech is
/// transcribed from its last two minutes only.
const MAX_BUFFER_MS: u64 = 120_000;

#[derive(Debug, Default)]
pub struct SpeechResult {
    /// Speech segments in recording ms.
    pub speech: Vec<(u64, u64)>,
    pub findings: Vec<Finding>,
    pub audio_end_ms: u64,
    pub vad_chunks: u64,
    pub whisper_windows: u64,
    /// Decoder runs; with batching one run serves several windows.
    pub whisper_decoder_steps: u64,
    /// Audio (ms) Whisper did not have to look at because the VAD heard no speech.
    pub skipped_audio_ms: u64,
    pub errors: Vec<String>,
    /// Time the speech thread worked, not counting waits for audio (ms).
    pub busy_ms: u64,
    /// Time in the VAD, the Whisper encoder and the Whisper decoder (ms).
    pub vad_ms: u64,
    pub encode_ms: u64,
    pub decode_ms: u64,
}

/// Audio waiting for Whisper, with its own copy of the samples: the stream buffer need not keep
/// everything between the oldest queued group and now (which could be hours of silence).
struct Queued {
    /// Recording ms of `samples[0]`.
    start_ms: u64,
    samples: Vec<f32>,
    /// Speech in `samples` (ms from its start); `None`: transcribe all of it.
    regions: Option<Vec<SpeechSegment>>,
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
    /// Stream ms `start_ms..end_ms`, copied out to wait for Whisper.
    fn copy_for_whisper(
        &self,
        start_ms: u64,
        end_ms: u64,
        regions: Option<Vec<SpeechSegment>>,
    ) -> Queued {
        Queued {
            start_ms: self.offset_ms + start_ms,
            samples: self
                .range(start_ms * RATE / 1000, end_ms * RATE / 1000)
                .to_vec(),
            regions,
        }
    }
    /// Forgets the samples before stream sample `sample`. Called after every chunk, so the
    /// front is removed only once it is a quarter of the buffer: moving what is kept costs
    /// amortised O(1) per sample, not the whole buffer per chunk.
    fn drop_before(&mut self, sample: u64) {
        let n = sample
            .saturating_sub(self.base)
            .min(self.samples.len() as u64) as usize;
        if n == 0 || n < self.samples.len() / 4 {
            return;
        }
        self.samples.drain(..n);
        self.base += n as u64;
    }
}

/// A jump forward in the audio's timestamps beyond this is a gap in the recording: it is filled
/// with silence so every later sample keeps its place on the recording's timeline.
const GAP_TOLERANCE_MS: u64 = 60;
/// Silence is fed in pieces of this many samples (one second), so a long gap is never held whole.
const GAP_PIECE: usize = RATE as usize;

/// Runs the speech stage until the audio channel closes. `fault`: test only
/// ([`crate::fault`]), panics on the first audio.
pub fn run(
    models: &AuditModels,
    policy: &Policy,
    rx: Receiver<AudioChunk>,
    ev: &mut EvidenceSink,
    fault: bool,
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
    let mut queue: Vec<Queued> = Vec::new();
    let whisper_ref = models
        .whisper
        .as_ref()
        .map(|w| super::model_ref(w.id(), w.sha256()));
    // Busy time is wall time less the time spent waiting for audio.
    let mut waited = std::time::Duration::ZERO;
    loop {
        let wait_t0 = std::time::Instant::now();
        let next = rx.recv();
        waited += wait_t0.elapsed();
        let Ok(chunk) = next else { break };
        if fault {
            panic!("speech: injected fault (test only)");
        }
        let b = buf.get_or_insert_with(|| Buffer {
            offset_ms: chunk.start_ms.max(0) as u64,
            base: 0,
            samples: Vec::new(),
            transcribed_ms: 0,
        });
        // Samples are counted from the first chunk; a gap in the audio (a dropped upload chunk,
        // a muted microphone) would shift everything after it, so it becomes silence.
        let expected_ms = b.offset_ms + b.end() * 1000 / RATE;
        let start_ms = chunk.start_ms.max(0) as u64;
        let mut gap = if start_ms > expected_ms + GAP_TOLERANCE_MS {
            (start_ms - expected_ms) * RATE / 1000
        } else {
            0
        };
        let silence = vec![0f32; GAP_PIECE.min(gap as usize)];
        let mut failed = false;
        while gap > 0 && !failed {
            let n = (gap as usize).min(GAP_PIECE);
            gap -= n as u64;
            failed = !feed(
                models,
                policy,
                b,
                &mut stream,
                &silence[..n],
                &mut pending,
                &mut queue,
                whisper_ref.as_ref(),
                ev,
                &mut r,
            );
        }
        if failed
            || !feed(
                models,
                policy,
                b,
                &mut stream,
                &chunk.samples,
                &mut pending,
                &mut queue,
                whisper_ref.as_ref(),
                ev,
                &mut r,
            )
        {
            break;
        }
    }
    if let Some(b) = buf.as_mut() {
        match stream.finish() {
            Ok(closed) => pending.extend(closed),
            Err(e) => r.errors.push(format!("vad: {e}")),
        }
        let end_ms = b.end() * 1000 / RATE;
        flush(
            models,
            policy,
            b,
            &mut pending,
            None,
            end_ms,
            &mut queue,
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
    r.busy_ms = t0.elapsed().saturating_sub(waited).as_millis() as u64;
    r
}

/// Appends samples to the buffer, runs the VAD over them and hands closed speech on to Whisper.
/// `false` when the VAD failed (its error is in `r.errors`).
#[allow(clippy::too_many_arguments)]
fn feed(
    models: &AuditModels,
    policy: &Policy,
    b: &mut Buffer,
    stream: &mut crate::models::vad::VadStream<'_>,
    samples: &[f32],
    pending: &mut Vec<SpeechSegment>,
    queue: &mut Vec<Queued>,
    whisper_ref: Option<&ModelRef>,
    ev: &mut EvidenceSink,
    r: &mut SpeechResult,
) -> bool {
    b.samples.extend_from_slice(samples);
    r.vad_chunks += (samples.len() as u64).div_ceil(512);
    let vad_t0 = std::time::Instant::now();
    let fed = stream.feed(samples);
    r.vad_ms += vad_t0.elapsed().as_millis() as u64;
    match fed {
        Ok(closed) => pending.extend(closed),
        Err(e) => {
            r.errors.push(format!("vad: {e}"));
            return false;
        }
    }
    flush(
        models,
        policy,
        b,
        pending,
        stream.open_segment_start_ms(),
        stream.undecided_from_ms(),
        queue,
        false,
        whisper_ref,
        ev,
        r,
    );
    true
}

/// How many of the pending speech segments (VAD order) form the next group for Whisper, once
/// it is complete: the longest run from the first whose packed speech fits in [`GROUP_MS`],
/// whose span fits in [`MAX_GROUP_SPAN_MS`] and whose pauses are at most
/// [`MAX_SILENCE_IN_GROUP_MS`]. Complete when a later segment does not fit, at the end of the
/// audio, or when what follows cannot join: the segment still in progress (`open_start_ms`)
/// starts too late or is already too long, or, in silence, the pause since the run ended is
/// already too long.
fn ready_group(
    pending: &[SpeechSegment],
    buffered_ms: u64,
    open_start_ms: Option<u64>,
    at_end: bool,
) -> Option<usize> {
    let first = pending.first()?.start_ms;
    let mut n = 1;
    while n < pending.len()
        && pending[n].end_ms.saturating_sub(first) <= MAX_GROUP_SPAN_MS
        && pending[n].start_ms.saturating_sub(pending[n - 1].end_ms) <= MAX_SILENCE_IN_GROUP_MS
        && whisper::packed_ms(&pending[..=n]) <= GROUP_MS
    {
        n += 1;
    }
    let run_end = pending[n - 1].end_ms;
    let next_too_far = match open_start_ms {
        Some(open) => {
            let open_so_far = SpeechSegment {
                start_ms: open,
                end_ms: buffered_ms.max(open),
            };
            let mut with_open = pending[..n].to_vec();
            with_open.push(open_so_far);
            open.saturating_sub(run_end) > MAX_SILENCE_IN_GROUP_MS
                || open.saturating_sub(first) >= MAX_GROUP_SPAN_MS
                || whisper::packed_ms(&with_open) > GROUP_MS
        }
        None => buffered_ms.saturating_sub(run_end) > MAX_SILENCE_IN_GROUP_MS,
    };
    (n < pending.len() || at_end || next_too_far).then_some(n)
}

#[allow(clippy::too_many_arguments)]
fn flush(
    models: &AuditModels,
    policy: &Policy,
    b: &mut Buffer,
    pending: &mut Vec<SpeechSegment>,
    open_start_ms: Option<u64>,
    undecided_from_ms: u64,
    queue: &mut Vec<Queued>,
    at_end: bool,
    whisper_ref: Option<&ModelRef>,
    ev: &mut EvidenceSink,
    r: &mut SpeechResult,
) {
    let buffered_ms = b.end() * 1000 / RATE;
    while let Some(n) = ready_group(pending, buffered_ms, open_start_ms, at_end) {
        let group: Vec<SpeechSegment> = pending.drain(..n).collect();
        tracing::debug!(target: "classguard::speech", buffered_ms, first_ms = group[0].start_ms, last_ms = group[n - 1].end_ms, segments = n, packed_ms = whisper::packed_ms(&group), left = pending.len(), "speech group");
        for s in &group {
            r.speech
                .push((b.offset_ms + s.start_ms, b.offset_ms + s.end_ms));
        }
        if policy.gates.whisper_speech_only && models.whisper.is_some() {
            let start_ms = group[0].start_ms;
            let end_ms = group.last().map_or(start_ms, |s| s.end_ms);
            let regions = group
                .iter()
                .map(|s| SpeechSegment {
                    start_ms: s.start_ms - start_ms,
                    end_ms: s.end_ms - start_ms,
                })
                .collect();
            queue.push(b.copy_for_whisper(start_ms, end_ms, Some(regions)));
        }
    }
    if !policy.gates.whisper_speech_only {
        // Ungated: every full 30 s window as soon as it is buffered, the remainder at the end.
        while buffered_ms >= b.transcribed_ms + ALL_AUDIO_WINDOW_MS
            || (at_end && buffered_ms > b.transcribed_ms)
        {
            let start_ms = b.transcribed_ms;
            let end_ms = (start_ms + ALL_AUDIO_WINDOW_MS).min(buffered_ms);
            if models.whisper.is_some() {
                queue.push(b.copy_for_whisper(start_ms, end_ms, None));
            }
            b.transcribed_ms = end_ms;
        }
    }
    if !queue.is_empty() && (at_end || queue.len() >= policy.gates.whisper_batch) {
        transcribe_queue(models, policy, queue, whisper_ref, ev, r);
    }
    // Keep everything from the oldest segment not yet grouped and, since the VAD reports a segment
    // only once it has ended, from where a segment still to be reported can start (at most the
    // last two minutes of unbroken speech). In silence that is a few ms: nothing else is kept.
    let undecided_from_ms = undecided_from_ms.max(buffered_ms.saturating_sub(MAX_BUFFER_MS));
    let mut keep_from_ms = pending
        .first()
        .map_or(undecided_from_ms, |s| s.start_ms.min(undecided_from_ms));
    if !policy.gates.whisper_speech_only {
        keep_from_ms = keep_from_ms.min(b.transcribed_ms);
    }
    b.drop_before(keep_from_ms * RATE / 1000);
}

/// Transcribes every queued group (decoding up to `gates.whisper_batch` windows together) and
/// runs the text policy over each group's transcript.
fn transcribe_queue(
    models: &AuditModels,
    policy: &Policy,
    queue: &mut Vec<Queued>,
    whisper_ref: Option<&ModelRef>,
    ev: &mut EvidenceSink,
    r: &mut SpeechResult,
) {
    let (Some(whisper), Some(model)) = (&models.whisper, whisper_ref) else {
        queue.clear();
        return;
    };
    let jobs: Vec<AudioJob<'_>> = queue
        .iter()
        .map(|q| AudioJob {
            samples: &q.samples,
            regions: q.regions.as_deref(),
        })
        .collect();
    let done = whisper.transcribe_batch(&jobs, policy.gates.whisper_batch);
    drop(jobs);
    match done {
        Ok(out) => {
            r.whisper_windows += out.windows;
            r.whisper_decoder_steps += out.decoder_steps;
            r.encode_ms += out.encode_ms;
            r.decode_ms += out.decode_ms;
            for (q, transcript) in queue.drain(..).zip(out.transcripts) {
                scan_transcript(policy, &q, transcript, model, ev, r);
            }
        }
        Err(e) => {
            r.errors.push(format!("whisper: {e}"));
            queue.clear();
        }
    }
}

/// Text policy over one group's transcript: findings with the audio clip and excerpt.
fn scan_transcript(
    policy: &Policy,
    q: &Queued,
    transcript: Transcript,
    model: &ModelRef,
    ev: &mut EvidenceSink,
    r: &mut SpeechResult,
) {
    let abs = q.start_ms;
    let dur_ms = q.samples.len() as u64 * 1000 / RATE;
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
        hits.push((h, abs, abs + dur_ms, whole.clone()));
    }
    for (hit, s, e, excerpt) in hits {
        if seen.iter().any(|(id, m)| {
            *id == hit.rule_id && (m.contains(&hit.matched) || hit.matched.contains(m.as_str()))
        }) {
            continue;
        }
        seen.push((hit.rule_id.clone(), hit.matched.clone()));
        let at = |ms: u64| ((ms.saturating_sub(abs) * RATE / 1000) as usize).min(q.samples.len());
        let clip = &q.samples[at(s)..at(e).max(at(s))];
        let audio_clip = match ev.audio(hit.label.as_str(), s, clip) {
            Ok(p) => Some(p),
            Err(err) => {
                r.errors.push(err.to_string());
                None
            }
        };
        let max = policy.evidence.max_excerpt_chars;
        r.findings.push(Finding {
            label: hit.label,
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
                describe_label(hit.label),
                redact(&hit.matched)
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_ms: u64, end_ms: u64) -> SpeechSegment {
        SpeechSegment { start_ms, end_ms }
    }

    #[test]
    fn the_buffer_forgets_its_front_in_large_steps_and_keeps_stream_positions() {
        let mut b = Buffer {
            offset_ms: 0,
            base: 0,
            samples: (0..16_000).map(|i| i as f32).collect(),
            transcribed_ms: 0,
        };
        // A small front is left in place (no move of the rest), yet reads stay correct.
        b.drop_before(320);
        assert_eq!((b.base, b.samples.len()), (0, 16_000));
        assert_eq!(b.range(320, 322), &[320.0, 321.0]);
        b.drop_before(8_000);
        assert_eq!((b.base, b.samples.len()), (8_000, 8_000));
        assert_eq!(b.range(8_000, 8_002), &[8_000.0, 8_001.0]);
        assert_eq!(b.end(), 16_000);
        // Dropping past the end empties it.
        b.drop_before(20_000);
        assert_eq!((b.base, b.samples.len()), (16_000, 0));
    }

    #[test]
    fn a_group_is_complete_when_the_next_segment_does_not_fit_in_one_window() {
        // Padded: 10.2 + 14.4 = 24.6 s; the third (5.9 s) would make 30.5 s.
        let p = [seg(0, 10_000), seg(11_000, 25_000), seg(26_000, 31_500)];
        assert_eq!(ready_group(&p, 31_500, None, false), Some(2));
        // Still open: the last segment may be followed by more that fits.
        assert_eq!(ready_group(&p[..2], 26_000, None, false), None);
        assert_eq!(ready_group(&p[..2], 26_000, None, true), Some(2));
    }

    #[test]
    fn pauses_do_not_count_towards_the_window() {
        // 36 s from first to last, but 4.2 + 5 x 4.4 = 26.2 s of padded speech: one group.
        let p: Vec<SpeechSegment> = (0..6).map(|i| seg(i * 6_400, i * 6_400 + 4_000)).collect();
        assert_eq!(ready_group(&p, 45_000, None, false), Some(6));
        // A seventh phrase would overflow the window.
        let mut q = p.clone();
        q.push(seg(38_400, 42_400));
        assert_eq!(ready_group(&q, 43_000, None, false), Some(6));
    }

    #[test]
    fn a_group_spans_at_most_a_minute() {
        // Short phrases with 7 s pauses: little speech, but the span limit closes the group.
        let p: Vec<SpeechSegment> = (0..10).map(|i| seg(i * 8_000, i * 8_000 + 1_000)).collect();
        assert_eq!(ready_group(&p, 80_000, None, false), Some(8));
    }

    #[test]
    fn a_long_pause_ends_a_group() {
        let p = [seg(0, 5_000), seg(14_000, 16_000)];
        assert_eq!(ready_group(&p, 16_500, None, false), Some(1));
        // Silence already longer than the pause limit after the last segment.
        assert_eq!(ready_group(&p[..1], 13_001, None, false), Some(1));
        assert_eq!(ready_group(&p[..1], 12_000, None, false), None);
    }

    #[test]
    fn a_segment_longer_than_a_window_is_a_group_of_its_own() {
        let p = [seg(0, 45_000), seg(45_500, 47_000)];
        assert_eq!(ready_group(&p, 47_000, None, false), Some(1));
        assert_eq!(ready_group(&[], 47_000, None, true), None);
    }

    #[test]
    fn speech_in_progress_keeps_a_group_open_while_it_can_still_join() {
        let p = [seg(0, 5_000)];
        // Long after the last closed segment, but the VAD is inside a segment that began soon
        // after it: that segment may still fit.
        assert_eq!(ready_group(&p, 16_000, Some(6_000), false), None);
        // It began after too long a pause, or too late in the span, or has grown too long.
        assert_eq!(ready_group(&p, 16_000, Some(13_500), false), Some(1));
        let q: Vec<SpeechSegment> = (0..8).map(|i| seg(i * 8_000, i * 8_000 + 1_000)).collect();
        assert_eq!(ready_group(&q, 61_000, Some(58_000), false), None);
        assert_eq!(ready_group(&q, 61_000, Some(60_500), false), Some(8));
        assert_eq!(ready_group(&p, 31_000, Some(6_000), false), Some(1));
    }
}
