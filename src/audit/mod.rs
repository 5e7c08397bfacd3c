//! Audit: slices and microphone audio in, findings and a verdict out.
//!
//! ```text
//!  slice::start ──SliceOutput──▶ dispatcher ──Job──▶ worker × N (face, identity, nudity, OCR)
//!                      │            ▲  (frame-diff gate,       │
//!                      │            │   OCR gate, in order)     │ Done (any order)
//!                      │            └──── reorder by sequence ◀─┘──▶ VisualFindings (spans)
//!                      └──AudioChunk──▶ speech thread (VAD → Whisper on speech → text policy)
//! ```
//! The dispatcher admits at most `max_in_flight` slices, so a slow model applies back-pressure
//! through the slicer all the way to the reader.

pub mod evidence;
pub mod findings;
pub mod observe;
pub mod speech;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, never, select, unbounded};
use image::RgbImage;

use crate::fault::Fault;
use crate::ingest::Recording;
use crate::models::embed::FaceEmbedder;
use crate::models::face::{FaceDetector, FaceDetectorKind};
use crate::models::nsfw::{NsfwClassifier, NudeNetDetector};
use crate::models::ocr::Ocr;
use crate::models::vad::Vad;
use crate::models::whisper::Whisper;
use crate::models::{ModelHome, ModelOptions};
use crate::policy::{self, Policy};
use crate::slice::{self, KeepReason, Role, SliceOptions, SliceOutput, SliceReport};
use crate::verdict::{
    self, Decision, Finding, ModelRef, ModelUse, PolicyRef, RecordingInfo, StageStats, Stats,
    Verdict,
};
use evidence::EvidenceSink;
use findings::{FindingContext, VisualFindings};
use observe::{CallCounter, CameraObservation, Observation};

