//! One recording's audit as one pipeline: the slicer, the model workers and the speech thread,
//! the bounded channels between them, and the one way they stop.
//!
//! ```text
//!  slicer ──SliceOutput(8)──▶ dispatcher ──Job(2N)──▶ model worker × N
//!    │                          ▲    │                       │
//!    │                          │    └─ release in order ◀───┘ Done
//!    └──AudioChunk(32)──▶ speech thread (VAD → Whisper on speech → text policy)
//! ```
//! Audio has its own channel from the slicer's audio thread: a dispatcher waiting for its model
//! workers does not hold the speech thread up.
//! The dispatcher admits at most `2N` slices, so a slow model applies back-pressure through
//! the slicer to the reader. Every way out of [`Pipeline::run`] goes through the same teardown:
//! the channels are dropped in order (jobs, audio, slices), then the slicer and the speech
//! thread are joined, a panic in either becoming a named [`Incomplete`] reason. Nothing a
//! stage loses is dropped silently: it ends up in [`StageResults`].

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::{bounded, never, select, unbounded, Receiver};

use crate::fault::Fault;
use crate::policy::Policy;
use crate::slice::{self, SliceOptions, SliceOutput, SliceReport};

use super::dispatch::{Dispatcher, Done, Job, WorkerContext};
use super::evidence::EvidenceSink;
use super::findings::{FindingContext, VisualFindings};
use super::model_set::AuditModels;
use super::observe::CallCounter;
use super::speech::{self, SpeechResult};
use super::{AuditProgress, ProgressFn};

/// Capacity of the audio channel between the slicer and the speech thread.
const AUDIO_CHANNEL: usize = 32;

/// Why parts of a recording were not audited, in the order found, each named once.
#[derive(Debug, Default, Clone)]
pub struct Incomplete(Vec<String>);

impl Incomplete {
    pub fn add(&mut self, why: impl Into<String>) {
        let why = why.into();
        if !self.0.iter().any(|w| w.contains(&why)) {
            self.0.push(why);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn reasons(&self) -> &[String] {
        &self.0
    }

    /// The verdict's `partial_reason`: every reason, not only the first.
    pub fn reason(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.join("; "))
    }
}

/// What the stages produced once every one of them has stopped.
pub(crate) struct StageResults<'p> {
    pub slicing: Result<SliceReport, slice::SliceError>,
    pub speech: SpeechResult,
    pub dispatcher: Dispatcher<'p>,
    /// Stages that stopped before the recording ended (the recording is then partial).
    pub failures: Incomplete,
    pub calls: Arc<CallCounter>,
}

/// The parts of one recording's audit.
pub(crate) struct Pipeline<'a> {
    pub models: &'a AuditModels,
    pub policy: &'a Policy,
    pub templates: &'a [Vec<f32>],
    pub slice_options: SliceOptions,
    pub file_name: String,
    pub workers: usize,
    pub progress: Option<Arc<ProgressFn>>,
    /// Test only ([`crate::fault`]).
    pub fault: Option<Fault>,
}

