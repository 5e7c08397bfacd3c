//! `classguard enroll`: a teacher's verified photo in, a face template (embedding + model id) in the
//! store out. The photo itself is never stored.

use std::path::Path;

use crate::inspect::load_rgb;
use crate::models::embed::FaceEmbedder;
use crate::models::face::{FaceDetector, FaceDetectorKind};
use crate::models::{ModelHome, ModelOptions};
use crate::policy::{self, Policy};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{path}: no face found; use a clear, front-facing photo of the teacher")]
    NoFace { path: String },
    #[error("{path}: {count} faces found; the photo must show only the teacher")]
    SeveralFaces { path: String, count: usize },
    #[error("{0}")]
    Model(#[from] crate::models::ModelError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Enrolls every photo or none: all are checked before anything is stored.
pub fn enroll(
    store: &mut Store,
    policy: &Policy,
    teacher: &str,
    photos: &[impl AsRef<Path>],
) -> Result<usize, EnrollError> {
    let home = ModelHome::locate();
    let opts = ModelOptions::default();
    let kind = match policy.models.face_detector {
        policy::FaceDetector::Yunet => FaceDetectorKind::YuNet,
        policy::FaceDetector::Ultraface => FaceDetectorKind::UltraFace,
    };
    let detector = FaceDetector::load(kind, &home, &opts)?;
    let embedder = FaceEmbedder::load(&home.sface(), &opts)?;
    let mut embeddings = Vec::new();
    for photo in photos {
        let path = photo.as_ref();
        let image = load_rgb(path)?;
        let mut faces = detector.detect(&image)?;
        faces.retain(|f| f.score >= policy.face.detection_score_min);
        let shown = path.display().to_string();
        match faces.len() {
            0 => return Err(EnrollError::NoFace { path: shown }),
            1 => embeddings.push(embedder.embed(&image, &faces[0])?),
            n => {
                return Err(EnrollError::SeveralFaces {
                    path: shown,
                    count: n,
                })
            }
        }
    }
    for e in &embeddings {
        store.enroll_template(teacher, embedder.id(), e)?;
    }
    Ok(embeddings.len())
}
