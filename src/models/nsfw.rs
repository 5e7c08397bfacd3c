//! Content audit: the open_nsfw classifier (default) and the NudeNet body-part detector
//! (opt-in, see its licence note).

use std::path::Path;

use image::RgbImage;
use ort::value::TensorRef;
use serde::Serialize;

use super::imageops::{resize_rgb, ScratchPool};
use super::{load_model, nms, LoadedModel, ModelError, ModelOptions, Result};

fn input_err(model: &str, reason: &str) -> ModelError {
    ModelError::Input {
        model: model.to_string(),
        reason: reason.to_string(),
    }
}

/// Yahoo open_nsfw (ResNet-50 style classifier, BSD-2 weights).
///
/// Preprocessing as the original Caffe pipeline: resize to 256×256, centre crop 224×224,
/// BGR minus the per-channel means (104, 117, 123), NHWC. Output `[B, 2]` softmax;
/// P(nsfw) is column 1.
pub struct NsfwClassifier {
    model: LoadedModel,
    input: String,
    output: String,
    /// Largest batch the model accepts (1 when its batch dimension is fixed).
    max_batch: usize,
    scratch: ScratchPool<f32>,
}

const NSFW_MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];

impl NsfwClassifier {
    pub const ID: &'static str = "open-nsfw-1.0";

    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let model = load_model(path, opts)?;
        let (input, shape) = model.pool.first_input()?;
        if shape.len() == 4 && shape[3] > 0 && shape[3] != 3 {
            return Err(model.pool.output_err(format!(
                "expected NHWC input with 3 channels, got {shape:?}"
            )));
        }
        let max_batch = match shape.first() {
            Some(&b) if b > 0 => b as usize,
            _ => 16,
        };
        let output = model.pool.first_output()?;
        Ok(Self {
            model,
            input,
            output,
            max_batch,
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

    /// Appends one image's 224×224×3 NHWC tensor to `out`.
    pub fn preprocess_into(img: &RgbImage, out: &mut Vec<f32>) -> Option<()> {
        let r = resize_rgb(img, 256, 256)?;
        let raw = r.as_raw();
        out.reserve(224 * 224 * 3);
        for y in 16..240usize {
            for x in 16..240usize {
                let o = (y * 256 + x) * 3;
                out.push(raw[o + 2] as f32 - NSFW_MEAN_BGR[0]);
                out.push(raw[o + 1] as f32 - NSFW_MEAN_BGR[1]);
                out.push(raw[o] as f32 - NSFW_MEAN_BGR[2]);
            }
        }
        Some(())
    }

    /// P(nsfw) for one image.
    pub fn score(&self, img: &RgbImage) -> Result<f32> {
        let v = self.score_batch(&[img])?;
        v.first()
            .copied()
            .ok_or_else(|| self.model.pool.output_err("empty output"))
    }

    /// P(nsfw) for each image, batched through the model's batch dimension.
    pub fn score_batch(&self, imgs: &[&RgbImage]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(imgs.len());
        let pool = &self.model.pool;
        for chunk in imgs.chunks(self.max_batch.max(1)) {
            let mut buf = self.scratch.take();
            for img in chunk {
                if img.width() == 0 || img.height() == 0 {
                    self.scratch.give(buf);
                    return Err(input_err(&self.model.file, "empty image"));
                }
                Self::preprocess_into(img, &mut buf)
                    .ok_or_else(|| input_err(&self.model.file, "cannot resize"))?;
            }
            {
                let tensor =
                    TensorRef::from_array_view(([chunk.len(), 224, 224, 3], buf.as_slice()))
                        .map_err(|e| pool.run_err(e))?;
                let mut session = pool.checkout();
                let outputs = session
                    .run(vec![(
                        std::borrow::Cow::Borrowed(self.input.as_str()),
                        ort::session::SessionInputValue::from(tensor),
                    )])
                    .map_err(|e| pool.run_err(e))?;
                let v = outputs
                    .get(&self.output)
                    .ok_or_else(|| pool.output_err("output missing"))?;
                let (_, data) = v.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
                if data.len() < chunk.len() * 2 {
                    return Err(pool.output_err(format!(
                        "output has {} values for batch {}",
                        data.len(),
                        chunk.len()
                    )));
                }
                out.extend((0..chunk.len()).map(|i| data[i * 2 + 1]));
            }
            self.scratch.give(buf);
        }
        Ok(out)
    }
}

/// The 18 NudeNet classes, in model output order.
pub const NUDENET_LABELS: [&str; 18] = [
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
];

/// One NudeNet detection in frame pixels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NudeNetDetection {
    pub label: &'static str,
    pub score: f32,
    /// `[x, y, w, h]` in frame pixels.
    pub bbox: [f32; 4],
}

/// NudeNet 320n (YOLOv8n, 18 body-part classes).
///
/// LICENCE: the files bundled with this model are AGPL-3.0 (although the package metadata
/// says MIT). It is therefore opt-in and off by default; enabling it in a deployment means
/// accepting the AGPL terms for the model.
///
/// Input: the frame scaled so its long side is 320, centred on a black 320×320 square,
/// RGB/255 NCHW. Output `[B, 22, N]`: per anchor cx, cy, w, h then 18 class scores.
pub struct NudeNetDetector {
    model: LoadedModel,
    input: String,
    output: String,
    size: usize,
    pub score_threshold: f32,
    pub nms_threshold: f32,
    scratch: ScratchPool<f32>,
}

impl NudeNetDetector {
    pub const ID: &'static str = "nudenet-3.4-320n";

    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let model = load_model(path, opts)?;
        let (input, shape) = model.pool.first_input()?;
        let size = super::fixed_dim(&shape, 3, 320);
        let output = model.pool.first_output()?;
        Ok(Self {
            model,
            input,
            output,
            size,
            score_threshold: 0.25,
            nms_threshold: 0.45,
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

    /// Writes the padded NCHW input; returns (scale, pad_left, pad_top).
    pub fn preprocess(&self, img: &RgbImage, out: &mut Vec<f32>) -> Result<(f32, f32, f32)> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(input_err(&self.model.file, "empty image"));
        }
        let s = self.size as f32;
        let scale = s / w.max(h) as f32;
        let nw = ((w as f32 * scale).round() as u32).clamp(1, self.size as u32);
        let nh = ((h as f32 * scale).round() as u32).clamp(1, self.size as u32);
        let resized =
            resize_rgb(img, nw, nh).ok_or_else(|| input_err(&self.model.file, "cannot resize"))?;
        let pl = (self.size - nw as usize) / 2;
        let pt = (self.size - nh as usize) / 2;
        let plane = self.size * self.size;
        out.clear();
        out.resize(3 * plane, 0.0);
        let raw = resized.as_raw();
        for y in 0..nh as usize {
            for x in 0..nw as usize {
                let so = (y * nw as usize + x) * 3;
                let d = (y + pt) * self.size + x + pl;
                for c in 0..3 {
                    out[c * plane + d] = raw[so + c] as f32 / 255.0;
                }
            }
        }
        Ok((scale, pl as f32, pt as f32))
    }

