//! Slicing: a recording's byte stream in; video/desktop slices, decoded microphone audio and the
//! extracted microphone file out.
//!
//! Threads and channels (all bounded, so a slow consumer slows the reader instead of growing
//! memory):
//!
//! ```text
//!  reader+demux thread ──appsrc──▶ GStreamer decoder ──appsink──▶ puller (sampler, I420→RGB) ─┐
//!        │  (one decoder and one puller per video track)                                        ├─▶ SliceOutput channel
//!        └──appsrc──▶ opusdec → audioresample ──appsink──▶ audio puller (16 kHz mono f32) ───────┘
//!        └──▶ MicWriter (packets copied, no re-encode)
//! ```

pub mod audio;
pub mod frame;
pub mod gap;
mod gst_pipeline;
pub mod sampler;
pub mod sampling;
pub mod video;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::demux::{
    Codec, DemuxError, DemuxLimits, Demuxer, Event, StreamHeader, TrackInfo, TrackKind,
};
pub use audio::{AudioChunk, ExtractedAudio};
pub use sampler::KeepReason;
use sampling::{DecodeMode, SamplingConfig};

/// Errors of the slicing stage. The caller adds the recording's name.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SliceError {
    #[error(transparent)]
    Demux(#[from] DemuxError),
    #[error("{0}")]
    Io(String),
    #[error("GStreamer: {0}")]
    Gstreamer(String),
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("unsupported codec {0}")]
    UnsupportedCodec(String),
    #[error("no audio or video track this pipeline can decode")]
    NothingToAudit,
    /// `stopped` says why reading ended before the first frame, when it did not simply run out.
    #[error("no media: {bytes} bytes of headers and tracks but not one audio or video frame{}",
        stopped.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    NoMedia { bytes: u64, stopped: Option<String> },
    #[error("cancelled")]
    Cancelled,
}

/// What a track shows. Camera and desktop arrive as separate recordings in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Camera,
    Desktop,
    Microphone,
}

impl Role {
    /// Video role from a file name: screen/desktop/whiteboard/share mean desktop, else camera.
    pub fn from_file_name(name: &str) -> Role {
        let lower = name.to_ascii_lowercase();
        if ["screen", "desktop", "whiteboard", "share"]
            .iter()
            .any(|k| lower.contains(k))
        {
            Role::Desktop
        } else {
            Role::Camera
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Camera => "camera",
            Role::Desktop => "desktop",
            Role::Microphone => "microphone",
        }
    }
}

/// One sampled picture, at its real decoded size (before `max_side` scaling it had `width`×`height`).
#[derive(Debug, Clone)]
pub struct Slice {
    pub track: u64,
    pub role: Role,
    pub pts_ms: i64,
    pub width: u32,
    pub height: u32,
    pub keyframe: bool,
    pub reason: KeepReason,
    pub image: Arc<RgbImage>,
}

#[derive(Debug, Clone)]
pub enum SliceOutput {
    /// Sent once, before any slice or audio, when the track list is known.
    Header(StreamHeader),
    Slice(Slice),
    Audio(AudioChunk),
}

/// Safety limits on one recording, beyond the demuxer's element limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SliceLimits {
    pub max_file_bytes: u64,
    pub max_duration_ms: i64,
    pub max_slices_per_track: u64,
    pub max_frame_pixels: u64,
    /// Video frames per second of recording time above which a track stops being decoded (a
    /// hostile file can pack thousands of tiny frames into one second to exhaust the decoder).
    pub max_fps: f32,
}

impl Default for SliceLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 << 30,
            max_duration_ms: 12 * 3600 * 1000,
            max_slices_per_track: 100_000,
            max_frame_pixels: 4096 * 2304,
            max_fps: 120.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SliceOptions {
    pub sampling: SamplingConfig,
    /// Role for video tracks; `None` derives it from the file name.
    pub role: Option<Role>,
    pub demux_limits: DemuxLimits,
    pub limits: SliceLimits,
    /// Where to write the extracted microphone track; `None` skips extraction.
    pub mic_path: Option<PathBuf>,
    /// Decode microphone audio to 16 kHz mono for the speech models.
    pub decode_audio: bool,
    /// Decode and sample video tracks (off for audio-only work such as `inspect audio`).
    pub decode_video: bool,
    pub decoder_threads: u32,
    pub stall_timeout: Duration,
    /// Capacity of the output channel (slices and audio chunks).
    pub channel_capacity: usize,
    /// Where decoded microphone audio goes instead of the output channel: the speech stage's own
    /// channel, so audio keeps flowing while the slice consumer waits for its models (one shared
    /// channel made the speech stage idle whenever the models were busy). Closed when slicing
    /// ends.
    pub audio_sink: Option<Sender<AudioChunk>>,
    /// Test only ([`crate::fault`]): the video decoders fail on their first frame.
    pub fault_decoder: bool,
}