/// Version of the verdict document (docs/verdict.schema.json).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("loading model: {0}")]
    Model(#[from] crate::models::ModelError),
    #[error("{0}")]
    Slice(#[from] slice::SliceError),
    #[error("{0}")]
    Ingest(#[from] crate::ingest::IngestError),
    /// A stage failed so that nothing trustworthy is left to report.
    #[error("{0}")]
    Stage(String),
}

pub enum NudityModel {
    OpenNsfw(NsfwClassifier),
    NudeNet(NudeNetDetector),
}

/// Every model a policy needs, loaded once and shared by all recordings and workers.
pub struct AuditModels {
    pub face_detector: FaceDetector,
    pub face_embedder: FaceEmbedder,
    pub nudity: NudityModel,
    pub ocr: Option<Ocr>,
    pub vad: Option<Vad>,
    pub whisper: Option<Whisper>,
}

impl AuditModels {
    /// Loads the policy's models with one session per worker.
    pub fn load(policy: &Policy, home: &ModelHome, workers: usize) -> Result<Self, AuditError> {
        Self::load_with(policy, home, workers, None)
    }

    /// One session per model, every one with a single intra-op thread, Whisper included: for
    /// the one-thing-at-a-time baseline ([`Sequential::Strict`]).
    pub fn load_one_thread(policy: &Policy, home: &ModelHome) -> Result<Self, AuditError> {
        Self::load_with(policy, home, 1, Some(1))
    }

    /// `threads`: intra-op threads of every session instead of the policy's (and Whisper's
    /// thread per core).
    fn load_with(
        policy: &Policy,
        home: &ModelHome,
        workers: usize,
        threads: Option<usize>,
    ) -> Result<Self, AuditError> {
        let opts = ModelOptions {
            intra_threads: threads.unwrap_or(policy.models.threads).max(1),
            pool_size: workers.max(1),
            ..Default::default()
        };
        let single = ModelOptions {
            pool_size: 1,
            ..opts.clone()
        };
        // Speech is the critical path of a camera recording (one thread, one 30 s window after
        // another) while the gated camera models leave the other core mostly idle: Whisper gets
        // intra-op threads for every core instead of a second session (which would double its
        // weights in memory).
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let speech_opts = ModelOptions {
            intra_threads: threads.unwrap_or(single.intra_threads.max(cores.min(4))),
            ..single.clone()
        };
        let load_speech = || -> Result<_, AuditError> {
            let whisper = match policy.models.whisper {
                policy::WhisperModel::Off => None,
                policy::WhisperModel::TinyEn => Some(Whisper::load(home, &speech_opts)?),
                policy::WhisperModel::Base => Some(Whisper::load_files(
                    &home.model("whisper-base-encoder.onnx"),
                    &home.model("whisper-base-decoder.onnx"),
                    &home.model("whisper-base-tokenizer.json"),
                    &home.model("whisper-base-config.json"),
                    &speech_opts,
                )?),
            };
            Ok((whisper, load_vad(policy, home, &single)?))
        };
        let load_vision = || -> Result<_, AuditError> {
            let kind = match policy.models.face_detector {
                policy::FaceDetector::Yunet => FaceDetectorKind::YuNet,
                policy::FaceDetector::Ultraface => FaceDetectorKind::UltraFace,
            };
            let nudity = match policy.models.nudity {
                policy::NudityModel::OpenNsfw => {
                    NudityModel::OpenNsfw(NsfwClassifier::load(&home.open_nsfw(), &opts)?)
                }
                policy::NudityModel::Nudenet => {
                    NudityModel::NudeNet(NudeNetDetector::load(&home.nudenet(), &opts)?)
                }
            };
            Ok((
                FaceDetector::load(kind, home, &opts)?,
                FaceEmbedder::load(&home.sface(), &opts)?,
                nudity,
                Ocr::load(home, &opts)?,
            ))
        };
        // Loading (hashing the files, optimising the graphs) takes about 2 s, a quarter of a
        // 2-minute scan: the speech and the vision models load side by side, about half of it
        // each. The one-thread baseline loads them one after the other.
        let (speech, vision) = if threads.is_none() && cores > 1 {
            std::thread::scope(|scope| {
                let speech = std::thread::Builder::new()
                    .name("load-speech".into())
                    .spawn_scoped(scope, load_speech)
                    .expect("spawning a model loader");
                let vision = load_vision();
                let speech = speech
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (speech, vision)
            })
        } else {
            (load_speech(), load_vision())
        };
        let (whisper, vad) = speech?;
        let (face_detector, face_embedder, nudity, ocr) = vision?;
        Ok(Self {
            face_detector,
            face_embedder,
            nudity,
            ocr: Some(ocr),
            vad: Some(vad),
            whisper,
        })
    }

    fn nudity_ref(&self) -> ModelRef {
        match &self.nudity {
            NudityModel::OpenNsfw(m) => ModelRef {
                id: m.id().into(),
                sha256: m.sha256().into(),
            },
            NudityModel::NudeNet(m) => ModelRef {
                id: m.id().into(),
                sha256: m.sha256().into(),
            },
        }
    }

    /// Every model that can take part, by role: what the verdict cites.
    pub fn uses(&self) -> Vec<ModelUse> {
        let mut v = vec![
            ModelUse {
                role: "face_detector".into(),
                id: self.face_detector.id().into(),
                sha256: self.face_detector.sha256().into(),
            },
            ModelUse {
                role: "face_embedder".into(),
                id: self.face_embedder.id().into(),
                sha256: self.face_embedder.sha256().into(),
            },
        ];
        let n = self.nudity_ref();
        v.push(ModelUse {
            role: "nudity".into(),
            id: n.id,
            sha256: n.sha256,
        });
        if let Some(o) = &self.ocr {
            push_parts(&mut v, &["ocr_det", "ocr_rec"], o.id(), &o.sha256());
        }
        if let Some(m) = &self.vad {
            v.push(ModelUse {
                role: "vad".into(),
                id: m.id().into(),
                sha256: m.sha256().into(),
            });
        }
        if let Some(m) = &self.whisper {
            push_parts(
                &mut v,
                &["asr_encoder", "asr_decoder", "asr_tokenizer"],
                m.id(),
                m.sha256(),
            );
        }
        v
    }
}

/// Silero VAD with the policy's thresholds: pauses shorter than `min_silence_ms` stay inside one
/// segment, so a sentence reaches Whisper whole.
fn load_vad(policy: &Policy, home: &ModelHome, opts: &ModelOptions) -> Result<Vad, AuditError> {
    let mut vad = Vad::load(&home.silero_vad(), opts)?;
    let sp = &policy.speech;
    vad.options = crate::models::vad::VadOptions {
        threshold: sp.vad_threshold,
        neg_threshold: Some(sp.vad_neg_threshold),
        min_speech_ms: sp.min_speech_ms.min(u64::from(u32::MAX)) as u32,
        min_silence_ms: sp.min_silence_ms.min(u64::from(u32::MAX)) as u32,
        speech_pad_ms: sp.speech_pad_ms.min(u64::from(u32::MAX)) as u32,
        ..vad.options.clone()
    };
    Ok(vad)
}

/// Models made of several files report their hashes joined by '+': one entry per file here.
fn push_parts(v: &mut Vec<ModelUse>, roles: &[&str], id: &str, joined: &str) {
    let parts: Vec<&str> = joined.split('+').collect();
    for (i, sha) in parts.iter().enumerate() {
        let role = roles.get(i).copied().unwrap_or("part");
        v.push(ModelUse {
            role: role.into(),
            id: id.into(),
            sha256: (*sha).into(),
        });
    }
}

/// A finding names one hash: for a multi-file model, the sha256 of its joined file hashes.
pub fn model_ref(id: &str, sha: &str) -> ModelRef {
    use sha2::Digest;
    let sha256 = if sha.contains('+') {
        hex::encode(sha2::Sha256::digest(sha.as_bytes()))
    } else {
        sha.to_string()
    };
    ModelRef {
        id: id.into(),
        sha256,
    }
}

/// One recording to audit and where its outputs go.
pub struct AuditRequest<'a> {
    pub recording: &'a Recording,
    /// The recording's output folder (verdict, evidence, extracted microphone).
    pub out_dir: PathBuf,
    /// Enrolled face templates of the teacher (empty: identity is not checked).
    pub templates: Vec<Vec<f32>>,
    pub role: Option<Role>,
    /// Model workers for this recording (slices analysed concurrently).
    pub workers: usize,
    /// The benchmark baseline's modes (`scan --sequential`); production is `Sequential::Off`.
    pub sequential: Sequential,
    /// Opens the bytes instead of `recording.open()` (service mode: a file still being uploaded).
    pub open: Option<Arc<OpenFn>>,
    /// Told after each slice's findings are aggregated (service mode shows them before the end).
    pub progress: Option<Arc<ProgressFn>>,
}

/// Opens a recording's bytes as a stream.
pub type OpenFn =
    dyn Fn() -> Result<Box<dyn std::io::Read + Send>, crate::ingest::IngestError> + Send + Sync;
/// Receives [`AuditProgress`] from the auditing thread.
pub type ProgressFn = dyn Fn(&AuditProgress) + Send + Sync;

/// How far a running audit has come.
#[derive(Debug, Clone)]
pub struct AuditProgress {
    /// Media time of the last slice whose models are done.
    pub media_ms: u64,
    /// Visual findings closed so far (speech findings come with the verdict).
    pub findings: Vec<Finding>,
}

/// How the benchmark baseline (`scan --sequential`, docs/benchmarks.md) gives up concurrency.
/// In both baseline modes there are no model worker threads: each slice's models run on the
/// dispatching thread one after another, and the speech thread takes turns with them on one
/// lock (its audio channel stays bounded). `AuditRequest::workers` is ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sequential {
    /// Production: model workers, the speech thread, decoding alongside.
    #[default]
    Off,
    /// One thing at a time, as the benchmark's row 2 is specified ("one after the other, no
    /// overlap"): the decoders and the video puller wait while a slice's models run, the video
    /// decoder has one thread, and every model one intra-op thread (load the models with
    /// [`AuditModels::load_one_thread`]).
    Strict,
    /// Only the models take turns: the decoders keep running alongside on their own threads,
    /// and Whisper keeps a thread per core (the baseline as first measured).
    Models,
}

