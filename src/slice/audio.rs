//! Microphone audio: extracted to its own file without re-encoding, and decoded to 16 kHz mono
//! f32 for the speech models (appsrc → opusdec/vorbisdec → audioconvert → audioresample → appsink).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::gst_pipeline::{init, make_element, BusState, OwnedPipeline};
use super::SliceError;
use crate::demux::codec::split_xiph_headers;
use crate::demux::{Codec, Frame, TrackInfo};
use crate::mux::{TrackSpec, WebmWriter};

/// A jump in packet timestamps beyond this is a gap in the audio, not jitter.
const GAP_NS: i64 = 60_000_000;

/// The sample rate every speech model here expects.
pub const MODEL_RATE: u32 = 16_000;

/// A run of decoded microphone samples (16 kHz mono) starting at `start_ms` in the recording.
#[derive(Debug, Clone)]
pub struct AudioChunk {
    pub start_ms: i64,
    pub samples: Vec<f32>,
}

fn raw_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", "F32LE")
        .field("rate", MODEL_RATE as i32)
        .field("channels", 1i32)
        .field("layout", "interleaved")
        .build()
}

fn sink() -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .caps(&raw_caps())
        .max_buffers(16)
        .drop(false)
        .sync(false)
        .build()
}

/// A minimal OpusTags packet: decoders expect one after OpusHead in the stream header.
fn opus_tags() -> Vec<u8> {
    let vendor = b"classguard";
    let mut t = b"OpusTags".to_vec();
    t.extend((vendor.len() as u32).to_le_bytes());
    t.extend(vendor);
    t.extend(0u32.to_le_bytes());
    t
}

/// Feeding side of the decoder, owned by the demux thread.
pub struct AudioDecoder {
    pipeline: Arc<OwnedPipeline>,
    src: gst_app::AppSrc,
    /// End of the last packet pushed: a later packet starting past it is marked DISCONT, so the
    /// decoder and the resampler restamp from it instead of counting samples across the gap.
    next_pts_ns: std::cell::Cell<Option<i64>>,
}

/// Pulling side, owned by the audio puller thread.
pub struct AudioOutput {
    pipeline: Arc<OwnedPipeline>,
    sink: gst_app::AppSink,
}

impl AudioDecoder {
    pub fn new(track: &TrackInfo) -> Result<(Self, AudioOutput), SliceError> {
        init()?;
        let (rate, channels) = track
            .audio
            .as_ref()
            .map(|a| (a.sample_rate as i32, a.channels as i32))
            .unwrap_or((48000, 1));
        // Opus: FFmpeg's decoder (gstreamer1.0-libav) then the resampler to 16 kHz took 1.11
        // CPU-s for the 10 minutes of the bench's camera audio, where libopus (opusdec) took 2.87
        // even when asked for 16 kHz itself; opusdec is the fallback. Vorbis decodes at its
        // stream rate and is resampled.
        let mut decoded_caps = None;
        let (caps, decoder) = match track.codec {
            Codec::Opus => {
                if !track.codec_private.starts_with(b"OpusHead") {
                    return Err(SliceError::Decode("Opus track has no OpusHead".into()));
                }
                let headers = gst::Array::new([
                    gst::Buffer::from_slice(track.codec_private.clone()).to_send_value(),
                    gst::Buffer::from_slice(opus_tags()).to_send_value(),
                ]);
                let caps = gst::Caps::builder("audio/x-opus")
                    .field("rate", 48000i32)
                    .field("channels", channels.max(1))
                    .field("channel-mapping-family", 0i32)
                    .field("streamheader", headers)
                    .build();
                let decoder = make_element(&["avdec_opus", "opusdec"], "gstreamer1.0-libav")?;
                if decoder.factory().is_some_and(|f| f.name() == "opusdec") {
                    // libopus synthesises the model rate itself, with no resampler pass.
                    decoded_caps = Some(
                        gst::Caps::builder("audio/x-raw")
                            .field("rate", MODEL_RATE as i32)
                            .build(),
                    );
                }
                (caps, decoder)
            }
            Codec::Vorbis => {
                let parts = split_xiph_headers(&track.codec_private).ok_or_else(|| {
                    SliceError::Decode("Vorbis track has malformed headers".into())
                })?;
                let headers = gst::Array::new(
                    parts
                        .iter()
                        .map(|p| gst::Buffer::from_slice(p.to_vec()).to_send_value()),
                );
                let caps = gst::Caps::builder("audio/x-vorbis")
                    .field("rate", rate)
                    .field("channels", channels.max(1))
                    .field("streamheader", headers)
                    .build();
                (
                    caps,
                    make_element(&["vorbisdec"], "gstreamer1.0-plugins-base")?,
                )
            }
            ref other => return Err(SliceError::UnsupportedCodec(other.name().to_string())),
        };
        let pipeline = OwnedPipeline::new(&format!("audio-track-{}", track.number));
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(false)
            .block(true)
            .max_bytes(1 << 20)
            .build();
        let convert = make_element(&["audioconvert"], "gstreamer1.0-plugins-base")?;
        let resample = make_element(&["audioresample"], "gstreamer1.0-plugins-base")?;
        let sink = sink();
        let elements = [
            src.upcast_ref::<gst::Element>(),
            &decoder,
            &convert,
            &resample,
            sink.upcast_ref(),
        ];
        pipeline
            .0
            .add_many(elements)
            .map_err(|e| SliceError::Gstreamer(e.to_string()))?;
        let link_err = |e: gst::glib::BoolError| SliceError::Gstreamer(e.to_string());
        src.link(&decoder).map_err(link_err)?;
        match &decoded_caps {
            Some(c) => decoder.link_filtered(&convert, c).map_err(link_err)?,
            None => decoder.link(&convert).map_err(link_err)?,
        }
        gst::Element::link_many([&convert, &resample, sink.upcast_ref()]).map_err(link_err)?;
        pipeline.play()?;
        let pipeline = Arc::new(pipeline);
        Ok((
            Self {
                pipeline: pipeline.clone(),
                src,
                next_pts_ns: std::cell::Cell::new(None),
            },
            AudioOutput { pipeline, sink },
        ))
    }

