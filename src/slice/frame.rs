//! Pure pixel work on decoded frames: I420 → RGB for kept slices and a tiny grey thumbnail for
//! the scene-change test. Both read the decoder's planes directly, honouring strides, so frames
//! that are not kept cost only the thumbnail (or nothing, for camera tracks).

use image::RgbImage;

/// Borrowed I420 planes of one decoded frame.
pub struct I420<'a> {
    pub width: u32,
    pub height: u32,
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub uv_stride: usize,
}

/// Side of the square grid used as the scene-change signature.
pub const THUMB: usize = 16;

impl I420<'_> {
    /// BT.601 limited-range conversion (what VP8/VP9 browser encoders signal), fixed-point.
    pub fn to_rgb(&self) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = vec![0u8; w * h * 3];
        for row in 0..h {
            let y_row = &self.y[row * self.y_stride..];
            let u_row = &self.u[(row / 2) * self.uv_stride..];
            let v_row = &self.v[(row / 2) * self.uv_stride..];
            let dst = &mut out[row * w * 3..(row + 1) * w * 3];
            for col in 0..w {
                let c = (i32::from(y_row[col]) - 16) * 298;
                let d = i32::from(u_row[col / 2]) - 128;
                let e = i32::from(v_row[col / 2]) - 128;
                let px = &mut dst[col * 3..col * 3 + 3];
                px[0] = ((c + 409 * e + 128) >> 8).clamp(0, 255) as u8;
                px[1] = ((c - 100 * d - 208 * e + 128) >> 8).clamp(0, 255) as u8;
                px[2] = ((c + 516 * d + 128) >> 8).clamp(0, 255) as u8;
            }
        }
        RgbImage::from_raw(self.width, self.height, out)
            .expect("buffer sized from width and height")
    }

    /// Mean luma over a THUMB×THUMB grid, sampling a few pixels per cell: resolution-independent,
    /// so a resized window still compares against the last slide.
    pub fn thumbnail(&self) -> [u8; THUMB * THUMB] {
        let mut out = [0u8; THUMB * THUMB];
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 {
            return out;
        }
        for gy in 0..THUMB {
            for gx in 0..THUMB {
                let mut sum = 0u32;
                let mut n = 0u32;
                for sy in 0..4 {
                    let y = ((gy * 4 + sy) * h + h / 8) / (THUMB * 4);
                    let row = &self.y[y.min(h - 1) * self.y_stride..];
                    for sx in 0..4 {
                        let x = ((gx * 4 + sx) * w + w / 8) / (THUMB * 4);
                        sum += u32::from(row[x.min(w - 1)]);
                        n += 1;
                    }
                }
                out[gy * THUMB + gx] = (sum / n) as u8;
            }
        }
        out
    }
}

/// Mean absolute difference of two thumbnails, 0..255.
pub fn thumb_difference(a: &[u8; THUMB * THUMB], b: &[u8; THUMB * THUMB]) -> f32 {
    let total: u32 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u32::from(x.abs_diff(y)))
        .sum();
    total as f32 / (THUMB * THUMB) as f32
}

/// Shrinks `img` so its longest side is at most `max_side` (0 keeps it), with a box-filtered
/// resize so text and faces stay legible.
pub fn fit_within(img: RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if max_side == 0 || w.max(h) <= max_side {
        return img;
    }
    let scale = f64::from(max_side) / f64::from(w.max(h));
    let nw = ((f64::from(w) * scale).round() as u32).max(1);
    let nh = ((f64::from(h) * scale).round() as u32).max(1);
    image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes(w: usize, h: usize, y: u8) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            vec![y; w * h],
            vec![128; (w / 2) * (h / 2)],
            vec![128; (w / 2) * (h / 2)],
        )
    }

    #[test]
    fn grey_converts_to_grey_and_honours_stride() {
        let (w, h, stride) = (6usize, 4usize, 8usize);
        let mut y = vec![0u8; stride * h];
        for row in 0..h {
            y[row * stride..row * stride + w].fill(126);
        }
        let (_, u, v) = planes(w, h, 0);
        let f = I420 {
            width: w as u32,
            height: h as u32,
            y: &y,
            u: &u,
            v: &v,
            y_stride: stride,
            uv_stride: w / 2,
        };
        let rgb = f.to_rgb();
        assert_eq!(rgb.dimensions(), (6, 4));
        for p in rgb.pixels() {
            assert!(p.0.iter().all(|&c| (127..=128).contains(&c)), "{p:?}");
        }
    }

    #[test]
    fn thumbnails_see_changes_but_not_resizes() {
        let (y1, u1, v1) = planes(64, 48, 200);
        let a = I420 {
            width: 64,
            height: 48,
            y: &y1,
            u: &u1,
            v: &v1,
            y_stride: 64,
            uv_stride: 32,
        };
        let (y2, u2, v2) = planes(32, 24, 200);
        let b = I420 {
            width: 32,
            height: 24,
            y: &y2,
            u: &u2,
            v: &v2,
            y_stride: 32,
            uv_stride: 16,
        };
        assert_eq!(thumb_difference(&a.thumbnail(), &b.thumbnail()), 0.0);
        let mut y3 = y1.clone();
        y3[..64 * 24].fill(20);
        let c = I420 { y: &y3, ..a };
        assert!(thumb_difference(&a.thumbnail(), &c.thumbnail()) > 50.0);
    }

    #[test]
    fn fit_within_keeps_aspect() {
        let img = RgbImage::new(1280, 720);
        assert_eq!(fit_within(img.clone(), 640).dimensions(), (640, 360));
        assert_eq!(fit_within(img, 0).dimensions(), (1280, 720));
    }
}
