//! One-shot inspection of a single image or audio file, for the `inspect` CLI commands:
//! runs the models on the file and returns plain JSON. Models are loaded per call (a CLI
//! invocation inspects one file); the audit pipeline keeps its own long-lived model objects.

use std::path::Path;

use serde_json::{json, Value};

use crate::models::{
    cosine, FaceDetector, FaceDetectorKind, FaceEmbedder, ModelError, ModelHome, ModelOptions,
    NsfwClassifier, NudeNetDetector, Ocr, Vad, Whisper,
};

/// What `inspect_image` runs and where the models live.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    pub home: ModelHome,
    pub model: ModelOptions,
    pub detector: FaceDetectorKind,
    pub nsfw: bool,
    /// NudeNet is AGPL-3.0 licensed: only when asked for.
    pub nudenet: bool,
    pub ocr: bool,
}

impl Default for InspectOptions {
    fn default() -> Self {
        Self {
            home: ModelHome::locate(),
            model: ModelOptions::default(),
            detector: FaceDetectorKind::YuNet,
            nsfw: true,
            nudenet: false,
            ocr: true,
        }
    }
}

fn display_name(path: &Path) -> String {
    crate::models::file_name(path)
}

/// Loads an image file as RGB. Decoding errors name the file, never panic.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| ModelError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// `{ "faces": [...], "nsfw": p, "nudenet": [...] (if enabled), "ocr": [{text, box, score}] }`
pub fn inspect_image(path: &Path, opts: &InspectOptions) -> Result<Value, ModelError> {
    let img = load_rgb(path)?;
    let mut out = serde_json::Map::new();
    let detector = FaceDetector::load(opts.detector, &opts.home, &opts.model)?;
    let faces = detector.detect(&img)?;
    out.insert(
        "faces".into(),
        serde_json::to_value(&faces).unwrap_or(Value::Null),
    );
    if opts.nsfw {
        let nsfw = NsfwClassifier::load(&opts.home.open_nsfw(), &opts.model)?;
        out.insert("nsfw".into(), json!(nsfw.score(&img)?));
    }
    if opts.nudenet {
        let nn = NudeNetDetector::load(&opts.home.nudenet(), &opts.model)?;
        out.insert(
            "nudenet".into(),
            serde_json::to_value(nn.detect(&img)?).unwrap_or(Value::Null),
        );
    }
    if opts.ocr {
        let ocr = Ocr::load(&opts.home, &opts.model)?;
        out.insert(
            "ocr".into(),
            serde_json::to_value(ocr.read(&img)?).unwrap_or(Value::Null),
        );
    }
    Ok(Value::Object(out))
}

/// `inspect_audio_with` using the default options.
pub fn inspect_audio(path: &Path) -> Result<Value, ModelError> {
    inspect_audio_with(path, &InspectOptions::default())
}

/// `{ "speech": [{start_ms, end_ms}], "transcript": {text, segments} }`. Whisper runs only
/// on the speech the VAD found.
pub fn inspect_audio_with(path: &Path, opts: &InspectOptions) -> Result<Value, ModelError> {
    let samples = decode_audio_16k_mono(path)?;
    let vad = Vad::load(&opts.home.silero_vad(), &opts.model)?;
    let speech = vad.detect(&samples)?;
    let transcript = if speech.is_empty() {
        crate::models::Transcript::default()
    } else {
        let whisper = Whisper::load(&opts.home, &opts.model)?;
        whisper.transcribe_regions(&samples, &speech)?
    };
    tracing::debug!(target: "classguard::inspect", segments = speech.len(), words = transcript.text.split_whitespace().count(), "audio inspected");
    Ok(json!({ "speech": speech, "transcript": transcript }))
}

/// `inspect_compare_with` using the default options.
pub fn inspect_compare(a: &Path, b: &Path, threshold: f32) -> Result<Value, ModelError> {
    inspect_compare_with(a, b, threshold, &InspectOptions::default())
}

/// `{ "similarity": s, "same_person": s >= threshold, "threshold": t }` for the largest face
/// of each image (SFace cosine; 0.363 is the published operating point).
pub fn inspect_compare_with(
    a: &Path,
    b: &Path,
    threshold: f32,
    opts: &InspectOptions,
) -> Result<Value, ModelError> {
    let detector = FaceDetector::load(opts.detector, &opts.home, &opts.model)?;
    let embedder = FaceEmbedder::load(&opts.home.sface(), &opts.model)?;
    let embed = |p: &Path| -> Result<Vec<f32>, ModelError> {
        let img = load_rgb(p)?;
        let faces = detector.detect(&img)?;
        let face = faces
            .iter()
            .max_by(|x, y| x.area().total_cmp(&y.area()))
            .ok_or_else(|| ModelError::Input {
                model: "face detector".into(),
                reason: format!("no face found in {}", display_name(p)),
            })?;
        embedder.embed(&img, face)
    };
    let (ea, eb) = (embed(a)?, embed(b)?);
    let s = cosine(&ea, &eb);
    Ok(json!({ "similarity": s, "same_person": s >= threshold, "threshold": threshold }))
}

