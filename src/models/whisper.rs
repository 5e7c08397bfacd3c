//! Speech to text with Whisper tiny.en (English), run as an ONNX encoder/decoder pair with a
//! self-attention KV cache.
//!
//! Pipeline per 30 s window: log-mel features computed here (exactly Whisper's recipe), one
//! encoder call that returns the cross-attention keys/values of every decoder layer, then
//! greedy decoding where each step feeds only the newest token plus the cached keys/values.
//! Timestamp tokens are enabled (prompt `<|startoftranscript|>` only) and constrained by
//! Whisper's timestamp rules, which yields well-formed `<|t0|> text <|t1|>` segments and tells
//! where the next window must start when the last segment was cut off.

use std::path::Path;
use std::sync::Arc;

use ort::value::TensorRef;
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use serde::Serialize;

use super::vad::SpeechSegment;
use super::{load_model, LoadedModel, ModelError, ModelHome, ModelOptions, Result};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const N_MELS: usize = 80;
/// Samples per 30 s window.
pub const WINDOW_SAMPLES: usize = 480_000;
/// Mel frames per window.
pub const N_FRAMES: usize = 3000;
/// Context kept on each side of a VAD speech region when it is packed for Whisper.
pub const REGION_PAD_MS: u64 = 200;
/// Packed speech per stream at most: a 30 s encoder window less 2 s, which the features pad
/// with silence. With speech up to the very end of its window Whisper often ends early and
/// leaves the last phrase to a second window (measured on 600 s of lessons: 26 windows at 30 s,
/// 21 at 28.5, 28 or 25 s).
pub const PACK_MS: u64 = 28_000;
/// Samples per timestamp step (encoder stride 2 × hop 160).
const SAMPLES_PER_TOKEN_STEP: usize = 320;

/// Special token ids of the English-only vocabulary (used when the tokenizer lacks them).
const EOT: u32 = 50256;
const SOT: u32 = 50257;
const NO_TIMESTAMPS: u32 = 50362;
const TIMESTAMP_BEGIN: u32 = 50363;
/// Whisper's default `max_initial_timestamp` of 1 s, in timestamp steps.
const MAX_INITIAL_TIMESTAMP_STEPS: u32 = 50;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TranscriptSegment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<TranscriptSegment>,
}

// ---------------------------------------------------------------------------------------------
// Log-mel front end
// ---------------------------------------------------------------------------------------------