impl Default for SliceOptions {
    fn default() -> Self {
        Self {
            sampling: SamplingConfig::default(),
            role: None,
            demux_limits: DemuxLimits::default(),
            limits: SliceLimits::default(),
            mic_path: None,
            decode_audio: true,
            decode_video: true,
            decoder_threads: 2,
            stall_timeout: Duration::from_secs(15),
            channel_capacity: 8,
            audio_sink: None,
            fault_decoder: false,
        }
    }
}

/// Per-track results.
#[derive(Debug, Clone, Serialize)]
pub struct TrackReport {
    pub number: u64,
    pub kind: TrackKind,
    pub role: Option<Role>,
    pub codec: String,
    /// The size in the track header (the first size, for browser recordings).
    pub header_size: Option<(u32, u32)>,
    /// Every decoded size, in order of appearance (resizes mid-stream show up here).
    pub sizes_seen: Vec<(u32, u32)>,
    pub frames: u64,
    pub keyframes: u64,
    pub decoded: u64,
    pub sampled: u64,
    /// Inter frames not decoded because the picture did not change across their gap
    /// (`decode = "adaptive"`, see [`gap`]).
    pub gap_frames_dropped: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub error: Option<String>,
}

/// Wall time spent per stage thread, for the verdict's stats and the benchmarks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    pub demux_ms: u64,
    pub video_ms: u64,
    pub audio_ms: u64,
}

/// Everything known about the recording once slicing ended.
#[derive(Debug, Clone, Serialize)]
pub struct SliceReport {
    pub bytes: u64,
    pub sha256: String,
    pub doc_type: String,
    pub duration_ms: i64,
    pub partial: bool,
    pub partial_reason: Option<String>,
    pub tracks: Vec<TrackReport>,
    pub audio: Option<ExtractedAudio>,
    pub stages: StageTimes,
}

/// Starts slicing `reader` on its own threads. Drain the receiver until it closes, then join the
/// handle for the report. Dropping the receiver cancels the work.
pub fn start<R: Read + Send + 'static>(
    reader: R,
    name: &str,
    opts: SliceOptions,
) -> (
    Receiver<SliceOutput>,
    JoinHandle<Result<SliceReport, SliceError>>,
) {
    let (tx, rx) = bounded(opts.channel_capacity.max(1));
    let role = opts.role.unwrap_or_else(|| Role::from_file_name(name));
    let handle = std::thread::Builder::new()
        .name("demux".into())
        .spawn(move || Run::new(opts, role, tx).run(reader))
        .expect("spawning the demux thread");
    (rx, handle)
}

/// Slices a whole recording, handing every output to `on_output` on the calling thread.
pub fn run_blocking<R: Read + Send + 'static>(
    reader: R,
    name: &str,
    opts: SliceOptions,
    mut on_output: impl FnMut(SliceOutput),
) -> Result<SliceReport, SliceError> {
    let (rx, handle) = start(reader, name, opts);
    for out in rx {
        on_output(out);
    }
    handle
        .join()
        .unwrap_or_else(|_| Err(SliceError::Decode("slicing thread panicked".into())))
}

struct VideoRoute {
    decoder: video::VideoDecoder,
    puller: Option<JoinHandle<PullerResult>>,
    keyframes: Arc<Mutex<BTreeSet<i64>>>,
    keyframes_only: bool,
    /// Keyframe-plus-gap decoding (`decode = "adaptive"` on VP8/VP9).
    gap: Option<gap::GapGate<ProbeOf>>,
    /// Frames the gap gate released, reused between calls.
    to_decode: Vec<crate::demux::Frame>,
    failed: Option<String>,
    codec: Codec,
    /// Frames refused from their keyframe header as larger than `max_frame_pixels`: never decoded.
    oversize: Skipped,
    /// Inside a run of oversized frames (from an oversized keyframe to the next one in bounds).
    skipping: bool,
}

