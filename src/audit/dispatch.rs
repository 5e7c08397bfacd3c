//! The dispatcher's bookkeeping, without threads or channels: which slice goes to a model worker
//! and which reuses the last camera observation (the frame-difference gate), which desktop
//! slices get OCR and a face probe, and the release of results in recording order (workers
//! finish in any order; spans must be built in time order).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;

use crate::fault::Fault;
use crate::policy::Policy;
use crate::slice::{KeepReason, Role, Slice};

use super::evidence::EvidenceSink;
use super::findings::{FindingContext, VisualFindings};
use super::model_set::AuditModels;
use super::observe::{self, CallCounter, CameraObservation, Observation};

pub(crate) enum JobKind {
    Camera,
    Desktop { ocr: bool, probe_faces: bool },
}

/// One slice for a model worker.
pub(crate) struct Job {
    pub seq: u64,
    pub kind: JobKind,
    pub image: Arc<RgbImage>,
}

/// A worker's answer for one [`Job`].
pub(crate) struct Done {
    pub seq: u64,
    pub obs: Result<Observation, String>,
    pub busy_ms: u64,
}

impl Done {
    pub fn failed(seq: u64, why: &str) -> Self {
        Done {
            seq,
            obs: Err(why.into()),
            busy_ms: 0,
        }
    }
}

/// One slice's models, timed. Afterwards the heap's free pages go back to the system
/// ([`crate::models::release_free_heap`]).
fn run_job(
    models: &AuditModels,
    policy: &Policy,
    templates: &[Vec<f32>],
    job: Job,
    calls: &Arc<CallCounter>,
) -> Done {
    let t0 = Instant::now();
    let obs = match job.kind {
        JobKind::Camera => observe::observe_camera(models, policy, templates, &job.image, calls)
            .map(Observation::Camera),
        JobKind::Desktop { ocr, probe_faces } => {
            observe::observe_desktop(models, policy, &job.image, ocr, probe_faces, calls)
                .map(Observation::Desktop)
        }
    };
    crate::models::release_free_heap();
    Done {
        seq: job.seq,
        obs,
        busy_ms: t0.elapsed().as_millis() as u64,
    }
}

/// What a model worker needs, shared by all of one recording's workers.
pub(crate) struct WorkerContext<'a> {
    pub models: &'a AuditModels,
    pub policy: &'a Policy,
    pub templates: &'a [Vec<f32>],
    pub calls: Arc<CallCounter>,
    /// Test only ([`crate::fault`]): the first job fails (or panics) once, then this clears.
    pub armed: AtomicBool,
    pub fault: Option<Fault>,
}

impl WorkerContext<'_> {
    /// [`run_job`] with a panic turned into the slice's error: a worker that panics still
    /// answers, so the dispatcher never waits for a result that will not come.
    pub fn run(&self, job: Job) -> Done {
        let seq = job.seq;
        let injected =
            self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel);
        if injected && self.fault == Some(Fault::Model) {
            return Done::failed(seq, "model: injected fault (test only)");
        }
        let run = std::panic::AssertUnwindSafe(|| {
            if injected && self.fault == Some(Fault::WorkerPanic) {
                panic!("model worker: injected fault (test only)");
            }
            run_job(self.models, self.policy, self.templates, job, &self.calls)
        });
        std::panic::catch_unwind(run).unwrap_or_else(|_| Done::failed(seq, "model worker panicked"))
    }
}

/// Whether a desktop track shows a face most of the time. Its role came from the file name,
/// which the uploader controls: a camera recording named "screen" would skip every face check.
/// The first [`Self::FIRST`] desktop slices and every [`Self::EVERY`]th after are probed with
/// the face detector.
#[derive(Default)]
pub(crate) struct DesktopFaces {
    slices: u64,
    probed: u64,
    with_face: u64,
    first_ms: Option<u64>,
    last_ms: u64,
}

impl DesktopFaces {
    const FIRST: u64 = 10;
    const EVERY: u64 = 10;
    /// Probed slices before the share of faces is judged.
    const MIN_PROBED: u64 = 1;

    fn probe_next(&mut self) -> bool {
        let n = self.slices;
        self.slices += 1;
        n < Self::FIRST || n.is_multiple_of(Self::EVERY)
    }

    fn record(&mut self, pts: u64, faces: Option<usize>) {
        if let Some(n) = faces {
            self.probed += 1;
            if n > 0 {
                self.with_face += 1;
                self.first_ms.get_or_insert(pts);
                self.last_ms = pts;
            }
        }
    }

    /// Why the verdict is partial, when most probed desktop slices showed a face.
    pub fn reason(&self) -> Option<String> {
        (self.probed >= Self::MIN_PROBED && self.with_face * 2 > self.probed).then(|| {
            format!(
                "desktop track shows a face in {} of {} probed slices ({}-{} ms): the camera checks \
                 (presence, identity) were not run on it; audit it with --role camera",
                self.with_face, self.probed, self.first_ms.unwrap_or(0), self.last_ms
            )
        })
    }
}

/// A slice waiting for (or holding) its observation, in recording order.
struct Pending {
    pts: u64,
    role: Role,
    image: Arc<RgbImage>,
    state: PendingState,
}

enum PendingState {
    Waiting,
    /// The frame-difference gate found it unchanged: it reuses the last camera observation
    /// and never goes to a worker.
    Reuse,
    Ready(Result<Observation, String>),
}

