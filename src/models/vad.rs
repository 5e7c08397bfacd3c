//! Voice activity detection with Silero VAD v6 (streaming).
//!
//! The network sees 512-sample chunks (32 ms at 16 kHz) prefixed by the last 64 samples of
//! the previous chunk, and carries a recurrent state `[2, 1, 128]` between calls. Per-chunk
//! speech probabilities are turned into segments with hysteresis (enter at `threshold`,
//! leave below `threshold - 0.15`), a minimum silence before a segment closes and a minimum
//! speech duration — the rules of the reference `get_speech_timestamps` — plus a one-chunk
//! correction of the model's decay lag at segment ends (see [`VadOptions::end_lag_ms`]).

use std::path::Path;

use ort::value::TensorRef;
use serde::Serialize;

use super::{load_model, LoadedModel, ModelError, ModelOptions, Result};

pub const SAMPLE_RATE: usize = 16_000;
pub const CHUNK: usize = 512;
pub const CONTEXT: usize = 64;
const STATE_LEN: usize = 2 * 128;

/// A stretch of speech, in milliseconds from the start of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SpeechSegment {
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VadOptions {
    /// Probability at which speech starts.
    pub threshold: f32,
    /// Probability below which speech may end (default `threshold - 0.15`).
    pub neg_threshold: Option<f32>,
    /// Segments shorter than this are dropped (clicks, coughs).
    pub min_speech_ms: u32,
    /// Silence must last this long before a segment closes (bridges short pauses).
    pub min_silence_ms: u32,
    /// Added before and after each segment (0 by default: the bounds below are already
    /// calibrated; raise it when clipping a syllable costs more than including silence).
    pub speech_pad_ms: u32,
    /// Subtracted from a segment end closed by silence. The model's probability decays over
    /// about two chunks after speech stops (measured: the first chunk below the exit
    /// threshold starts 60-90 ms after the true end), while it rises within the first chunk
    /// of speech; one chunk of compensation centres the end error.
    pub end_lag_ms: u32,
}

impl Default for VadOptions {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_ms: 250,
            min_silence_ms: 100,
            speech_pad_ms: 0,
            end_lag_ms: 32,
        }
    }
}

/// Silero VAD v6 (16 kHz only).
pub struct Vad {
    model: LoadedModel,
    input: String,
    state_in: String,
    sr_in: String,
    sr_shape: Vec<usize>,
    prob_out: String,
    state_out: String,
    pub options: VadOptions,
}

