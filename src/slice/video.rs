//! Video decoding: appsrc → decoder → videoconvert (I420) → appsink.
//!
//! The demux thread pushes compressed frames; a puller thread receives decoded I420 frames and
//! hands them to the sampler. Colour conversion and scaling happen in Rust only for frames the
//! sampler keeps, so skipped frames cost just the decode. appsrc blocks when its queue is full and
//! appsink holds a few frames, which carries back-pressure from a slow consumer to the reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::frame::{I420, THUMB};
use super::gst_pipeline::{init, make_element, BusState, OwnedPipeline};
use super::SliceError;
use crate::demux::{Codec, Frame, TrackInfo};

/// Feeding side, owned by the demux thread.
pub struct VideoDecoder {
    pipeline: Arc<OwnedPipeline>,
    src: gst_app::AppSrc,
    ended: Arc<AtomicBool>,
}

/// Pulling side, owned by the track's puller thread.
pub struct VideoOutput {
    pipeline: Arc<OwnedPipeline>,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    ended: Arc<AtomicBool>,
}

fn caps_for(track: &TrackInfo) -> Result<(gst::Caps, Vec<&'static str>, &'static str), SliceError> {
    let (w, h) = track
        .video
        .as_ref()
        .map(|v| (v.width as i32, v.height as i32))
        .unwrap_or((0, 0));
    let with_size = |b: gst::caps::Builder<gst::caps::NoFeature>| {
        if w > 0 && h > 0 {
            b.field("width", w).field("height", h)
        } else {
            b
        }
    };
    let codec_data = || gst::Buffer::from_slice(track.codec_private.clone());
    Ok(match &track.codec {
        Codec::Vp8 => (
            with_size(gst::Caps::builder("video/x-vp8")).build(),
            vec!["vp8dec"],
            "gstreamer1.0-plugins-good",
        ),
        Codec::Vp9 => (
            with_size(gst::Caps::builder("video/x-vp9")).build(),
            vec!["vp9dec"],
            "gstreamer1.0-plugins-good",
        ),
        Codec::Av1 => {
            let mut b = with_size(gst::Caps::builder("video/x-av1"))
                .field("stream-format", "obu-stream")
                .field("alignment", "tu");
            if !track.codec_private.is_empty() {
                b = b.field("codec_data", codec_data());
            }
            (
                b.build(),
                vec!["dav1ddec", "av1dec"],
                "gstreamer1.0-plugins-bad",
            )
        }
        Codec::H264 => (
            with_size(gst::Caps::builder("video/x-h264"))
                .field("stream-format", "avc")
                .field("alignment", "au")
                .field("codec_data", codec_data())
                .build(),
            vec!["avdec_h264"],
            "gstreamer1.0-libav",
        ),
        other => return Err(SliceError::UnsupportedCodec(other.name().to_string())),
    })
}

impl VideoDecoder {
    pub fn new(track: &TrackInfo, threads: u32) -> Result<(Self, VideoOutput), SliceError> {
        init()?;
        let (caps, decoders, package) = caps_for(track)?;
        let pipeline = OwnedPipeline::new(&format!("video-track-{}", track.number));
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(false)
            .block(true)
            .max_bytes(4 << 20)
            .build();
        let decoder = make_element(&decoders, package)?;
        if threads > 0 && decoder.find_property("threads").is_some() {
            // vp8dec/vp9dec take an int; avdec takes "max-threads".
            decoder.set_property_from_str("threads", &threads.to_string());
        } else if threads > 0 && decoder.find_property("max-threads").is_some() {
            decoder.set_property_from_str("max-threads", &threads.to_string());
        }
        let convert = make_element(&["videoconvert"], "gstreamer1.0-plugins-base")?;
        let sink = gst_app::AppSink::builder()
            .caps(
                &gst_video::VideoCapsBuilder::new()
                    .format(gst_video::VideoFormat::I420)
                    .build(),
            )
            .max_buffers(4)
            .drop(false)
            .sync(false)
            .build();
        let elements = [
            src.upcast_ref::<gst::Element>(),
            &decoder,
            &convert,
            sink.upcast_ref(),
        ];
        pipeline
            .0
            .add_many(elements)
            .map_err(|e| SliceError::Gstreamer(e.to_string()))?;
        gst::Element::link_many(elements).map_err(|e| SliceError::Gstreamer(e.to_string()))?;
        pipeline.play()?;
        let pipeline = Arc::new(pipeline);
        let ended = Arc::new(AtomicBool::new(false));
        Ok((
            Self {
                pipeline: pipeline.clone(),
                src: src.clone(),
                ended: ended.clone(),
            },
            VideoOutput {
                pipeline,
                src,
                sink,
                ended,
            },
        ))
    }

