//! Small image operations the models need: resizing into reusable buffers, bilinear sampling,
//! affine and perspective warps, and the linear algebra behind them. Kept here (rather than
//! pulling in an OpenCV binding) because each model needs only a handful of them and their
//! exact behaviour (borders, sampling centres) matters for matching the reference pipelines.

use fast_image_resize as fr;
use image::RgbImage;
use std::sync::Mutex;

/// A stack of reusable buffers. Wrappers take one per call and give it back, so steady-state
/// inference does not allocate input tensors; concurrent callers simply get separate buffers.
pub struct ScratchPool<T> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T> Default for ScratchPool<T> {
    fn default() -> Self {
        Self {
            free: Mutex::new(Vec::new()),
        }
    }
}

impl<T> ScratchPool<T> {
    pub fn take(&self) -> Vec<T> {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }
    pub fn give(&self, mut v: Vec<T>) {
        v.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < 8 {
            free.push(v);
        }
    }
}

/// Resizes an RGB image to exactly `w`×`h` (aspect not kept) with a bilinear convolution
/// (area-aware when shrinking, which avoids the aliasing a point-sampled bilinear shows on
/// screenshots). Returns `None` for empty sizes.
pub fn resize_rgb(src: &RgbImage, w: u32, h: u32) -> Option<RgbImage> {
    if src.width() == 0 || src.height() == 0 || w == 0 || h == 0 {
        return None;
    }
    if src.width() == w && src.height() == h {
        return Some(src.clone());
    }
    let src_view =
        fr::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fr::PixelType::U8x3)
            .ok()?;
    let mut dst = fr::images::Image::new(w, h, fr::PixelType::U8x3);
    let mut resizer = fr::Resizer::new();
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    resizer.resize(&src_view, &mut dst, &opts).ok()?;
    RgbImage::from_raw(w, h, dst.into_vec())
}

/// Bilinear sample at continuous pixel coordinates (pixel centres at integer coordinates,
/// as in OpenCV's `warpAffine`). Outside the image: `border` (constant) or the nearest
/// edge pixel when `border` is `None` (replicate).
#[inline]
pub fn sample_bilinear(img: &RgbImage, x: f32, y: f32, border: Option<[u8; 3]>) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if w == 0 || h == 0 || !x.is_finite() || !y.is_finite() {
        let b = border.unwrap_or([0, 0, 0]);
        return [b[0] as f32, b[1] as f32, b[2] as f32];
    }
    let x0 = x.floor();
    let y0 = y.floor();
    let fx = x - x0;
    let fy = y - y0;
    let (x0, y0) = (x0 as i64, y0 as i64);
    let raw = img.as_raw();
    let px = |xi: i64, yi: i64| -> [f32; 3] {
        let (xi, yi) = if xi < 0 || yi < 0 || xi >= w || yi >= h {
            match border {
                Some(b) => return [b[0] as f32, b[1] as f32, b[2] as f32],
                None => (xi.clamp(0, w - 1), yi.clamp(0, h - 1)),
            }
        } else {
            (xi, yi)
        };
        let o = ((yi * w + xi) * 3) as usize;
        [raw[o] as f32, raw[o + 1] as f32, raw[o + 2] as f32]
    };
    let p00 = px(x0, y0);
    let p10 = px(x0 + 1, y0);
    let p01 = px(x0, y0 + 1);
    let p11 = px(x0 + 1, y0 + 1);
    let mut out = [0.0f32; 3];
    for c in 0..3 {
        let top = p00[c] + (p10[c] - p00[c]) * fx;
        let bot = p01[c] + (p11[c] - p01[c]) * fx;
        out[c] = top + (bot - top) * fy;
    }
    out
}

/// Warps with an affine map given from *destination* to *source* coordinates
/// (`[a, b, c, d, e, f]`: `xs = a*x + b*y + c`, `ys = d*x + e*y + f`).
pub fn warp_affine(
    img: &RgbImage,
    dst_to_src: [f32; 6],
    out_w: u32,
    out_h: u32,
    border: Option<[u8; 3]>,
) -> RgbImage {
    let mut out = RgbImage::new(out_w, out_h);
    let [a, b, c, d, e, f] = dst_to_src;
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (xf, yf) = (x as f32, y as f32);
        let v = sample_bilinear(img, a * xf + b * yf + c, d * xf + e * yf + f, border);
        p.0 = [round_u8(v[0]), round_u8(v[1]), round_u8(v[2])];
    }
    out
}

