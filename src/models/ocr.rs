//! OCR of shared screens with PP-OCRv6 small: a DB text detector followed by a CTC line
//! recogniser.
//!
//! Detection runs on the frame scaled so both sides are multiples of 32 (the network's total
//! stride) under a maximum side; the probability map is binarised, split into connected
//! components, each turned into a minimum-area rectangle, scored, grown by the DB "unclip"
//! offset (the network predicts shrunk text kernels) and mapped back to the frame. Each box
//! is cut out with a perspective warp at full resolution and read by the recogniser.

use std::collections::VecDeque;
use std::path::Path;

use image::RgbImage;
use ort::value::TensorRef;
use serde::Serialize;

use super::imageops::{perspective_transform, resize_rgb, warp_perspective, ScratchPool};
use super::{load_model, LoadedModel, ModelError, ModelHome, ModelOptions, Result};

/// One recognised text line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OcrLine {
    pub text: String,
    /// Corners in frame pixels: top-left, top-right, bottom-right, bottom-left.
    #[serde(rename = "box")]
    pub bbox: [[f32; 2]; 4],
    /// Mean per-character recognition confidence.
    pub score: f32,
}

/// Tunables; the defaults follow the reference PP-OCR pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct OcrOptions {
    /// The detector input's longer side is at most this (frames are never upscaled).
    /// Cost grows with the pixel count: ~0.8 s at 1280×736 on one thread.
    pub max_side: u32,
    /// Probability above which a pixel is text.
    pub det_threshold: f32,
    /// Minimum mean probability inside a box to keep it.
    pub box_threshold: f32,
    /// DB unclip ratio: how far a detected kernel is grown back to the full text box.
    pub unclip_ratio: f32,
    /// Lines whose recognition confidence is below this are dropped.
    pub min_text_score: f32,
    /// Lines recognised per model call. The reference batches 6, but on the CPU one line at a
    /// time is faster and much lighter: a batch pads every line to the widest, and its output
    /// holds lines x width/8 x 18,385 class scores (6 lines 997 px wide: 55 MB, more inside the
    /// model). Measured on the 10-minute whiteboard: scan 12.1 -> 9.3 s, peak RSS 636-693 ->
    /// 552-575 MB.
    pub rec_batch: usize,
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self {
            max_side: 1280,
            det_threshold: 0.3,
            box_threshold: 0.6,
            unclip_ratio: 1.6,
            min_text_score: 0.5,
            rec_batch: 1,
        }
    }
}

/// PP-OCRv6 small detector + recogniser.
pub struct Ocr {
    det: LoadedModel,
    rec: LoadedModel,
    det_input: String,
    rec_input: String,
    rec_height: usize,
    /// Recogniser classes: index 0 is the CTC blank, index i is `charset[i - 1]`.
    charset: Vec<String>,
    pub options: OcrOptions,
    scratch: ScratchPool<f32>,
}

impl Ocr {
    pub const ID: &'static str = "ppocrv6-small";

    pub fn load(home: &ModelHome, opts: &ModelOptions) -> Result<Self> {
        Self::load_files(&home.ocr_det(), &home.ocr_rec(), opts)
    }

    pub fn load_files(det_path: &Path, rec_path: &Path, opts: &ModelOptions) -> Result<Self> {
        let det = load_model(det_path, opts)?;
        let rec = load_model(rec_path, opts)?;
        let det_input = det
            .pool
            .input_shapes()
            .first()
            .map(|i| i.0.clone())
            .ok_or_else(|| det.pool.output_err("no inputs"))?;
        let (rec_input, rec_shape) = rec
            .pool
            .input_shapes()
            .first()
            .cloned()
            .ok_or_else(|| rec.pool.output_err("no inputs"))?;
        let rec_height = rec_shape
            .get(2)
            .copied()
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .unwrap_or(48);
        let charset = {
            let s = rec.pool.checkout();
            let meta = s.metadata().map_err(|e| rec.pool.run_err(e))?;
            let chars = meta.custom("character").ok_or_else(|| {
                rec.pool.output_err(
                    "model metadata has no `character` key (the recogniser's dictionary)",
                )
            })?;
            parse_charset(&chars)
        };
        Ok(Self {
            det,
            rec,
            det_input,
            rec_input,
            rec_height,
            charset,
            options: OcrOptions::default(),
            scratch: ScratchPool::default(),
        })
    }

