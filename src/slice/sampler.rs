//! Decides which decoded frames become slices, from the policy's sampling table.

use super::frame::{thumb_difference, THUMB};
use super::sampling::{CameraSampling, DesktopSampling};

/// Why a frame was kept (reported with each slice so reviewers know what they are looking at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    Interval,
    FirstFrame,
    SceneChange,
    MaxGap,
}

// One sampler per track, made once: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Sampler {
    Interval {
        interval_ms: i64,
        next_due: Option<i64>,
    },
    Scene {
        cfg: DesktopSampling,
        next_check: Option<i64>,
        last_kept: Option<(i64, [u8; THUMB * THUMB])>,
    },
}

/// What the sampler needs to see of a frame: its time, and (for scene change) a thumbnail on demand.
pub enum Decision {
    Skip,
    Keep(KeepReason),
}

impl Sampler {
    pub fn camera(cfg: &CameraSampling) -> Self {
        Sampler::Interval {
            interval_ms: cfg.interval_ms.max(1) as i64,
            next_due: None,
        }
    }

    pub fn desktop(cfg: &DesktopSampling) -> Self {
        Sampler::Scene {
            cfg: cfg.clone(),
            next_check: None,
            last_kept: None,
        }
    }

    /// Whether the sampler wants to look at the frame at all (cheap; no pixels touched).
    pub fn wants(&self, pts_ms: i64) -> bool {
        match self {
            Sampler::Interval { next_due, .. } => next_due.is_none_or(|due| pts_ms >= due),
            Sampler::Scene { next_check, .. } => next_check.is_none_or(|due| pts_ms >= due),
        }
    }

    /// Decides for a frame that [`Sampler::wants`]; `thumb` is computed only for scene sampling.
    pub fn decide(&mut self, pts_ms: i64, thumb: impl FnOnce() -> [u8; THUMB * THUMB]) -> Decision {
        match self {
            Sampler::Interval {
                interval_ms,
                next_due,
            } => {
                let reason = if next_due.is_none() {
                    KeepReason::FirstFrame
                } else {
                    KeepReason::Interval
                };
                // Slices fall on multiples of the interval in the recording's own timeline.
                *next_due = Some((pts_ms.div_euclid(*interval_ms) + 1) * *interval_ms);
                Decision::Keep(reason)
            }
            Sampler::Scene {
                cfg,
                next_check,
                last_kept,
            } => {
                *next_check = Some(pts_ms + cfg.check_interval_ms as i64);
                let t = thumb();
                let reason = match last_kept {
                    None => Some(KeepReason::FirstFrame),
                    Some((_, last)) if thumb_difference(last, &t) >= cfg.change_threshold => {
                        Some(KeepReason::SceneChange)
                    }
                    Some((at, _)) if pts_ms - *at >= cfg.max_gap_ms as i64 => {
                        Some(KeepReason::MaxGap)
                    }
                    _ => None,
                };
                match reason {
                    Some(r) => {
                        *last_kept = Some((pts_ms, t));
                        Decision::Keep(r)
                    }
                    None => Decision::Skip,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Sampler, frames: &[(i64, u8)]) -> Vec<(i64, KeepReason)> {
        let mut kept = Vec::new();
        for &(pts, level) in frames {
            if s.wants(pts) {
                if let Decision::Keep(r) = s.decide(pts, || [level; THUMB * THUMB]) {
                    kept.push((pts, r));
                }
            }
        }
        kept
    }

    #[test]
    fn camera_keeps_one_frame_per_interval_on_a_variable_frame_rate() {
        let mut s = Sampler::camera(&CameraSampling {
            interval_ms: 1000,
            ..Default::default()
        });
        let frames: Vec<(i64, u8)> = [0, 40, 110, 990, 1003, 1500, 2001, 2999, 4100, 4200]
            .iter()
            .map(|&t| (t, 0))
            .collect();
        let kept: Vec<i64> = run(&mut s, &frames).into_iter().map(|k| k.0).collect();
        assert_eq!(kept, vec![0, 1003, 2001, 4100]);
    }

    #[test]
    fn desktop_keeps_changes_and_max_gap() {
        let cfg = DesktopSampling {
            check_interval_ms: 500,
            change_threshold: 6.0,
            max_gap_ms: 3000,
            ..Default::default()
        };
        let mut s = Sampler::desktop(&cfg);
        let mut frames = Vec::new();
        for t in (0..10_000).step_by(100) {
            frames.push((t, if t < 4000 { 200 } else { 50 }));
        }
        let kept = run(&mut s, &frames);
        assert_eq!(kept[0], (0, KeepReason::FirstFrame));
        assert_eq!(kept[1], (3000, KeepReason::MaxGap));
        assert_eq!(kept[2], (4000, KeepReason::SceneChange));
        assert_eq!(kept[3], (7000, KeepReason::MaxGap));
        assert_eq!(kept.len(), 4);
    }
}