/// Warps with a homography given from destination to source coordinates (row-major 3×3).
/// Used to cut rotated text boxes out of a frame; the border replicates edge pixels so that
/// boxes touching the frame edge do not get black bars that read as glyphs.
pub fn warp_perspective(img: &RgbImage, dst_to_src: &[f64; 9], out_w: u32, out_h: u32) -> RgbImage {
    let mut out = RgbImage::new(out_w, out_h);
    let m = dst_to_src;
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (xf, yf) = (x as f64, y as f64);
        let wz = m[6] * xf + m[7] * yf + m[8];
        let (xs, ys) = if wz.abs() < 1e-12 {
            (f64::NAN, f64::NAN)
        } else {
            (
                (m[0] * xf + m[1] * yf + m[2]) / wz,
                (m[3] * xf + m[4] * yf + m[5]) / wz,
            )
        };
        let v = sample_bilinear(img, xs as f32, ys as f32, None);
        p.0 = [round_u8(v[0]), round_u8(v[1]), round_u8(v[2])];
    }
    out
}

#[inline]
pub fn round_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Solves `A x = b` (n ≤ 8) by Gaussian elimination with partial pivoting.
/// Returns `None` for a singular system.
// Gaussian elimination reads as the textbook does with row and column indices.
#[allow(clippy::needless_range_loop)]
pub fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let piv = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..N {
            let f = a[row][col] / a[col][col];
            for k in col..N {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for row in (0..N).rev() {
        let mut s = b[row];
        for k in row + 1..N {
            s -= a[row][k] * x[k];
        }
        x[row] = s / a[row][row];
    }
    Some(x)
}

/// The homography mapping the four `from` points onto the four `to` points (row-major,
/// `h[8] = 1`), as OpenCV's `getPerspectiveTransform`.
pub fn perspective_transform(from: &[[f64; 2]; 4], to: &[[f64; 2]; 4]) -> Option<[f64; 9]> {
    let mut a = [[0.0f64; 8]; 8];
    let mut b = [0.0f64; 8];
    for i in 0..4 {
        let [x, y] = from[i];
        let [u, v] = to[i];
        a[i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u];
        b[i] = u;
        a[i + 4] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v];
        b[i + 4] = v;
    }
    let h = solve(a, b)?;
    Some([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0])
}