    /// Pushes one compressed frame; blocks while the decoder is behind. Fails once the pipeline
    /// has stopped (decode error, stall, or teardown).
    pub fn push(&self, frame: &Frame) -> Result<(), SliceError> {
        let mut buffer = gst::Buffer::from_slice(frame.data.clone());
        {
            let b = buffer.get_mut().expect("fresh buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(frame.pts_ns.max(0) as u64));
            if let Some(d) = frame.duration_ns {
                b.set_duration(gst::ClockTime::from_nseconds(d));
            }
            if !frame.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        self.src
            .push_buffer(buffer)
            .map(|_| ())
            .map_err(|flow| match self.pipeline.poll_bus() {
                BusState::Error(e) => SliceError::Decode(e),
                _ => SliceError::Decode(format!("decoder stopped ({flow:?})")),
            })
    }

    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let _ = self.src.end_of_stream();
    }

    /// Stops the pipeline from the feeding side (e.g. the reader failed).
    pub fn abort(&self) {
        self.pipeline.stop();
    }
}

/// One decoded frame as the puller sees it.
pub struct Decoded<'a> {
    pub pts_ms: i64,
    pub planes: I420<'a>,
}

impl VideoOutput {
    /// Pulls decoded frames until end of stream, calling `on_frame` for each. A decoder error or
    /// a decoder that stops making progress for `stall_timeout` ends the loop with an error and
    /// stops the pipeline (which releases a blocked feeder).
    pub fn run(
        self,
        stall_timeout: Duration,
        mut on_frame: impl FnMut(Decoded<'_>),
    ) -> Result<(), SliceError> {
        let result = self.pull_loop(stall_timeout, &mut on_frame);
        if result.is_err() {
            self.pipeline.stop();
        }
        result
    }

    fn pull_loop(
        &self,
        stall_timeout: Duration,
        on_frame: &mut impl FnMut(Decoded<'_>),
    ) -> Result<(), SliceError> {
        let mut last_progress = Instant::now();
        let mut last_level = 0u64;
        loop {
            if let Some(sample) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(100))
            {
                last_progress = Instant::now();
                with_planes(&sample, |pts_ms, planes| {
                    on_frame(Decoded { pts_ms, planes })
                })?;
                continue;
            }
            match self.pipeline.poll_bus() {
                BusState::Error(e) => return Err(SliceError::Decode(e)),
                BusState::Eos => return Ok(()),
                BusState::Running => {}
            }
            if self.sink.is_eos() {
                return Ok(());
            }
            // Stalled: compressed data is waiting but nothing comes out.
            let level = self.src.current_level_bytes();
            if level != last_level {
                last_level = level;
                if level == 0 {
                    last_progress = Instant::now();
                }
            }
            let waiting = level > 0 || self.ended.load(Ordering::Acquire);
            if waiting && last_progress.elapsed() > stall_timeout {
                return Err(SliceError::Decode(format!(
                    "decoder made no progress for {}s",
                    stall_timeout.as_secs()
                )));
            }
        }
    }
}

/// Maps a decoded sample's I420 planes for `f` (with the frame's time in ms); `None` for a sample
/// without a buffer or caps.
fn with_planes<T>(
    sample: &gst::Sample,
    f: impl FnOnce(i64, I420<'_>) -> T,
) -> Result<Option<T>, SliceError> {
    let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
        return Ok(None);
    };
    let info = gst_video::VideoInfo::from_caps(caps)
        .map_err(|e| SliceError::Decode(format!("decoder produced unusable caps: {e}")))?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|_| SliceError::Decode("cannot map decoded frame".into()))?;
    let pts_ms = buffer
        .pts()
        .map(|t| (t.nseconds() / 1_000_000) as i64)
        .unwrap_or(0);
    let strides = frame.plane_stride();
    let plane = |i| {
        frame
            .plane_data(i)
            .map_err(|e| SliceError::Decode(e.to_string()))
    };
    let planes = I420 {
        width: frame.width(),
        height: frame.height(),
        y: plane(0)?,
        u: plane(1)?,
        v: plane(2)?,
        y_stride: strides[0] as usize,
        uv_stride: strides[1] as usize,
    };
    Ok(Some(f(pts_ms, planes)))
}

/// A second decoder of a track that sees its keyframes alone, used synchronously by the demux
/// thread: it tells what a keyframe looks like before the track's own decoder is fed the inter
/// frames in front of it (see [`super::gap`]). Only for codecs whose decoder returns a keyframe
/// at once, without waiting for later frames (VP8, VP9).
pub struct KeyframeProbe {
    decoder: VideoDecoder,
    output: VideoOutput,
}

impl KeyframeProbe {
    pub fn supports(codec: &Codec) -> bool {
        matches!(codec, Codec::Vp8 | Codec::Vp9)
    }

    pub fn new(track: &TrackInfo) -> Result<Self, SliceError> {
        let (decoder, output) = VideoDecoder::new(track, 1)?;
        Ok(Self { decoder, output })
    }

    /// Decodes one keyframe and returns its scene-change thumbnail.
    pub fn thumbnail(
        &self,
        keyframe: &Frame,
        timeout: Duration,
    ) -> Result<[u8; THUMB * THUMB], SliceError> {
        self.decoder.push(keyframe)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(sample) = self
                .output
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(50))
            {
                if let Some(t) = with_planes(&sample, |_, planes| planes.thumbnail())? {
                    return Ok(t);
                }
                continue;
            }
            match self.output.pipeline.poll_bus() {
                BusState::Error(e) => return Err(SliceError::Decode(e)),
                BusState::Eos => return Err(SliceError::Decode("keyframe probe ended".into())),
                BusState::Running => {}
            }
            if Instant::now() > deadline {
                return Err(SliceError::Decode(format!(
                    "keyframe probe returned nothing in {} s",
                    timeout.as_secs()
                )));
            }
        }
    }
}