impl Vad {
    pub const ID: &'static str = "silero-vad-v6";

    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let model = load_model(path, opts)?;
        let inputs = model.pool.input_shapes();
        let names: Vec<String> = inputs.iter().map(|i| i.0.clone()).collect();
        let input = super::pick_name(&names, &["input"], 0)
            .ok_or_else(|| model.pool.output_err("no inputs"))?;
        let state_in = super::pick_name(&names, &["state"], 1)
            .ok_or_else(|| model.pool.output_err("no state input"))?;
        let sr_in = super::pick_name(&names, &["sr"], 2)
            .ok_or_else(|| model.pool.output_err("no sr input"))?;
        let sr_shape = inputs
            .iter()
            .find(|i| i.0 == sr_in)
            .map(|i| i.1.iter().map(|&d| d.max(1) as usize).collect())
            .unwrap_or_default();
        let outs = model.pool.output_names();
        let prob_out = super::pick_name(&outs, &["output"], 0)
            .ok_or_else(|| model.pool.output_err("no outputs"))?;
        let state_out = super::pick_name(&outs, &["stateN", "state_out"], 1)
            .ok_or_else(|| model.pool.output_err("no state output"))?;
        Ok(Self {
            model,
            input,
            state_in,
            sr_in,
            sr_shape,
            prob_out,
            state_out,
            options: VadOptions::default(),
        })
    }

    pub fn id(&self) -> &'static str {
        Self::ID
    }
    pub fn sha256(&self) -> &str {
        &self.model.sha256
    }
    pub fn pool(&self) -> &super::SessionPool {
        &self.model.pool
    }

    /// Starts a stream (fresh state and context).
    pub fn stream(&self) -> VadStream<'_> {
        VadStream {
            vad: self,
            state: vec![0.0; STATE_LEN],
            next_state: vec![0.0; STATE_LEN],
            window: vec![0.0; CONTEXT + CHUNK],
            pending: Vec::with_capacity(CHUNK),
            chunks: 0,
            total_samples: 0,
            seg: Segmenter::new(&self.options),
        }
    }

    /// Segments a whole 16 kHz mono signal.
    pub fn detect(&self, samples: &[f32]) -> Result<Vec<SpeechSegment>> {
        let mut s = self.stream();
        let mut out = s.feed(samples)?;
        out.extend(s.finish()?);
        Ok(out)
    }

    /// Per-chunk speech probabilities of a whole signal (diagnostics, tests).
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>> {
        let mut s = self.stream();
        let mut out = Vec::with_capacity(samples.len() / CHUNK + 1);
        for c in samples.chunks(CHUNK) {
            let mut chunk = [0.0f32; CHUNK];
            chunk[..c.len()].copy_from_slice(c);
            out.push(s.step(&chunk)?);
        }
        Ok(out)
    }

    /// One raw model call: `window` is 64 context + 512 new samples; `state` is updated in
    /// place. Returns the speech probability.
    pub fn run_raw(&self, window: &[f32], state: &[f32], new_state: &mut [f32]) -> Result<f32> {
        let pool = &self.model.pool;
        if window.len() != CONTEXT + CHUNK
            || state.len() != STATE_LEN
            || new_state.len() != STATE_LEN
        {
            return Err(ModelError::Input {
                model: self.model.file.clone(),
                reason: format!(
                    "window {} (want {}), state {} (want {STATE_LEN})",
                    window.len(),
                    CONTEXT + CHUNK,
                    state.len()
                ),
            });
        }
        let sr = [SAMPLE_RATE as i64];
        let x = TensorRef::from_array_view(([1usize, CONTEXT + CHUNK], window))
            .map_err(|e| pool.run_err(e))?;
        let st =
            TensorRef::from_array_view(([2usize, 1, 128], state)).map_err(|e| pool.run_err(e))?;
        let srt = TensorRef::from_array_view((self.sr_shape.clone(), &sr[..]))
            .map_err(|e| pool.run_err(e))?;
        use ort::session::SessionInputValue as V;
        use std::borrow::Cow::Borrowed;
        let mut session = pool.checkout();
        let outputs = session
            .run(vec![
                (Borrowed(self.input.as_str()), V::from(x)),
                (Borrowed(self.state_in.as_str()), V::from(st)),
                (Borrowed(self.sr_in.as_str()), V::from(srt)),
            ])
            .map_err(|e| pool.run_err(e))?;
        let p = outputs
            .get(&self.prob_out)
            .ok_or_else(|| pool.output_err("probability output missing"))?;
        let (_, pd) = p.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
        let prob = *pd
            .first()
            .ok_or_else(|| pool.output_err("empty probability"))?;
        let s = outputs
            .get(&self.state_out)
            .ok_or_else(|| pool.output_err("state output missing"))?;
        let (_, sd) = s.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
        if sd.len() != STATE_LEN {
            return Err(pool.output_err(format!("state output has {} values", sd.len())));
        }
        new_state.copy_from_slice(sd);
        Ok(prob)
    }
}

/// An in-progress VAD stream: feed samples of any length, get closed segments.
pub struct VadStream<'a> {
    vad: &'a Vad,
    state: Vec<f32>,
    next_state: Vec<f32>,
    /// Context (64) + current chunk (512), reused every step.
    window: Vec<f32>,
    pending: Vec<f32>,
    chunks: u64,
    total_samples: u64,
    seg: Segmenter,
}

