//! The models one policy needs, loaded once per process and shared by every recording and
//! model worker (loading them costs about 2 s, a quarter of a 2-minute scan).

use crate::models::embed::FaceEmbedder;
use crate::models::face::{FaceDetector, FaceDetectorKind};
use crate::models::nsfw::{NsfwClassifier, NudeNetDetector};
use crate::models::ocr::Ocr;
use crate::models::vad::Vad;
use crate::models::whisper::Whisper;
use crate::models::{ModelHome, ModelOptions};
use crate::policy::{self, Policy};
use crate::verdict::{ModelRef, ModelUse};

use super::AuditError;

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
    /// [`Self::load`] from async code (a service or worker start-up), on a blocking thread.
    pub async fn load_blocking(policy: &Policy, workers: usize) -> Result<Self, String> {
        let policy = policy.clone();
        tokio::task::spawn_blocking(move || Self::load(&policy, &ModelHome::locate(), workers))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Loads the policy's models with one session per worker.
    pub fn load(policy: &Policy, home: &ModelHome, workers: usize) -> Result<Self, AuditError> {
        let opts = ModelOptions {
            intra_threads: policy.models.threads.max(1),
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
            intra_threads: single.intra_threads.max(cores.min(4)),
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
        // each.
        let (speech, vision) = if cores > 1 {
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

    pub(crate) fn nudity_ref(&self) -> ModelRef {
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
