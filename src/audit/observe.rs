//! Per-slice model work, run on the worker threads: what the models see in one slice. Nothing
//! here decides a finding; that needs the time series (see `findings`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use image::RgbImage;

use super::AuditModels;
use crate::models::face::Face;
use crate::models::ocr::OcrLine;
use crate::policy::Policy;
use crate::slice::frame::THUMB;

/// Identity of the people on a camera slice, relative to the enrolled teacher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Identity {
    /// No teacher templates were given.
    NotChecked,
    NoFace,
    /// A face matched the teacher's template.
    Teacher {
        similarity: f32,
    },
    /// Faces good enough to judge were seen and none is the teacher.
    Mismatch {
        best_similarity: f32,
    },
    /// Faces were seen but none was large or sharp enough to judge: unknown, not a mismatch.
    Unverified,
}

#[derive(Debug, Clone)]
pub struct CameraObservation {
    pub faces: Vec<Face>,
    pub identity: Identity,
    pub nudity: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct DesktopObservation {
    pub nudity: Option<f32>,
    /// `None` when the OCR gate skipped this slice (not a new slide).
    pub ocr: Option<Vec<OcrLine>>,
    /// Camera-sized faces the detector found, when this slice was probed: the role comes from
    /// the untrusted file name, so a "screen" that shows a face most of the time is reported.
    pub faces: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum Observation {
    Camera(CameraObservation),
    Desktop(DesktopObservation),
}

/// Model calls per model id, shared by the workers.
#[derive(Debug, Default)]
pub struct CallCounter {
    pub face_detect: AtomicU64,
    pub face_embed: AtomicU64,
    pub nudity: AtomicU64,
    pub ocr: AtomicU64,
}

impl CallCounter {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the camera models on one slice.
pub fn observe_camera(
    models: &AuditModels,
    policy: &Policy,
    templates: &[Vec<f32>],
    image: &RgbImage,
    calls: &Arc<CallCounter>,
) -> Result<CameraObservation, String> {
    let fp = &policy.face;
    CallCounter::bump(&calls.face_detect);
    let mut faces = models
        .face_detector
        .detect(image)
        .map_err(|e| e.to_string())?;
    faces.retain(|f| f.score >= fp.detection_score_min);
    faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
    let identity = if templates.is_empty() {
        Identity::NotChecked
    } else if faces.is_empty() {
        Identity::NoFace
    } else {
        let mut best: Option<f32> = None;
        for face in &faces {
            let short_side = face.bbox[2].min(face.bbox[3]);
            if short_side < fp.min_face_px as f32 || face_blur(image, face) < fp.blur_min {
                continue;
            }
            CallCounter::bump(&calls.face_embed);
            let emb = models
                .face_embedder
                .embed(image, face)
                .map_err(|e| e.to_string())?;
            let sim = templates
                .iter()
                .map(|t| crate::models::embed::cosine(t, &emb))
                .fold(f32::MIN, f32::max);
            best = Some(best.map_or(sim, |b| b.max(sim)));
            if sim >= fp.identity_threshold {
                break;
            }
        }
        match best {
            None => Identity::Unverified,
            Some(s) if s >= fp.identity_threshold => Identity::Teacher { similarity: s },
            Some(s) => Identity::Mismatch { best_similarity: s },
        }
    };
    let nudity = nudity_score(models, image, calls)?;
    Ok(CameraObservation {
        faces,
        identity,
        nudity,
    })
}

/// Runs the desktop models on one slice; OCR only when `run_ocr` (the slide is new), the face
/// detector only when `probe_faces` (with the policy's detection threshold).
pub fn observe_desktop(
    models: &AuditModels,
    policy: &Policy,
    image: &RgbImage,
    run_ocr: bool,
    probe_faces: bool,
    calls: &Arc<CallCounter>,
) -> Result<DesktopObservation, String> {
    let faces = if probe_faces {
        CallCounter::bump(&calls.face_detect);
        let found = models
            .face_detector
            .detect(image)
            .map_err(|e| e.to_string())?;
        // Only faces a camera would show count (at least an eighth of the picture's height):
        // a presenter's webcam thumbnail in a screen share does not make the share a camera.
        let min = policy.face.detection_score_min;
        let min_h = image.height() as f32 / 8.0;
        Some(
            found
                .iter()
                .filter(|f| f.score >= min && f.bbox[3] >= min_h)
                .count(),
        )
    } else {
        None
    };
    let nudity = nudity_score(models, image, calls)?;
    let ocr = match (&models.ocr, run_ocr) {
        (Some(ocr), true) => {
            CallCounter::bump(&calls.ocr);
            Some(ocr.read(image).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    Ok(DesktopObservation { nudity, ocr, faces })
}

fn nudity_score(
    models: &AuditModels,
    image: &RgbImage,
    calls: &Arc<CallCounter>,
) -> Result<Option<f32>, String> {
    CallCounter::bump(&calls.nudity);
    match &models.nudity {
        super::NudityModel::OpenNsfw(m) => m.score(image).map(Some).map_err(|e| e.to_string()),
        super::NudityModel::NudeNet(m) => {
            let dets = m.detect(image).map_err(|e| e.to_string())?;
            Ok(Some(
                dets.iter()
                    .filter(|d| d.label.ends_with("_EXPOSED") && is_sexual(d.label))
                    .map(|d| d.score)
                    .fold(0.0, f32::max),
            ))
        }
    }
}

/// NudeNet classes that count as nudity (faces and covered parts do not).
fn is_sexual(label: &str) -> bool {
    ["GENITALIA", "BREAST_EXPOSED", "BUTTOCKS", "ANUS"]
        .iter()
        .any(|k| label.contains(k))
        && !label.starts_with("MALE_BREAST")
}

/// Variance of the Laplacian of the face crop's luma: low means blurred (or tiny, upscaled).
pub fn face_blur(image: &RgbImage, face: &Face) -> f32 {
    let (w, h) = image.dimensions();
    let x0 = face.bbox[0].max(0.0) as u32;
    let y0 = face.bbox[1].max(0.0) as u32;
    let x1 = ((face.bbox[0] + face.bbox[2]) as u32).min(w);
    let y1 = ((face.bbox[1] + face.bbox[3]) as u32).min(h);
    if x1 < x0 + 3 || y1 < y0 + 3 {
        return 0.0;
    }
    let luma = |x: u32, y: u32| {
        let p = image.get_pixel(x, y).0;
        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
    };
    let (mut sum, mut sum2, mut n) = (0.0f64, 0.0f64, 0u32);
    for y in y0 + 1..y1 - 1 {
        for x in x0 + 1..x1 - 1 {
            let l = luma(x - 1, y) + luma(x + 1, y) + luma(x, y - 1) + luma(x, y + 1)
                - 4.0 * luma(x, y);
            sum += f64::from(l);
            sum2 += f64::from(l) * f64::from(l);
            n += 1;
        }
    }
    let mean = sum / f64::from(n);
    (sum2 / f64::from(n) - mean * mean) as f32
}

/// A 16×16 grey signature of an RGB slice for the frame-difference gate.
pub fn rgb_thumbnail(image: &RgbImage) -> [u8; THUMB * THUMB] {
    let (w, h) = image.dimensions();
    let mut out = [0u8; THUMB * THUMB];
    if w == 0 || h == 0 {
        return out;
    }
    for gy in 0..THUMB {
        for gx in 0..THUMB {
            let mut sum = 0u32;
            for s in 0..4u32 {
                let x = ((gx as u32 * 2 + (s & 1)) * w + w / 4) / (THUMB as u32 * 2);
                let y = ((gy as u32 * 2 + (s >> 1)) * h + h / 4) / (THUMB as u32 * 2);
                let p = image.get_pixel(x.min(w - 1), y.min(h - 1)).0;
                sum += (u32::from(p[0]) * 77 + u32::from(p[1]) * 150 + u32::from(p[2]) * 29) >> 8;
            }
            out[gy * THUMB + gx] = (sum / 4) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_measure_separates_sharp_from_flat() {
        let mut img = RgbImage::new(64, 64);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let v = if (x / 2 + y / 2) % 2 == 0 { 255 } else { 0 };
            *p = image::Rgb([v, v, v]);
        }
        let face = Face {
            bbox: [0.0, 0.0, 64.0, 64.0],
            score: 1.0,
            landmarks: None,
        };
        assert!(face_blur(&img, &face) > 1000.0);
        let flat = RgbImage::from_pixel(64, 64, image::Rgb([90, 90, 90]));
        assert_eq!(face_blur(&flat, &face), 0.0);
    }

    #[test]
    fn thumbnails_of_equal_images_are_equal() {
        let a = RgbImage::from_pixel(640, 480, image::Rgb([10, 200, 30]));
        assert_eq!(rgb_thumbnail(&a), rgb_thumbnail(&a.clone()));
        let b = RgbImage::from_pixel(640, 480, image::Rgb([200, 10, 30]));
        assert_ne!(rgb_thumbnail(&a), rgb_thumbnail(&b));
    }
}