    pub fn id(&self) -> &'static str {
        Self::ID
    }
    /// sha256 of the detector and recogniser files, joined by `+`.
    pub fn sha256(&self) -> String {
        format!("{}+{}", self.det.sha256, self.rec.sha256)
    }
    pub fn det_pool(&self) -> &super::SessionPool {
        &self.det.pool
    }
    pub fn rec_pool(&self) -> &super::SessionPool {
        &self.rec.pool
    }
    /// Greedy CTC decoding of raw recogniser output for one line (`t` steps × `c` classes).
    pub fn decode_ctc(&self, probs: &[f32], t: usize, c: usize) -> (String, f32) {
        if probs.len() < t * c {
            return (String::new(), 0.0);
        }
        ctc_greedy(probs, t, c, &self.charset)
    }
    pub fn charset_len(&self) -> usize {
        self.charset.len()
    }

    /// Detector input size for a frame: scaled under `max_side`, rounded to multiples of 32.
    pub fn det_size(&self, w: u32, h: u32) -> (u32, u32) {
        det_size(w, h, self.options.max_side)
    }

    /// Writes the detector input (NCHW, BGR, `(x/255 - 0.5)/0.5`) and returns its size.
    pub fn det_preprocess(&self, img: &RgbImage, out: &mut Vec<f32>) -> Result<(u32, u32)> {
        let (w, h) = self.det_size(img.width(), img.height());
        let r = resize_rgb(img, w, h).ok_or_else(|| self.input_err("empty image"))?;
        let plane = (w * h) as usize;
        out.clear();
        out.resize(3 * plane, 0.0);
        for (i, p) in r.as_raw().chunks_exact(3).enumerate() {
            out[i] = p[2] as f32 / 127.5 - 1.0;
            out[plane + i] = p[1] as f32 / 127.5 - 1.0;
            out[2 * plane + i] = p[0] as f32 / 127.5 - 1.0;
        }
        Ok((w, h))
    }

    fn input_err(&self, reason: &str) -> ModelError {
        ModelError::Input {
            model: self.det.file.clone(),
            reason: reason.to_string(),
        }
    }

    /// Text boxes in frame pixels (corners TL, TR, BR, BL), in reading order.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<[[f32; 2]; 4]>> {
        if img.width() < 4 || img.height() < 4 {
            return Ok(Vec::new());
        }
        let mut buf = self.scratch.take();
        let (dw, dh) = self.det_preprocess(img, &mut buf)?;
        let pool = &self.det.pool;
        let boxes = {
            let tensor =
                TensorRef::from_array_view(([1usize, 3, dh as usize, dw as usize], buf.as_slice()))
                    .map_err(|e| pool.run_err(e))?;
            let mut session = pool.checkout();
            let outputs = session
                .run(vec![(
                    std::borrow::Cow::Borrowed(self.det_input.as_str()),
                    ort::session::SessionInputValue::from(tensor),
                )])
                .map_err(|e| pool.run_err(e))?;
            let (_, v) = outputs
                .iter()
                .next()
                .ok_or_else(|| pool.output_err("no outputs"))?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
            let (mh, mw) = match shape.len() {
                4 => (shape[2] as usize, shape[3] as usize),
                3 => (shape[1] as usize, shape[2] as usize),
                _ => {
                    return Err(
                        pool.output_err(format!("unexpected probability map shape {shape:?}"))
                    )
                }
            };
            if data.len() < mh * mw {
                return Err(pool.output_err("probability map smaller than its shape"));
            }
            let o = &self.options;
            db_postprocess(
                &data[..mh * mw],
                mw,
                mh,
                o.det_threshold,
                o.box_threshold,
                o.unclip_ratio,
            )
            .into_iter()
            .map(|b| {
                let sx = img.width() as f32 / mw as f32;
                let sy = img.height() as f32 / mh as f32;
                b.map(|p| {
                    [
                        (p[0] * sx).clamp(0.0, img.width() as f32),
                        (p[1] * sy).clamp(0.0, img.height() as f32),
                    ]
                })
            })
            .collect::<Vec<_>>()
        };
        self.scratch.give(buf);
        Ok(sort_reading_order(boxes))
    }

    /// Reads text lines from a frame.
    pub fn read(&self, img: &RgbImage) -> Result<Vec<OcrLine>> {
        let boxes = self.detect(img)?;
        let crops: Vec<RgbImage> = boxes.iter().map(|b| crop_box(img, b)).collect();
        let refs: Vec<&RgbImage> = crops.iter().collect();
        let texts = self.recognize(&refs)?;
        Ok(boxes
            .into_iter()
            .zip(texts)
            .filter(|(_, (t, s))| !t.trim().is_empty() && *s >= self.options.min_text_score)
            .map(|(bbox, (text, score))| OcrLine { text, bbox, score })
            .collect())
    }

    /// Recognises already cut-out line images; returns (text, confidence) per image.
    pub fn recognize(&self, lines: &[&RgbImage]) -> Result<Vec<(String, f32)>> {
        let mut out = vec![(String::new(), 0.0f32); lines.len()];
        // Batch lines of similar aspect ratio together (less padding), as the reference does.
        let mut order: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].width() > 0 && lines[i].height() > 0)
            .collect();
        order.sort_by(|&a, &b| aspect(lines[a]).total_cmp(&aspect(lines[b])));
        let h = self.rec_height;
        let pool = &self.rec.pool;
        for chunk in order.chunks(self.options.rec_batch.max(1)) {
            let max_ratio = chunk
                .iter()
                .map(|&i| aspect(lines[i]))
                .fold(320.0 / 48.0, f32::max);
            // Cap absurd aspect ratios (a whole-screen-wide sliver) to bound the tensor size.
            let width = ((h as f32 * max_ratio.min(100.0)).ceil() as usize).max(8);
            tracing::debug!(target: "classguard::models", lines = chunk.len(), width, "ocr rec batch");
            let mut buf = self.scratch.take();
            buf.resize(chunk.len() * 3 * h * width, 0.0);
            for (bi, &i) in chunk.iter().enumerate() {
                rec_preprocess(
                    lines[i],
                    h,
                    width,
                    &mut buf[bi * 3 * h * width..(bi + 1) * 3 * h * width],
                );
            }
            {
                let tensor =
                    TensorRef::from_array_view(([chunk.len(), 3, h, width], buf.as_slice()))
                        .map_err(|e| pool.run_err(e))?;
                let mut session = pool.checkout();
                let outputs = session
                    .run(vec![(
                        std::borrow::Cow::Borrowed(self.rec_input.as_str()),
                        ort::session::SessionInputValue::from(tensor),
                    )])
                    .map_err(|e| pool.run_err(e))?;
                let (_, v) = outputs
                    .iter()
                    .next()
                    .ok_or_else(|| pool.output_err("no outputs"))?;
                let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| pool.run_err(e))?;
                if shape.len() != 3 || shape[0] as usize != chunk.len() {
                    return Err(
                        pool.output_err(format!("unexpected recogniser output shape {shape:?}"))
                    );
                }
                let (t, c) = (shape[1] as usize, shape[2] as usize);
                for (bi, &i) in chunk.iter().enumerate() {
                    let probs = &data[bi * t * c..(bi + 1) * t * c];
                    out[i] = ctc_greedy(probs, t, c, &self.charset);
                }
            }
            self.scratch.give(buf);
        }
        Ok(out)
    }
}