    pub fn detect(&self, img: &RgbImage) -> Result<Vec<NudeNetDetection>> {
        let mut buf = self.scratch.take();
        let (scale, pl, pt) = self.preprocess(img, &mut buf)?;
        let pool = &self.model.pool;
        let dets = {
            let tensor =
                TensorRef::from_array_view(([1usize, 3, self.size, self.size], buf.as_slice()))
                    .map_err(|e| pool.run_err(e))?;
            let mut session = pool.checkout();
            let outputs = session
                .run(vec![(
                    std::borrow::Cow::Borrowed(self.input.as_str()),
                    ort::session::SessionInputValue::from(tensor),
                )])
                .map_err(|e| pool.run_err(e))?;
            let v = outputs
                .get(&self.output)
                .ok_or_else(|| pool.output_err("output missing"))?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
            if shape.len() != 3 || shape[1] != 4 + NUDENET_LABELS.len() as i64 {
                return Err(pool.output_err(format!("expected [B,22,N] output, got {shape:?}")));
            }
            decode_yolo(
                data,
                shape[2] as usize,
                self.score_threshold,
                self.nms_threshold,
            )
        };
        self.scratch.give(buf);
        let (fw, fh) = (img.width() as f32, img.height() as f32);
        Ok(dets
            .into_iter()
            .map(|(cls, score, b)| {
                let x1 = ((b[0] - pl) / scale).clamp(0.0, fw);
                let y1 = ((b[1] - pt) / scale).clamp(0.0, fh);
                let x2 = ((b[0] + b[2] - pl) / scale).clamp(0.0, fw);
                let y2 = ((b[1] + b[3] - pt) / scale).clamp(0.0, fh);
                NudeNetDetection {
                    label: NUDENET_LABELS[cls],
                    score,
                    bbox: [x1, y1, x2 - x1, y2 - y1],
                }
            })
            .collect())
    }
}

/// Decodes a YOLOv8 head laid out `[4 + classes, n]` (channel-major) into
/// (class, score, `[x, y, w, h]`) after class-agnostic NMS, as NudeNet does.
pub(crate) fn decode_yolo(
    data: &[f32],
    n: usize,
    score_threshold: f32,
    nms_threshold: f32,
) -> Vec<(usize, f32, [f32; 4])> {
    let classes = NUDENET_LABELS.len();
    if data.len() < (4 + classes) * n {
        return Vec::new();
    }
    let mut cand = Vec::new();
    for i in 0..n {
        let (mut best, mut best_s) = (0usize, f32::NEG_INFINITY);
        for c in 0..classes {
            let s = data[(4 + c) * n + i];
            if s > best_s {
                best_s = s;
                best = c;
            }
        }
        if !(best_s >= score_threshold) {
            continue;
        }
        let (cx, cy, w, h) = (data[i], data[n + i], data[2 * n + i], data[3 * n + i]);
        cand.push((best, best_s, [cx - w / 2.0, cy - h / 2.0, w, h]));
    }
    let boxes: Vec<[f32; 4]> = cand.iter().map(|c| c.2).collect();
    let scores: Vec<f32> = cand.iter().map(|c| c.1).collect();
    nms(&boxes, &scores, nms_threshold)
        .into_iter()
        .map(|i| cand[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolo_decoding() {
        let n = 3;
        let mut d = vec![0.0f32; 22 * n];
        // anchor 1: box centred (50,60) 20x10, class 5 score 0.9
        d[1] = 50.0;
        d[n + 1] = 60.0;
        d[2 * n + 1] = 20.0;
        d[3 * n + 1] = 10.0;
        d[(4 + 5) * n + 1] = 0.9;
        // anchor 2: same box, lower score -> suppressed
        d[2] = 51.0;
        d[n + 2] = 60.0;
        d[2 * n + 2] = 20.0;
        d[3 * n + 2] = 10.0;
        d[(4 + 3) * n + 2] = 0.5;
        let out = decode_yolo(&d, n, 0.25, 0.45);
        assert_eq!(out, vec![(5, 0.9, [40.0, 55.0, 20.0, 10.0])]);
        assert!(decode_yolo(&d[..10], n, 0.25, 0.45).is_empty());
    }

    #[test]
    fn nsfw_preprocess_layout() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([10, 20, 30]));
        let mut out = Vec::new();
        NsfwClassifier::preprocess_into(&img, &mut out).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
        assert_eq!(&out[..3], &[30.0 - 104.0, 20.0 - 117.0, 10.0 - 123.0]);
    }
}
