//! Keyframe-plus-gap decoding (`decode = "adaptive"`): every keyframe is decoded, and the inter
//! frames between two keyframes (a *gap*) only when something says the picture changed across it.
//!
//! Decoding is most of what slicing costs, and inter frames are most of what is decoded. A class
//! recording is often still for long stretches (a slide, a seated teacher): there the frames of a
//! gap show what its keyframes show, the slices they would give are the ones the frame-difference
//! gate then keeps from the models, and decoding them buys nothing. So the demux thread holds a
//! gap's compressed frames back (bounded) until the next keyframe, decodes that keyframe on a
//! second decoder (the [`KeyProbe`]) and compares it with the previous one:
//!
//! - the two keyframes differ (scene-change thumbnail, `adaptive.change_threshold`), or
//! - an inter frame in the gap is a size spike (`adaptive.spike_ratio` times the track's typical
//!   inter frame: a cut, a hand in front of the lens, something shown and taken away), or
//! - the gap is long (`adaptive.max_gap_ms`) or large (`GAP_MAX_BYTES`): it is decoded as it
//!   arrives, or
//! - the gap ends the track (no keyframe after it to compare with)
//!
//! and the gap is decoded in full, so the sampler keeps its interval there; otherwise it is
//! dropped and the keyframes stand for it. A keyframe probe that fails turns the gate off for the
//! rest of the track (everything is decoded). What was dropped is counted in the track's report
//! and the verdict's stats.

use super::frame::{thumb_difference, THUMB};
use super::SliceError;
use crate::demux::Frame;

/// A gap larger than this is decoded as it arrives instead of being held back.
pub const GAP_MAX_BYTES: usize = 8 << 20;
/// Inter frames remembered for the typical size a spike is measured against.
const SIZE_HISTORY: usize = 256;
/// Inter frames smaller than this are never a spike: a still picture's frames are a few bytes,
/// and a few more is noise. (Half a flat 320x240 frame turning white costs ~370 bytes in VP8.)
const SPIKE_FLOOR_BYTES: usize = 128;
/// Inter frames this soon after a keyframe are not judged for spikes: encoders spend bits there
/// on their own (libvpx follows a keyframe with a golden-frame refresh as large as the keyframe,
/// and more refinement frames in the next half second), whatever the picture does.
const SETTLE_MS: i64 = 700;

/// When a gap is decoded (policy data, `[sampling.*]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GapRule {
    /// Scene-change thumbnail difference (0..255) between the keyframes around a gap at or above
    /// which the gap is decoded.
    pub change_threshold: f32,
    /// An inter frame this many times the track's median inter frame size decodes its gap.
    pub spike_ratio: f32,
    /// A gap longer than this (recording time) is decoded.
    pub max_gap_ms: i64,
}

/// Decides, from a keyframe's pixels, whether the picture changed: a second decoder in the
/// pipeline, a table of thumbnails in tests.
pub trait KeyProbe {
    fn thumbnail(&mut self, keyframe: &Frame) -> Result<[u8; THUMB * THUMB], SliceError>;
}

/// What the gate dropped, for the track report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GapStats {
    /// Gaps that ended at a keyframe (the last one of a track is not counted).
    pub gaps: u64,
    pub gaps_decoded: u64,
    /// Inter frames never decoded because their gap was judged unchanged.
    pub frames_dropped: u64,
    /// Times the keyframe probe failed (from then on the track is decoded in full).
    pub probe_errors: u64,
}

/// Why a gap was decoded (kept for the debug log and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Holding the gap back; not decided yet.
    Held,
    /// A spike, a long or large gap: its frames go to the decoder as they come.
    Streaming,
}

/// The gate of one video track. Frames go in in decode order; the frames to decode come out in
/// the same order.
pub struct GapGate<P> {
    probe: P,
    rule: GapRule,
    last_key: Option<[u8; THUMB * THUMB]>,
    last_key_ms: Option<i64>,
    held: Vec<Frame>,
    held_bytes: usize,
    /// Recording time of the gap's first inter frame.
    gap_start_ms: Option<i64>,
    state: Open,
    sizes: Vec<usize>,
    next_size: usize,
    /// Median of `sizes`, refreshed every few frames (sorting 256 numbers per frame is waste).
    typical: Option<usize>,
    /// The probe failed once: every later frame is decoded.
    off: bool,
    stats: GapStats,
}

impl<P: KeyProbe> GapGate<P> {
    pub fn new(probe: P, rule: GapRule) -> Self {
        Self {
            probe,
            rule,
            last_key: None,
            last_key_ms: None,
            held: Vec::new(),
            held_bytes: 0,
            gap_start_ms: None,
            state: Open::Held,
            sizes: Vec::with_capacity(SIZE_HISTORY),
            next_size: 0,
            typical: None,
            off: false,
            stats: GapStats::default(),
        }
    }

