//! Which decoded frames become slices. Sampling is policy data (`[sampling]` in a pipeline TOML).

use serde::{Deserialize, Serialize};

/// How many frames the decoder must see. VP8/VP9/AV1/H.264 inter frames depend on earlier frames,
/// so exact interval sampling needs every frame decoded; `keyframes` feeds the decoder keyframes only
/// (exact for intra frames, far cheaper, but samples only as often as the encoder placed keyframes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecodeMode {
    #[default]
    All,
    Keyframes,
}

/// Camera tracks: one slice every `interval_ms` of recording time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CameraSampling {
    pub interval_ms: u64,
    pub decode: DecodeMode,
    /// Longest side of the slice image handed to models and written as JPEG (0 = keep decoded size).
    pub max_side: u32,
}

impl Default for CameraSampling {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            decode: DecodeMode::All,
            max_side: 640,
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
}

impl Default for DesktopSampling {
    fn default() -> Self {
        Self {
            check_interval_ms: 500,
            change_threshold: 2.0,
            max_gap_ms: 30_000,
            decode: DecodeMode::All,
            max_side: 1280,
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