impl<'a> Pipeline<'a> {
    pub fn run(
        self,
        reader: Box<dyn Read + Send>,
        ctx: &FindingContext<'_>,
        visual: &mut VisualFindings,
        ev_visual: &mut EvidenceSink,
        ev_speech: &mut EvidenceSink,
    ) -> StageResults<'a> {
        let (audio_tx, audio_rx) = bounded::<slice::AudioChunk>(AUDIO_CHANNEL);
        let slice_options = SliceOptions {
            audio_sink: Some(audio_tx),
            ..self.slice_options.clone()
        };
        let (slice_rx, slicer) = slice::start(reader, &self.file_name, slice_options);
        let workers = self.workers.max(1);
        let worker_ctx = WorkerContext {
            models: self.models,
            policy: self.policy,
            templates: self.templates,
            calls: Arc::new(CallCounter::default()),
            armed: AtomicBool::new(matches!(
                self.fault,
                Some(Fault::Model | Fault::WorkerPanic)
            )),
            fault: self.fault,
        };
        let mut dispatcher = Dispatcher::new(self.policy);
        let mut failures = Incomplete::default();
        let (models, policy, fault) = (self.models, self.policy, self.fault);
        let speech = std::thread::scope(|scope| {
            let speech_fault = fault == Some(Fault::SpeechPanic);
            // Named threads: profiles and `top -H` show which stage burns the CPU.
            let speech = std::thread::Builder::new()
                .name("speech".into())
                .spawn_scoped(scope, move || {
                    speech::run(models, policy, audio_rx, ev_speech, speech_fault)
                })
                .expect("spawning the speech thread");
            let (job_tx, job_rx) = bounded::<Job>(workers * 2);
            let (done_tx, done_rx) = unbounded::<Done>();
            for worker in 0..workers {
                let (job_rx, done_tx, worker_ctx) = (job_rx.clone(), done_tx.clone(), &worker_ctx);
                std::thread::Builder::new()
                    .name(format!("models-{worker}"))
                    .spawn_scoped(scope, move || {
                        for job in job_rx {
                            if done_tx.send(worker_ctx.run(job)).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawning a model worker");
            }
            drop((job_rx, done_tx));
            let flow = Flow {
                slice_rx,
                job_tx,
                done_rx,
                max_in_flight: workers * 2,
            };
            flow.run(
                &mut dispatcher,
                &mut failures,
                ctx,
                visual,
                ev_visual,
                self.progress.as_deref(),
            );
            // `flow` is gone: its channels are closed, so every stage is ending.
            speech.join().unwrap_or_else(|_| SpeechResult {
                errors: vec!["speech stage panicked: the microphone was not fully audited".into()],
                ..Default::default()
            })
        });
        // The slicer is joined after the scope: the dispatcher dropped its receiver, so a
        // slicer still sending (the loop ended early) is cancelled rather than blocked.
        let slicing = slicer
            .join()
            .unwrap_or_else(|_| Err(slice::SliceError::Decode("slicing thread panicked".into())));
        StageResults {
            slicing,
            speech,
            dispatcher,
            failures,
            calls: worker_ctx.calls.clone(),
        }
    }
}

/// The dispatcher's channels. Consumed by [`Flow::run`], so they all close when it returns,
/// whichever way it ends.
struct Flow {
    slice_rx: Receiver<SliceOutput>,
    job_tx: crossbeam_channel::Sender<Job>,
    done_rx: Receiver<Done>,
    max_in_flight: usize,
}

impl Flow {
    fn run(
        self,
        dispatcher: &mut Dispatcher<'_>,
        failures: &mut Incomplete,
        ctx: &FindingContext<'_>,
        visual: &mut VisualFindings,
        ev: &mut EvidenceSink,
        progress: Option<&ProgressFn>,
    ) {
        let mut in_flight = 0usize;
        let mut slices_open = true;
        let no_results = never::<Done>();
        loop {
            let admit = slices_open && in_flight < self.max_in_flight;
            if !admit && in_flight == 0 {
                break;
            }
            if admit {
                // With nothing in flight the results channel can only be empty: selecting on
                // it would wake for nothing.
                let done_or_never = if in_flight > 0 {
                    &self.done_rx
                } else {
                    &no_results
                };
                select! {
                    recv(self.slice_rx) -> msg => match msg {
                        Ok(SliceOutput::Slice(s)) => {
                            if let Some(job) = dispatcher.admit(s) {
                                let seq = job.seq;
                                match self.job_tx.send(job) {
                                    Ok(()) => in_flight += 1,
                                    // Every worker is gone: the slice is reported, not waited for.
                                    Err(_) => dispatcher.done(Done::failed(seq, "no model worker left")),
                                }
                            }
                        }
                        // Audio goes from the slicer to the speech thread on its own channel.
                        Ok(SliceOutput::Audio(_) | SliceOutput::Header(_)) => {}
                        Err(_) => slices_open = false,
                    },
                    recv(done_or_never) -> msg => match msg {
                        Ok(d) => {
                            in_flight -= 1;
                            dispatcher.done(d);
                        }
                        Err(_) => {
                            failures.add("model workers: every worker stopped");
                            break;
                        }
                    },
                }
            } else if let Ok(d) = self.done_rx.recv() {
                in_flight -= 1;
                dispatcher.done(d);
            } else {
                failures.add("model workers: every worker stopped");
                break;
            }
            if let (Some(media_ms), Some(progress)) =
                (dispatcher.release(ctx, visual, ev), progress)
            {
                progress(&AuditProgress {
                    media_ms,
                    findings: visual.findings.clone(),
                });
            }
        }
        dispatcher.abandon_waiting("never analysed (model workers stopped)");
        dispatcher.release(ctx, visual, ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_names_every_reason_once_in_order() {
        let mut i = Incomplete::default();
        assert!(i.is_empty() && i.reason().is_none());
        i.add("file size limit: 10-20 s not audited");
        i.add("speech stage panicked");
        i.add("speech stage panicked");
        i.add("size limit"); // already part of the first reason
        assert_eq!(
            i.reason().unwrap(),
            "file size limit: 10-20 s not audited; speech stage panicked"
        );
    }
}