/// A finished audit: the verdict plus what the caller registers (evidence retention).
pub struct AuditOutcome {
    pub verdict: Verdict,
    pub evidence: Vec<String>,
    pub slice_report: Option<SliceReport>,
}

enum JobKind {
    Camera,
    Desktop { ocr: bool, probe_faces: bool },
}

struct Job {
    seq: u64,
    kind: JobKind,
    image: Arc<RgbImage>,
}

struct Done {
    seq: u64,
    obs: Result<Observation, String>,
    busy_ms: u64,
}

/// One slice's models, timed: the step a model worker repeats and the sequential baseline runs
/// inline. Afterwards the heap's free pages go back to the system
/// ([`crate::models::release_free_heap`]).
fn run_job(
    models: &AuditModels,
    policy: &Policy,
    templates: &[Vec<f32>],
    job: Job,
    calls: &Arc<CallCounter>,
) -> Done {
    let t0 = Instant::now();
    let obs = match job.kind {
        JobKind::Camera => observe::observe_camera(models, policy, templates, &job.image, calls)
            .map(Observation::Camera),
        JobKind::Desktop { ocr, probe_faces } => {
            observe::observe_desktop(models, policy, &job.image, ocr, probe_faces, calls)
                .map(Observation::Desktop)
        }
    };
    crate::models::release_free_heap();
    Done {
        seq: job.seq,
        obs,
        busy_ms: t0.elapsed().as_millis() as u64,
    }
}