impl VideoRoute {
    /// Feeds `frames` (drained) to the decoder, noting keyframes for the puller.
    fn decode(&mut self, frames: &mut Vec<crate::demux::Frame>) {
        for frame in frames.drain(..) {
            if self.failed.is_some() {
                continue;
            }
            if frame.keyframe {
                self.keyframes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(frame.pts_ms());
            }
            if let Err(e) = self.decoder.push(&frame) {
                self.failed = Some(e.to_string());
            }
        }
    }
}

/// The gap gate's view of a track's keyframe probe.
struct ProbeOf {
    probe: video::KeyframeProbe,
    timeout: Duration,
}

impl gap::KeyProbe for ProbeOf {
    fn thumbnail(
        &mut self,
        keyframe: &crate::demux::Frame,
    ) -> Result<[u8; frame::THUMB * frame::THUMB], SliceError> {
        self.probe.thumbnail(keyframe, self.timeout)
    }
}

/// Frames a limit kept from the models: how many, and the recording time they span.
#[derive(Debug, Clone, Default)]
struct Skipped {
    frames: u64,
    first_ms: Option<i64>,
    last_ms: i64,
    /// The largest size refused, for the reason text.
    size: Option<(u32, u32)>,
}

impl Skipped {
    fn add(&mut self, pts: i64) {
        self.frames += 1;
        self.first_ms.get_or_insert(pts);
        self.last_ms = self.last_ms.max(pts);
    }

    fn merge(&mut self, other: &Skipped) {
        if let Some(f) = other.first_ms {
            self.frames += other.frames;
            self.first_ms = Some(self.first_ms.map_or(f, |s| s.min(f)));
            self.last_ms = self.last_ms.max(other.last_ms);
            self.size = self.size.max(other.size);
        }
    }

    /// "N frames, A-B ms not audited", or `None` when nothing was skipped.
    fn span(&self) -> Option<String> {
        let first = self.first_ms?;
        Some(format!(
            "{} frames, {first}-{} ms not audited",
            self.frames, self.last_ms
        ))
    }
}

struct AudioRoute {
    decoder: Option<audio::AudioDecoder>,
    puller: Option<JoinHandle<Result<u64, SliceError>>>,
    mic: Option<audio::MicWriter>,
    codec: Codec,
    failed: Option<String>,
}

struct PullerResult {
    sizes: Vec<(u32, u32)>,
    decoded: u64,
    sampled: u64,
    busy_ms: u64,
    error: Option<String>,
    /// Decoded frames over `max_frame_pixels` (codecs whose header gives no size).
    too_big: Skipped,
    /// Frames after the track reached `max_slices_per_track`.
    full: Skipped,
}

struct Run {
    opts: SliceOptions,
    role: Role,
    tx: Sender<SliceOutput>,
    cancel: Arc<AtomicBool>,
    reports: Vec<TrackReport>,
    videos: Vec<(u64, VideoRoute)>,
    audio: Option<(u64, AudioRoute)>,
    /// Why the recording is only partly audited, one reason per problem, in order.
    partial: Vec<String>,
    end_ms: i64,
}

impl Run {
    fn new(opts: SliceOptions, role: Role, tx: Sender<SliceOutput>) -> Self {
        Self {
            opts,
            role,
            tx,
            cancel: Arc::new(AtomicBool::new(false)),
            reports: Vec::new(),
            videos: Vec::new(),
            audio: None,
            partial: Vec::new(),
            end_ms: 0,
        }
    }