// ---------------------------------------------------------------------------------------------
// Audio decoding
// ---------------------------------------------------------------------------------------------

/// Decodes an audio file to 16 kHz mono f32.
///
/// WAV, FLAC and Ogg/Vorbis are decoded in-process with symphonia; Opus, WebM/Matroska and
/// anything symphonia cannot handle go through the GStreamer decoder of the slicing stage.
pub fn decode_audio_16k_mono(path: &Path) -> Result<Vec<f32>, ModelError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let native = matches!(ext.as_str(), "wav" | "wave" | "flac" | "ogg" | "oga");
    if native {
        match decode_symphonia(path) {
            Ok((samples, rate)) => return Ok(resample_to_16k(&samples, rate)),
            // Ogg may carry Opus, which symphonia does not decode: fall through.
            Err(e) if ext == "ogg" || ext == "oga" => {
                tracing::debug!(target: "classguard::inspect", error = %e, "symphonia could not decode; trying GStreamer");
            }
            Err(e) => return Err(e),
        }
    }
    crate::slice::audio::decode_file_16k_mono(path).map_err(|e| ModelError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Decodes with symphonia and downmixes to mono; returns (samples, sample rate).
fn decode_symphonia(path: &Path) -> Result<(Vec<f32>, u32), ModelError> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::errors::Error as SErr;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;

    let derr = |reason: String| ModelError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(e) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(e);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| derr(e.to_string()))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| derr("no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| derr("no audio codec parameters".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| derr(e.to_string()))?;
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut mono: Vec<f32> = Vec::new();
    let mut inter: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SErr::ResetRequired) => break,
            Err(SErr::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(derr(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                let ch = buf.spec().channels().count().max(1);
                rate = buf.spec().rate();
                inter.resize(buf.samples_interleaved(), 0.0);
                buf.copy_to_slice_interleaved(&mut inter);
                mono.extend(
                    inter
                        .chunks_exact(ch)
                        .map(|f| f.iter().sum::<f32>() / ch as f32),
                );
            }
            // A damaged packet: skip it, as players do.
            Err(SErr::DecodeError(_)) | Err(SErr::IoError(_)) => continue,
            Err(e) => return Err(derr(e.to_string())),
        }
    }
    if rate == 0 {
        return Err(derr("unknown sample rate".into()));
    }
    Ok((mono, rate))
}

/// Band-limited resampling to 16 kHz (windowed-sinc, 16 zero crossings, cut-off at the lower
/// Nyquist frequency). Identity at 16 kHz.
pub fn resample_to_16k(x: &[f32], rate: u32) -> Vec<f32> {
    const OUT: f64 = 16_000.0;
    if rate == 16_000 || x.is_empty() || rate == 0 {
        return x.to_vec();
    }
    let ratio = OUT / rate as f64;
    let cutoff = ratio.min(1.0) * 0.95;
    let half = 16.0 / cutoff; // input samples each side
    let n_out = (x.len() as f64 * ratio).floor() as usize;
    let mut out = Vec::with_capacity(n_out);
    for j in 0..n_out {
        let t = j as f64 / ratio;
        let lo = (t - half).ceil().max(0.0) as usize;
        let hi = ((t + half).floor() as usize).min(x.len() - 1);
        let (mut acc, mut wsum) = (0.0f64, 0.0f64);
        for (i, &xi) in x.iter().enumerate().take(hi + 1).skip(lo) {
            let d = i as f64 - t;
            let arg = d * cutoff;
            let sinc = if arg.abs() < 1e-9 {
                1.0
            } else {
                (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
            };
            let win = 0.5 + 0.5 * (std::f64::consts::PI * d / half).cos();
            let w = sinc * win;
            acc += w * xi as f64;
            wsum += w;
        }
        out.push(if wsum.abs() > 1e-9 {
            (acc / wsum) as f32
        } else {
            0.0
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_keeps_a_tone() {
        let x: Vec<f32> = (0..48_000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        let y = resample_to_16k(&x, 48_000);
        assert_eq!(y.len(), 16_000);
        for (j, &v) in y.iter().enumerate().skip(100).take(15_800) {
            let want = (2.0 * std::f32::consts::PI * 440.0 * j as f32 / 16_000.0).sin();
            assert!((v - want).abs() < 0.02, "sample {j}: {v} vs {want}");
        }
        assert_eq!(resample_to_16k(&[1.0, 2.0], 16_000), vec![1.0, 2.0]);
        assert!(resample_to_16k(&[], 44_100).is_empty());
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("cg-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("not-an-image.png");
        std::fs::write(&p, b"definitely not a png").unwrap();
        assert!(matches!(load_rgb(&p), Err(ModelError::Decode { .. })));
        let w = dir.join("broken.wav");
        std::fs::write(&w, b"RIFF....WAVEjunk").unwrap();
        assert!(decode_symphonia(&w).is_err());
        assert!(matches!(
            load_rgb(&dir.join("missing.png")),
            Err(ModelError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