fn aspect(img: &RgbImage) -> f32 {
    img.width() as f32 / img.height().max(1) as f32
}

/// Parses the recogniser's `character` metadata (one symbol per line) and appends the space
/// the reference pipeline adds as the last class.
pub(crate) fn parse_charset(meta: &str) -> Vec<String> {
    let mut v: Vec<String> = meta
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if v.last().is_some_and(|l| l.is_empty()) {
        v.pop();
    }
    v.push(" ".to_string());
    v
}

/// Detector input size: scale so the longer side is at most `max_side` (never up), then
/// round each side to a multiple of 32 (at least 32).
pub(crate) fn det_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let long = w.max(h).max(1) as f32;
    let scale = (max_side.max(32) as f32 / long).min(1.0);
    let r = |v: u32| (((v as f32 * scale) / 32.0).round() as u32).max(1) * 32;
    (r(w), r(h))
}

/// Fills one recogniser input slot (`[3, h, width]`): the line scaled to height `h` keeping
/// its aspect (capped at `width`), BGR `(x/255-0.5)/0.5`, right-padded with zeros.
fn rec_preprocess(img: &RgbImage, h: usize, width: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|v| *v = 0.0);
    let rw = ((h as f32 * aspect(img)).ceil() as usize).clamp(1, width);
    let Some(r) = resize_rgb(img, rw as u32, h as u32) else {
        return;
    };
    let plane = h * width;
    for y in 0..h {
        for x in 0..rw {
            let s = (y * rw + x) * 3;
            let d = y * width + x;
            let raw = r.as_raw();
            out[d] = raw[s + 2] as f32 / 127.5 - 1.0;
            out[plane + d] = raw[s + 1] as f32 / 127.5 - 1.0;
            out[2 * plane + d] = raw[s] as f32 / 127.5 - 1.0;
        }
    }
}