    fn run<R: Read>(mut self, mut reader: R) -> Result<SliceReport, SliceError> {
        let started = Instant::now();
        let mut demuxer = Demuxer::new(self.opts.demux_limits);
        let mut hasher = Sha256::new();
        let mut header: Option<StreamHeader> = None;
        let mut chunk = vec![0u8; 64 << 10];
        let mut bytes = 0u64;
        let mut stopped_early = false;
        'read: loop {
            loop {
                match demuxer.next_event() {
                    Ok(Some(Event::Header(h))) => {
                        if let Err(e) = self.setup(&h) {
                            self.abort_all();
                            return Err(e);
                        }
                        if self.tx.send(SliceOutput::Header(h.clone())).is_err() {
                            self.cancel.store(true, Ordering::Release);
                        }
                        header = Some(h);
                    }
                    Ok(Some(Event::Frame(f))) => {
                        if f.pts_ms() > self.opts.limits.max_duration_ms {
                            self.partial.push(format!(
                                "stopped at the duration limit of {} s",
                                self.opts.limits.max_duration_ms / 1000
                            ));
                            stopped_early = true;
                            break 'read;
                        }
                        self.route(f);
                    }
                    Ok(None) => break,
                    Err(e) if header.is_some() => {
                        // Everything before the damage has been routed: audit it, marked partial.
                        self.partial.push(format!(
                            "stream damaged at byte {}: {e}",
                            demuxer.bytes_received()
                        ));
                        stopped_early = true;
                        break 'read;
                    }
                    Err(e) => {
                        self.abort_all();
                        return Err(e.into());
                    }
                }
            }
            if self.cancel.load(Ordering::Acquire) {
                self.abort_all();
                return Err(SliceError::Cancelled);
            }
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if header.is_none() {
                        self.abort_all();
                        return Err(SliceError::Io(format!("read failed: {e}")));
                    }
                    self.partial
                        .push(format!("read failed after {bytes} bytes: {e}"));
                    stopped_early = true;
                    break;
                }
            };
            bytes += n as u64;
            // Hashed before the limit check: the content hash names the whole file, as the
            // scan's skip check computes it.
            hasher.update(&chunk[..n]);
            if bytes > self.opts.limits.max_file_bytes {
                if header.is_none() {
                    self.abort_all();
                    return Err(SliceError::Io(format!(
                        "larger than the limit of {} bytes",
                        self.opts.limits.max_file_bytes
                    )));
                }
                self.partial.push(format!(
                    "stopped at the file size limit of {} bytes",
                    self.opts.limits.max_file_bytes
                ));
                stopped_early = true;
                break;
            }
            demuxer.push(&chunk[..n]);
        }
        if stopped_early {
            // Hash what is left so the content hash still names the whole file.
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes += n as u64;
                        hasher.update(&chunk[..n]);
                    }
                }
            }
        } else {
            match demuxer.finish() {
                Ok(end) => {
                    if let Some(t) = end.truncated {
                        self.partial.push(format!(
                            "truncated at byte {} inside {}: {}",
                            t.at_byte, t.inside, t.reason
                        ));
                    }
                }
                Err(e) => {
                    self.abort_all();
                    return Err(e.into());
                }
            }
            // finish() may emit the header for a stream with tracks but no clusters.
            while let Ok(Some(ev)) = demuxer.next_event() {
                if let Event::Header(h) = ev {
                    if let Err(e) = self.setup(&h) {
                        self.abort_all();
                        return Err(e);
                    }
                    let _ = self.tx.send(SliceOutput::Header(h.clone()));
                    header = Some(h);
                }
            }
        }
        let demux_ms = started.elapsed().as_millis() as u64;
        let header = header.ok_or(SliceError::Demux(DemuxError::NoHeader { bytes }))?;
        let mut stages = StageTimes {
            demux_ms,
            ..Default::default()
        };
        let audio = self.close(&mut stages)?;
        if self.reports.iter().all(|r| r.frames == 0) {
            let stopped = (!self.partial.is_empty()).then(|| self.partial.join("; "));
            return Err(SliceError::NoMedia { bytes, stopped });
        }
        // The header's Duration is only the file's claim: the duration is what was demuxed,
        // within the policy's limit.
        let duration_ms = self.end_ms.clamp(0, self.opts.limits.max_duration_ms);
        let partial = !self.partial.is_empty();
        Ok(SliceReport {
            bytes,
            sha256: hex::encode(hasher.finalize()),
            doc_type: header.doc_type,
            duration_ms,
            partial,
            partial_reason: partial.then(|| self.partial.join("; ")),
            tracks: std::mem::take(&mut self.reports),
            audio,
            stages,
        })
    }

    fn setup(&mut self, header: &StreamHeader) -> Result<(), SliceError> {
        for track in &header.tracks {
            let mut report = TrackReport {
                number: track.number,
                kind: track.kind,
                role: None,
                codec: track.codec.name().to_string(),
                header_size: track.video.as_ref().map(|v| (v.width, v.height)),
                sizes_seen: Vec::new(),
                frames: 0,
                keyframes: 0,
                decoded: 0,
                sampled: 0,
                gap_frames_dropped: 0,
                first_ms: None,
                last_ms: None,
                error: None,
            };
            match track.kind {
                TrackKind::Video if !self.opts.decode_video => {
                    report.role = Some(self.role);
                    report.error = Some("not decoded (video decoding off)".into());
                }
                TrackKind::Video => {
                    report.role = Some(self.role);
                    match self.video_route(track) {
                        Ok(route) => self.videos.push((track.number, route)),
                        Err(e) => report.error = Some(e.to_string()),
                    }
                }
                TrackKind::Audio if self.audio.is_none() => {
                    report.role = Some(Role::Microphone);
                    match self.audio_route(track) {
                        Ok(route) => self.audio = Some((track.number, route)),
                        Err(e) => report.error = Some(e.to_string()),
                    }
                }
                _ => {
                    report.error =
                        Some("not audited (only the first audio track is the microphone)".into())
                }
            }
            self.reports.push(report);
        }
        if self.videos.is_empty() && self.audio.is_none() {
            return Err(SliceError::NothingToAudit);
        }
        Ok(())
    }

    fn video_route(&self, track: &TrackInfo) -> Result<VideoRoute, SliceError> {
        let (decoder, output) = video::VideoDecoder::new(track, self.opts.decoder_threads)?;
        let (mut sampler, max_side, mode, rule) = match self.role {
            Role::Desktop => {
                let c = &self.opts.sampling.desktop;
                (
                    sampler::Sampler::desktop(c),
                    c.max_side,
                    c.decode,
                    c.gap_rule(),
                )
            }
            _ => {
                let c = &self.opts.sampling.camera;
                (
                    sampler::Sampler::camera(c),
                    c.max_side,
                    c.decode,
                    c.gap_rule(),
                )
            }
        };
        let gap = if mode == DecodeMode::Adaptive && video::KeyframeProbe::supports(&track.codec) {
            let probe = ProbeOf {
                probe: video::KeyframeProbe::new(track)?,
                timeout: self.opts.stall_timeout,
            };
            Some(gap::GapGate::new(probe, rule))
        } else {
            None
        };
        let keyframes = Arc::new(Mutex::new(BTreeSet::new()));
        let keys = keyframes.clone();
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let (role, number, stall) = (self.role, track.number, self.opts.stall_timeout);
        let limits = self.opts.limits;
        let puller = std::thread::Builder::new()
            .name(format!("video-{number}"))
            .spawn(move || {
                let mut r = PullerResult {
                    sizes: Vec::new(),
                    decoded: 0,
                    sampled: 0,
                    busy_ms: 0,
                    error: None,
                    too_big: Skipped::default(),
                    full: Skipped::default(),
                };
                let mut busy = Duration::ZERO;
                let outcome = output.run(stall, |frame| {
                    let t0 = Instant::now();
                    let (w, h) = (frame.planes.width, frame.planes.height);
                    if r.sizes.last() != Some(&(w, h)) {
                        r.sizes.push((w, h));
                    }
                    r.decoded += 1;
                    let keyframe = {
                        let mut set = keys.lock().unwrap_or_else(|p| p.into_inner());
                        let hit = set.contains(&frame.pts_ms);
                        *set = set.split_off(&frame.pts_ms);
                        hit
                    };
                    // Frames a limit keeps from the models are counted, so the verdict can say
                    // which time range was not audited.
                    if u64::from(w) * u64::from(h) > limits.max_frame_pixels {
                        r.too_big.add(frame.pts_ms);
                        r.too_big.size = r.too_big.size.max(Some((w, h)));
                        busy += t0.elapsed();
                        return;
                    }
                    if r.sampled >= limits.max_slices_per_track {
                        r.full.add(frame.pts_ms);
                        busy += t0.elapsed();
                        return;
                    }
                    if cancel.load(Ordering::Relaxed) || !sampler.wants(frame.pts_ms) {
                        busy += t0.elapsed();
                        return;
                    }
                    if let sampler::Decision::Keep(reason) =
                        sampler.decide(frame.pts_ms, || frame.planes.thumbnail())
                    {
                        let image = frame::fit_within(frame.planes.to_rgb(), max_side);
                        r.sampled += 1;
                        busy += t0.elapsed();
                        let slice = Slice {
                            track: number,
                            role,
                            pts_ms: frame.pts_ms,
                            width: w,
                            height: h,
                            keyframe,
                            reason,
                            image: Arc::new(image),
                        };
                        if tx.send(SliceOutput::Slice(slice)).is_err() {
                            cancel.store(true, Ordering::Release);
                        }
                    } else {
                        busy += t0.elapsed();
                    }
                });
                r.busy_ms = busy.as_millis() as u64;
                r.error = outcome.err().map(|e| e.to_string());
                r
            })
            .map_err(|e| SliceError::Io(format!("cannot start a decoder thread: {e}")))?;
        Ok(VideoRoute {
            decoder,
            puller: Some(puller),
            keyframes,
            keyframes_only: mode == DecodeMode::Keyframes,
            gap,
            to_decode: Vec::new(),
            failed: None,
            codec: track.codec.clone(),
            oversize: Skipped::default(),
            skipping: false,
        })
    }

    fn audio_route(&self, track: &TrackInfo) -> Result<AudioRoute, SliceError> {
        let mic = match &self.opts.mic_path {
            Some(p) => Some(audio::MicWriter::create(p, track)?),
            None => None,
        };
        let (decoder, puller) = if self.opts.decode_audio {
            let (decoder, output) = audio::AudioDecoder::new(track)?;
            let tx = self.tx.clone();
            let mut own_sink = self.opts.audio_sink.clone();
            let cancel = self.cancel.clone();
            let stall = self.opts.stall_timeout;
            let handle = std::thread::Builder::new()
                .name("audio".into())
                .spawn(move || {
                    let t0 = Instant::now();
                    let direct = own_sink.is_some();
                    output.run(stall, |chunk| {
                        if cancel.load(Ordering::Relaxed) {
                            return;
                        }
                        if direct {
                            // The speech stage is gone (it reports why): video goes on.
                            if own_sink.as_ref().is_some_and(|s| s.send(chunk).is_err()) {
                                own_sink = None;
                            }
                        } else if tx.send(SliceOutput::Audio(chunk)).is_err() {
                            cancel.store(true, Ordering::Release);
                        }
                    })?;
                    Ok(t0.elapsed().as_millis() as u64)
                })
                .map_err(|e| SliceError::Io(format!("cannot start the audio thread: {e}")))?;
            (Some(decoder), Some(handle))
        } else {
            (None, None)
        };
        Ok(AudioRoute {
            decoder,
            puller,
            mic,
            codec: track.codec.clone(),
            failed: None,
        })
    }

    fn route(&mut self, frame: crate::demux::Frame) {
        let Some(report) = self.reports.iter_mut().find(|r| r.number == frame.track) else {
            return;
        };
        let pts = frame.pts_ms();
        report.frames += 1;
        report.keyframes += u64::from(frame.keyframe);
        report.first_ms.get_or_insert(pts);
        report.last_ms = Some(report.last_ms.map_or(pts, |l| l.max(pts)));
        let end = frame
            .pts_ns
            .saturating_add(i64::try_from(frame.duration_ns.unwrap_or(0)).unwrap_or(i64::MAX))
            .div_euclid(1_000_000);
        self.end_ms = self.end_ms.max(end);
        let span_s =
            (report.last_ms.unwrap_or(pts) - report.first_ms.unwrap_or(pts)).max(0) as f64 / 1000.0;
        let fps_exceeded = report.kind == TrackKind::Video
            && report.frames as f64 > f64::from(self.opts.limits.max_fps) * (span_s + 1.0) + 10.0;
        if let Some((_, route)) = self.videos.iter_mut().find(|(n, _)| *n == frame.track) {
            if route.failed.is_none() && fps_exceeded {
                route.failed = Some(format!(
                    "more than {} frames per second; track no longer decoded",
                    self.opts.limits.max_fps
                ));
            }
            if self.opts.fault_decoder && route.failed.is_none() {
                route.failed = Some("video decoder: injected fault (test only)".into());
            }
            if route.failed.is_some() {
                return;
            }
            // An oversized frame is refused from its keyframe header, before the decoder
            // allocates it; its inter frames go with it, up to the next keyframe in bounds.
            if frame.keyframe {
                if let Some((w, h)) = crate::demux::codec::keyframe_size(&route.codec, &frame.data)
                {
                    route.skipping =
                        u64::from(w) * u64::from(h) > self.opts.limits.max_frame_pixels;
                    if route.skipping {
                        route.oversize.size = route.oversize.size.max(Some((w, h)));
                    }
                }
            }
            if route.skipping {
                route.oversize.add(pts);
                return;
            }
            if route.keyframes_only && !frame.keyframe {
                return;
            }
            match &mut route.gap {
                Some(gate) => {
                    let mut out = std::mem::take(&mut route.to_decode);
                    gate.push(frame, &mut out);
                    route.decode(&mut out);
                    route.to_decode = out;
                }
                None => route.decode(&mut vec![frame]),
            }
            return;
        }
        if let Some((n, route)) = &mut self.audio {
            if *n != frame.track || route.failed.is_some() {
                return;
            }
            if let Some(mic) = &mut route.mic {
                if let Err(e) = mic.write(&frame) {
                    route.failed = Some(e.to_string());
                }
            }
            if let Some(dec) = &route.decoder {
                if let Err(e) = dec.push(&frame) {
                    route.failed = Some(e.to_string());
                }
            }
        }
    }

    fn abort_all(&mut self) {
        self.cancel.store(true, Ordering::Release);
        for (_, v) in &mut self.videos {
            v.decoder.abort();
            if let Some(p) = v.puller.take() {
                let _ = p.join();
            }
        }
        if let Some((_, a)) = &mut self.audio {
            if let Some(d) = &a.decoder {
                d.abort();
            }
            if let Some(p) = a.puller.take() {
                let _ = p.join();
            }
        }
    }

    /// Ends every decoder, waits for the pullers and fills in the reports.
    fn close(&mut self, stages: &mut StageTimes) -> Result<Option<ExtractedAudio>, SliceError> {
        for (_, v) in &mut self.videos {
            if let Some(gate) = &mut v.gap {
                let mut out = Vec::new();
                gate.finish(&mut out);
                if v.failed.is_none() && !v.skipping {
                    v.decode(&mut out);
                }
            }
            v.decoder.end();
        }
        if let Some((_, a)) = &self.audio {
            if let Some(d) = &a.decoder {
                d.end();
            }
        }
        for (number, v) in &mut self.videos {
            let result = v.puller.take().map(|p| p.join());
            let report = self
                .reports
                .iter_mut()
                .find(|r| r.number == *number)
                .expect("report per route");
            match result {
                Some(Ok(r)) => {
                    report.sizes_seen = r.sizes;
                    report.decoded = r.decoded;
                    report.sampled = r.sampled;
                    report.gap_frames_dropped =
                        v.gap.as_ref().map_or(0, |g| g.stats().frames_dropped);
                    stages.video_ms += r.busy_ms;
                    report.error = r.error.or(v.failed.take());
                    let mut big = v.oversize.clone();
                    big.merge(&r.too_big);
                    if let (Some(span), Some((w, h))) = (big.span(), big.size) {
                        self.partial.push(format!(
                            "track {number}: frames up to {w}x{h} over the frame size limit of {} pixels, {span}",
                            self.opts.limits.max_frame_pixels
                        ));
                    }
                    if let Some(span) = r.full.span() {
                        self.partial.push(format!(
                            "track {number}: stopped sampling at the limit of {} slices, {span}",
                            self.opts.limits.max_slices_per_track
                        ));
                    }
                    if report.error.is_none() && report.frames > 0 && report.decoded == 0 {
                        let refused = big.frames;
                        if refused < report.frames {
                            report.error = Some("no frame could be decoded".into());
                        }
                    }
                }
                _ => report.error = Some("decoder thread panicked".into()),
            }
            if report.frames == 0 && report.error.is_none() {
                report.error = Some("video track without a single frame".into());
            }
            if let Some(e) = &report.error {
                self.partial.push(format!("track {number}: {e}"));
            }
        }
        let mut extracted = None;
        if let Some((number, mut a)) = self.audio.take() {
            let mut error = a.failed.take();
            if let Some(p) = a.puller.take() {
                match p.join() {
                    Ok(Ok(ms)) => stages.audio_ms = ms,
                    Ok(Err(e)) => error = error.or(Some(e.to_string())),
                    Err(_) => error = error.or(Some("audio thread panicked".into())),
                }
            }
            if let Some(mic) = a.mic.take() {
                match mic.finish(&a.codec) {
                    Ok(x) => extracted = Some(x),
                    Err(e) => error = error.or(Some(e.to_string())),
                }
            }
            if let Some(e) = error {
                let report = self
                    .reports
                    .iter_mut()
                    .find(|r| r.number == number)
                    .expect("report per route");
                report.error = Some(e.clone());
                self.partial.push(format!("track {number}: {e}"));
            }
        }
        Ok(extracted)
    }
}

impl Drop for Run {
    /// Every path out of a run tears the pipelines down, including early returns and panics.
    fn drop(&mut self) {
        self.abort_all();
    }
}
