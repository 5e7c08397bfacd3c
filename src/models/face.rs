//! Face detection: YuNet (default; boxes + 5 landmarks for alignment) and UltraFace RFB-320
//! (faster, boxes only).

use std::path::Path;

use image::RgbImage;
use ort::value::TensorRef;
use serde::Serialize;

use super::imageops::{resize_rgb, ScratchPool};
use super::{load_model, nms, LoadedModel, ModelError, ModelHome, ModelOptions, Result};

/// One detected face, in frame pixels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Face {
    /// `[x, y, w, h]` in frame pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Right eye, left eye, nose tip, right mouth corner, left mouth corner (the subject's
    /// right, i.e. the image-left eye first), in frame pixels. `None` for detectors without
    /// landmarks.
    pub landmarks: Option<[[f32; 2]; 5]>,
}

impl Face {
    pub fn area(&self) -> f32 {
        self.bbox[2].max(0.0) * self.bbox[3].max(0.0)
    }
}

/// Which detector to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaceDetectorKind {
    #[default]
    YuNet,
    UltraFace,
}

/// A face detector of either kind.
pub enum FaceDetector {
    YuNet(YuNet),
    UltraFace(UltraFace),
}

impl FaceDetector {
    pub fn load(kind: FaceDetectorKind, home: &ModelHome, opts: &ModelOptions) -> Result<Self> {
        Ok(match kind {
            FaceDetectorKind::YuNet => Self::YuNet(YuNet::load(&home.yunet(), opts)?),
            FaceDetectorKind::UltraFace => {
                Self::UltraFace(UltraFace::load(&home.ultraface(), opts)?)
            }
        })
    }
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        match self {
            Self::YuNet(m) => m.detect(img),
            Self::UltraFace(m) => m.detect(img),
        }
    }
    pub fn id(&self) -> &'static str {
        match self {
            Self::YuNet(_) => YuNet::ID,
            Self::UltraFace(_) => UltraFace::ID,
        }
    }
    pub fn sha256(&self) -> &str {
        match self {
            Self::YuNet(m) => m.sha256(),
            Self::UltraFace(m) => m.sha256(),
        }
    }
}