/// Greedy CTC decoding: argmax per step, merge repeats, drop blanks (class 0).
/// Confidence is the mean max-probability of the emitted characters.
pub(crate) fn ctc_greedy(probs: &[f32], t: usize, c: usize, charset: &[String]) -> (String, f32) {
    let mut text = String::new();
    let mut conf_sum = 0.0f32;
    let mut n = 0usize;
    let mut prev = usize::MAX;
    for step in 0..t {
        let row = &probs[step * c..(step + 1) * c];
        let (mut best, mut best_p) = (0usize, f32::NEG_INFINITY);
        for (k, &p) in row.iter().enumerate() {
            if p > best_p {
                best_p = p;
                best = k;
            }
        }
        if best != 0 && best != prev {
            if let Some(ch) = charset.get(best - 1) {
                text.push_str(ch);
                conf_sum += best_p;
                n += 1;
            }
        }
        prev = best;
    }
    let conf = if n == 0 { 0.0 } else { conf_sum / n as f32 };
    (text, conf)
}

/// Cuts a (possibly rotated) quadrilateral out of the frame into an upright image; tall
/// crops (vertical text) are turned 90° so the recogniser reads them left to right.
pub fn crop_box(img: &RgbImage, b: &[[f32; 2]; 4]) -> RgbImage {
    let d = |p: [f32; 2], q: [f32; 2]| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
    let w = d(b[0], b[1]).max(d(b[2], b[3])).round().max(1.0) as u32;
    let h = d(b[0], b[3]).max(d(b[1], b[2])).round().max(1.0) as u32;
    let src = b.map(|p| [p[0] as f64, p[1] as f64]);
    let dst = [
        [0.0, 0.0],
        [w as f64, 0.0],
        [w as f64, h as f64],
        [0.0, h as f64],
    ];
    let crop = match perspective_transform(&dst, &src) {
        Some(m) => warp_perspective(img, &m, w, h),
        None => RgbImage::new(w, h),
    };
    if h as f32 / w as f32 >= 1.5 {
        image::imageops::rotate270(&crop)
    } else {
        crop
    }
}

/// Orders boxes top-to-bottom, and left-to-right within a line (boxes whose vertical centres
/// lie within half a line height of each other share a line).
pub(crate) fn sort_reading_order(mut boxes: Vec<[[f32; 2]; 4]>) -> Vec<[[f32; 2]; 4]> {
    let cy = |b: &[[f32; 2]; 4]| (b[0][1] + b[1][1] + b[2][1] + b[3][1]) / 4.0;
    let hgt = |b: &[[f32; 2]; 4]| ((b[3][1] + b[2][1]) - (b[0][1] + b[1][1])).abs() / 2.0;
    let minx = |b: &[[f32; 2]; 4]| b.iter().map(|p| p[0]).fold(f32::INFINITY, f32::min);
    boxes.sort_by(|a, b| cy(a).total_cmp(&cy(b)));
    let mut out = Vec::with_capacity(boxes.len());
    let mut line: Vec<[[f32; 2]; 4]> = Vec::new();
    let mut line_cy = 0.0f32;
    let mut line_h = 0.0f32;
    for b in boxes {
        if !line.is_empty() && (cy(&b) - line_cy).abs() > line_h.max(hgt(&b)) * 0.5 {
            line.sort_by(|a, b| minx(a).total_cmp(&minx(b)));
            out.append(&mut line);
        }
        if line.is_empty() {
            line_cy = cy(&b);
            line_h = hgt(&b);
        }
        line.push(b);
    }
    line.sort_by(|a, b| minx(a).total_cmp(&minx(b)));
    out.append(&mut line);
    out
}