/// [`run_job`] with a panic turned into the slice's error: a worker that panics still answers,
/// so the dispatcher never waits for a result that will not come. `fault` (test only,
/// [`crate::fault`]) fails the first job once `armed` (cleared by that job).
fn run_job_guarded(
    models: &AuditModels,
    policy: &Policy,
    templates: &[Vec<f32>],
    job: Job,
    calls: &Arc<CallCounter>,
    armed: &AtomicBool,
    fault: Option<Fault>,
) -> Done {
    let seq = job.seq;
    let injected = armed.load(Ordering::Relaxed) && armed.swap(false, Ordering::AcqRel);
    if injected && fault == Some(Fault::Model) {
        return Done {
            seq,
            obs: Err("model: injected fault (test only)".into()),
            busy_ms: 0,
        };
    }
    let run = std::panic::AssertUnwindSafe(|| {
        if injected && fault == Some(Fault::WorkerPanic) {
            panic!("model worker: injected fault (test only)");
        }
        run_job(models, policy, templates, job, calls)
    });
    std::panic::catch_unwind(run).unwrap_or_else(|_| Done {
        seq,
        obs: Err("model worker panicked".into()),
        busy_ms: 0,
    })
}

/// Whether a desktop track shows a face most of the time. Its role came from the file name,
/// which the uploader controls: a camera recording named "screen" would skip every face check.
/// The first [`Self::FIRST`] desktop slices and every [`Self::EVERY`]th after are probed with
/// the face detector.
#[derive(Default)]
struct DesktopFaces {
    slices: u64,
    probed: u64,
    with_face: u64,
    first_ms: Option<u64>,
    last_ms: u64,
}

impl DesktopFaces {
    const FIRST: u64 = 10;
    const EVERY: u64 = 10;
    /// Probed slices before the share of faces is judged.
    const MIN_PROBED: u64 = 1;

    fn probe_next(&mut self) -> bool {
        let n = self.slices;
        self.slices += 1;
        n < Self::FIRST || n.is_multiple_of(Self::EVERY)
    }

    fn record(&mut self, pts: u64, faces: Option<usize>) {
        if let Some(n) = faces {
            self.probed += 1;
            if n > 0 {
                self.with_face += 1;
                self.first_ms.get_or_insert(pts);
                self.last_ms = pts;
            }
        }
    }

    /// Why the verdict is partial, when most probed desktop slices showed a face.
    fn reason(&self) -> Option<String> {
        (self.probed >= Self::MIN_PROBED && self.with_face * 2 > self.probed).then(|| {
            format!(
                "desktop track shows a face in {} of {} probed slices ({}-{} ms): the camera checks \
                 (presence, identity) were not run on it; audit it with --role camera",
                self.with_face,
                self.probed,
                self.first_ms.unwrap_or(0),
                self.last_ms
            )
        })
    }
}

/// A slice waiting for (or holding) its observation, in recording order.
struct Pending {
    pts: u64,
    role: Role,
    image: Arc<RgbImage>,
    /// `None` until the worker is done; `Reuse` slices never go to a worker.
    state: PendingState,
}

enum PendingState {
    Waiting,
    Reuse,
    Ready(Result<Observation, String>),
}