fn input_err(model: &str, reason: &str) -> ModelError {
    ModelError::Input {
        model: model.to_string(),
        reason: reason.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// YuNet
// ---------------------------------------------------------------------------------------------

/// YuNet 2023mar (OpenCV zoo), weights folded to fp32.
///
/// The network has a fixed input (640×640 as exported); larger frames are scaled to fit, and
/// every frame is placed
/// at the top-left of a zero canvas (the padding the model was trained with), so mapping back
/// is a single division by the scale. Each of the strides 8/16/32 gives per-cell `cls`, `obj`
/// (score = sqrt(cls·obj)), `bbox` (centre offset in cells, log size) and `kps` (5 points as
/// cell offsets).
pub struct YuNet {
    model: LoadedModel,
    input: String,
    in_w: usize,
    in_h: usize,
    /// Output names per stride: (stride, cls, obj, bbox, kps).
    heads: Vec<(usize, String, String, String, String)>,
    pub score_threshold: f32,
    pub nms_threshold: f32,
    /// Upper bound on candidates going into NMS (keeps worst-case cost bounded on noise).
    pub top_k: usize,
    scratch: ScratchPool<f32>,
}

impl YuNet {
    pub const ID: &'static str = "yunet-2023mar-fp32";

    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let model = load_model(path, opts)?;
        let (input, shape) = model.pool.first_input()?;
        let dim = |i: usize, d: usize| super::fixed_dim(&shape, i, d);
        let (in_h, in_w) = (dim(2, 640), dim(3, 640));
        if in_w % 32 != 0 || in_h % 32 != 0 {
            return Err(model
                .pool
                .output_err(format!("input {in_w}x{in_h} is not a multiple of 32")));
        }
        let names = model.pool.output_names();
        let mut heads = Vec::new();
        for stride in [8usize, 16, 32] {
            let find = |kind: &str| {
                let n = format!("{kind}_{stride}");
                names.iter().find(|x| **x == n).cloned()
            };
            match (find("cls"), find("obj"), find("bbox"), find("kps")) {
                (Some(c), Some(o), Some(b), Some(k)) => heads.push((stride, c, o, b, k)),
                _ => {
                    return Err(model.pool.output_err(format!(
                        "missing cls/obj/bbox/kps outputs for stride {stride}; outputs: {names:?}"
                    )))
                }
            }
        }
        Ok(Self {
            model,
            input,
            in_w,
            in_h,
            heads,
            score_threshold: 0.6,
            nms_threshold: 0.3,
            top_k: 5000,
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
    /// Model input size (width, height).
    pub fn input_size(&self) -> (usize, usize) {
        (self.in_w, self.in_h)
    }

    /// Writes the model input (NCHW, BGR 0..255, top-left letterbox) into `out` and returns
    /// the scale applied to the frame.
    pub fn preprocess(&self, img: &RgbImage, out: &mut Vec<f32>) -> Result<f32> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(input_err(&self.model.file, "empty image"));
        }
        // Shrink to fit, never enlarge: the detector was trained at native resolution and
        // OpenCV runs it unscaled; enlarging only adds interpolation blur.
        let scale = (self.in_w as f32 / w as f32)
            .min(self.in_h as f32 / h as f32)
            .min(1.0);
        let nw = ((w as f32 * scale).round() as u32).clamp(1, self.in_w as u32);
        let nh = ((h as f32 * scale).round() as u32).clamp(1, self.in_h as u32);
        let resized =
            resize_rgb(img, nw, nh).ok_or_else(|| input_err(&self.model.file, "cannot resize"))?;
        let plane = self.in_w * self.in_h;
        out.clear();
        out.resize(3 * plane, 0.0);
        let raw = resized.as_raw();
        for y in 0..nh as usize {
            for x in 0..nw as usize {
                let s = (y * nw as usize + x) * 3;
                let d = y * self.in_w + x;
                out[d] = raw[s + 2] as f32; // B
                out[plane + d] = raw[s + 1] as f32; // G
                out[2 * plane + d] = raw[s] as f32; // R
            }
        }
        // Scale actually applied per axis may differ by rounding; use the mean for mapping.
        Ok(((nw as f32 / w as f32) + (nh as f32 / h as f32)) / 2.0)
    }

    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        let mut buf = self.scratch.take();
        let scale = self.preprocess(img, &mut buf)?;
        let pool = &self.model.pool;
        let mut faces = Vec::new();
        {
            let tensor =
                TensorRef::from_array_view(([1usize, 3, self.in_h, self.in_w], buf.as_slice()))
                    .map_err(|e| pool.run_err(e))?;
            let mut session = pool.checkout();
            let outputs = session
                .run(vec![(
                    std::borrow::Cow::Borrowed(self.input.as_str()),
                    ort::session::SessionInputValue::from(tensor),
                )])
                .map_err(|e| pool.run_err(e))?;
            for (stride, cls_n, obj_n, bbox_n, kps_n) in &self.heads {
                let get = |n: &str| -> Result<&[f32]> {
                    let v = outputs
                        .get(n)
                        .ok_or_else(|| pool.output_err(format!("output {n} missing")))?;
                    v.try_extract_tensor::<f32>()
                        .map(|(_, d)| d)
                        .map_err(|e| pool.run_err(e))
                };
                let (cls, obj, bbox, kps) = (get(cls_n)?, get(obj_n)?, get(bbox_n)?, get(kps_n)?);
                decode_yunet_level(
                    *stride,
                    self.in_w / stride,
                    self.in_h / stride,
                    cls,
                    obj,
                    bbox,
                    kps,
                    self.score_threshold,
                    &mut faces,
                )
                .map_err(|r| pool.output_err(r))?;
            }
        }
        self.scratch.give(buf);
        // Undo the letterbox: top-left placement means only a scale.
        let inv = 1.0 / scale;
        let (fw, fh) = (img.width() as f32, img.height() as f32);
        for f in &mut faces {
            let x1 = (f.bbox[0] * inv).clamp(0.0, fw);
            let y1 = (f.bbox[1] * inv).clamp(0.0, fh);
            let x2 = ((f.bbox[0] + f.bbox[2]) * inv).clamp(0.0, fw);
            let y2 = ((f.bbox[1] + f.bbox[3]) * inv).clamp(0.0, fh);
            f.bbox = [x1, y1, x2 - x1, y2 - y1];
            if let Some(l) = f.landmarks.as_mut() {
                for p in l.iter_mut() {
                    p[0] *= inv;
                    p[1] *= inv;
                }
            }
        }
        Ok(finish_faces(faces, self.nms_threshold, self.top_k))
    }
}

/// Sorts by score, caps to `top_k`, applies NMS and drops degenerate boxes.
fn finish_faces(mut faces: Vec<Face>, nms_threshold: f32, top_k: usize) -> Vec<Face> {
    faces.retain(|f| f.bbox[2] > 1.0 && f.bbox[3] > 1.0 && f.score.is_finite());
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    faces.truncate(top_k);
    let boxes: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox).collect();
    let scores: Vec<f32> = faces.iter().map(|f| f.score).collect();
    let keep = nms(&boxes, &scores, nms_threshold);
    keep.into_iter().map(|i| faces[i].clone()).collect()
}