/// Slices between the slicer and the findings, in recording order.
pub(crate) struct Dispatcher<'p> {
    policy: &'p Policy,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    release_seq: u64,
    last_camera: Option<CameraObservation>,
    last_gate_thumb: Option<(u64, [u8; 256])>,
    pub desktop_faces: DesktopFaces,
    /// Model calls each gate saved, by gate name.
    pub gate_savings: BTreeMap<String, u64>,
    /// Slices whose models failed, as "<role> slice at <ms> ms: <why>".
    pub slice_errors: Vec<String>,
    /// Model time and slices, by stage name.
    pub stage_ms: HashMap<&'static str, (u64, u64)>,
}

impl<'p> Dispatcher<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        Self {
            policy,
            pending: BTreeMap::new(),
            next_seq: 0,
            release_seq: 0,
            last_camera: None,
            last_gate_thumb: None,
            desktop_faces: DesktopFaces::default(),
            gate_savings: BTreeMap::new(),
            slice_errors: Vec::new(),
            stage_ms: HashMap::new(),
        }
    }

    /// Takes a slice in; returns the job for a model worker, or `None` when the gate lets it
    /// reuse the last camera observation.
    pub fn admit(&mut self, s: Slice) -> Option<Job> {
        let pts = s.pts_ms.max(0) as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let kind = if s.role == Role::Desktop {
            let ocr = !(self.policy.gates.ocr_new_slides_only && s.reason == KeepReason::MaxGap);
            if !ocr {
                *self
                    .gate_savings
                    .entry("ocr_new_slides_only".into())
                    .or_default() += 1;
            }
            JobKind::Desktop {
                ocr,
                probe_faces: self.desktop_faces.probe_next(),
            }
        } else {
            JobKind::Camera
        };
        let gate = &self.policy.gates.frame_diff;
        let mut reuse = false;
        if matches!(kind, JobKind::Camera) && gate.enabled {
            let thumb = observe::rgb_thumbnail(&s.image);
            match self.last_gate_thumb {
                Some((at, t))
                    if pts.saturating_sub(at) < gate.max_gap_ms
                        && crate::slice::frame::thumb_difference(&t, &thumb) < gate.threshold =>
                {
                    reuse = true;
                    *self.gate_savings.entry("frame_diff".into()).or_default() += 1;
                }
                _ => self.last_gate_thumb = Some((pts, thumb)),
            }
        }
        let image = s.image.clone();
        let state = if reuse {
            PendingState::Reuse
        } else {
            PendingState::Waiting
        };
        self.pending.insert(
            seq,
            Pending {
                pts,
                role: s.role,
                image: s.image,
                state,
            },
        );
        (!reuse).then_some(Job { seq, kind, image })
    }

    /// A worker's answer (or the reason none will come).
    pub fn done(&mut self, d: Done) {
        if let Some(p) = self.pending.get_mut(&d.seq) {
            let key = if p.role == Role::Desktop {
                "desktop_models"
            } else {
                "camera_models"
            };
            let e = self.stage_ms.entry(key).or_default();
            e.0 += d.busy_ms;
            e.1 += 1;
            p.state = PendingState::Ready(d.obs);
        }
    }

    /// Hands every slice whose turn has come to the span builders, in recording order; returns
    /// the media time of the last one released.
    pub fn release(
        &mut self,
        ctx: &FindingContext<'_>,
        visual: &mut VisualFindings,
        ev: &mut EvidenceSink,
    ) -> Option<u64> {
        let mut last_pts = None;
        while let Some(p) = self.pending.get(&self.release_seq) {
            if matches!(p.state, PendingState::Waiting) {
                break;
            }
            let p = self.pending.remove(&self.release_seq).expect("present");
            self.release_seq += 1;
            last_pts = Some(p.pts);
            match p.state {
                PendingState::Ready(Ok(Observation::Camera(obs))) => {
                    visual.camera(ctx, p.pts, &obs, &p.image, ev);
                    self.last_camera = Some(obs);
                }
                PendingState::Reuse => {
                    if let Some(obs) = self.last_camera.clone() {
                        visual.camera(ctx, p.pts, &obs, &p.image, ev);
                    }
                }
                PendingState::Ready(Ok(Observation::Desktop(obs))) => {
                    self.desktop_faces.record(p.pts, obs.faces);
                    visual.desktop(ctx, p.pts, &obs, &p.image, ev)
                }
                PendingState::Ready(Err(e)) => self.slice_errors.push(format!(
                    "{} slice at {} ms: {e}",
                    p.role.as_str(),
                    p.pts
                )),
                PendingState::Waiting => unreachable!("checked above"),
            }
        }
        last_pts
    }

    /// Slices still waiting for a worker that is gone are reported, never dropped.
    pub fn abandon_waiting(&mut self, why: &str) {
        for p in self.pending.values_mut() {
            if matches!(p.state, PendingState::Waiting) {
                p.state = PendingState::Ready(Err(why.into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktop_faces_are_probed_first_then_every_tenth() {
        let mut d = DesktopFaces::default();
        let probed: Vec<bool> = (0..31).map(|_| d.probe_next()).collect();
        assert!(probed[..10].iter().all(|&p| p));
        assert_eq!(
            probed[10..].iter().filter(|&&p| p).count(),
            3,
            "slices 10, 20 and 30"
        );
    }

    #[test]
    fn desktop_faces_reason_needs_a_majority() {
        let mut d = DesktopFaces::default();
        d.record(0, Some(1));
        d.record(1000, Some(0));
        assert!(d.reason().is_none(), "half is not most");
        d.record(2000, Some(2));
        let why = d.reason().expect("two of three probed slices show a face");
        assert!(why.contains("2 of 3") && why.contains("0-2000 ms"), "{why}");
        d.record(3000, None);
        assert!(
            d.reason().unwrap().contains("2 of 3"),
            "unprobed slices do not count"
        );
    }
}