/// Whisper's log-mel spectrogram: STFT (n_fft 400, hop 160, periodic Hann, centred with
/// reflect padding, last frame dropped), power, 80 Slaney mel filters 0–8000 Hz,
/// `log10(max(x, 1e-10))`, clamp to `max - 8`, `(x + 4) / 4`.
pub struct LogMel {
    /// Per mel band: first FFT bin and weights (the filters are sparse).
    filters: Vec<(usize, Vec<f32>)>,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogMel {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let dense = mel_filters(SAMPLE_RATE as f64, N_FFT, N_MELS);
        let n_bins = N_FFT / 2 + 1;
        let filters = (0..N_MELS)
            .map(|m| {
                let row = &dense[m * n_bins..(m + 1) * n_bins];
                let first = row.iter().position(|&v| v != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&v| v != 0.0).unwrap_or(0);
                (first, row[first..=last.max(first)].to_vec())
            })
            .collect();
        let fft = FftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            filters,
            window,
            fft,
        }
    }

    /// Computes `[80, 3000]` features (row-major, mel-major) for up to 30 s of 16 kHz audio
    /// (zero-padded to 30 s) into `out`.
    pub fn compute(&self, samples: &[f32], out: &mut Vec<f32>) {
        let n = samples.len().min(WINDOW_SAMPLES);
        let pad = N_FFT / 2;
        // Padded signal: reflect(200) + audio zero-padded to 480000 + reflect(200).
        let total = WINDOW_SAMPLES + 2 * pad;
        let mut x = vec![0.0f32; total];
        x[pad..pad + n].copy_from_slice(&samples[..n]);
        let at = |i: usize| -> f32 {
            if i < n {
                samples[i]
            } else {
                0.0
            }
        };
        for i in 0..pad {
            // numpy "reflect": x[-1-i] = x[i+1]
            x[pad - 1 - i] = at(i + 1);
            x[pad + WINDOW_SAMPLES + i] = at(WINDOW_SAMPLES - 2 - i);
        }
        let n_bins = N_FFT / 2 + 1;
        out.clear();
        out.resize(N_MELS * N_FRAMES, 0.0);
        let mut buf = vec![Complex32::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex32::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0.0f32; n_bins];
        for t in 0..N_FRAMES {
            let frame = &x[t * HOP..t * HOP + N_FFT];
            for (b, (&s, &w)) in buf.iter_mut().zip(frame.iter().zip(&self.window)) {
                *b = Complex32::new(s * w, 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf[..n_bins]) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (m, (first, w)) in self.filters.iter().enumerate() {
                let mut acc = 0.0f32;
                for (k, &wk) in w.iter().enumerate() {
                    acc += wk * power[first + k];
                }
                out[m * N_FRAMES + t] = acc.max(1e-10).log10();
            }
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = max - 8.0;
        for v in out.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
    }
}

fn hz_to_mel_slaney(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz_slaney(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Dense `[n_mels, n_fft/2+1]` Slaney mel filterbank with Slaney area normalisation, equal to
/// `librosa.filters.mel(sr, n_fft, n_mels)` (fmin 0, fmax sr/2), which Whisper ships.
pub fn mel_filters(sr: f64, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * sr / n_fft as f64).collect();
    let (mmin, mmax) = (hz_to_mel_slaney(0.0), hz_to_mel_slaney(sr / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz_slaney(mmin + (mmax - mmin) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut w = vec![0.0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (f0, f1, f2) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (f2 - f0);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - f0) / (f1 - f0);
            let upper = (f2 - f) / (f2 - f1);
            w[m * n_bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    w
}

// ---------------------------------------------------------------------------------------------
// Decoding rules (pure)
// ---------------------------------------------------------------------------------------------

/// Token ids the decoding rules need.
#[derive(Clone, Debug)]
pub(crate) struct Specials {
    pub eot: u32,
    pub sot: u32,
    pub no_timestamps: u32,
    pub timestamp_begin: u32,
}

impl Default for Specials {
    fn default() -> Self {
        Self {
            eot: EOT,
            sot: SOT,
            no_timestamps: NO_TIMESTAMPS,
            timestamp_begin: TIMESTAMP_BEGIN,
        }
    }
}

/// Applies suppression and Whisper's timestamp rules to one step's logits in place.
/// `sampled` are the tokens emitted after the prompt in this window.
pub(crate) fn apply_rules(
    logits: &mut [f32],
    sampled: &[u32],
    sp: &Specials,
    suppress: &[u32],
    suppress_begin: &[u32],
) {
    let v = logits.len();
    let ninf = f32::NEG_INFINITY;
    let kill = |logits: &mut [f32], from: usize, to: usize| {
        for x in &mut logits[from.min(v)..to.min(v)] {
            *x = ninf;
        }
    };
    let tb = sp.timestamp_begin as usize;
    if sampled.is_empty() {
        for &id in suppress_begin {
            if (id as usize) < v {
                logits[id as usize] = ninf;
            }
        }
    }
    for &id in suppress {
        if (id as usize) < v {
            logits[id as usize] = ninf;
        }
    }
    if (sp.no_timestamps as usize) < v {
        logits[sp.no_timestamps as usize] = ninf;
    }
    let is_ts = |t: u32| t >= sp.timestamp_begin;
    let last_ts = sampled.last().is_some_and(|&t| is_ts(t));
    let penult_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
    if last_ts {
        if penult_ts {
            kill(logits, tb, v);
        } else {
            kill(logits, 0, sp.eot as usize);
        }
    }
    if let Some(&last) = sampled.iter().rev().find(|&&t| is_ts(t)) {
        let limit = if last_ts && !penult_ts {
            last
        } else {
            last + 1
        };
        kill(logits, tb, limit as usize);
    }
    if sampled.is_empty() {
        kill(logits, 0, tb);
        kill(logits, tb + MAX_INITIAL_TIMESTAMP_STEPS as usize + 1, v);
    }
    // If the total probability of "some timestamp" beats every single text token, force a
    // timestamp.
    if tb < v {
        let max_all = logits.iter().copied().fold(ninf, f32::max);
        if max_all.is_finite() {
            let lse = |s: &[f32]| -> f32 {
                let m = s.iter().copied().fold(ninf, f32::max);
                if !m.is_finite() {
                    return ninf;
                }
                m + s.iter().map(|&x| (x - m).exp()).sum::<f32>().ln()
            };
            let total = lse(logits);
            let ts_lp = lse(&logits[tb..]) - total;
            let max_text_lp = logits[..tb].iter().copied().fold(ninf, f32::max) - total;
            if ts_lp > max_text_lp {
                kill(logits, 0, tb);
            }
        }
    }
}

/// Suppression without timestamp rules (for `<|notimestamps|>` decoding).
pub(crate) fn suppress_only(
    logits: &mut [f32],
    first: bool,
    suppress: &[u32],
    suppress_begin: &[u32],
) {
    let v = logits.len();
    let lists: [&[u32]; 2] = [suppress, if first { suppress_begin } else { &[] }];
    for id in lists.into_iter().flatten() {
        if (*id as usize) < v {
            logits[*id as usize] = f32::NEG_INFINITY;
        }
    }
}

/// Index of the largest value (first on ties); `None` if all are -inf/NaN.
pub(crate) fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() || x == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// A window's sampled tokens split into segments: (start step, end step, text tokens).
/// Returns the segments and how many samples the window consumed (where the next window
/// starts), following Whisper's `transcribe` logic: text after the last timestamp pair is
/// dropped and decoded again from a window that starts at that timestamp.
///
/// Except with `final_window` (the window holds the rest of the audio and decoding ended with
/// EOT, not at the token limit): then there is nothing after the cut to give the text its
/// end, so re-decoding would spend a whole 30 s encoder pass on the same trailing words. They
/// become the last segment, ending with the window.
pub(crate) fn split_segments(
    tokens: &[u32],
    sp: &Specials,
    window_len: usize,
    final_window: bool,
) -> (Vec<(u32, u32, Vec<u32>)>, usize) {
    let tb = sp.timestamp_begin;
    let is_ts = |t: u32| t >= tb;
    let text_of = |s: &[u32]| {
        s.iter()
            .copied()
            .filter(|&t| t < sp.eot)
            .collect::<Vec<_>>()
    };
    let n = tokens.len();
    let single_ending = n >= 2 && !is_ts(tokens[n - 2]) && is_ts(tokens[n - 1]);
    let consecutive: Vec<usize> = (1..n)
        .filter(|&i| is_ts(tokens[i - 1]) && is_ts(tokens[i]))
        .collect();
    let mut segs = Vec::new();
    if !consecutive.is_empty() {
        let mut slices = consecutive;
        if single_ending {
            slices.push(n);
        }
        let mut last = 0;
        for &cur in &slices {
            let s = &tokens[last..cur];
            if let (Some(&a), Some(&b)) = (s.first(), s.last()) {
                if is_ts(a) && is_ts(b) {
                    segs.push((a - tb, b - tb, text_of(s)));
                }
            }
            last = cur;
        }
        let trailing = &tokens[last..];
        let consumed = if single_ending {
            window_len
        } else if final_window && !text_of(trailing).is_empty() {
            let window_steps = (window_len / SAMPLES_PER_TOKEN_STEP) as u32;
            let start = trailing
                .first()
                .filter(|&&t| is_ts(t))
                .map_or(0, |&t| t - tb);
            segs.push((start, window_steps.max(start), text_of(trailing)));
            window_len
        } else {
            let last_ts = tokens[last - 1].saturating_sub(tb) as usize;
            (last_ts * SAMPLES_PER_TOKEN_STEP).min(window_len)
        };
        // Guarantee progress even on degenerate output.
        (segs, if consumed == 0 { window_len } else { consumed })
    } else {
        let window_steps = (window_len / SAMPLES_PER_TOKEN_STEP) as u32;
        let mut end = window_steps;
        if let Some(&t) = tokens.iter().rev().find(|&&t| is_ts(t)) {
            if t != tb {
                end = t - tb;
            }
        }
        let start = tokens
            .first()
            .filter(|&&t| is_ts(t))
            .map(|&t| t - tb)
            .unwrap_or(0);
        let text = text_of(tokens);
        if !text.is_empty() {
            segs.push((start, end.max(start), text));
        }
        (segs, window_len)
    }
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// Whisper tiny.en as ONNX encoder + decoder, with its tokenizer and decoding config.
///
/// Encoder: `mel` `[B,80,3000]` → `cross_k`, `cross_v` `[layers,B,heads,1500,64]`.
/// Decoder: `tokens` `[B,T]` i64, `offset` `[1]` i64 (position of the first token),
/// `cross_k_0..`, `cross_v_0..` `[B,heads,1500,64]` (one input per layer, so no step copies
/// them), `past_k`, `past_v` `[layers,B,heads,P,64]` → `logits` `[B,T,vocab]`,
/// `present_k`, `present_v` `[layers,B,heads,P+T,64]`.
pub struct Whisper {
    encoder: LoadedModel,
    decoder: LoadedModel,
    tokenizer: tokenizers::Tokenizer,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    specials: Specials,
    mel: LogMel,
    sha256: String,
    /// Decoder input names `cross_k_<layer>` and `cross_v_<layer>`.
    cross_inputs: Vec<(String, String)>,
    /// Tokens sampled per 30 s window at most (Whisper's default 224 = half the context).
    pub max_tokens_per_window: usize,
    /// Windows decoded together by [`Whisper::transcribe`] and [`Whisper::transcribe_regions`].
    pub batch: usize,
}

/// Cross-attention keys and values of `batch` encoded windows, one buffer per decoder layer,
/// each `[batch, heads, frames, dim]`: the decoder's per-layer inputs, ready to borrow.
/// [`Whisper::encode_into`] appends windows; the default is an empty batch.
#[derive(Clone, Debug, Default)]
pub struct CrossAttention {
    pub batch: usize,
    pub heads: usize,
    pub frames: usize,
    pub dim: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl CrossAttention {
    pub fn layers(&self) -> usize {
        self.k.len()
    }
    fn item_len(&self) -> usize {
        self.heads * self.frames * self.dim
    }
    fn shape(&self) -> Vec<usize> {
        vec![self.batch, self.heads, self.frames, self.dim]
    }
    /// Keeps only the windows at `rows` (ascending), in that order.
    fn retain_rows(&mut self, rows: &[usize]) {
        let n = self.item_len();
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            retain_chunks(buf, n, rows);
        }
        self.batch = rows.len();
    }
}

/// Keeps chunks `rows` (ascending) of `buf`, a sequence of `chunk`-sized pieces, in place.
fn retain_chunks(buf: &mut Vec<f32>, chunk: usize, rows: &[usize]) {
    for (to, &from) in rows.iter().enumerate() {
        if to != from {
            buf.copy_within(from * chunk..(from + 1) * chunk, to * chunk);
        }
    }
    buf.truncate(rows.len() * chunk);
}

/// Audio for [`Whisper::transcribe_batch`].
#[derive(Clone, Copy, Debug)]
pub struct AudioJob<'a> {
    /// 16 kHz mono samples.
    pub samples: &'a [f32],
    /// The speech in `samples` (ms from its start); `None` transcribes all of it.
    pub regions: Option<&'a [SpeechSegment]>,
}

/// What [`Whisper::transcribe_batch`] returns: one transcript per job, and the work done.
#[derive(Clone, Debug, Default)]
pub struct BatchTranscripts {
    pub transcripts: Vec<Transcript>,
    /// Encoder passes (30 s windows).
    pub windows: u64,
    /// Decoder runs (one per token step of a batch).
    pub decoder_steps: u64,
    /// Time spent computing log-mel features and encoding, and decoding (ms).
    pub encode_ms: u64,
    pub decode_ms: u64,
}

fn file_err(path: &Path, reason: String) -> ModelError {
    ModelError::Load {
        model: super::file_name(path),
        reason,
    }
}

impl Whisper {
    pub const ID: &'static str = "whisper-tiny.en";

    pub fn load(home: &ModelHome, opts: &ModelOptions) -> Result<Self> {
        Self::load_files(
            &home.whisper_encoder(),
            &home.whisper_decoder(),
            &home.whisper_tokenizer(),
            &home.whisper_config(),
            opts,
        )
    }

    pub fn load_files(
        encoder: &Path,
        decoder: &Path,
        tokenizer: &Path,
        config: &Path,
        opts: &ModelOptions,
    ) -> Result<Self> {
        let tok_bytes = super::read_model_file(tokenizer)?;
        let cfg_bytes = super::read_model_file(config)?;
        let enc = load_model(encoder, opts)?;
        let dec = load_model(decoder, opts)?;
        let tok = tokenizers::Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| file_err(tokenizer, e.to_string()))?;
        let cfg: serde_json::Value = serde_json::from_slice(&cfg_bytes)
            .map_err(|e| file_err(config, format!("invalid JSON: {e}")))?;
        let ids = |key: &str| -> Vec<u32> {
            cfg.get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let suppress = ids("suppress_ids");
        let mut suppress_begin = ids("suppress_ids_begin");
        if suppress_begin.is_empty() {
            suppress_begin = vec![220, EOT];
        }
        let id_of = |t: &str, d: u32| tok.token_to_id(t).unwrap_or(d);
        let specials = Specials {
            eot: id_of("<|endoftext|>", EOT),
            sot: id_of("<|startoftranscript|>", SOT),
            no_timestamps: id_of("<|notimestamps|>", NO_TIMESTAMPS),
            timestamp_begin: id_of("<|0.00|>", TIMESTAMP_BEGIN),
        };
        // Check the interfaces once, so a wrong export fails at load, not mid-stream.
        let enc_outputs = enc.pool.output_names();
        for want in ["cross_k", "cross_v"] {
            if !enc_outputs.iter().any(|n| n == want) {
                return Err(enc.pool.output_err(format!(
                    "encoder output `{want}` missing (has {enc_outputs:?})"
                )));
            }
        }
        let layers = enc
            .pool
            .output_shapes()
            .into_iter()
            .find(|(n, _)| n == "cross_k")
            .and_then(|(_, dims)| dims.first().copied())
            .filter(|&l| l > 0)
            .ok_or_else(|| enc.pool.output_err("cross_k needs a fixed layer count"))?
            as usize;
        let cross_inputs: Vec<(String, String)> = (0..layers)
            .map(|l| (format!("cross_k_{l}"), format!("cross_v_{l}")))
            .collect();
        let dec_inputs: Vec<String> = dec.pool.input_shapes().into_iter().map(|i| i.0).collect();
        let mut wanted: Vec<&str> = vec!["tokens", "offset", "past_k", "past_v"];
        wanted.extend(
            cross_inputs
                .iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
        );
        for want in wanted {
            if !dec_inputs.iter().any(|n| n == want) {
                return Err(dec.pool.output_err(format!(
                    "decoder input `{want}` missing (has {dec_inputs:?}); \
                     `classguard models fetch` rebuilds it"
                )));
            }
        }
        let sha256 = format!(
            "{}+{}+{}",
            enc.sha256,
            dec.sha256,
            super::sha256_hex(&tok_bytes)
        );
        Ok(Self {
            encoder: enc,
            decoder: dec,
            tokenizer: tok,
            suppress,
            suppress_begin,
            specials,
            mel: LogMel::new(),
            sha256,
            cross_inputs,
            max_tokens_per_window: 224,
            batch: 4,
        })
    }

    pub fn id(&self) -> &'static str {
        Self::ID
    }
    /// sha256 of encoder, decoder and tokenizer files, joined by `+`.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    pub fn encoder_pool(&self) -> &super::SessionPool {
        &self.encoder.pool
    }
    pub fn decoder_pool(&self) -> &super::SessionPool {
        &self.decoder.pool
    }
    pub fn log_mel(&self) -> &LogMel {
        &self.mel
    }

    /// Runs the encoder on one window's `[80, 3000]` features.
    pub fn encode(&self, mel: &[f32]) -> Result<CrossAttention> {
        let mut cross = CrossAttention::default();
        self.encode_into(mel, &mut cross)?;
        Ok(cross)
    }

    /// Runs the encoder on one window's `[80, 3000]` features and appends its keys and values
    /// to `cross`, copied once from the runtime's output into the batch's per-layer buffers.
    ///
    /// Windows are encoded one at a time and batched only for decoding: the encoder is
    /// compute-bound (a batch of 4 measured 15% slower per window and +380 MB), while each
    /// decoding step is bound by reading the 80 MB output projection, which a batch shares.
    pub fn encode_into(&self, mel: &[f32], cross: &mut CrossAttention) -> Result<()> {
        let pool = &self.encoder.pool;
        if mel.len() != N_MELS * N_FRAMES {
            return Err(ModelError::Input {
                model: self.encoder.file.clone(),
                reason: format!("mel has {} values", mel.len()),
            });
        }
        let t = TensorRef::from_array_view(([1usize, N_MELS, N_FRAMES], mel))
            .map_err(|e| pool.run_err(e))?;
        let mut s = pool.checkout();
        let out = s
            .run(vec![(
                std::borrow::Cow::Borrowed("mel"),
                ort::session::SessionInputValue::from(t),
            )])
            .map_err(|e| pool.run_err(e))?;
        let layers = self.cross_inputs.len();
        let get = |n: &str| -> Result<(Vec<usize>, &[f32])> {
            let v = out
                .get(n)
                .ok_or_else(|| pool.output_err(format!("{n} missing")))?;
            let (shape, d) = v.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
            let shape: Vec<usize> = shape.iter().map(|&x| x.max(0) as usize).collect();
            if shape.len() != 5 || shape[0] != layers || shape[1] != 1 {
                return Err(pool.output_err(format!(
                    "{n} has shape {shape:?}, expected [{layers},1,heads,frames,dim]"
                )));
            }
            if d.len() != shape.iter().product::<usize>() {
                return Err(pool.output_err(format!("{n} has {} values", d.len())));
            }
            Ok((shape, d))
        };
        let (shape, k) = get("cross_k")?;
        let (_, v) = get("cross_v")?;
        let (heads, frames, dim) = (shape[2], shape[3], shape[4]);
        if cross.batch == 0 {
            *cross = CrossAttention {
                batch: 0,
                heads,
                frames,
                dim,
                k: vec![Vec::new(); layers],
                v: vec![Vec::new(); layers],
            };
        } else if (cross.layers(), cross.heads, cross.frames, cross.dim)
            != (layers, heads, frames, dim)
        {
            return Err(pool.output_err("cross-attention shapes differ within a batch"));
        }
        let per_layer = heads * frames * dim;
        for (buf, layer) in cross.k.iter_mut().zip(k.chunks(per_layer)) {
            buf.extend_from_slice(layer);
        }
        for (buf, layer) in cross.v.iter_mut().zip(v.chunks(per_layer)) {
            buf.extend_from_slice(layer);
        }
        cross.batch += 1;
        Ok(())
    }

    /// Greedy decoding of all windows in `cross` in lock-step: one decoder run per token step
    /// serves the whole batch, and a window that reaches EOT leaves the batch. With
    /// `timestamps` the prompt is `<|startoftranscript|>` and the timestamp rules apply;
    /// without, the prompt adds `<|notimestamps|>` and only the config's suppression lists
    /// apply (plain text, no segment times). Returns the tokens per window and the number of
    /// decoder runs.
    pub fn decode_greedy(
        &self,
        mut cross: CrossAttention,
        timestamps: bool,
    ) -> Result<(Vec<Vec<u32>>, u64)> {
        let pool = &self.decoder.pool;
        let layers = self.cross_inputs.len();
        if cross.batch == 0 {
            return Ok((Vec::new(), 0));
        }
        if cross.layers() != layers || cross.v.len() != layers {
            return Err(pool.output_err(format!(
                "cross-attention has {} layers, the decoder {layers}",
                cross.layers()
            )));
        }
        let (heads, dim) = (cross.heads, cross.dim);
        let mut sampled: Vec<Vec<u32>> = vec![Vec::new(); cross.batch];
        // Row r of the running batch is window `active[r]`.
        let mut active: Vec<usize> = (0..cross.batch).collect();
        let prompt: Vec<i64> = if timestamps {
            vec![self.specials.sot as i64]
        } else {
            vec![self.specials.sot as i64, self.specials.no_timestamps as i64]
        };
        let mut t_len = prompt.len();
        let mut next_input: Vec<i64> = prompt.repeat(active.len());
        let mut past_k: Vec<f32> = Vec::new();
        let mut past_v: Vec<f32> = Vec::new();
        let mut past_len = 0usize;
        let mut steps = 0u64;
        let mut logits_row: Vec<f32> = Vec::new();
        let mut session = pool.checkout();
        for _ in 0..self.max_tokens_per_window {
            let rows = active.len();
            if rows == 0 {
                break;
            }
            let mut finished: Vec<usize> = Vec::new();
            let mut chosen: Vec<i64> = Vec::with_capacity(rows);
            {
                use ort::session::SessionInputValue as V;
                use std::borrow::Cow::Borrowed;
                let map = |e: ort::Error| pool.run_err(e);
                let mut inputs: Vec<(std::borrow::Cow<'_, str>, V<'_>)> =
                    Vec::with_capacity(4 + 2 * layers);
                inputs.push((
                    Borrowed("tokens"),
                    V::from(
                        TensorRef::from_array_view(([rows, t_len], next_input.as_slice()))
                            .map_err(map)?,
                    ),
                ));
                let offset = [past_len as i64];
                inputs.push((
                    Borrowed("offset"),
                    V::from(TensorRef::from_array_view(([1usize], &offset[..])).map_err(map)?),
                ));
                for (l, (kn, vn)) in self.cross_inputs.iter().enumerate() {
                    let k = TensorRef::from_array_view((cross.shape(), cross.k[l].as_slice()))
                        .map_err(map)?;
                    let v = TensorRef::from_array_view((cross.shape(), cross.v[l].as_slice()))
                        .map_err(map)?;
                    inputs.push((Borrowed(kn.as_str()), V::from(k)));
                    inputs.push((Borrowed(vn.as_str()), V::from(v)));
                }
                let pshape = vec![layers, rows, heads, past_len, dim];
                let pk =
                    TensorRef::from_array_view((pshape.clone(), past_k.as_slice())).map_err(map)?;
                let pv = TensorRef::from_array_view((pshape, past_v.as_slice())).map_err(map)?;
                inputs.push((Borrowed("past_k"), V::from(pk)));
                inputs.push((Borrowed("past_v"), V::from(pv)));
                let out = session.run(inputs).map_err(map)?;
                steps += 1;
                let lg = out
                    .get("logits")
                    .ok_or_else(|| pool.output_err("logits missing"))?;
                let (lshape, ld) = lg.try_extract_tensor::<f32>().map_err(map)?;
                let vocab = *lshape
                    .last()
                    .ok_or_else(|| pool.output_err("logits without shape"))?
                    as usize;
                if vocab == 0 || ld.len() != rows * t_len * vocab {
                    return Err(pool.output_err(format!(
                        "logits have {} values, expected {rows}x{t_len}x{vocab}",
                        ld.len()
                    )));
                }
                let present = |name: &str| -> Result<&[f32]> {
                    let (_, d) = out
                        .get(name)
                        .ok_or_else(|| pool.output_err(format!("{name} missing")))?
                        .try_extract_tensor::<f32>()
                        .map_err(map)?;
                    if d.len() != layers * rows * heads * (past_len + t_len) * dim {
                        return Err(pool.output_err(format!("{name} has an unexpected size")));
                    }
                    Ok(d)
                };
                let (pkd, pvd) = (present("present_k")?, present("present_v")?);
                past_k.clear();
                past_k.extend_from_slice(pkd);
                past_v.clear();
                past_v.extend_from_slice(pvd);
                for (row, &window) in active.iter().enumerate() {
                    let last = (row * t_len + t_len - 1) * vocab;
                    logits_row.clear();
                    logits_row.extend_from_slice(&ld[last..last + vocab]);
                    let history = &sampled[window];
                    if timestamps {
                        apply_rules(
                            &mut logits_row,
                            history,
                            &self.specials,
                            &self.suppress,
                            &self.suppress_begin,
                        );
                    } else {
                        suppress_only(
                            &mut logits_row,
                            history.is_empty(),
                            &self.suppress,
                            &self.suppress_begin,
                        );
                    }
                    match argmax(&logits_row).map(|t| t as u32) {
                        Some(tok) if tok != self.specials.eot => {
                            sampled[window].push(tok);
                            chosen.push(tok as i64);
                        }
                        _ => finished.push(row),
                    }
                }
            }
            past_len += t_len;
            if past_len >= 447 {
                break; // decoder context (448 positions) exhausted
            }
            if !finished.is_empty() {
                let keep: Vec<usize> = (0..rows).filter(|r| !finished.contains(r)).collect();
                if keep.is_empty() {
                    break;
                }
                cross.retain_rows(&keep);
                // present_k/v are [layers, rows, heads, P, dim]: drop rows within each layer.
                let row_len = heads * past_len * dim;
                for past in [&mut past_k, &mut past_v] {
                    let rows_per_layer: Vec<usize> = (0..layers)
                        .flat_map(|l| keep.iter().map(move |&r| l * rows + r))
                        .collect();
                    retain_chunks(past, row_len, &rows_per_layer);
                }
                active = keep.iter().map(|&r| active[r]).collect();
            }
            t_len = 1;
            next_input = chosen;
        }
        Ok((sampled, steps))
    }

    /// Decodes token ids to text (special and timestamp tokens dropped).
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map(|s| s.trim().to_string())
            .map_err(|e| ModelError::Run {
                model: super::files::WHISPER_TOKENIZER.to_string(),
                reason: e.to_string(),
            })
    }

    /// Transcribes 16 kHz mono audio of any length in 30 s windows.
    pub fn transcribe(&self, samples: &[f32]) -> Result<Transcript> {
        let job = AudioJob {
            samples,
            regions: None,
        };
        let mut out = self.transcribe_batch(&[job], self.batch)?;
        Ok(out.transcripts.pop().unwrap_or_default())
    }

    /// Transcribes only the given speech regions (from the VAD), packed end to end into
    /// windows (see [`pack_regions`]). Skipping silence saves encoder passes and avoids
    /// Whisper's tendency to invent text over silence.
    pub fn transcribe_regions(
        &self,
        samples: &[f32],
        regions: &[SpeechSegment],
    ) -> Result<Transcript> {
        let job = AudioJob {
            samples,
            regions: Some(regions),
        };
        let mut out = self.transcribe_batch(&[job], self.batch)?;
        Ok(out.transcripts.pop().unwrap_or_default())
    }

    /// Transcribes several pieces of audio, decoding up to `batch` 30 s windows together.
    ///
    /// Each job becomes one or more streams (its packed speech regions, or all of it); a
    /// stream is read window by window, each window starting where the previous one's last
    /// complete segment ended. Every round encodes the next window of up to `batch` streams
    /// and decodes them in one batch.
    pub fn transcribe_batch(
        &self,
        jobs: &[AudioJob<'_>],
        batch: usize,
    ) -> Result<BatchTranscripts> {
        /// A job's audio as Whisper hears it (all of it, or its speech packed end to end),
        /// read window by window from `seek` (stream samples).
        struct Stream {
            job: usize,
            audio: Packed,
            seek: usize,
        }
        impl Stream {
            /// Ignore tails shorter than one token step: nothing can be said in 20 ms.
            fn has_more(&self) -> bool {
                self.seek + SAMPLES_PER_TOKEN_STEP < self.audio.len()
            }
            /// Stream sample range that the next window covers.
            fn window(&self) -> (usize, usize) {
                (
                    self.seek,
                    (self.seek + WINDOW_SAMPLES).min(self.audio.len()),
                )
            }
        }
        let mut queue: std::collections::VecDeque<Stream> = std::collections::VecDeque::new();
        for (job, j) in jobs.iter().enumerate() {
            let streams = match j.regions {
                // Only speech, laid end to end: the pauses between phrases would cost encoder
                // time (every window is a full 30 s pass) without adding words.
                Some(r) => pack_regions(r, j.samples.len(), PACK_MS),
                None => vec![Packed::whole(j.samples.len())],
            };
            queue.extend(
                streams
                    .into_iter()
                    .map(|audio| Stream {
                        job,
                        audio,
                        seek: 0,
                    })
                    .filter(Stream::has_more),
            );
        }
        let mut segments: Vec<Vec<TranscriptSegment>> = vec![Vec::new(); jobs.len()];
        let mut out = BatchTranscripts::default();
        let mut mel = Vec::with_capacity(N_MELS * N_FRAMES);
        let mut window_audio: Vec<f32> = Vec::with_capacity(WINDOW_SAMPLES);
        while !queue.is_empty() {
            let take = batch.max(1).min(queue.len());
            let round: Vec<Stream> = queue.drain(..take).collect();
            let mut cross = CrossAttention::default();
            let t0 = std::time::Instant::now();
            for s in &round {
                let (from, to) = s.window();
                s.audio
                    .gather(jobs[s.job].samples, from, to, &mut window_audio);
                self.mel.compute(&window_audio, &mut mel);
                self.encode_into(&mel, &mut cross)?;
                out.windows += 1;
            }
            let t1 = std::time::Instant::now();
            let (tokens, steps) = self.decode_greedy(cross, true)?;
            out.decoder_steps += steps;
            out.encode_ms += (t1 - t0).as_millis() as u64;
            out.decode_ms += t1.elapsed().as_millis() as u64;
            for (mut s, tokens) in round.into_iter().zip(tokens) {
                let (from, to) = s.window();
                let final_window = to == s.audio.len() && tokens.len() < self.max_tokens_per_window;
                let (segs, consumed) =
                    split_segments(&tokens, &self.specials, to - from, final_window);
                // Timestamps count from the window start in stream samples; the pieces map
                // them back to the job's audio (a segment end on a piece boundary stays in the
                // piece before it).
                let step_sample = |step: u32| from + step as usize * SAMPLES_PER_TOKEN_STEP;
                let ms = |sample: usize| (sample as u64 * 1000) / SAMPLE_RATE as u64;
                let window_end_ms = ms(s.audio.to_job(to, true));
                for (a, b, ids) in segs {
                    let text = self.decode_text(&ids)?;
                    if text.is_empty() {
                        continue;
                    }
                    let start_ms = ms(s.audio.to_job(step_sample(a).min(to), false));
                    let end_ms = ms(s.audio.to_job(step_sample(b).min(to), true));
                    segments[s.job].push(TranscriptSegment {
                        start_ms,
                        end_ms: end_ms.min(window_end_ms).max(start_ms),
                        text,
                    });
                }
                tracing::debug!(target: "classguard::models", window_start_ms = ms(s.audio.to_job(from, false)), window_ms = (to - from) * 1000 / SAMPLE_RATE, tokens = tokens.len(), final_window, "whisper window decoded");
                s.seek += consumed.max(1);
                if s.has_more() {
                    queue.push_back(s);
                }
            }
        }
        out.transcripts = segments
            .into_iter()
            .map(|mut segs| {
                segs.sort_by_key(|s| (s.start_ms, s.end_ms));
                assemble(segs)
            })
            .collect();
        Ok(out)
    }
}

fn assemble(segments: Vec<TranscriptSegment>) -> Transcript {
    let text = segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Transcript { text, segments }
}

/// A run of a job's samples inside a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Stream sample where the piece starts.
    pub at: usize,
    /// Job sample it was copied from.
    pub from: usize,
    pub len: usize,
}

/// What Whisper hears of a job: pieces of its samples laid end to end, in recording order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Packed {
    pub pieces: Vec<Piece>,
}

impl Packed {
    /// All of `n` samples, unchanged.
    fn whole(n: usize) -> Self {
        Self {
            pieces: vec![Piece {
                at: 0,
                from: 0,
                len: n,
            }],
        }
    }
    pub fn len(&self) -> usize {
        self.pieces.last().map_or(0, |p| p.at + p.len)
    }
    /// Stream samples `a..b`, copied from `job` into `out`.
    fn gather(&self, job: &[f32], a: usize, b: usize, out: &mut Vec<f32>) {
        out.clear();
        for p in &self.pieces {
            let (s, e) = (a.max(p.at), b.min(p.at + p.len));
            if s < e {
                let from = p.from + (s - p.at);
                let to = (p.from + (e - p.at)).min(job.len());
                out.extend_from_slice(&job[from.min(to)..to]);
            }
        }
    }
    /// The job sample at stream sample `at`. With `end`, `at` closes a span: on a piece
    /// boundary it maps to the end of the piece before, not the start of the next (which may
    /// be seconds later in the recording).
    pub fn to_job(&self, at: usize, end: bool) -> usize {
        let i = self
            .pieces
            .partition_point(|p| if end { p.at < at } else { p.at <= at })
            .saturating_sub(1);
        match self.pieces.get(i) {
            Some(p) => p.from + at.saturating_sub(p.at).min(p.len),
            None => at,
        }
    }
}

/// Speech regions padded by [`REGION_PAD_MS`] on each side and merged where they touch, in
/// ms, sorted; clipped to `n_ms` when given.
fn padded_regions(regions: &[SpeechSegment], n_ms: Option<u64>) -> Vec<(u64, u64)> {
    let mut sorted: Vec<SpeechSegment> = regions.to_vec();
    sorted.sort_by_key(|s| s.start_ms);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in sorted {
        let s = r.start_ms.saturating_sub(REGION_PAD_MS);
        let mut e = r.end_ms + REGION_PAD_MS;
        if let Some(n) = n_ms {
            e = e.min(n);
        }
        if e <= s {
            continue;
        }
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// How long `regions` last once padded and merged as [`pack_regions`] lays them out (ms): the
/// encoder time a group of speech will fill.
pub fn packed_ms(regions: &[SpeechSegment]) -> u64 {
    padded_regions(regions, None)
        .iter()
        .map(|(s, e)| e - s)
        .sum()
}

/// Lays the speech `regions` (ms) of `n_samples` of audio end to end, each with
/// [`REGION_PAD_MS`] of context on both sides, into streams of at most `max_ms`, cutting only
/// between regions: the 400 ms of context between two phrases is the pause Whisper hears. A
/// region longer than `max_ms` is a stream of its own, read window by window.
pub(crate) fn pack_regions(
    regions: &[SpeechSegment],
    n_samples: usize,
    max_ms: u64,
) -> Vec<Packed> {
    let to_s = |ms: u64| ((ms as usize).saturating_mul(SAMPLE_RATE) / 1000).min(n_samples);
    let n_ms = (n_samples as u64 * 1000) / SAMPLE_RATE as u64;
    let max = to_s(max_ms).max(1);
    let mut out: Vec<Packed> = Vec::new();
    let mut cur = Packed { pieces: Vec::new() };
    for (s, e) in padded_regions(regions, Some(n_ms)) {
        let (from, to) = (to_s(s), to_s(e));
        if to <= from {
            continue;
        }
        if !cur.pieces.is_empty() && cur.len() + (to - from) > max {
            out.push(std::mem::replace(&mut cur, Packed { pieces: Vec::new() }));
        }
        cur.pieces.push(Piece {
            at: cur.len(),
            from,
            len: to - from,
        });
    }
    if !cur.pieces.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_filters_match_librosa_shape() {
        let f = mel_filters(16000.0, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // Every band is non-empty and bands are ordered by their peak bin.
        let mut last_peak = 0;
        for m in 0..80 {
            let row = &f[m * 201..(m + 1) * 201];
            let peak = argmax(row).unwrap();
            assert!(row[peak] > 0.0);
            assert!(peak >= last_peak);
            last_peak = peak;
        }
        // Known value from librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)[1, 1]:
        // band 1 peaks at bin 1 (40 Hz) with weight 2/(mel_f[3]-mel_f[1]).
        let mel_f1 = mel_to_hz_slaney(hz_to_mel_slaney(8000.0) * 1.0 / 81.0);
        let mel_f3 = mel_to_hz_slaney(hz_to_mel_slaney(8000.0) * 3.0 / 81.0);
        let want = 2.0 / (mel_f3 - mel_f1)
            * ((40.0 - mel_f1)
                / (mel_to_hz_slaney(hz_to_mel_slaney(8000.0) * 2.0 / 81.0) - mel_f1))
                .min(1.0);
        assert!(
            (f[201 + 1] as f64 - want).abs() < 1e-6,
            "{} vs {want}",
            f[202]
        );
    }

    #[test]
    fn slaney_mel_roundtrip() {
        for hz in [0.0, 500.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz_slaney(hz_to_mel_slaney(hz)) - hz).abs() < 1e-6);
        }
        assert!((hz_to_mel_slaney(1000.0) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn log_mel_of_a_tone_peaks_in_the_right_band() {
        let lm = LogMel::new();
        let samples: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin() * 0.5)
            .collect();
        let mut out = Vec::new();
        lm.compute(&samples, &mut out);
        assert_eq!(out.len(), 80 * 3000);
        let col: Vec<f32> = (0..80).map(|m| out[m * 3000 + 50]).collect();
        let peak = argmax(&col).unwrap();
        // 1000 Hz = mel 15 on the Slaney scale; bands are ~0.43 mel apart from mel 0.
        let centre_band = (15.0f64 / (hz_to_mel_slaney(8000.0) / 81.0)).round() as usize - 1;
        assert!(
            (peak as i64 - centre_band as i64).abs() <= 1,
            "peak {peak}, expected {centre_band}"
        );
        // Silent tail: clamped to max - 8 -> the minimum value.
        let min = out.iter().copied().fold(f32::INFINITY, f32::min);
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((max - min - 2.0).abs() < 1e-4);
        assert!((out[10 * 3000 + 2999] - min).abs() < 1e-6);
    }

    #[test]
    fn timestamp_rules() {
        let sp = Specials::default();
        let v = 51864;
        let tb = sp.timestamp_begin as usize;
        // First step: only timestamps up to 1.0 s.
        let mut l = vec![0.0f32; v];
        l[100] = 50.0;
        apply_rules(&mut l, &[], &sp, &[], &[220, sp.eot]);
        let a = argmax(&l).unwrap();
        assert!(a >= tb && a <= tb + 50);
        // After <|0.00|> text: text or timestamps allowed; timestamps must not go back.
        let mut l = vec![0.0f32; v];
        l[tb] = 10.0;
        l[tb + 5] = 5.0;
        apply_rules(&mut l, &[sp.timestamp_begin + 3, 100], &sp, &[], &[]);
        assert_eq!(l[tb], f32::NEG_INFINITY);
        assert_eq!(argmax(&l), Some(tb + 5));
        // After "text <|t|>": next must be a timestamp (>= t) or EOT, not text.
        let mut l = vec![0.0f32; v];
        l[100] = 10.0;
        l[sp.eot as usize] = 20.0;
        apply_rules(&mut l, &[tb as u32, 100, tb as u32 + 20], &sp, &[], &[]);
        assert_eq!(l[100], f32::NEG_INFINITY);
        assert!(l[sp.eot as usize].is_finite());
        assert_eq!(l[tb + 19], f32::NEG_INFINITY);
        assert!(l[tb + 20].is_finite());
        // After a pair of timestamps: no timestamp.
        let mut l = vec![0.0f32; v];
        apply_rules(
            &mut l,
            &[tb as u32, 100, tb as u32 + 20, tb as u32 + 20],
            &sp,
            &[],
            &[],
        );
        assert_eq!(l[tb + 30], f32::NEG_INFINITY);
        assert!(l[100].is_finite());
        // Suppressed ids never win.
        let mut l = vec![0.0f32; v];
        l[7] = 100.0;
        apply_rules(&mut l, &[tb as u32, 100], &sp, &[7], &[]);
        assert_ne!(argmax(&l), Some(7));
    }

    #[test]
    fn segment_splitting() {
        let sp = Specials::default();
        let tb = sp.timestamp_begin;
        // <0> a b <100><100> c <200>   (single timestamp ending)
        let toks = [tb, 1, 2, tb + 100, tb + 100, 3, tb + 200];
        let (segs, consumed) = split_segments(&toks, &sp, WINDOW_SAMPLES, false);
        assert_eq!(segs, vec![(0, 100, vec![1, 2]), (100, 200, vec![3])]);
        assert_eq!(consumed, WINDOW_SAMPLES);
        // Cut-off last segment: <0> a <100><100> b c (no closing timestamp): resume at 2.00 s.
        let toks = [tb, 1, tb + 100, tb + 100, 2, 3];
        let (segs, consumed) = split_segments(&toks, &sp, WINDOW_SAMPLES, false);
        assert_eq!(segs, vec![(0, 100, vec![1])]);
        assert_eq!(consumed, 100 * 320);
        // The same in the last window of the audio: the cut-off text ends with the window.
        let (segs, consumed) = split_segments(&toks, &sp, 160_000, true);
        assert_eq!(segs, vec![(0, 100, vec![1]), (100, 500, vec![2, 3])]);
        assert_eq!(consumed, 160_000);
        // ...unless nothing follows the last pair.
        let toks = [tb, 1, tb + 100, tb + 100];
        let (segs, consumed) = split_segments(&toks, &sp, 160_000, true);
        assert_eq!(segs, vec![(0, 100, vec![1])]);
        assert_eq!(consumed, 100 * 320);
        // One segment only: <0> a b <150>
        let toks = [tb, 1, 2, tb + 150];
        let (segs, consumed) = split_segments(&toks, &sp, 160_000, false);
        assert_eq!(segs, vec![(0, 150, vec![1, 2])]);
        assert_eq!(consumed, 160_000);
        // No timestamps at all: one segment for the window.
        let (segs, _) = split_segments(&[5, 6], &sp, 160_000, false);
        assert_eq!(segs, vec![(0, 500, vec![5, 6])]);
        assert!(split_segments(&[], &sp, 1000, true).0.is_empty());
    }

    #[test]
    fn speech_regions_are_packed_end_to_end_with_their_context() {
        let s = |a, b| SpeechSegment {
            start_ms: a,
            end_ms: b,
        };
        let ms = |m: usize| m * 16;
        // 1000..2000 and 2300..4000 touch once padded; 10 s later comes the third.
        let regions = [s(1000, 2000), s(2300, 4000), s(10_000, 11_000)];
        let packed = pack_regions(&regions, ms(60_000), 30_000);
        assert_eq!(packed.len(), 1);
        let p = &packed[0];
        assert_eq!(
            p.pieces,
            vec![
                Piece {
                    at: 0,
                    from: ms(800),
                    len: ms(3400)
                },
                Piece {
                    at: ms(3400),
                    from: ms(9800),
                    len: ms(1400)
                },
            ]
        );
        assert_eq!(p.len(), ms(4800));
        assert_eq!(packed_ms(&regions), 4800);
        // Stream times map back to the recording; a boundary is an end of the first piece
        // and a start of the second.
        assert_eq!(p.to_job(ms(100), false), ms(900));
        assert_eq!(p.to_job(ms(3400), true), ms(4200));
        assert_eq!(p.to_job(ms(3400), false), ms(9800));
        assert_eq!(p.to_job(ms(4800), true), ms(11_200));
        // The samples Whisper hears are exactly the pieces.
        let job: Vec<f32> = (0..ms(60_000)).map(|i| i as f32).collect();
        let mut out = Vec::new();
        p.gather(&job, ms(3000), ms(3600), &mut out);
        let want: Vec<f32> = (ms(3800)..ms(4200))
            .chain(ms(9800)..ms(10_000))
            .map(|i| i as f32)
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn packing_cuts_only_between_regions() {
        let s = |a, b| SpeechSegment {
            start_ms: a,
            end_ms: b,
        };
        // 3 x 12.4 s padded: two fit in 30 s, the third starts a new stream.
        let regions = [s(1000, 13_000), s(20_000, 32_000), s(40_000, 52_000)];
        let packed = pack_regions(&regions, 16_000 * 60, 30_000);
        assert_eq!(
            packed.iter().map(|p| p.pieces.len()).collect::<Vec<_>>(),
            vec![2, 1]
        );
        // A region longer than a window is one stream, read window by window.
        let long = pack_regions(&[s(0, 70_000)], 16_000 * 80, 30_000);
        assert_eq!(long.len(), 1);
        assert_eq!(long[0].len(), 16_000 * 70_200 / 1000);
        // Padding stops at the end of the audio; no regions, no streams.
        let end = pack_regions(&[s(59_900, 60_000)], 16_000 * 60, 30_000);
        assert_eq!(end[0].len(), 16_000 * 300 / 1000);
        assert!(pack_regions(&[], 100, 30_000).is_empty());
        assert!(Packed::whole(0).len() == 0);
    }
}