/// Decodes one YuNet stride level into model-input coordinates (as OpenCV's
/// `FaceDetectorYN` does). Pure: unit-tested.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_yunet_level(
    stride: usize,
    cols: usize,
    rows: usize,
    cls: &[f32],
    obj: &[f32],
    bbox: &[f32],
    kps: &[f32],
    score_threshold: f32,
    out: &mut Vec<Face>,
) -> std::result::Result<(), String> {
    let n = cols * rows;
    if cls.len() < n || obj.len() < n || bbox.len() < 4 * n || kps.len() < 10 * n {
        return Err(format!(
            "stride {stride}: output sizes cls {} obj {} bbox {} kps {} do not fit a {cols}x{rows} grid",
            cls.len(),
            obj.len(),
            bbox.len(),
            kps.len()
        ));
    }
    let s = stride as f32;
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let score = (cls[i].clamp(0.0, 1.0) * obj[i].clamp(0.0, 1.0)).sqrt();
            if !(score >= score_threshold) {
                continue;
            }
            let b = &bbox[i * 4..i * 4 + 4];
            let cx = (c as f32 + b[0]) * s;
            let cy = (r as f32 + b[1]) * s;
            let w = b[2].exp() * s;
            let h = b[3].exp() * s;
            let k = &kps[i * 10..i * 10 + 10];
            let mut lm = [[0.0f32; 2]; 5];
            for (j, p) in lm.iter_mut().enumerate() {
                *p = [(k[2 * j] + c as f32) * s, (k[2 * j + 1] + r as f32) * s];
            }
            out.push(Face {
                bbox: [cx - w / 2.0, cy - h / 2.0, w, h],
                score,
                landmarks: Some(lm),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// UltraFace
// ---------------------------------------------------------------------------------------------

/// UltraFace RFB-320: 320×240 input (the frame is stretched to it, as the model was
/// trained), RGB `(x-127)/128`, outputs `scores` [1,N,2] and already-decoded `boxes` [1,N,4]
/// (normalised x1,y1,x2,y2). About 4× faster than YuNet but gives no landmarks, so face
/// embeddings fall back to a less accurate box crop.
pub struct UltraFace {
    model: LoadedModel,
    input: String,
    scores_name: String,
    boxes_name: String,
    in_w: usize,
    in_h: usize,
    pub score_threshold: f32,
    pub nms_threshold: f32,
    scratch: ScratchPool<f32>,
}

impl UltraFace {
    pub const ID: &'static str = "ultraface-rfb320";

    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let model = load_model(path, opts)?;
        let (input, shape) = model.pool.first_input()?;
        let dim = |i: usize, d: usize| super::fixed_dim(&shape, i, d);
        let (in_h, in_w) = (dim(2, 240), dim(3, 320));
        let names = model.pool.output_names();
        let scores_name = super::pick_name(&names, &["scores"], 0)
            .ok_or_else(|| model.pool.output_err("no outputs"))?;
        let boxes_name = super::pick_name(&names, &["boxes"], 1)
            .ok_or_else(|| model.pool.output_err("one output only"))?;
        Ok(Self {
            model,
            input,
            scores_name,
            boxes_name,
            in_w,
            in_h,
            score_threshold: 0.7,
            nms_threshold: 0.3,
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
    pub fn input_size(&self) -> (usize, usize) {
        (self.in_w, self.in_h)
    }

    /// Writes the NCHW RGB `(x-127)/128` input (frame stretched to the model size).
    pub fn preprocess(&self, img: &RgbImage, out: &mut Vec<f32>) -> Result<()> {
        if img.width() == 0 || img.height() == 0 {
            return Err(input_err(&self.model.file, "empty image"));
        }
        let resized = resize_rgb(img, self.in_w as u32, self.in_h as u32)
            .ok_or_else(|| input_err(&self.model.file, "cannot resize"))?;
        let plane = self.in_w * self.in_h;
        out.clear();
        out.resize(3 * plane, 0.0);
        for (i, p) in resized.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (p[c] as f32 - 127.0) / 128.0;
            }
        }
        Ok(())
    }

    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        let mut buf = self.scratch.take();
        self.preprocess(img, &mut buf)?;
        let pool = &self.model.pool;
        let (fw, fh) = (img.width() as f32, img.height() as f32);
        let mut faces = Vec::new();
        {
            let tensor =
                TensorRef::from_array_view(([1usize, 3, self.in_h, self.in_w], buf.as_slice()))
                    .map_err(|e| pool.run_err(e))?;
            let mut session = pool.checkout();
            let outputs = session
                .run(vec![(
                    std::borrow::Cow::Borrowed(self.input.as_str()),
                    ort::session::SessionInputValue::from(tensor),
                )])
                .map_err(|e| pool.run_err(e))?;
            let get = |n: &str| -> Result<&[f32]> {
                let v = outputs
                    .get(n)
                    .ok_or_else(|| pool.output_err(format!("output {n} missing")))?;
                v.try_extract_tensor::<f32>()
                    .map(|(_, d)| d)
                    .map_err(|e| pool.run_err(e))
            };
            let (scores, boxes) = (get(&self.scores_name)?, get(&self.boxes_name)?);
            let n = scores.len() / 2;
            if boxes.len() < n * 4 {
                return Err(pool.output_err("boxes output shorter than scores"));
            }
            for i in 0..n {
                let s = scores[i * 2 + 1];
                if !(s >= self.score_threshold) {
                    continue;
                }
                let b = &boxes[i * 4..i * 4 + 4];
                let x1 = (b[0] * fw).clamp(0.0, fw);
                let y1 = (b[1] * fh).clamp(0.0, fh);
                let x2 = (b[2] * fw).clamp(0.0, fw);
                let y2 = (b[3] * fh).clamp(0.0, fh);
                faces.push(Face {
                    bbox: [x1, y1, x2 - x1, y2 - y1],
                    score: s,
                    landmarks: None,
                });
            }
        }
        self.scratch.give(buf);
        Ok(finish_faces(faces, self.nms_threshold, 5000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yunet_grid_decoding() {
        // 2x2 grid at stride 8; only cell (r=1, c=0) scores.
        let cls = [0.0, 0.0, 0.81, 0.0];
        let obj = [0.0, 0.0, 1.0, 0.0];
        let mut bbox = [0.0f32; 16];
        bbox[8..12].copy_from_slice(&[0.5, 0.5, (2.0f32).ln(), 0.0]);
        let mut kps = [0.0f32; 40];
        kps[20] = 0.25;
        kps[21] = 0.75;
        let mut out = Vec::new();
        decode_yunet_level(8, 2, 2, &cls, &obj, &bbox, &kps, 0.5, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert!((f.score - 0.9).abs() < 1e-6);
        // centre (0.5*8, 1.5*8) = (4, 12); w = 16, h = 8
        assert_eq!(f.bbox, [-4.0, 8.0, 16.0, 8.0]);
        assert_eq!(f.landmarks.unwrap()[0], [2.0, 14.0]);
        assert!(decode_yunet_level(8, 3, 3, &cls, &obj, &bbox, &kps, 0.5, &mut out).is_err());
    }

    #[test]
    fn finish_applies_nms_and_drops_degenerate() {
        let f = |x: f32, s: f32| Face {
            bbox: [x, 0.0, 10.0, 10.0],
            score: s,
            landmarks: None,
        };
        let out = finish_faces(
            vec![
                f(0.0, 0.7),
                f(1.0, 0.9),
                f(100.0, 0.8),
                Face {
                    bbox: [0.0, 0.0, 0.5, 9.0],
                    score: 1.0,
                    landmarks: None,
                },
            ],
            0.3,
            10,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        assert_eq!(out[1].score, 0.8);
    }
}