// ---------------------------------------------------------------------------------------------
// DB post-processing
// ---------------------------------------------------------------------------------------------

/// A rotated rectangle: centre, unit axis `u` (along `w`), and side lengths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RotRect {
    cx: f32,
    cy: f32,
    ux: f32,
    uy: f32,
    w: f32,
    h: f32,
}

impl RotRect {
    fn corners(&self) -> [[f32; 2]; 4] {
        let (hx, hy) = (self.ux * self.w / 2.0, self.uy * self.w / 2.0);
        let (vx, vy) = (-self.uy * self.h / 2.0, self.ux * self.h / 2.0);
        order_points([
            [self.cx - hx - vx, self.cy - hy - vy],
            [self.cx + hx - vx, self.cy + hy - vy],
            [self.cx + hx + vx, self.cy + hy + vy],
            [self.cx - hx + vx, self.cy - hy + vy],
        ])
    }
}

/// Orders four corners as TL, TR, BR, BL (the reference `get_mini_boxes` rule: the two
/// left-most points give TL/BL by y, the two right-most give TR/BR by y).
pub(crate) fn order_points(mut p: [[f32; 2]; 4]) -> [[f32; 2]; 4] {
    p.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (tl, bl) = if p[1][1] > p[0][1] {
        (p[0], p[1])
    } else {
        (p[1], p[0])
    };
    let (tr, br) = if p[3][1] > p[2][1] {
        (p[2], p[3])
    } else {
        (p[3], p[2])
    };
    [tl, tr, br, bl]
}