/// Audits one recording. Never panics on bad input: a recording that cannot be read at all gives
/// `Err`, which the caller turns into an error verdict.
pub fn audit(
    models: &AuditModels,
    policy: &Policy,
    req: &AuditRequest<'_>,
) -> Result<AuditOutcome, AuditError> {
    let started = Instant::now();
    std::fs::create_dir_all(&req.out_dir)
        .map_err(|e| slice::SliceError::Io(format!("{}: {e}", req.out_dir.display())))?;
    // A run killed mid-write leaves its temp files; the caller holds this recording's lock.
    crate::sink::remove_stale_temps(&req.out_dir);
    // Test only: one stage of this recording fails (CLASSGUARD_FAULT, see crate::fault).
    let fault = crate::fault::take();
    // The one-thing-at-a-time baseline: decoding waits while the models run.
    let turn = (req.sequential == Sequential::Strict).then(slice::Turn::default);
    let opts = SliceOptions {
        sampling: policy.sampling.clone(),
        role: req.role,
        limits: slice_limits(policy),
        demux_limits: crate::demux::DemuxLimits {
            max_tracks: policy.limits.max_tracks.max(1),
            ..Default::default()
        },
        mic_path: Some(req.out_dir.join("mic.webm")),
        decode_audio: models.vad.is_some(),
        decoder_threads: if turn.is_some() {
            1
        } else {
            SliceOptions::default().decoder_threads
        },
        turn: turn.clone(),
        fault_decoder: fault == Some(Fault::Decoder),
        ..SliceOptions::default()
    };
    let reader = match &req.open {
        Some(open) => open()?,
        None => req.recording.open()?,
    };
    let (slice_rx, slicer) = slice::start(reader, &req.recording.file_name(), opts);

    let calls = Arc::new(CallCounter::default());
    let mut ev_visual = EvidenceSink::new(&req.out_dir);
    let mut ev_speech = EvidenceSink::new(&req.out_dir);
    let ctx = FindingContext {
        policy,
        face_model: ModelRef {
            id: models.face_detector.id().into(),
            sha256: models.face_detector.sha256().into(),
        },
        embed_model: ModelRef {
            id: models.face_embedder.id().into(),
            sha256: models.face_embedder.sha256().into(),
        },
        nudity_model: models.nudity_ref(),
        ocr_model: models
            .ocr
            .as_ref()
            .map(|o| model_ref(o.id(), &o.sha256()))
            .unwrap_or(ModelRef {
                id: "none".into(),
                sha256: "0".repeat(64),
            }),
        camera_interval_ms: policy.sampling.camera.interval_ms,
        verify_identity: !req.templates.is_empty(),
    };
    let mut visual = VisualFindings::new(&ctx);
    let workers = req.workers.max(1);
    let max_in_flight = workers * 2;
    let gate = &policy.gates.frame_diff;
    let mut gate_savings: BTreeMap<String, u64> = BTreeMap::new();
    let mut slice_errors: Vec<String> = Vec::new();
    let mut stage_ms: HashMap<&'static str, (u64, u64)> = HashMap::new();

    let sequential = req.sequential != Sequential::Off;
    // In the baselines the models and the speech take turns on one lock (with the decoders too
    // under `Strict`), so the audio channel stays bounded without running anything at once.
    let model_turn = match req.sequential {
        Sequential::Off => None,
        Sequential::Strict => turn.clone(),
        Sequential::Models => Some(slice::Turn::default()),
    };
    if fault == Some(Fault::Evidence) {
        ev_visual.inject_fault();
        ev_speech.inject_fault();
    }
    let model_fault = AtomicBool::new(matches!(fault, Some(Fault::Model | Fault::WorkerPanic)));
    let mut desktop_faces = DesktopFaces::default();
    let mut stage_failures: Vec<String> = Vec::new();
    let (speech_result, slice_result) = std::thread::scope(|scope| {
        let slice_rx = slice_rx;
        let (audio_tx, audio_rx) = bounded::<slice::AudioChunk>(32);
        let ev = &mut ev_speech;
        let speech_turn = model_turn.clone();
        let speech_fault = fault == Some(Fault::SpeechPanic);
        // Named threads: profiles and `top -H` show which stage burns the CPU.
        let speech = std::thread::Builder::new()
            .name("speech".into())
            .spawn_scoped(scope, move || {
                speech::run(
                    models,
                    policy,
                    audio_rx,
                    ev,
                    speech_turn.as_ref(),
                    speech_fault,
                )
            })
            .expect("spawning the speech thread");
        let (job_tx, job_rx) = bounded::<Job>(max_in_flight);
        let (done_tx, done_rx) = unbounded::<Done>();
        for worker in 0..if sequential { 0 } else { workers } {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let calls = calls.clone();
            let templates = &req.templates;
            let model_fault = &model_fault;
            let spawned = std::thread::Builder::new()
                .name(format!("models-{worker}"))
                .spawn_scoped(scope, move || {
                    for job in job_rx {
                        let done = run_job_guarded(
                            models,
                            policy,
                            templates,
                            job,
                            &calls,
                            model_fault,
                            fault,
                        );
                        if done_tx.send(done).is_err() {
                            break;
                        }
                    }
                });
            spawned.expect("spawning a model worker");
        }
        drop(job_rx);
        drop(done_tx);

        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        let mut next_seq = 0u64;
        let mut emit_seq = 0u64;
        let mut in_flight = 0usize;
        let mut last_camera: Option<(u64, [u8; 256], CameraObservation)> = None;
        let mut last_gate_thumb: Option<(u64, [u8; 256])> = None;
        let mut slices_open = true;
        let mut audio_tx = Some(audio_tx);
        let no_results = never::<Done>();
        let mut workers_gone = false;
        let mut emit = |pending: &mut BTreeMap<u64, Pending>,
                        emit_seq: &mut u64,
                        last_camera: &mut Option<(u64, [u8; 256], CameraObservation)>,
                        visual: &mut VisualFindings,
                        slice_errors: &mut Vec<String>,
                        desktop_faces: &mut DesktopFaces| {
            let mut last_pts = None;
            while let Some(p) = pending.get(emit_seq) {
                if matches!(p.state, PendingState::Waiting) {
                    break;
                }
                let p = pending.remove(emit_seq).expect("present");
                *emit_seq += 1;
                last_pts = Some(p.pts);
                match p.state {
                    PendingState::Ready(Ok(Observation::Camera(obs))) => {
                        visual.camera(&ctx, p.pts, &obs, &p.image, &mut ev_visual);
                        *last_camera = Some((p.pts, [0; 256], obs));
                    }
                    PendingState::Reuse => {
                        if let Some((_, _, obs)) = last_camera.as_ref() {
                            let obs = obs.clone();
                            visual.camera(&ctx, p.pts, &obs, &p.image, &mut ev_visual);
                        }
                    }
                    PendingState::Ready(Ok(Observation::Desktop(obs))) => {
                        desktop_faces.record(p.pts, obs.faces);
                        visual.desktop(&ctx, p.pts, &obs, &p.image, &mut ev_visual)
                    }
                    PendingState::Ready(Err(e)) => {
                        slice_errors.push(format!("{} slice at {} ms: {e}", p.role.as_str(), p.pts))
                    }
                    PendingState::Waiting => unreachable!("checked above"),
                }
            }
            last_pts
        };
        let mut handle_done = |d: Done, pending: &mut BTreeMap<u64, Pending>| {
            if let Some(p) = pending.get_mut(&d.seq) {
                let key = if p.role == Role::Desktop {
                    "desktop_models"
                } else {
                    "camera_models"
                };
                let e = stage_ms.entry(key).or_default();
                e.0 += d.busy_ms;
                e.1 += 1;
                p.state = PendingState::Ready(d.obs);
            }
        };
        loop {
            let admit = slices_open && in_flight < max_in_flight;
            if !admit && in_flight == 0 {
                break;
            }
            if admit {
                // With nothing in flight the results channel can only be empty or, with no
                // workers (the sequential baseline), disconnected: selecting on it would then
                // return at once and spin this loop on a core the decoder needs.
                let done_or_never = if in_flight > 0 { &done_rx } else { &no_results };
                select! {
                    recv(slice_rx) -> msg => match msg {
                        Ok(SliceOutput::Slice(s)) => {
                            let pts = s.pts_ms.max(0) as u64;
                            let seq = next_seq;
                            next_seq += 1;
                            let kind = if s.role == Role::Desktop {
                                let ocr = !(policy.gates.ocr_new_slides_only && s.reason == KeepReason::MaxGap);
                                if !ocr {
                                    *gate_savings.entry("ocr_new_slides_only".into()).or_default() += 1;
                                }
                                JobKind::Desktop { ocr, probe_faces: desktop_faces.probe_next() }
                            } else {
                                JobKind::Camera
                            };
                            let mut reuse = false;
                            if matches!(kind, JobKind::Camera) && gate.enabled {
                                let thumb = observe::rgb_thumbnail(&s.image);
                                match last_gate_thumb {
                                    Some((at, t)) if pts.saturating_sub(at) < gate.max_gap_ms
                                        && crate::slice::frame::thumb_difference(&t, &thumb) < gate.threshold => {
                                        reuse = true;
                                        *gate_savings.entry("frame_diff".into()).or_default() += 1;
                                    }
                                    _ => last_gate_thumb = Some((pts, thumb)),
                                }
                            }
                            let image = s.image.clone();
                            pending.insert(seq, Pending { pts, role: s.role, image: s.image, state: if reuse { PendingState::Reuse } else { PendingState::Waiting } });
                            if !reuse && sequential {
                                let _turn = model_turn.as_ref().map(slice::Turn::hold);
                                let done = run_job_guarded(models, policy, &req.templates, Job { seq, kind, image }, &calls, &model_fault, fault);
                                handle_done(done, &mut pending);
                            } else if !reuse {
                                if job_tx.send(Job { seq, kind, image }).is_ok() {
                                    in_flight += 1;
                                } else {
                                    // Every worker is gone: the slice is reported, not waited for.
                                    handle_done(Done { seq, obs: Err("no model worker left".into()), busy_ms: 0 }, &mut pending);
                                }
                            }
                        }
                        Ok(SliceOutput::Audio(chunk)) => {
                            if let Some(tx) = &audio_tx {
                                if tx.send(chunk).is_err() {
                                    audio_tx = None;
                                }
                            }
                        }
                        Ok(SliceOutput::Header(_)) => {}
                        Err(_) => {
                            slices_open = false;
                            audio_tx = None;
                        }
                    },
                    recv(done_or_never) -> msg => match msg {
                        Ok(d) => {
                            in_flight -= 1;
                            handle_done(d, &mut pending);
                        }
                        Err(_) => workers_gone = true,
                    },
                }
                if workers_gone {
                    stage_failures.push("model workers: every worker stopped".into());
                    break;
                }
            } else if let Ok(d) = done_rx.recv() {
                in_flight -= 1;
                handle_done(d, &mut pending);
            } else {
                stage_failures.push("model workers: every worker stopped".into());
                break;
            }
            let emitted = emit(
                &mut pending,
                &mut emit_seq,
                &mut last_camera,
                &mut visual,
                &mut slice_errors,
                &mut desktop_faces,
            );
            if let (Some(media_ms), Some(progress)) = (emitted, &req.progress) {
                progress(&AuditProgress {
                    media_ms,
                    findings: visual.findings.clone(),
                });
            }
        }
        // Slices still waiting for a worker that is gone are reported, never dropped.
        for p in pending.values_mut() {
            if matches!(p.state, PendingState::Waiting) {
                p.state = PendingState::Ready(Err("never analysed (model workers stopped)".into()));
            }
        }
        emit(
            &mut pending,
            &mut emit_seq,
            &mut last_camera,
            &mut visual,
            &mut slice_errors,
            &mut desktop_faces,
        );
        drop(job_tx);
        drop(audio_tx);
        // Dropping the receiver cancels a slicer that is still sending (the loop above ended
        // early): its join cannot wait on a full channel.
        drop(slice_rx);
        let slice_result = slicer
            .join()
            .unwrap_or_else(|_| Err(slice::SliceError::Decode("slicing thread panicked".into())));
        let speech = speech.join().unwrap_or_else(|_| speech::SpeechResult {
            errors: vec!["speech stage panicked: the microphone was not fully audited".into()],
            ..Default::default()
        });
        (speech, slice_result)
    });

    let report = match slice_result {
        Err(slice::SliceError::Cancelled) if !stage_failures.is_empty() => {
            return Err(AuditError::Stage(stage_failures.join("; ")))
        }
        r => r?,
    };
    let end_ms = report.duration_ms.max(0) as u64;
    let mut errors = visual.finish(end_ms, &mut ev_visual);
    errors.extend(speech_result.errors.iter().cloned());
    let mut found: Vec<Finding> = std::mem::take(&mut visual.findings);
    found.extend(speech_result.findings.iter().cloned());
    if models.vad.is_some() && report.audio.is_some() {
        let min_ms = (policy.speech.silence_min_s * 1000.0) as u64;
        let vad = models.vad.as_ref().map(|v| ModelRef {
            id: v.id().into(),
            sha256: v.sha256().into(),
        });
        for (s, e) in findings::silence_spans(
            &speech_result.speech,
            speech_result.audio_end_ms,
            &visual.presence,
            min_ms,
        ) {
            found.push(Finding {
                label: verdict::Label::Silence,
                severity: Default::default(),
                track: verdict::Track::Microphone,
                start_ms: s,
                end_ms: e,
                confidence: 1.0,
                model: vad.clone().expect("vad present"),
                rule_id: "speech.silence".into(),
                evidence: Default::default(),
                reason: format!(
                    "no speech for {:.0} s while the class was on camera",
                    (e - s) as f64 / 1000.0
                ),
            });
        }
    }
    for f in &mut found {
        f.severity = policy.severity_of(&f.rule_id, f.label);
    }
    found.sort_by(|a, b| {
        (a.start_ms, a.track.as_str(), a.label.as_str()).cmp(&(
            b.start_ms,
            b.track.as_str(),
            b.label.as_str(),
        ))
    });

    let mut partial_reason = report.partial_reason.clone();
    if !slice_errors.is_empty() {
        partial_reason.get_or_insert_with(|| {
            format!(
                "{} slices could not be analysed: {}",
                slice_errors.len(),
                slice_errors[0]
            )
        });
    }
    if !errors.is_empty() {
        partial_reason.get_or_insert_with(|| errors[0].clone());
    }
    // Every stage failure is named in the reason, not only the first one found.
    let mut extra: Vec<String> = stage_failures;
    extra.extend(desktop_faces.reason());
    if partial_reason.is_some() {
        extra.extend(speech_result.errors.iter().take(1).cloned());
    }
    for r in extra {
        match &mut partial_reason {
            Some(p) if !p.contains(&r) => {
                p.push_str("; ");
                p.push_str(&r);
            }
            Some(_) => {}
            None => partial_reason = Some(r),
        }
    }
    let partial = partial_reason.is_some();
    let wall_ms = started.elapsed().as_millis() as u64;
    let mut stats = Stats {
        duration_ms: end_ms,
        slices: report.tracks.iter().map(|t| t.sampled).sum(),
        wall_ms,
        realtime_factor: Stats::realtime_factor_of(end_ms, wall_ms),
        ..Default::default()
    };
    let frames_decoded: u64 = report.tracks.iter().map(|t| t.decoded).sum();
    stats.stages.insert(
        "demux".into(),
        StageStats {
            wall_ms: report.stages.demux_ms,
            frames: report.tracks.iter().map(|t| t.frames).sum(),
        },
    );
    stats.stages.insert(
        "video_slicing".into(),
        StageStats {
            wall_ms: report.stages.video_ms,
            frames: frames_decoded,
        },
    );
    stats.stages.insert(
        "audio_decode".into(),
        StageStats {
            wall_ms: report.stages.audio_ms,
            frames: 0,
        },
    );
    for (k, (ms, n)) in stage_ms {
        stats.stages.insert(
            k.into(),
            StageStats {
                wall_ms: ms,
                frames: n,
            },
        );
    }
    stats.stages.insert(
        "speech".into(),
        StageStats {
            wall_ms: speech_result.busy_ms,
            frames: speech_result.whisper_windows,
        },
    );
    // Inside the speech stage: VAD chunks, Whisper windows encoded, Whisper decoder runs.
    for (name, wall_ms, frames) in [
        ("speech_vad", speech_result.vad_ms, speech_result.vad_chunks),
        (
            "speech_whisper_encode",
            speech_result.encode_ms,
            speech_result.whisper_windows,
        ),
        (
            "speech_whisper_decode",
            speech_result.decode_ms,
            speech_result.whisper_decoder_steps,
        ),
    ] {
        if frames > 0 {
            stats
                .stages
                .insert(name.into(), StageStats { wall_ms, frames });
        }
    }
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut model_calls = BTreeMap::new();
    model_calls.insert(models.face_detector.id().to_string(), c(&calls.face_detect));
    model_calls.insert(models.face_embedder.id().to_string(), c(&calls.face_embed));
    model_calls.insert(models.nudity_ref().id, c(&calls.nudity));
    if let Some(o) = &models.ocr {
        model_calls.insert(o.id().to_string(), c(&calls.ocr));
    }
    if let Some(v) = &models.vad {
        model_calls.insert(v.id().to_string(), speech_result.vad_chunks);
    }
    if let Some(w) = &models.whisper {
        // Encoder passes (30 s windows); decoder runs separately, as batching shares them.
        model_calls.insert(w.id().to_string(), speech_result.whisper_windows);
        model_calls.insert(
            format!("{}-decoder-steps", w.id()),
            speech_result.whisper_decoder_steps,
        );
        gate_savings.insert(
            "whisper_speech_only".into(),
            speech_result.skipped_audio_ms / 30_000,
        );
    }
    stats.model_calls = model_calls;
    stats.gate_savings = gate_savings;

    let decision = policy::decide(policy, &found, partial);
    let mut evidence: Vec<String> = ev_visual.written().to_vec();
    evidence.extend(ev_speech.written().iter().cloned());
    let verdict = Verdict {
        schema_version: SCHEMA_VERSION,
        recording: RecordingInfo {
            id: req.recording.id.clone(),
            source: req.recording.source.clone(),
            sha256: report.sha256.clone(),
            duration_ms: end_ms,
            partial,
            partial_reason,
            error: None,
        },
        decision,
        findings: found,
        stats,
        policy: PolicyRef::from(policy),
        models: models.uses(),
        created_at: verdict::now_rfc3339(),
    };
    Ok(AuditOutcome {
        verdict,
        evidence,
        slice_report: Some(report),
    })
}

/// The verdict for a recording that could not be audited at all.
pub fn error_verdict(
    rec: &Recording,
    sha256: &str,
    policy: &Policy,
    models: &AuditModels,
    error: String,
) -> Verdict {
    Verdict {
        schema_version: SCHEMA_VERSION,
        recording: RecordingInfo {
            id: rec.id.clone(),
            source: rec.source.clone(),
            sha256: sha256.to_string(),
            duration_ms: 0,
            partial: true,
            partial_reason: None,
            error: Some(error),
        },
        decision: Decision::Error,
        findings: Vec::new(),
        stats: Stats::default(),
        policy: PolicyRef::from(policy),
        models: models.uses(),
        created_at: verdict::now_rfc3339(),
    }
}

fn slice_limits(policy: &Policy) -> slice::SliceLimits {
    let l = &policy.limits;
    slice::SliceLimits {
        max_file_bytes: l.max_file_bytes,
        max_duration_ms: (l.max_duration_s as i64).saturating_mul(1000),
        max_slices_per_track: l.max_slices,
        max_frame_pixels: u64::from(l.max_frame_width) * u64::from(l.max_frame_height),
        max_fps: l.max_fps,
    }
}