impl VadStream<'_> {
    /// Start (ms, with padding) of the speech segment in progress, which [`VadStream::feed`]
    /// reports only once it has ended; `None` during silence.
    pub fn open_segment_start_ms(&self) -> Option<u64> {
        self.seg.open_start().map(|s| s * 1000 / SAMPLE_RATE as u64)
    }

    /// Earliest stream ms at which a segment not yet reported by [`VadStream::feed`] can start:
    /// the padded start of the segment in progress or, in silence, the next chunk less the
    /// padding. Audio before it can never be part of a future segment.
    pub fn undecided_from_ms(&self) -> u64 {
        let s = self
            .seg
            .open_start()
            .unwrap_or_else(|| self.seg.next_start(self.chunks * CHUNK as u64));
        s * 1000 / SAMPLE_RATE as u64
    }

    /// Runs the model on one full chunk and advances the context and state.
    fn step(&mut self, chunk: &[f32; CHUNK]) -> Result<f32> {
        self.window[CONTEXT..].copy_from_slice(chunk);
        let p = self
            .vad
            .run_raw(&self.window, &self.state, &mut self.next_state)?;
        std::mem::swap(&mut self.state, &mut self.next_state);
        self.window.copy_within(CHUNK.., 0);
        self.chunks += 1;
        Ok(p)
    }

    /// Feeds 16 kHz mono samples; returns segments that closed.
    pub fn feed(&mut self, samples: &[f32]) -> Result<Vec<SpeechSegment>> {
        let mut closed = Vec::new();
        self.total_samples += samples.len() as u64;
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (CHUNK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == CHUNK {
                let mut chunk = [0.0f32; CHUNK];
                chunk.copy_from_slice(&self.pending);
                self.pending.clear();
                let start = (self.chunks as usize * CHUNK) as u64;
                let p = self.step(&chunk)?;
                if let Some(s) = self.seg.push(p, start) {
                    closed.push(s);
                }
            }
        }
        Ok(closed)
    }

    /// Flushes the last partial chunk (zero-padded) and closes an open segment at the end
    /// of the audio.
    pub fn finish(mut self) -> Result<Vec<SpeechSegment>> {
        let mut closed = Vec::new();
        if !self.pending.is_empty() {
            let mut chunk = [0.0f32; CHUNK];
            chunk[..self.pending.len()].copy_from_slice(&self.pending);
            let start = (self.chunks as usize * CHUNK) as u64;
            let p = self.step(&chunk)?;
            if let Some(s) = self.seg.push(p, start) {
                closed.push(s);
            }
        }
        if let Some(s) = self.seg.finish(self.total_samples) {
            closed.push(s);
        }
        Ok(closed)
    }

    /// Samples consumed so far.
    pub fn position_samples(&self) -> u64 {
        self.total_samples
    }
}

/// Hysteresis segmentation over per-chunk probabilities (sample positions at 16 kHz).
/// Pure: unit-tested without the model.
#[derive(Clone, Debug)]
pub(crate) struct Segmenter {
    threshold: f32,
    neg_threshold: f32,
    min_speech: u64,
    min_silence: u64,
    pad: u64,
    end_lag: u64,
    triggered: bool,
    start: u64,
    temp_end: Option<u64>,
    last_end: u64,
}

impl Segmenter {
    pub(crate) fn new(o: &VadOptions) -> Self {
        let ms = |v: u32| v as u64 * SAMPLE_RATE as u64 / 1000;
        Self {
            threshold: o.threshold,
            neg_threshold: o.neg_threshold.unwrap_or((o.threshold - 0.15).max(0.01)),
            min_speech: ms(o.min_speech_ms),
            min_silence: ms(o.min_silence_ms),
            pad: ms(o.speech_pad_ms),
            end_lag: ms(o.end_lag_ms),
            triggered: false,
            start: 0,
            temp_end: None,
            last_end: 0,
        }
    }

    fn close(&mut self, end: u64, total: Option<u64>) -> Option<SpeechSegment> {
        self.triggered = false;
        self.temp_end = None;
        if end.saturating_sub(self.start) < self.min_speech {
            return None;
        }
        let s = self.start.saturating_sub(self.pad).max(self.last_end);
        let mut e = end + self.pad;
        if let Some(t) = total {
            e = e.min(t);
        }
        self.last_end = e;
        let to_ms = |v: u64| v * 1000 / SAMPLE_RATE as u64;
        Some(SpeechSegment {
            start_ms: to_ms(s),
            end_ms: to_ms(e),
        })
    }

    /// Padded start sample of the open segment.
    fn open_start(&self) -> Option<u64> {
        self.triggered.then(|| self.next_start(self.start))
    }

    /// Padded start sample of a segment that would begin with the chunk at `pos`.
    fn next_start(&self, pos: u64) -> u64 {
        pos.saturating_sub(self.pad).max(self.last_end)
    }