/// Andrew's monotone chain convex hull (counter-clockwise, no repeated end point).
pub(crate) fn convex_hull(mut pts: Vec<[f32; 2]>) -> Vec<[f32; 2]> {
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: [f32; 2], a: [f32; 2], b: [f32; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut lower: Vec<[f32; 2]> = Vec::new();
    for &p in &pts {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0.0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<[f32; 2]> = Vec::new();
    for &p in pts.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0.0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// Minimum-area enclosing rectangle of a point set (rotating calipers over hull edges).
pub(crate) fn min_area_rect(points: Vec<[f32; 2]>) -> Option<RotRect> {
    let hull = convex_hull(points);
    if hull.is_empty() {
        return None;
    }
    if hull.len() < 3 {
        // A segment or a point: zero-height rectangle along it.
        let (a, b) = (hull[0], *hull.last()?);
        let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
        let (ux, uy) = if len > 0.0 {
            ((b[0] - a[0]) / len, (b[1] - a[1]) / len)
        } else {
            (1.0, 0.0)
        };
        return Some(RotRect {
            cx: (a[0] + b[0]) / 2.0,
            cy: (a[1] + b[1]) / 2.0,
            ux,
            uy,
            w: len,
            h: 0.0,
        });
    }
    let mut best: Option<(f32, RotRect)> = None;
    for i in 0..hull.len() {
        let (p, q) = (hull[i], hull[(i + 1) % hull.len()]);
        let len = ((q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2)).sqrt();
        if len <= 0.0 {
            continue;
        }
        let (ux, uy) = ((q[0] - p[0]) / len, (q[1] - p[1]) / len);
        let (mut min_u, mut max_u, mut min_v, mut max_v) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for h in &hull {
            let u = h[0] * ux + h[1] * uy;
            let v = -h[0] * uy + h[1] * ux;
            min_u = min_u.min(u);
            max_u = max_u.max(u);
            min_v = min_v.min(v);
            max_v = max_v.max(v);
        }
        let area = (max_u - min_u) * (max_v - min_v);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((min_u + max_u) / 2.0, (min_v + max_v) / 2.0);
            let rect = RotRect {
                cx: cu * ux - cv * uy,
                cy: cu * uy + cv * ux,
                ux,
                uy,
                w: max_u - min_u,
                h: max_v - min_v,
            };
            best = Some((area, rect));
        }
    }
    best.map(|(_, r)| r)
}

/// Mean of `map` over the pixels whose centres fall inside the convex quad `q`.
fn box_score(map: &[f32], w: usize, h: usize, q: &[[f32; 2]; 4]) -> f32 {
    let xmin = q
        .iter()
        .map(|p| p[0])
        .fold(f32::INFINITY, f32::min)
        .floor()
        .max(0.0) as usize;
    let xmax = (q
        .iter()
        .map(|p| p[0])
        .fold(f32::NEG_INFINITY, f32::max)
        .ceil()
        .max(0.0) as usize)
        .min(w.saturating_sub(1));
    let ymin = q
        .iter()
        .map(|p| p[1])
        .fold(f32::INFINITY, f32::min)
        .floor()
        .max(0.0) as usize;
    let ymax = (q
        .iter()
        .map(|p| p[1])
        .fold(f32::NEG_INFINITY, f32::max)
        .ceil()
        .max(0.0) as usize)
        .min(h.saturating_sub(1));
    let inside = |x: f32, y: f32| {
        let mut sign = 0i8;
        for i in 0..4 {
            let (a, b) = (q[i], q[(i + 1) % 4]);
            let c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
            // Points on an edge count as inside (as a filled polygon includes its outline).
            if c.abs() < 1e-3 {
                continue;
            }
            let s = if c > 0.0 { 1 } else { -1 };
            if sign == 0 {
                sign = s;
            } else if s != sign {
                return false;
            }
        }
        true
    };
    let (mut sum, mut n) = (0.0f64, 0usize);
    for y in ymin..=ymax {
        for x in xmin..=xmax {
            if inside(x as f32, y as f32) {
                sum += map[y * w + x] as f64;
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        (sum / n as f64) as f32
    }
}

/// DB post-processing of a `w`×`h` probability map into quads in map coordinates.
pub(crate) fn db_postprocess(
    map: &[f32],
    w: usize,
    h: usize,
    threshold: f32,
    box_threshold: f32,
    unclip_ratio: f32,
) -> Vec<[[f32; 2]; 4]> {
    const MIN_SIZE: f32 = 3.0;
    const MAX_CANDIDATES: usize = 1000;
    let mut label = vec![0u32; w * h];
    let mut next = 0u32;
    let mut out = Vec::new();
    let mut queue = VecDeque::new();
    for start in 0..w * h {
        if label[start] != 0 || !(map[start] > threshold) {
            continue;
        }
        next += 1;
        if next as usize > MAX_CANDIDATES * 4 {
            break;
        }
        // Flood fill (8-connected), recording each row's extreme pixels: the convex hull of
        // a component only depends on those.
        let mut extremes: std::collections::HashMap<usize, (usize, usize)> =
            std::collections::HashMap::new();
        label[start] = next;
        queue.push_back(start);
        while let Some(i) = queue.pop_front() {
            let (x, y) = (i % w, i / w);
            let e = extremes.entry(y).or_insert((x, x));
            e.0 = e.0.min(x);
            e.1 = e.1.max(x);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if label[j] == 0 && map[j] > threshold {
                        label[j] = next;
                        queue.push_back(j);
                    }
                }
            }
        }
        let mut pts = Vec::with_capacity(extremes.len() * 2);
        for (y, (x0, x1)) in extremes {
            pts.push([x0 as f32, y as f32]);
            if x1 != x0 {
                pts.push([x1 as f32, y as f32]);
            }
        }
        let Some(rect) = min_area_rect(pts) else {
            continue;
        };
        if rect.w.min(rect.h) < MIN_SIZE {
            continue;
        }
        let quad = rect.corners();
        if box_score(map, w, h, &quad) < box_threshold {
            continue;
        }
        // Unclip: offset the polygon outwards by area * ratio / perimeter. For a rectangle
        // the grown shape's minimum-area rectangle is the rectangle grown by that distance on
        // every side.
        let area = rect.w * rect.h;
        let perimeter = 2.0 * (rect.w + rect.h);
        if perimeter <= 0.0 {
            continue;
        }
        let dist = area * unclip_ratio / perimeter;
        let grown = RotRect {
            w: rect.w + 2.0 * dist,
            h: rect.h + 2.0 * dist,
            ..rect
        };
        if grown.w.min(grown.h) < MIN_SIZE + 2.0 {
            continue;
        }
        out.push(
            grown
                .corners()
                .map(|p| [p[0].clamp(0.0, w as f32), p[1].clamp(0.0, h as f32)]),
        );
        if out.len() >= MAX_CANDIDATES {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset_appends_space() {
        let c = parse_charset("a\nb\nc\n");
        assert_eq!(c, vec!["a", "b", "c", " "]);
    }

    #[test]
    fn ctc_merges_repeats_and_blanks() {
        let charset = parse_charset("a\nb");
        // classes: 0 blank, 1 a, 2 b, 3 space
        let steps = [1, 1, 0, 1, 2, 2, 3, 0];
        let mut probs = vec![0.0f32; steps.len() * 4];
        for (t, &k) in steps.iter().enumerate() {
            probs[t * 4 + k] = 0.9;
        }
        let (text, conf) = ctc_greedy(&probs, steps.len(), 4, &charset);
        assert_eq!(text, "aab ");
        assert!((conf - 0.9).abs() < 1e-6);
        assert_eq!(ctc_greedy(&[], 0, 4, &charset), (String::new(), 0.0));
    }

    #[test]
    fn det_size_multiples_of_32() {
        assert_eq!(det_size(1280, 720, 1280), (1280, 736));
        assert_eq!(det_size(1920, 1080, 960), (960, 544));
        assert_eq!(det_size(10, 5, 960), (32, 32));
    }

    #[test]
    fn min_rect_of_rotated_points() {
        let r = min_area_rect(vec![
            [0.0, 0.0],
            [10.0, 0.0],
            [10.0, 4.0],
            [0.0, 4.0],
            [5.0, 2.0],
        ])
        .unwrap();
        assert!((r.w.max(r.h) - 10.0).abs() < 1e-4 && (r.w.min(r.h) - 4.0).abs() < 1e-4);
        assert!((r.cx - 5.0).abs() < 1e-4 && (r.cy - 2.0).abs() < 1e-4);
        let c = r.corners();
        assert_eq!(c[0], [0.0, 0.0]);
        assert_eq!(c[2], [10.0, 4.0]);
        // 45° square of side sqrt(2)*5
        let d = min_area_rect(vec![[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0]]).unwrap();
        assert!((d.w * d.h - 50.0).abs() < 1e-3);
    }

    #[test]
    fn db_finds_a_text_block() {
        let (w, h) = (64, 32);
        let mut map = vec![0.0f32; w * h];
        for y in 10..18 {
            for x in 8..50 {
                map[y * w + x] = 0.9;
            }
        }
        let boxes = db_postprocess(&map, w, h, 0.3, 0.6, 1.6);
        assert_eq!(boxes.len(), 1);
        let b = boxes[0];
        // kernel 41x7 (pixel centres) grown by 41*7*1.6/96 ≈ 4.8 px per side.
        assert!(b[0][0] < 8.0 && b[0][0] > 1.0, "{b:?}");
        assert!(b[2][0] > 49.0 && b[2][0] < 56.0, "{b:?}");
        assert!(b[0][1] < 10.0 && b[2][1] > 17.0, "{b:?}");
        // Low-probability blob rejected by the box threshold.
        let weak: Vec<f32> = map.iter().map(|v| v * 0.5).collect();
        assert!(db_postprocess(&weak, w, h, 0.3, 0.6, 1.6).is_empty());
    }

    #[test]
    fn reading_order() {
        let b = |x: f32, y: f32| [[x, y], [x + 10.0, y], [x + 10.0, y + 10.0], [x, y + 10.0]];
        let sorted =
            sort_reading_order(vec![b(50.0, 41.0), b(0.0, 0.0), b(0.0, 40.0), b(30.0, 2.0)]);
        assert_eq!(
            sorted,
            vec![b(0.0, 0.0), b(30.0, 2.0), b(0.0, 40.0), b(50.0, 41.0)]
        );
    }

    #[test]
    fn crop_box_upright() {
        let img = RgbImage::from_pixel(100, 50, image::Rgb([200, 100, 50]));
        let c = crop_box(
            &img,
            &[[10.0, 10.0], [60.0, 10.0], [60.0, 30.0], [10.0, 30.0]],
        );
        assert_eq!(c.dimensions(), (50, 20));
        assert_eq!(c.get_pixel(25, 10).0, [200, 100, 50]);
        let tall = crop_box(
            &img,
            &[[10.0, 0.0], [20.0, 0.0], [20.0, 40.0], [10.0, 40.0]],
        );
        assert_eq!(tall.dimensions(), (40, 10));
    }
}
