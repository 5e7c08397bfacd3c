//! Face embeddings with SFace (OpenCV zoo 2021dec, weights folded to fp32) for identity
//! checks against an enrolled avatar.

use std::path::Path;

use image::RgbImage;
use ort::value::TensorRef;

use super::face::Face;
use super::imageops::{invert_affine, resize_rgb, similarity_transform, warp_affine, ScratchPool};
use super::{load_model, LoadedModel, ModelError, ModelOptions, Result};

/// The standard ArcFace 112×112 five-point template (right eye, left eye, nose, right and
/// left mouth corners) that SFace was trained on.
pub const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Embedding size of SFace.
pub const EMBEDDING_DIM: usize = 128;

/// OpenCV's published cosine threshold for SFace: above it, the same person.
pub const SFACE_SAME_PERSON_THRESHOLD: f32 = 0.363;

/// SFace: aligned 112×112 RGB 0..255 NCHW in, 128-d embedding out (L2-normalised here).
pub struct FaceEmbedder {
    model: LoadedModel,
    input: String,
    output: String,
    scratch: ScratchPool<f32>,
}

impl FaceEmbedder {
    pub const ID: &'static str = "sface-2021dec-fp32";

    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let model = load_model(path, opts)?;
        let inputs = model.pool.input_shapes();
        let input = inputs
            .first()
            .map(|i| i.0.clone())
            .ok_or_else(|| model.pool.output_err("no inputs"))?;
        let names = model.pool.output_names();
        let output = super::pick_name(&names, &["fc1"], 0)
            .ok_or_else(|| model.pool.output_err("no outputs"))?;
        Ok(Self {
            model,
            input,
            output,
            scratch: ScratchPool::default(),
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

    /// Cuts the face out of the frame as the 112×112 crop SFace expects.
    ///
    /// With landmarks: least-squares similarity transform of the five points onto
    /// [`ARCFACE_TEMPLATE`], bilinear warp. Without landmarks (UltraFace): a square crop
    /// centred on the box, enlarged so the face fills about the same part of the crop as in
    /// the template. This ignores in-plane rotation and the detector's box-to-face offset,
    /// which costs accuracy: in our checks a box crop of a face matched the aligned crop of
    /// the same face at cosine ~0.5 (aligned vs. aligned copies: > 0.9; different people:
    /// < 0.2), so mixing the two modes moves same-person scores close to the threshold. Use
    /// YuNet whenever identity matters.
    pub fn align(img: &RgbImage, face: &Face) -> Option<RgbImage> {
        if img.width() == 0 || img.height() == 0 {
            return None;
        }
        if let Some(lm) = face.landmarks {
            let m = similarity_transform(&lm, &ARCFACE_TEMPLATE)?;
            let inv = invert_affine(m)?;
            return Some(warp_affine(img, inv, 112, 112, Some([0, 0, 0])));
        }
        let [x, y, w, h] = face.bbox;
        if !(w > 1.0 && h > 1.0) {
            return None;
        }
        let side = w.max(h) * 1.1;
        let (cx, cy) = (x + w / 2.0, y + h / 2.0);
        let s = side / 112.0;
        let m = [s, 0.0, cx - side / 2.0, 0.0, s, cy - side / 2.0];
        Some(warp_affine(img, m, 112, 112, Some([0, 0, 0])))
    }

    /// Writes the NCHW RGB 0..255 input for an aligned 112×112 crop.
    pub fn preprocess(aligned: &RgbImage, out: &mut Vec<f32>) {
        let resized;
        let img = if aligned.dimensions() == (112, 112) {
            aligned
        } else {
            resized = resize_rgb(aligned, 112, 112).unwrap_or_else(|| RgbImage::new(112, 112));
            &resized
        };
        let plane = 112 * 112;
        out.clear();
        out.resize(3 * plane, 0.0);
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            out[i] = p[0] as f32;
            out[plane + i] = p[1] as f32;
            out[2 * plane + i] = p[2] as f32;
        }
    }

    /// Embeds an already aligned crop.
    pub fn embed_aligned(&self, aligned: &RgbImage) -> Result<Vec<f32>> {
        let mut buf = self.scratch.take();
        Self::preprocess(aligned, &mut buf);
        let pool = &self.model.pool;
        let mut v = {
            let tensor = TensorRef::from_array_view(([1usize, 3, 112, 112], buf.as_slice()))
                .map_err(|e| pool.run_err(e))?;
            let mut session = pool.checkout();
            let outputs = session
                .run(vec![(
                    std::borrow::Cow::Borrowed(self.input.as_str()),
                    ort::session::SessionInputValue::from(tensor),
                )])
                .map_err(|e| pool.run_err(e))?;
            let out = outputs
                .get(&self.output)
                .ok_or_else(|| pool.output_err("embedding output missing"))?;
            let (_, data) = out
                .try_extract_tensor::<f32>()
                .map_err(|e| pool.run_err(e))?;
            data.to_vec()
        };
        self.scratch.give(buf);
        if v.len() != EMBEDDING_DIM {
            return Err(pool.output_err(format!(
                "embedding has {} values, expected {EMBEDDING_DIM}",
                v.len()
            )));
        }
        l2_normalize(&mut v);
        Ok(v)
    }

    /// Aligns and embeds one detected face.
    pub fn embed(&self, img: &RgbImage, face: &Face) -> Result<Vec<f32>> {
        let aligned = Self::align(img, face).ok_or_else(|| ModelError::Input {
            model: self.model.file.clone(),
            reason: "face cannot be aligned (degenerate box or landmarks)".into(),
        })?;
        self.embed_aligned(&aligned)
    }
}

/// Scales a vector to unit length (left unchanged if it is all zeros).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Cosine similarity; 0 for empty, mismatched or zero vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na <= 0.0 || nb <= 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn align_with_template_landmarks_is_identity() {
        // A frame whose landmarks already sit on the template: the crop equals the frame.
        let mut img = RgbImage::new(112, 112);
        for (x, y, p) in img.enumerate_pixels_mut() {
            p.0 = [x as u8, y as u8, 128];
        }
        let face = Face {
            bbox: [20.0, 30.0, 70.0, 80.0],
            score: 1.0,
            landmarks: Some(ARCFACE_TEMPLATE),
        };
        let a = FaceEmbedder::align(&img, &face).unwrap();
        assert_eq!(a.get_pixel(50, 60), img.get_pixel(50, 60));
        let no_lm = Face {
            landmarks: None,
            ..face
        };
        assert_eq!(
            FaceEmbedder::align(&img, &no_lm).unwrap().dimensions(),
            (112, 112)
        );
        let degenerate = Face {
            bbox: [0.0, 0.0, 0.0, 0.0],
            score: 1.0,
            landmarks: None,
        };
        assert!(FaceEmbedder::align(&img, &degenerate).is_none());
    }
}