    pub fn push(&self, frame: &Frame) -> Result<(), SliceError> {
        let mut buffer = gst::Buffer::from_slice(frame.data.clone());
        {
            let b = buffer.get_mut().expect("fresh buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(frame.pts_ns.max(0) as u64));
            if let Some(d) = frame.duration_ns {
                b.set_duration(gst::ClockTime::from_nseconds(d));
            }
            if self
                .next_pts_ns
                .get()
                .is_some_and(|next| frame.pts_ns > next.saturating_add(GAP_NS))
            {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        let dur = i64::try_from(frame.duration_ns.unwrap_or(0)).unwrap_or(i64::MAX);
        self.next_pts_ns.set(Some(frame.pts_ns.saturating_add(dur)));
        self.src
            .push_buffer(buffer)
            .map(|_| ())
            .map_err(|flow| match self.pipeline.poll_bus() {
                BusState::Error(e) => SliceError::Decode(e),
                _ => SliceError::Decode(format!("audio decoder stopped ({flow:?})")),
            })
    }

    pub fn end(&self) {
        let _ = self.src.end_of_stream();
    }

    pub fn abort(&self) {
        self.pipeline.stop();
    }
}

impl AudioOutput {
    /// Pulls decoded audio until end of stream. Each chunk carries its buffer's time (restamped
    /// after a gap, see [`AudioDecoder::push`]); the speech stage fills gaps with silence.
    pub fn run(
        self,
        stall_timeout: Duration,
        on_chunk: impl FnMut(AudioChunk),
    ) -> Result<(), SliceError> {
        let r = pull_audio(&self.pipeline, &self.sink, stall_timeout, on_chunk);
        if r.is_err() {
            self.pipeline.stop();
        }
        r
    }
}

fn pull_audio(
    pipeline: &OwnedPipeline,
    sink: &gst_app::AppSink,
    stall_timeout: Duration,
    mut on_chunk: impl FnMut(AudioChunk),
) -> Result<(), SliceError> {
    let mut last = Instant::now();
    loop {
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            last = Instant::now();
            let Some(buffer) = sample.buffer() else {
                continue;
            };
            let start_ms = buffer
                .pts()
                .map(|t| (t.nseconds() / 1_000_000) as i64)
                .unwrap_or(0);
            let map = buffer
                .map_readable()
                .map_err(|_| SliceError::Decode("cannot map audio".into()))?;
            let samples: Vec<f32> = map
                .as_slice()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            on_chunk(AudioChunk { start_ms, samples });
            continue;
        }
        match pipeline.poll_bus() {
            BusState::Error(e) => return Err(SliceError::Decode(e)),
            BusState::Eos => return Ok(()),
            BusState::Running => {}
        }
        if sink.is_eos() {
            return Ok(());
        }
        if last.elapsed() > stall_timeout {
            return Err(SliceError::Decode(format!(
                "audio decoder made no progress for {}s",
                stall_timeout.as_secs()
            )));
        }
    }
}

/// Decodes any audio file GStreamer can read (wav, ogg/opus, webm, flac, mp3 ...) to 16 kHz mono.
/// For `inspect audio` and tests; recordings go through the streaming path instead.
pub fn decode_file_16k_mono(path: &Path) -> Result<Vec<f32>, SliceError> {
    init()?;
    if !path.is_file() {
        return Err(SliceError::Io(format!(
            "{}: not a readable file",
            path.display()
        )));
    }
    // WebM/Matroska goes through our own demuxer (as in a scan): decodebin would also plug video
    // decoders, and Chrome's alpha-flagged VP8/VP9 makes it pick one that fails without alpha data.
    let mut magic = [0u8; 4];
    let is_ebml = File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == [0x1A, 0x45, 0xDF, 0xA3];
    if is_ebml {
        let file =
            File::open(path).map_err(|e| SliceError::Io(format!("{}: {e}", path.display())))?;
        let opts = super::SliceOptions {
            decode_video: false,
            decode_audio: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        super::run_blocking(file, &name, opts, |o| {
            if let super::SliceOutput::Audio(c) = o {
                out.extend(c.samples);
            }
        })
        .map_err(|e| SliceError::Decode(format!("{}: {e}", path.display())))?;
        return Ok(out);
    }
    let pipeline = OwnedPipeline::new("decode-file");
    let src = make_element(&["filesrc"], "gstreamer1.0 core")?;
    src.set_property("location", path.to_string_lossy().to_string());
    let decodebin = make_element(&["decodebin"], "gstreamer1.0-plugins-base")?;
    let convert = make_element(&["audioconvert"], "gstreamer1.0-plugins-base")?;
    let resample = make_element(&["audioresample"], "gstreamer1.0-plugins-base")?;
    let sink = sink();
    pipeline
        .0
        .add_many([&src, &decodebin, &convert, &resample, sink.upcast_ref()])
        .map_err(|e| SliceError::Gstreamer(e.to_string()))?;
    src.link(&decodebin)
        .map_err(|e| SliceError::Gstreamer(e.to_string()))?;
    gst::Element::link_many([&convert, &resample, sink.upcast_ref()])
        .map_err(|e| SliceError::Gstreamer(e.to_string()))?;
    let convert_weak = convert.downgrade();
    decodebin.connect_pad_added(move |_, pad| {
        let Some(convert) = convert_weak.upgrade() else {
            return;
        };
        let is_audio = pad
            .current_caps()
            .and_then(|c| c.structure(0).map(|s| s.name().starts_with("audio/")))
            .unwrap_or(false);
        if let (true, Some(sink_pad)) = (is_audio, convert.static_pad("sink")) {
            if !sink_pad.is_linked() {
                let _ = pad.link(&sink_pad);
            }
        }
    });
    pipeline.play()?;
    let mut out = Vec::new();
    pull_audio(&pipeline, &sink, Duration::from_secs(20), |c| {
        out.extend(c.samples)
    })
    .map_err(|e| SliceError::Decode(format!("{}: {e}", path.display())))?;
    Ok(out)
}

/// Writes the microphone track, packets copied as they are, into an audio-only WebM. The file is
/// written under a temp name and put in place by [`MicWriter::finish`] (fsync, rename, fsync of
/// the folder): a crash or a failed run leaves no half-written mic.webm.
pub struct MicWriter {
    path: PathBuf,
    tmp: PathBuf,
    done: bool,
    writer: WebmWriter<BufWriter<File>>,
    first_ms: Option<i64>,
    end_ms: i64,
    frames: u64,
}

/// What was extracted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractedAudio {
    pub path: PathBuf,
    pub codec: String,
    pub container: &'static str,
    pub frames: u64,
    pub start_ms: i64,
    pub duration_ms: i64,
    pub bytes: u64,
}

impl MicWriter {
    pub fn create(path: &Path, track: &TrackInfo) -> Result<Self, SliceError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file =
            File::create(&tmp).map_err(|e| SliceError::Io(format!("{}: {e}", path.display())))?;
        let spec = TrackSpec {
            number: 1,
            kind: 2,
            codec_id: track.codec_id.clone(),
            codec_private: track.codec_private.clone(),
            codec_delay_ns: track.codec_delay_ns,
            seek_preroll_ns: track.seek_preroll_ns,
            video_size: None,
            audio: track.audio.as_ref().map(|a| (a.sample_rate, a.channels)),
        };
        let writer = WebmWriter::new(BufWriter::new(file), "webm", &[spec])
            .map_err(|e| SliceError::Io(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            done: false,
            writer,
            first_ms: None,
            end_ms: 0,
            frames: 0,
        })
    }

    pub fn write(&mut self, frame: &Frame) -> Result<(), SliceError> {
        let pts_ms = frame.pts_ms();
        self.first_ms.get_or_insert(pts_ms);
        let end = frame
            .pts_ns
            .saturating_add(i64::try_from(frame.duration_ns.unwrap_or(0)).unwrap_or(i64::MAX));
        self.end_ms = self.end_ms.max(end.div_euclid(1_000_000));
        self.frames += 1;
        self.writer
            .write_frame(1, pts_ms, true, &frame.data)
            .map_err(|e| SliceError::Io(format!("{}: {e}", self.path.display())))
    }

    pub fn finish(mut self, codec: &Codec) -> Result<ExtractedAudio, SliceError> {
        let io = |e: std::io::Error| SliceError::Io(format!("{}: {e}", self.path.display()));
        let bytes = self
            .writer
            .flush_all()
            .and_then(|bytes| crate::sink::commit(&self.tmp, &self.path).map(|_| bytes))
            .map_err(io)?;
        self.done = true;
        let start = self.first_ms.unwrap_or(0);
        Ok(ExtractedAudio {
            path: self.path.clone(),
            codec: codec.name().to_string(),
            container: "webm",
            frames: self.frames,
            start_ms: start,
            duration_ms: self.end_ms - start,
            bytes,
        })
    }
}

impl Drop for MicWriter {
    /// A run that ends without `finish` leaves no temp file behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