/// Least-squares 2-D similarity transform (rotation, uniform scale, translation; no
/// reflection) mapping `src` onto `dst`: the Umeyama estimate restricted to 2-D, which has
/// this closed form. Returns `[a, -b, tx, b, a, ty]` (`x' = a x - b y + tx`, `y' = b x + a y + ty`).
pub fn similarity_transform(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<[f32; 6]> {
    let n = src.len().min(dst.len());
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let (mut sx, mut sy, mut dx, mut dy) = (0.0f64, 0.0, 0.0, 0.0);
    for i in 0..n {
        sx += src[i][0] as f64;
        sy += src[i][1] as f64;
        dx += dst[i][0] as f64;
        dy += dst[i][1] as f64;
    }
    let (msx, msy, mdx, mdy) = (sx / nf, sy / nf, dx / nf, dy / nf);
    let (mut num_a, mut num_b, mut den) = (0.0f64, 0.0, 0.0);
    for i in 0..n {
        let (xs, ys) = (src[i][0] as f64 - msx, src[i][1] as f64 - msy);
        let (xd, yd) = (dst[i][0] as f64 - mdx, dst[i][1] as f64 - mdy);
        num_a += xs * xd + ys * yd;
        num_b += xs * yd - ys * xd;
        den += xs * xs + ys * ys;
    }
    if den < 1e-9 || !den.is_finite() {
        return None;
    }
    let a = num_a / den;
    let b = num_b / den;
    let tx = mdx - (a * msx - b * msy);
    let ty = mdy - (b * msx + a * msy);
    let m = [
        a as f32, -b as f32, tx as f32, b as f32, a as f32, ty as f32,
    ];
    m.iter().all(|v| v.is_finite()).then_some(m)
}

/// Inverse of an affine `[a, b, c, d, e, f]` map.
pub fn invert_affine(m: [f32; 6]) -> Option<[f32; 6]> {
    let [a, b, c, d, e, f] = m.map(|v| v as f64);
    let det = a * e - b * d;
    if det.abs() < 1e-12 {
        return None;
    }
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    let ic = -(ia * c + ib * f);
    let i_f = -(id * c + ie * f);
    Some([ia, ib, ic, id, ie, i_f].map(|v| v as f32))
}

/// Mirrors an image horizontally (tests and augmentation).
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// Rotates an image by `degrees` about its centre, keeping its size (corners filled black).
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (cx, cy) = ((w - 1.0) / 2.0, (h - 1.0) / 2.0);
    let t = degrees.to_radians();
    let (s, c) = t.sin_cos();
    // dst -> src: rotate back by -t around the centre.
    let m = [c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy];
    warp_affine(img, m, img.width(), img.height(), Some([0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_known_transform() {
        let src = [
            [10.0f32, 10.0],
            [30.0, 12.0],
            [20.0, 25.0],
            [12.0, 35.0],
            [28.0, 36.0],
        ];
        let (a, b, tx, ty) = (0.8f32, 0.3f32, 5.0f32, -7.0f32);
        let dst: Vec<[f32; 2]> = src
            .iter()
            .map(|p| [a * p[0] - b * p[1] + tx, b * p[0] + a * p[1] + ty])
            .collect();
        let m = similarity_transform(&src, &dst).unwrap();
        for (got, want) in m.iter().zip([a, -b, tx, b, a, ty]) {
            assert!((got - want).abs() < 1e-4, "{m:?}");
        }
        let inv = invert_affine(m).unwrap();
        let p = dst[2];
        let back = [
            inv[0] * p[0] + inv[1] * p[1] + inv[2],
            inv[3] * p[0] + inv[4] * p[1] + inv[5],
        ];
        assert!((back[0] - src[2][0]).abs() < 1e-3 && (back[1] - src[2][1]).abs() < 1e-3);
        assert!(similarity_transform(&[[1.0, 1.0]; 5], &dst).is_none());
    }

    #[test]
    fn homography_maps_corners() {
        let from = [[10.0, 20.0], [110.0, 25.0], [105.0, 60.0], [12.0, 55.0]];
        let to = [[0.0, 0.0], [100.0, 0.0], [100.0, 40.0], [0.0, 40.0]];
        let h = perspective_transform(&from, &to).unwrap();
        for i in 0..4 {
            let [x, y] = from[i];
            let w = h[6] * x + h[7] * y + h[8];
            let u = (h[0] * x + h[1] * y + h[2]) / w;
            let v = (h[3] * x + h[4] * y + h[5]) / w;
            assert!((u - to[i][0]).abs() < 1e-6 && (v - to[i][1]).abs() < 1e-6);
        }
    }

    #[test]
    fn bilinear_interpolates_and_borders() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([100, 200, 50]));
        let v = sample_bilinear(&img, 0.5, 0.0, None);
        assert_eq!(v, [50.0, 100.0, 25.0]);
        assert_eq!(
            sample_bilinear(&img, -5.0, 0.0, Some([7, 7, 7])),
            [7.0, 7.0, 7.0]
        );
        assert_eq!(sample_bilinear(&img, 5.0, 3.0, None), [100.0, 200.0, 50.0]);
        assert_eq!(sample_bilinear(&img, f32::NAN, 0.0, None), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn resize_handles_empty() {
        assert!(resize_rgb(&RgbImage::new(0, 0), 10, 10).is_none());
        let r = resize_rgb(&RgbImage::new(30, 20), 15, 10).unwrap();
        assert_eq!(r.dimensions(), (15, 10));
    }

    #[test]
    fn solve_small_system() {
        let x = solve([[2.0, 1.0], [1.0, 3.0]], [3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-9 && (x[1] - 1.4).abs() < 1e-9);
        assert!(solve([[1.0, 2.0], [2.0, 4.0]], [1.0, 2.0]).is_none());
    }
}
