//! GStreamer plumbing shared by the video and audio decoders: one-time init, a pipeline that is
//! always set to Null when dropped, and bus polling that turns errors into values.

use std::sync::OnceLock;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::SliceError;

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), SliceError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| SliceError::Gstreamer(format!("GStreamer failed to initialise: {e}")))
}

/// Makes the first available element of `names` (e.g. two AV1 decoders), with a clear error
/// naming the Debian package that provides it.
pub fn make_element(names: &[&str], package_hint: &str) -> Result<gst::Element, SliceError> {
    for name in names {
        if let Ok(el) = gst::ElementFactory::make(name).build() {
            return Ok(el);
        }
    }
    Err(SliceError::Gstreamer(format!(
        "missing GStreamer element {} (install {package_hint})",
        names.join(" or ")
    )))
}

/// A pipeline that is torn down on every path: dropping it sets the state to Null, which also
/// unblocks an appsrc push waiting on a full queue.
pub struct OwnedPipeline(pub gst::Pipeline);

impl OwnedPipeline {
    pub fn new(name: &str) -> Self {
        Self(gst::Pipeline::with_name(name))
    }

    pub fn play(&self) -> Result<(), SliceError> {
        self.0
            .set_state(gst::State::Playing)
            .map(|_| ())
            .map_err(|_| {
                self.take_error()
                    .unwrap_or_else(|| SliceError::Gstreamer("pipeline refused to start".into()))
            })
    }

    /// The first error or EOS message waiting on the bus, without blocking.
    pub fn poll_bus(&self) -> BusState {
        let Some(bus) = self.0.bus() else {
            return BusState::Running;
        };
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                    return BusState::Error(format!("{src}: {}", err.error()));
                }
                gst::MessageView::Eos(_) => return BusState::Eos,
                _ => {}
            }
        }
        BusState::Running
    }

    fn take_error(&self) -> Option<SliceError> {
        match self.poll_bus() {
            BusState::Error(e) => Some(SliceError::Gstreamer(e)),
            _ => None,
        }
    }

    pub fn stop(&self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

impl Drop for OwnedPipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

pub enum BusState {
    Running,
    Eos,
    Error(String),
}