    pub fn stats(&self) -> &GapStats {
        &self.stats
    }

    /// Takes the track's next frame; appends the frames to decode now to `out`.
    pub fn push(&mut self, frame: Frame, out: &mut Vec<Frame>) {
        if self.off {
            out.push(frame);
        } else if frame.keyframe {
            self.keyframe(frame, out);
        } else {
            self.inter(frame, out);
        }
    }

    /// The track ended: its last gap has no keyframe after it to compare with, so it is decoded.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        self.release(out);
    }

    fn keyframe(&mut self, key: Frame, out: &mut Vec<Frame>) {
        let thumb = match self.probe.thumbnail(&key) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("keyframe probe failed; decoding every frame of the track: {e}");
                self.stats.probe_errors += 1;
                self.off = true;
                None
            }
        };
        let had_gap = self.gap_start_ms.is_some();
        let changed = match (&self.last_key, &thumb) {
            (Some(prev), Some(now)) => thumb_difference(prev, now) >= self.rule.change_threshold,
            _ => true,
        };
        if had_gap {
            self.stats.gaps += 1;
            if changed || self.state == Open::Streaming {
                self.stats.gaps_decoded += 1;
                self.release(out);
            } else {
                self.stats.frames_dropped += self.held.len() as u64;
                self.held.clear();
            }
        } else {
            // Frames before the first keyframe cannot be decoded on their own; the decoder is
            // given them as it would be without the gate.
            self.release(out);
        }
        self.held_bytes = 0;
        self.gap_start_ms = None;
        self.state = Open::Held;
        self.last_key = thumb;
        self.last_key_ms = Some(key.pts_ms());
        out.push(key);
    }

    fn inter(&mut self, frame: Frame, out: &mut Vec<Frame>) {
        let size = frame.data.len();
        let settled = self
            .last_key_ms
            .is_none_or(|k| frame.pts_ms().saturating_sub(k) >= SETTLE_MS);
        let spike = settled
            && self.typical.is_some_and(|t| {
                size >= SPIKE_FLOOR_BYTES && size as f32 >= self.rule.spike_ratio * t.max(1) as f32
            });
        self.remember_size(size);
        let start = *self.gap_start_ms.get_or_insert(frame.pts_ms());
        if self.state == Open::Streaming {
            out.push(frame);
            return;
        }
        let too_long = frame.pts_ms().saturating_sub(start) > self.rule.max_gap_ms;
        let too_big = self.held_bytes + size > GAP_MAX_BYTES;
        if spike || too_long || too_big || self.last_key.is_none() {
            self.state = Open::Streaming;
            self.release(out);
            out.push(frame);
            return;
        }
        self.held_bytes += size;
        self.held.push(frame);
    }

    fn release(&mut self, out: &mut Vec<Frame>) {
        out.append(&mut self.held);
        self.held_bytes = 0;
    }

    fn remember_size(&mut self, size: usize) {
        if self.sizes.len() < SIZE_HISTORY {
            self.sizes.push(size);
        } else {
            self.sizes[self.next_size] = size;
        }
        self.next_size = (self.next_size + 1) % SIZE_HISTORY;
        if self.sizes.len() >= 16 && (self.next_size.is_multiple_of(16) || self.typical.is_none()) {
            let mut sorted = self.sizes.clone();
            sorted.sort_unstable();
            self.typical = Some(sorted[sorted.len() / 2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Thumbnails by keyframe time; a missing entry makes the probe fail.
    struct Table(HashMap<i64, u8>);

    impl KeyProbe for Table {
        fn thumbnail(&mut self, key: &Frame) -> Result<[u8; THUMB * THUMB], SliceError> {
            self.0
                .get(&key.pts_ms())
                .map(|&level| [level; THUMB * THUMB])
                .ok_or_else(|| SliceError::Decode("no such keyframe".into()))
        }
    }

    const RULE: GapRule = GapRule {
        change_threshold: 1.0,
        spike_ratio: 4.0,
        max_gap_ms: 10_000,
    };

    fn frame(pts_ms: i64, keyframe: bool, size: usize) -> Frame {
        Frame {
            track: 1,
            pts_ns: pts_ms * 1_000_000,
            duration_ns: None,
            keyframe,
            data: vec![0; size],
        }
    }

    /// A track of 30 fps with a keyframe every `key_every_ms`; `size_at` gives inter frame sizes.
    fn track(len_ms: i64, key_every_ms: i64, size_at: impl Fn(i64) -> usize) -> Vec<Frame> {
        (0..len_ms / 33)
            .map(|i| i * 33)
            .map(|t| {
                if t % key_every_ms < 33 {
                    frame(t, true, 20_000)
                } else {
                    frame(t, false, size_at(t))
                }
            })
            .collect()
    }

    fn run(levels: &[(i64, u8)], frames: Vec<Frame>, rule: GapRule) -> (Vec<i64>, GapStats) {
        let mut gate = GapGate::new(Table(levels.iter().copied().collect()), rule);
        let mut out = Vec::new();
        for f in frames {
            gate.push(f, &mut out);
        }
        gate.finish(&mut out);
        (
            out.iter().map(Frame::pts_ms).collect(),
            gate.stats().clone(),
        )
    }

    fn keys(frames: &[Frame]) -> Vec<(i64, u8)> {
        frames
            .iter()
            .filter(|f| f.keyframe)
            .map(|f| (f.pts_ms(), 100))
            .collect()
    }

    #[test]
    fn a_still_picture_decodes_keyframes_and_the_last_gap_only() {
        let frames = track(12_000, 3300, |_| 1000);
        let all: Vec<i64> = frames.iter().map(Frame::pts_ms).collect();
        let (out, stats) = run(&keys(&frames), frames.clone(), RULE);
        let last_key = frames.iter().rev().find(|f| f.keyframe).unwrap().pts_ms();
        let expected: Vec<i64> = frames
            .iter()
            .filter(|f| f.keyframe || f.pts_ms() > last_key)
            .map(Frame::pts_ms)
            .collect();
        assert_eq!(out, expected);
        assert_eq!(stats.gaps, 3);
        assert_eq!(stats.gaps_decoded, 0);
        assert_eq!(stats.frames_dropped as usize, all.len() - expected.len());
    }

    #[test]
    fn a_changed_keyframe_decodes_the_gap_before_it_in_order() {
        let frames = track(12_000, 3300, |_| 1000);
        let mut levels = keys(&frames);
        levels[2].1 = 140; // the third keyframe looks different from its neighbours
        let (out, stats) = run(&levels, frames.clone(), RULE);
        assert!(out.windows(2).all(|w| w[0] < w[1]), "decode order kept");
        let (k1, k2) = (levels[1].0, levels[2].0);
        for f in frames.iter().filter(|f| f.pts_ms() > k1 && f.pts_ms() < k2) {
            assert!(out.contains(&f.pts_ms()), "{} decoded", f.pts_ms());
        }
        assert_eq!(stats.gaps_decoded, 2, "the gaps on both sides of it");
    }

    #[test]
    fn a_size_spike_decodes_its_gap_even_when_the_keyframes_match() {
        // Something shown between two keyframes and taken away again: the keyframes agree, the
        // frame sizes do not.
        let frames = track(12_000, 3300, |t| {
            if (4000..4100).contains(&t) {
                9000
            } else {
                1000
            }
        });
        let (out, stats) = run(&keys(&frames), frames.clone(), RULE);
        for f in frames.iter().filter(|f| (3300..6600).contains(&f.pts_ms())) {
            assert!(out.contains(&f.pts_ms()), "{} decoded", f.pts_ms());
        }
        assert_eq!(stats.gaps_decoded, 1);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_encoders_own_bursts_after_a_keyframe_are_not_spikes() {
        // libvpx: a golden-frame refresh as large as the keyframe right after it, then a few
        // refinement frames.
        let frames = track(12_000, 3300, |t| match t % 3300 {
            33 => 50_000,
            165 | 500 => 9000,
            _ => 1000,
        });
        let (_, stats) = run(&keys(&frames), frames, RULE);
        assert_eq!(stats.gaps_decoded, 0);
        assert_eq!(stats.gaps, 3);
    }

    #[test]
    fn long_gaps_are_decoded_and_a_failed_probe_turns_the_gate_off() {
        let frames = track(40_000, 20_000, |_| 1000);
        let (out, _) = run(&keys(&frames), frames.clone(), RULE);
        assert_eq!(out.len(), frames.len(), "a 20 s gap is over max_gap_ms");

        let frames = track(12_000, 3300, |_| 1000);
        let mut levels = keys(&frames);
        levels.remove(2);
        let (out, stats) = run(&levels, frames.clone(), RULE);
        assert_eq!(stats.probe_errors, 1);
        let k1 = frames
            .iter()
            .filter(|f| f.keyframe)
            .nth(1)
            .unwrap()
            .pts_ms();
        assert!(
            frames
                .iter()
                .filter(|f| f.pts_ms() > k1)
                .all(|f| out.contains(&f.pts_ms())),
            "from the gap before the failed keyframe on, everything is decoded"
        );
    }

    #[test]
    fn frames_before_the_first_keyframe_pass_through() {
        let mut frames = vec![frame(0, false, 500), frame(33, false, 500)];
        frames.extend(track(4000, 3300, |_| 500).into_iter().map(|mut f| {
            f.pts_ns += 66_000_000;
            f
        }));
        let (out, _) = run(&keys(&frames), frames.clone(), RULE);
        assert_eq!(&out[..3], &[0, 33, 66]);
    }
}
