//! From what the stages produced to the verdict: findings merged and ordered, severities from
//! policy data, the one partial reason, and the per-stage statistics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::policy::{self, Policy};
use crate::slice::SliceReport;
use crate::verdict::{
    self, Finding, ModelRef, PolicyRef, RecordingInfo, StageStats, Stats, Verdict,
};

use super::findings;
use super::model_set::AuditModels;
use super::pipeline::{Incomplete, StageResults};
use super::SCHEMA_VERSION;

/// Everything the verdict is made of, besides the stages' results.
pub(crate) struct Assembly<'a> {
    pub models: &'a AuditModels,
    pub policy: &'a Policy,
    pub recording: &'a crate::ingest::Recording,
    pub teacher_id: Option<&'a str>,
    pub report: &'a SliceReport,
    pub wall_ms: u64,
}

impl Assembly<'_> {
    /// The verdict. `visual` holds the closed visual spans, `visual_errors` what the span
    /// builders could not finish (e.g. evidence that could not be written).
    pub fn verdict(
        &self,
        stages: &StageResults<'_>,
        mut found: Vec<Finding>,
        visual_errors: Vec<String>,
        presence: &[(u64, bool)],
    ) -> Verdict {
        let (policy, models, report) = (self.policy, self.models, self.report);
        let speech = &stages.speech;
        let end_ms = report.duration_ms.max(0) as u64;
        found.extend(speech.findings.iter().cloned());
        if let (Some(vad), Some(_)) = (&models.vad, &report.audio) {
            let min_ms = (policy.speech.silence_min_s * 1000.0) as u64;
            let vad = ModelRef {
                id: vad.id().into(),
                sha256: vad.sha256().into(),
            };
            for (s, e) in
                findings::silence_spans(&speech.speech, speech.audio_end_ms, presence, min_ms)
            {
                found.push(Finding {
                    label: verdict::Label::Silence,
                    severity: Default::default(),
                    track: verdict::Track::Microphone,
                    start_ms: s,
                    end_ms: e,
                    confidence: 1.0,
                    model: vad.clone(),
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
        let partial_reason = self.incomplete(stages, &visual_errors).reason();
        let partial = partial_reason.is_some();
        let decision = policy::decide(policy, &found, partial);
        Verdict {
            schema_version: SCHEMA_VERSION,
            recording: RecordingInfo {
                id: self.recording.id.clone(),
                source: self.recording.source.clone(),
                sha256: report.sha256.clone(),
                duration_ms: end_ms,
                partial,
                teacher_id: self.teacher_id.map(str::to_string),
                partial_reason,
                error: None,
            },
            decision,
            findings: found,
            stats: self.stats(stages, end_ms),
            policy: PolicyRef::from(policy),
            models: models.uses(),
            created_at: verdict::now_rfc3339(),
        }
    }

    /// The one place where everything that kept part of the recording from the models becomes
    /// the partial reason: the slicer's limits and breaks, slices the models failed on,
    /// findings that could not be finished, stages that stopped, speech errors, and a desktop
    /// track that shows a face.
    fn incomplete(&self, stages: &StageResults<'_>, visual_errors: &[String]) -> Incomplete {
        let mut why = Incomplete::default();
        if let Some(r) = &self.report.partial_reason {
            why.add(r.clone());
        }
        let slice_errors = &stages.dispatcher.slice_errors;
        if let Some(first) = slice_errors.first() {
            why.add(format!(
                "{} slices could not be analysed: {first}",
                slice_errors.len()
            ));
        }
        for e in visual_errors {
            why.add(e.clone());
        }
        for e in stages.failures.reasons() {
            why.add(e.clone());
        }
        for e in &stages.speech.errors {
            why.add(e.clone());
        }
        if let Some(r) = stages.dispatcher.desktop_faces.reason() {
            why.add(r);
        }
        why
    }

    fn stats(&self, stages: &StageResults<'_>, end_ms: u64) -> Stats {
        let (models, report, speech) = (self.models, self.report, &stages.speech);
        let mut stats = Stats {
            duration_ms: end_ms,
            slices: report.tracks.iter().map(|t| t.sampled).sum(),
            wall_ms: self.wall_ms,
            realtime_factor: Stats::realtime_factor_of(end_ms, self.wall_ms),
            ..Default::default()
        };
        let mut stage = |name: &str, wall_ms: u64, frames: u64| {
            stats
                .stages
                .insert(name.into(), StageStats { wall_ms, frames });
        };
        stage(
            "demux",
            report.stages.demux_ms,
            report.tracks.iter().map(|t| t.frames).sum(),
        );
        stage(
            "video_slicing",
            report.stages.video_ms,
            report.tracks.iter().map(|t| t.decoded).sum(),
        );
        stage("audio_decode", report.stages.audio_ms, 0);
        for (k, (ms, n)) in &stages.dispatcher.stage_ms {
            stage(k, *ms, *n);
        }
        stage("speech", speech.busy_ms, speech.whisper_windows);
        // Inside the speech stage: VAD chunks, Whisper windows encoded, Whisper decoder runs.
        for (name, wall_ms, frames) in [
            ("speech_vad", speech.vad_ms, speech.vad_chunks),
            (
                "speech_whisper_encode",
                speech.encode_ms,
                speech.whisper_windows,
            ),
            (
                "speech_whisper_decode",
                speech.decode_ms,
                speech.whisper_decoder_steps,
            ),
        ] {
            if frames > 0 {
                stage(name, wall_ms, frames);
            }
        }
        let calls = &stages.calls;
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut model_calls = BTreeMap::new();
        model_calls.insert(models.face_detector.id().to_string(), c(&calls.face_detect));
        model_calls.insert(models.face_embedder.id().to_string(), c(&calls.face_embed));
        model_calls.insert(models.nudity_ref().id, c(&calls.nudity));
        if let Some(o) = &models.ocr {
            model_calls.insert(o.id().to_string(), c(&calls.ocr));
        }
        if let Some(v) = &models.vad {
            model_calls.insert(v.id().to_string(), speech.vad_chunks);
        }
        let mut gate_savings = stages.dispatcher.gate_savings.clone();
        if let Some(w) = &models.whisper {
            // Encoder passes (30 s windows); decoder runs separately, as batching shares them.
            model_calls.insert(w.id().to_string(), speech.whisper_windows);
            model_calls.insert(
                format!("{}-decoder-steps", w.id()),
                speech.whisper_decoder_steps,
            );
            gate_savings.insert(
                "whisper_speech_only".into(),
                speech.skipped_audio_ms / 30_000,
            );
        }
        let undecoded: u64 = report.tracks.iter().map(|t| t.gap_frames_dropped).sum();
        if undecoded > 0 {
            // Inter frames of unchanged gaps (`decode = "adaptive"`): never decoded.
            gate_savings.insert("unchanged_gap_frames".into(), undecoded);
        }
        stats.model_calls = model_calls;
        stats.gate_savings = gate_savings;
        stats
    }
}
