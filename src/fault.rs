//! Fault injection for the fail-closed tests (tests/fail_closed.rs). TEST ONLY: production never
//! sets `CLASSGUARD_FAULT`.
//!
//! `CLASSGUARD_FAULT=<stage>` makes one stage of the FIRST recording audited by the process fail,
//! so a test can check that the recording ends `partial` (or error) with the stage named, in
//! bounded time, and that the next recording of the same batch is audited normally. The variable
//! is read once; afterwards every audit costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// A stage that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The video decoder reports an error on the first frame.
    Decoder,
    /// A model returns an error for the first slice.
    Model,
    /// A model worker panics on the first slice.
    WorkerPanic,
    /// The speech thread panics on the first audio.
    SpeechPanic,
    /// Writing an evidence file fails.
    Evidence,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "decoder" => Fault::Decoder,
            "model" => Fault::Model,
            "worker-panic" => Fault::WorkerPanic,
            "speech-panic" => Fault::SpeechPanic,
            "evidence" => Fault::Evidence,
            _ => return None,
        })
    }
}

static CONFIGURED: OnceLock<Option<Fault>> = OnceLock::new();
static USED: AtomicBool = AtomicBool::new(false);

/// The fault for this audit: `Some` for the first audit of a process run with
/// `CLASSGUARD_FAULT`, `None` for every other one and whenever the variable is unset.
pub fn take() -> Option<Fault> {
    let f = (*CONFIGURED.get_or_init(|| {
        std::env::var("CLASSGUARD_FAULT")
            .ok()
            .and_then(|v| Fault::parse(v.trim()))
    }))?;
    (!USED.swap(true, Ordering::AcqRel)).then_some(f)
}

/// `CLASSGUARD_FAULT_CRASH_SESSION=<session id>` (TEST ONLY): a `classguard worker` that starts
/// auditing a recording of that class session aborts the whole process, every time, as a
/// recording that crashes its decoder would. The scale-out tests use it for a poison job.
pub fn crash_if_session(session: Option<&str>) {
    static CRASH: OnceLock<Option<String>> = OnceLock::new();
    let target = CRASH.get_or_init(|| {
        std::env::var("CLASSGUARD_FAULT_CRASH_SESSION")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if let (Some(t), Some(s)) = (target, session) {
        if t == s {
            tracing::error!("injected fault (test only): crashing the worker");
            std::process::abort();
        }
    }
}