    /// `pos` is the sample index where this chunk starts.
    pub(crate) fn push(&mut self, prob: f32, pos: u64) -> Option<SpeechSegment> {
        if prob >= self.threshold {
            self.temp_end = None;
            if !self.triggered {
                self.triggered = true;
                self.start = pos;
            }
            return None;
        }
        if self.triggered && prob < self.neg_threshold {
            let te = *self.temp_end.get_or_insert(pos);
            if pos + CHUNK as u64 - te >= self.min_silence {
                let end = te.saturating_sub(self.end_lag).max(self.start);
                return self.close(end, None);
            }
        }
        None
    }

    pub(crate) fn finish(&mut self, total: u64) -> Option<SpeechSegment> {
        if self.triggered {
            let end = match self.temp_end {
                Some(te) => te.saturating_sub(self.end_lag).max(self.start),
                None => total,
            };
            return self.close(end, Some(total));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(probs: &[f32]) -> Vec<SpeechSegment> {
        let mut s = Segmenter::new(&VadOptions::default());
        let mut out = Vec::new();
        for (i, &p) in probs.iter().enumerate() {
            out.extend(s.push(p, (i * CHUNK) as u64));
        }
        out.extend(s.finish((probs.len() * CHUNK) as u64));
        out
    }

    #[test]
    fn hysteresis_and_durations() {
        // 10 silent chunks, 20 speech chunks (640 ms), 10 silent.
        let mut p = vec![0.05; 10];
        p.extend(vec![0.9; 20]);
        p.extend(vec![0.05; 10]);
        let segs = run(&p);
        assert_eq!(segs.len(), 1);
        // start = 10*32 ms, end = 30*32 ms - one chunk of lag compensation
        assert_eq!(
            segs[0],
            SpeechSegment {
                start_ms: 320,
                end_ms: 928
            }
        );
        // With the reference pipeline's 30 ms padding and no lag compensation.
        let o = VadOptions {
            speech_pad_ms: 30,
            end_lag_ms: 0,
            ..Default::default()
        };
        let mut padded = Segmenter::new(&o);
        let mut out = Vec::new();
        for (i, &q) in p.iter().enumerate() {
            out.extend(padded.push(q, (i * CHUNK) as u64));
        }
        assert_eq!(
            out,
            vec![SpeechSegment {
                start_ms: 290,
                end_ms: 990
            }]
        );
    }

    #[test]
    fn short_pause_is_bridged_and_blips_dropped() {
        let mut p = vec![0.9; 20];
        p.extend(vec![0.4; 2]); // between thresholds: keeps speech going
        p.extend(vec![0.1; 2]); // 64 ms < 100 ms: bridged
        p.extend(vec![0.9; 20]);
        p.extend(vec![0.0; 20]);
        p.extend(vec![0.9; 3]); // 96 ms blip: dropped
        p.extend(vec![0.0; 10]);
        let segs = run(&p);
        assert_eq!(segs.len(), 1, "{segs:?}");
        assert_eq!(segs[0].start_ms, 0);
    }

    #[test]
    fn no_segment_still_to_come_starts_before_the_undecided_point() {
        let o = VadOptions {
            speech_pad_ms: 30,
            end_lag_ms: 0,
            ..Default::default()
        };
        let mut s = Segmenter::new(&o);
        let pos = |i: usize| (i * CHUNK) as u64;
        for i in 0..10 {
            s.push(0.0, pos(i));
            // In silence, a segment that triggers on the next chunk starts `pad` before it.
            assert_eq!(s.next_start(pos(i + 1)), pos(i + 1) - 480);
        }
        s.push(0.9, pos(10));
        let open = s.open_start().unwrap();
        assert_eq!(open, s.next_start(pos(10)));
        for i in 11..20 {
            s.push(0.9, pos(i));
            assert_eq!(s.open_start(), Some(open));
        }
        let mut closed = None;
        for i in 20..30 {
            closed = closed.or(s.push(0.0, pos(i)));
        }
        let closed = closed.unwrap();
        assert_eq!(closed.start_ms, open * 1000 / SAMPLE_RATE as u64);
        // Padding never reaches back into the segment just reported.
        assert!(s.next_start(pos(30)) * 1000 / SAMPLE_RATE as u64 >= closed.end_ms);
    }

    #[test]
    fn open_segment_closes_at_end() {
        let mut p = vec![0.0; 5];
        p.extend(vec![0.95; 15]);
        let segs = run(&p);
        assert_eq!(
            segs,
            vec![SpeechSegment {
                start_ms: 160,
                end_ms: 640
            }]
        );
    }
}
