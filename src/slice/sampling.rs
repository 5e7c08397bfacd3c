//! Which decoded frames become slices. Sampling is policy data (`[sampling]` in a pipeline TOML).

use serde::{Deserialize, Serialize};

/// How many frames the decoder must see. VP8/VP9/AV1/H.264 inter frames depend on earlier frames,
/// so exact interval sampling needs every frame decoded; `keyframes` feeds the decoder keyframes only
/// (exact for intra frames, far cheaper, but samples only as often as the encoder placed keyframes);
/// `adaptive` decodes every keyframe and the frames between two keyframes only where the picture
/// changed across them (VP8/VP9; other codecs decode all), see [`super::gap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecodeMode {
    #[default]
    All,
    Keyframes,
    Adaptive,
}

/// The `adaptive = { .. }` settings of `decode = "adaptive"`, in both sampling tables.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveDecode {
    /// Thumbnail difference (0..255) between the keyframes around a gap that decodes it. Lower
    /// than the frame-difference gate's: a gap is cheap to decode and costly to miss.
    pub change_threshold: f32,
    /// An inter frame this many times the track's median inter frame decodes its gap (something
    /// shown and taken away between two keyframes that look alike).
    pub spike_ratio: f32,
    /// A gap longer than this is always decoded, so a slice is never further apart than this
    /// from a decoded picture of the moment (browser encoders place keyframes 3-20 s apart).
    pub max_gap_ms: u64,
}

impl Default for AdaptiveDecode {
    fn default() -> Self {
        Self {
            change_threshold: 1.0,
            spike_ratio: 4.0,
            max_gap_ms: 10_000,
        }
    }
}

impl AdaptiveDecode {
    pub fn rule(&self) -> super::gap::GapRule {
        super::gap::GapRule {
            change_threshold: self.change_threshold,
            spike_ratio: self.spike_ratio,
            max_gap_ms: i64::try_from(self.max_gap_ms).unwrap_or(i64::MAX),
        }
    }
}

/// Camera tracks: one slice every `interval_ms` of recording time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CameraSampling {
    pub interval_ms: u64,
    pub decode: DecodeMode,
    /// Longest side of the slice image handed to models and written as JPEG (0 = keep decoded size).
    pub max_side: u32,
    pub adaptive: AdaptiveDecode,
}

impl CameraSampling {
    pub fn gap_rule(&self) -> super::gap::GapRule {
        self.adaptive.rule()
    }
}

impl Default for CameraSampling {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            decode: DecodeMode::All,
            max_side: 640,
            adaptive: AdaptiveDecode::default(),
        }
    }
}

/// Desktop/whiteboard tracks: a slice when the picture differs enough from the last kept slide,
/// checked at most every `check_interval_ms`, and at least every `max_gap_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DesktopSampling {
    pub check_interval_ms: u64,
    /// Mean absolute difference (0..255) of a tiny grey thumbnail that counts as a new slide.
    /// A new slide of text on a plain background moves the thumbnail by only 3-6 (text covers
    /// little of the screen): at 6.0 the whiteboard benchmark file had 23 of its 30 slide
    /// changes missed, and a slide shown for less than `max_gap_ms` was never sliced. 2.0
    /// found all 30, and no static stretch of that file reached even 1.0.
    pub change_threshold: f32,
    pub max_gap_ms: u64,
    pub decode: DecodeMode,
    pub max_side: u32,
    pub adaptive: AdaptiveDecode,
}

impl DesktopSampling {
    pub fn gap_rule(&self) -> super::gap::GapRule {
        self.adaptive.rule()
    }
}

impl Default for DesktopSampling {
    fn default() -> Self {
        Self {
            check_interval_ms: 500,
            change_threshold: 2.0,
            max_gap_ms: 30_000,
            decode: DecodeMode::All,
            max_side: 1280,
            adaptive: AdaptiveDecode::default(),
        }
    }
}

/// The `[sampling]` table of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    pub camera: CameraSampling,
    pub desktop: DesktopSampling,
}
