//! Audit: slices and microphone audio in, findings and a verdict out.
//!
//! [`audit`] runs one recording through a [`pipeline::Pipeline`] (slicer, dispatcher, model
//! workers, speech thread, bounded channels, one teardown), then [`assemble`] turns what the
//! stages produced into the verdict, with the one partial reason naming everything that kept
//! part of the recording from the models.
//!
//! - [`model_set`]: the policy's models, loaded once per process.
//! - [`dispatch`]: gates and recording-order release of model results (no threads).
//! - [`observe`]: one slice's models; [`findings`]: observations into timestamped spans.
//! - [`speech`]: VAD, Whisper and the text policy on the microphone.
//! - [`evidence`]: evidence files written as findings close.

mod assemble;
mod dispatch;
pub mod evidence;
pub mod findings;
mod model_set;
pub mod observe;
mod pipeline;
pub mod speech;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::fault::Fault;
use crate::ingest::Recording;
use crate::policy::Policy;
use crate::slice::{self, Role, SliceOptions, SliceReport};
use crate::verdict::{self, Decision, Finding, ModelRef, PolicyRef, RecordingInfo, Stats, Verdict};
use assemble::Assembly;
use evidence::EvidenceSink;
use findings::{FindingContext, VisualFindings};
pub use model_set::{model_ref, AuditModels, NudityModel};
pub use pipeline::Incomplete;
use pipeline::Pipeline;

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

/// One recording to audit and where its outputs go.
pub struct AuditRequest<'a> {
    pub recording: &'a Recording,
    /// The recording's output folder (verdict, evidence, extracted microphone).
    pub out_dir: PathBuf,
    /// The teacher to verify, and their enrolled face templates (empty: identity is not
    /// checked).
    pub teacher_id: Option<String>,
    pub templates: Vec<Vec<f32>>,
    pub role: Option<Role>,
    /// Model workers for this recording (slices analysed concurrently).
    pub workers: usize,
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

/// A finished audit: the verdict plus what the caller registers (evidence retention).
pub struct AuditOutcome {
    pub verdict: Verdict,
    pub evidence: Vec<String>,
    pub slice_report: Option<SliceReport>,
}

/// Audits one recording. Never panics on bad input: a recording that cannot be read at all gives
/// `Err`, which the caller turns into an error verdict; anything that keeps part of it from the
/// models makes the verdict partial, with the reason ([`assemble`]).
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
    let slice_options = SliceOptions {
        sampling: policy.sampling.clone(),
        role: req.role,
        limits: slice_limits(policy),
        demux_limits: crate::demux::DemuxLimits {
            max_tracks: policy.limits.max_tracks.max(1),
            ..Default::default()
        },
        mic_path: Some(req.out_dir.join("mic.webm")),
        decode_audio: models.vad.is_some(),
        fault_decoder: fault == Some(Fault::Decoder),
        ..SliceOptions::default()
    };
    let reader = match &req.open {
        Some(open) => open()?,
        None => req.recording.open()?,
    };
    let ctx = finding_context(models, policy, req);
    let mut visual = VisualFindings::new(&ctx);
    let mut ev_visual = EvidenceSink::new(&req.out_dir);
    let mut ev_speech = EvidenceSink::new(&req.out_dir);
    if fault == Some(Fault::Evidence) {
        ev_visual.inject_fault();
        ev_speech.inject_fault();
    }
    let stages = Pipeline {
        models,
        policy,
        templates: &req.templates,
        slice_options,
        file_name: req.recording.file_name(),
        workers: req.workers,
        progress: req.progress.clone(),
        fault,
    }
    .run(reader, &ctx, &mut visual, &mut ev_visual, &mut ev_speech);

    let report = match &stages.slicing {
        // The slicer was cancelled because a stage stopped: nothing trustworthy is left.
        Err(slice::SliceError::Cancelled) if !stages.failures.is_empty() => {
            return Err(AuditError::Stage(
                stages.failures.reason().unwrap_or_default(),
            ))
        }
        Err(e) => return Err(e.clone().into()),
        Ok(r) => r.clone(),
    };
    let end_ms = report.duration_ms.max(0) as u64;
    let visual_errors = visual.finish(end_ms, &mut ev_visual);
    let found = std::mem::take(&mut visual.findings);
    let verdict = Assembly {
        models,
        policy,
        recording: req.recording,
        teacher_id: req.teacher_id.as_deref(),
        report: &report,
        wall_ms: started.elapsed().as_millis() as u64,
    }
    .verdict(&stages, found, visual_errors, &visual.presence);
    let mut evidence: Vec<String> = ev_visual.written().to_vec();
    evidence.extend(ev_speech.written().iter().cloned());
    Ok(AuditOutcome {
        verdict,
        evidence,
        slice_report: Some(report),
    })
}

/// What the span builders cite: the models behind each kind of finding.
fn finding_context<'p>(
    models: &AuditModels,
    policy: &'p Policy,
    req: &AuditRequest<'_>,
) -> FindingContext<'p> {
    FindingContext {
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
    }
}

/// The verdict for a recording that could not be audited at all.
pub fn error_verdict(
    rec: &Recording,
    teacher_id: Option<&str>,
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
            teacher_id: teacher_id.map(str::to_string),
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
