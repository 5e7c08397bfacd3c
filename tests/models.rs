//! Integration tests of the model layer: the real ONNX Runtime, the real installed models,
//! real images and synthetic speech.
//!
//! They need the installation made by `scripts/setup-models.sh` (root = `CLASSGUARD_HOME`,
//! else `${XDG_DATA_HOME:-$HOME/.local/share}/classguard`). A missing file FAILS the test with
//! a message saying to run the setup: these tests are the proof that the models work.
//! The speech and OCR tests also need `espeak-ng`, `sox` and ImageMagick's `convert`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use classguard::models::imageops::{flip_horizontal, rotate};
use classguard::models::whisper::{AudioJob, TranscriptSegment};
use classguard::models::{
    cosine, load_model, FaceDetector, FaceDetectorKind, FaceEmbedder, ModelError, ModelHome,
    ModelOptions, NsfwClassifier, NudeNetDetector, Ocr, RawInput, SpeechSegment, UltraFace, Vad,
    Whisper, YuNet,
};
use image::RgbImage;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn home() -> ModelHome {
    ModelHome::locate()
}

/// Panics (fails the test) with a setup hint when an installed file is missing.
fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup-models.sh (or set CLASSGUARD_HOME to an installed root)",
        path.display()
    );
    path
}

fn opts() -> ModelOptions {
    ModelOptions {
        intra_threads: 1,
        pool_size: 1,
        ..Default::default()
    }
}

fn load_image(name: &str) -> RgbImage {
    let p = require(home().testdata(name));
    classguard::inspect::load_rgb(&p).unwrap_or_else(|e| panic!("{e}"))
}

macro_rules! shared {
    ($name:ident, $ty:ty, $init:expr) => {
        fn $name() -> &'static $ty {
            static CELL: OnceLock<$ty> = OnceLock::new();
            CELL.get_or_init(|| $init)
        }
    };
}

shared!(
    yunet,
    YuNet,
    YuNet::load(&require(home().yunet()), &opts()).unwrap_or_else(|e| panic!("{e}"))
);
shared!(
    ultraface,
    UltraFace,
    UltraFace::load(&require(home().ultraface()), &opts()).unwrap_or_else(|e| panic!("{e}"))
);
shared!(
    sface,
    FaceEmbedder,
    FaceEmbedder::load(&require(home().sface()), &opts()).unwrap_or_else(|e| panic!("{e}"))
);
shared!(
    nsfw,
    NsfwClassifier,
    NsfwClassifier::load(&require(home().open_nsfw()), &opts()).unwrap_or_else(|e| panic!("{e}"))
);
shared!(ocr, Ocr, {
    require(home().ocr_det());
    require(home().ocr_rec());
    Ocr::load(&home(), &opts()).unwrap_or_else(|e| panic!("{e}"))
});
shared!(
    vad,
    Vad,
    Vad::load(&require(home().silero_vad()), &opts()).unwrap_or_else(|e| panic!("{e}"))
);
shared!(whisper, Whisper, {
    for p in [
        home().whisper_encoder(),
        home().whisper_decoder(),
        home().whisper_tokenizer(),
        home().whisper_config(),
    ] {
        require(p);
    }
    Whisper::load(&home(), &opts()).unwrap_or_else(|e| panic!("{e}"))
});

fn tmpdir() -> &'static tempfile::TempDir {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SLIDE_LINES: [&str; 4] = [
    "Week 3: Linear Equations",
    "Email: tutor@example.com",
    "Slides: https://example.org/algebra",
    "Phone: +1 555 0100",
];

/// Renders a 1280×720 slide with known text lines.
fn slide() -> &'static (PathBuf, RgbImage) {
    static S: OnceLock<(PathBuf, RgbImage)> = OnceLock::new();
    S.get_or_init(|| {
        let p = tmpdir().path().join("slide.png");
        let mut c = Command::new("convert");
        c.args([
            "-size",
            "1280x720",
            "xc:white",
            "-font",
            "DejaVu-Sans",
            "-pointsize",
            "44",
            "-fill",
            "black",
        ]);
        for (i, l) in SLIDE_LINES.iter().enumerate() {
            c.args(["-annotate", &format!("+60+{}", 120 + i * 130), l]);
        }
        c.arg(&p);
        run(&mut c);
        let img = classguard::inspect::load_rgb(&p).unwrap_or_else(|e| panic!("{e}"));
        (p, img)
    })
}

/// Speaks a sentence with espeak-ng, converts to 16 kHz mono 16-bit with sox and trims the
/// leading/trailing silence, so that the speech bounds of the file are known.
fn speak(sentence: &str, name: &str) -> Vec<f32> {
    let dir = tmpdir().path();
    let raw = dir.join(format!("{name}.raw.wav"));
    let wav = dir.join(format!("{name}.wav"));
    run(Command::new("espeak-ng").arg("-w").arg(&raw).arg(sentence));
    run(Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .args([
            "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse",
        ]));
    classguard::inspect::decode_audio_16k_mono(&wav).unwrap_or_else(|e| panic!("{e}"))
}

const SENTENCES: [&str; 8] = [
    "Good morning everyone and welcome back to our science class",
    "Today we will learn why the sky looks blue on a sunny day",
    "Please remember to hand in your homework before Friday",
    "The capital of France is Paris",
    "Raise your hand if you have a question about the lesson",
    "We will have a short quiz at the end of the week",
    "Open your notebook and write down the date",
    "Thank you for listening and see you next time",
];

/// A 16 kHz signal and the true speech bounds in it (ms).
type SpeechTrack = (Vec<f32>, Vec<(u64, u64)>);

/// The sentences separated by known silences; returns (signal, true speech bounds in ms).
fn speech_track() -> &'static SpeechTrack {
    static T: OnceLock<SpeechTrack> = OnceLock::new();
    T.get_or_init(|| {
        let mut signal = vec![0.0f32; 16_000]; // 1 s lead-in
        let mut truth = Vec::new();
        for (i, s) in SENTENCES.iter().enumerate() {
            let a = speak(s, &format!("s{i}"));
            let start = signal.len();
            signal.extend_from_slice(&a);
            truth.push(((start / 16) as u64, (signal.len() / 16) as u64));
            signal.extend(std::iter::repeat_n(0.0f32, 24_000)); // 1.5 s pause
        }
        (signal, truth)
    })
}

// ---------------------------------------------------------------------------------------------
// Reference comparisons
// ---------------------------------------------------------------------------------------------

fn read_f32(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
fn read_i64(p: &Path) -> Vec<i64> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn reference(stem: &str) -> Value {
    let p = require(home().reference(&format!("{stem}.json")));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

enum Loaded {
    F(Vec<usize>, Vec<f32>),
    I(Vec<usize>, Vec<i64>),
}

fn reference_inputs(doc: &Value) -> Vec<(String, Loaded)> {
    doc["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let name = i["name"].as_str().unwrap().to_string();
            let shape: Vec<usize> = i["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let file = home().reference(i["file"].as_str().unwrap());
            let l = match i["dtype"].as_str().unwrap() {
                "f32" => Loaded::F(shape, read_f32(&file)),
                _ => Loaded::I(shape, read_i64(&file)),
            };
            (name, l)
        })
        .collect()
}

/// Max abs difference between our output and the reference values, relative to the largest
/// reference magnitude (at least 1).
fn compare_outputs(stem: &str, doc: &Value, ours: &[(String, Vec<usize>, Vec<f32>)]) -> f32 {
    let mut worst = 0.0f32;
    for o in doc["outputs"].as_array().unwrap() {
        let name = o["name"].as_str().unwrap();
        let (_, shape, data) = ours
            .iter()
            .find(|x| x.0 == name)
            .unwrap_or_else(|| panic!("{stem}: output {name} missing"));
        let want_shape: Vec<usize> = o["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, &want_shape, "{stem}: shape of {name}");
        let vals: Vec<f32> = o["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let scale = vals.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = vals
            .iter()
            .zip(data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale;
        if let Some(sum) = o["sum"].as_f64() {
            let ours_sum: f64 = data.iter().map(|&v| v as f64).sum();
            let tol = 1e-3 * (1.0 + sum.abs()).max(data.len() as f64 * 1e-4);
            assert!(
                (ours_sum - sum).abs() < tol.max(1e-2),
                "{stem}: sum of {name} {ours_sum} vs {sum}"
            );
        }
        worst = worst.max(diff);
    }
    worst
}

fn check_reference(stem: &str, file: &str) {
    let doc = reference(stem);
    let model = load_model(&require(home().model(file)), &opts()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        doc["model_sha256"].as_str().unwrap(),
        model.sha256,
        "{stem}: reference made from another file"
    );
    let inputs = reference_inputs(&doc);
    let raw: Vec<(&str, RawInput<'_>)> = inputs
        .iter()
        .map(|(n, l)| {
            (
                n.as_str(),
                match l {
                    Loaded::F(s, d) => RawInput::F32(s, d),
                    Loaded::I(s, d) => RawInput::I64(s, d),
                },
            )
        })
        .collect();
    let out = model.pool.run_raw(&raw).unwrap_or_else(|e| panic!("{e}"));
    let diff = compare_outputs(stem, &doc, &out);
    eprintln!("{stem}: max relative abs diff vs python onnxruntime {diff:.2e}");
    assert!(
        diff < 1e-3,
        "{stem}: outputs differ from the reference by {diff}"
    );
}

#[test]
fn raw_outputs_match_python_reference() {
    for (stem, file) in [
        ("yunet", "yunet.onnx"),
        ("ultraface-rfb320", "ultraface-rfb320.onnx"),
        ("sface", "sface.onnx"),
        ("open_nsfw", "open_nsfw.onnx"),
        ("nudenet-320n", "nudenet-320n.onnx"),
        ("ppocrv6-det-small", "ppocrv6-det-small.onnx"),
        ("ppocrv6-rec-small", "ppocrv6-rec-small.onnx"),
        ("silero-vad-v6", "silero-vad-v6.onnx"),
        ("whisper-tiny.en-encoder", "whisper-tiny.en-encoder.onnx"),
        ("whisper-tiny.en-decoder", "whisper-tiny.en-decoder.onnx"),
    ] {
        check_reference(stem, file);
    }
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn wrapper_preprocessing_matches_reference_inputs() {
    let astro = load_image("astronaut.png");
    // YuNet: same letterbox -> identical tensor.
    let mut buf = Vec::new();
    yunet().preprocess(&astro, &mut buf).unwrap();
    let want = read_f32(&home().reference("yunet.input.f32"));
    assert_eq!(mean_abs_diff(&buf, &want), 0.0, "yunet input");
    // OCR detector: 512x512 is already a multiple of 32 -> identical.
    ocr().det_preprocess(&astro, &mut buf).unwrap();
    let want = read_f32(&home().reference("ppocrv6-det-small.input.f32"));
    assert!(mean_abs_diff(&buf, &want) < 1e-6, "ocr det input");
    // Resizing models: the reference resizes with Pillow; allow interpolation differences.
    ultraface().preprocess(&astro, &mut buf).unwrap();
    let d = mean_abs_diff(
        &buf,
        &read_f32(&home().reference("ultraface-rfb320.input.f32")),
    );
    assert!(
        d < 0.03,
        "ultraface input differs by {d} (normalised units)"
    );
    buf.clear();
    NsfwClassifier::preprocess_into(&astro, &mut buf).unwrap();
    let d = mean_abs_diff(&buf, &read_f32(&home().reference("open_nsfw.input.f32")));
    assert!(d < 3.0, "open_nsfw input differs by {d} grey levels");
    // SFace: our alignment from our landmarks vs the reference crop.
    let faces = yunet().detect(&astro).unwrap();
    let aligned = FaceEmbedder::align(&astro, &faces[0]).unwrap();
    FaceEmbedder::preprocess(&aligned, &mut buf);
    let ref_in = read_f32(&home().reference("sface.input.f32"));
    let d = mean_abs_diff(&buf, &ref_in);
    assert!(d < 4.0, "sface aligned crop differs by {d} grey levels");
    // ...and the embeddings agree.
    let ours = sface().embed(&astro, &faces[0]).unwrap();
    let theirs = sface()
        .pool()
        .run_raw(&[("data", RawInput::F32(&[1, 3, 112, 112], &ref_in))])
        .unwrap();
    let c = cosine(&ours, &theirs[0].2);
    eprintln!("sface: aligned crop diff {d:.2} grey levels, embedding cosine vs reference pipeline {c:.4}");
    assert!(c > 0.98, "embedding cosine vs reference pipeline {c}");
}

// ---------------------------------------------------------------------------------------------
// Faces
// ---------------------------------------------------------------------------------------------

#[test]
fn yunet_finds_the_astronaut() {
    let img = load_image("astronaut.png");
    let faces = yunet().detect(&img).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    let f = &faces[0];
    assert!(f.score > 0.8, "score {}", f.score);
    let [x, y, w, h] = f.bbox;
    for p in f.landmarks.expect("YuNet gives landmarks") {
        assert!(
            p[0] >= x && p[0] <= x + w && p[1] >= y && p[1] <= y + h,
            "landmark {p:?} outside {:?}",
            f.bbox
        );
    }
    assert_eq!(yunet().id(), "yunet-2023mar-fp32");
    assert_eq!(yunet().sha256().len(), 64);
}

#[test]
fn yunet_counts_six_people_and_no_face_in_coffee() {
    let faces = yunet().detect(&load_image("t1.jpg")).unwrap();
    assert_eq!(faces.len(), 6, "{faces:?}");
    assert!(yunet()
        .detect(&load_image("coffee.png"))
        .unwrap()
        .is_empty());
}

#[test]
fn yunet_maps_back_through_the_letterbox() {
    // A frame larger than the model input: scaled down, boxes mapped back to frame pixels.
    let astro = load_image("astronaut.png");
    let big = image::imageops::resize(&astro, 1024, 1024, image::imageops::FilterType::Triangle);
    let a = &yunet().detect(&astro).unwrap()[0];
    let b = &yunet().detect(&big).unwrap()[0];
    for i in 0..4 {
        assert!(
            (b.bbox[i] / 2.0 - a.bbox[i]).abs() < 6.0,
            "{:?} vs {:?}",
            b.bbox,
            a.bbox
        );
    }
}

#[test]
fn ultraface_finds_faces() {
    let faces = ultraface().detect(&load_image("astronaut.png")).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    assert!(faces[0].landmarks.is_none());
    let yn = &yunet().detect(&load_image("astronaut.png")).unwrap()[0];
    assert!(classguard::models::iou_xywh(&faces[0].bbox, &yn.bbox) > 0.4);
    let six = ultraface().detect(&load_image("t1.jpg")).unwrap();
    assert!(six.len() >= 5, "ultraface found {} of 6", six.len());
    assert!(ultraface()
        .detect(&load_image("coffee.png"))
        .unwrap()
        .is_empty());
}

#[test]
fn detector_enum_dispatches() {
    let d = FaceDetector::load(FaceDetectorKind::UltraFace, &home(), &opts()).unwrap();
    assert_eq!(d.id(), "ultraface-rfb320");
    assert_eq!(d.detect(&load_image("astronaut.png")).unwrap().len(), 1);
}

fn largest_face_embedding(img: &RgbImage) -> Vec<f32> {
    let faces = yunet().detect(img).unwrap();
    let f = faces
        .iter()
        .max_by(|a, b| a.area().total_cmp(&b.area()))
        .expect("a face");
    sface().embed(img, f).unwrap()
}

fn jpeg_roundtrip(img: &RgbImage, quality: u8) -> RgbImage {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(img)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[test]
fn sface_same_person_and_different_people() {
    let astro = load_image("astronaut.png");
    let base = largest_face_embedding(&astro);
    let mut dark = astro.clone();
    dark.pixels_mut()
        .for_each(|p| p.0 = p.0.map(|v| (v as f32 * 0.6).round() as u8));
    let variants = [
        ("flipped", flip_horizontal(&astro)),
        ("rotated 10 degrees", rotate(&astro, 10.0)),
        ("darkened 40%", dark),
        ("JPEG quality 40", jpeg_roundtrip(&astro, 40)),
    ];
    for (name, img) in &variants {
        let s = cosine(&base, &largest_face_embedding(img));
        eprintln!("same person, {name}: {s:.3}");
        assert!(s > 0.6, "{name}: similarity {s}");
    }
    let group = load_image("t1.jpg");
    let faces = yunet().detect(&group).unwrap();
    assert_eq!(faces.len(), 6);
    for f in &faces {
        let s = cosine(&base, &sface().embed(&group, f).unwrap());
        eprintln!("different person: {s:.3}");
        assert!(s < 0.3, "different person scored {s}");
    }
    assert_eq!(base.len(), 128);
    assert!((base.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);
}

#[test]
fn sface_box_crop_fallback_without_landmarks() {
    let astro = load_image("astronaut.png");
    let base = largest_face_embedding(&astro);
    let uf = &ultraface().detect(&astro).unwrap()[0];
    let s = cosine(&base, &sface().embed(&astro, uf).unwrap());
    eprintln!("landmark-free crop vs aligned: {s:.3}");
    assert!(s > 0.3, "box-crop fallback similarity {s}");
}

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

#[test]
fn open_nsfw_is_low_on_safe_images_and_batches_consistently() {
    let astro = load_image("astronaut.png");
    let (_, slide_img) = slide();
    let a = nsfw().score(&astro).unwrap();
    let s = nsfw().score(slide_img).unwrap();
    eprintln!("open_nsfw: astronaut {a:.4}, slide {s:.4}");
    assert!(a < 0.2 && s < 0.2);
    let batch = nsfw().score_batch(&[&astro, slide_img, &astro]).unwrap();
    assert_eq!(batch.len(), 3);
    assert!(
        (batch[0] - a).abs() < 1e-4 && (batch[1] - s).abs() < 1e-4 && (batch[2] - a).abs() < 1e-4
    );
    assert!(nsfw().score_batch(&[]).unwrap().is_empty());
}

#[test]
fn nudenet_runs_and_labels_are_known() {
    let nn = NudeNetDetector::load(&require(home().nudenet()), &opts()).unwrap();
    let dets = nn.detect(&load_image("astronaut.png")).unwrap();
    eprintln!("nudenet on astronaut: {dets:?}");
    for d in &dets {
        assert!(classguard::models::nsfw::NUDENET_LABELS.contains(&d.label));
        assert!(d.bbox[2] > 0.0 && d.bbox[0] + d.bbox[2] <= 512.0 + 1e-3);
        assert!(!d.label.ends_with("GENITALIA_EXPOSED") && !d.label.contains("BREAST_EXPOSED"));
    }
    assert!(
        dets.iter().any(|d| d.label.starts_with("FACE_")),
        "no face box on a portrait: {dets:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// OCR
// ---------------------------------------------------------------------------------------------

#[test]
fn ocr_reads_a_rendered_slide_exactly() {
    let (_, img) = slide();
    let t = std::time::Instant::now();
    let lines = ocr().read(img).unwrap();
    eprintln!(
        "ocr: {:?} in {:?}",
        lines.iter().map(|l| (&l.text, l.score)).collect::<Vec<_>>(),
        t.elapsed()
    );
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, SLIDE_LINES.to_vec());
    for (i, l) in lines.iter().enumerate() {
        let top = 120.0 + i as f32 * 130.0 - 44.0;
        assert!(
            l.bbox[0][1] > top - 25.0 && l.bbox[2][1] < 120.0 + i as f32 * 130.0 + 25.0,
            "line {i} box {:?}",
            l.bbox
        );
        assert!(l.score > 0.8);
    }
}

#[test]
fn ocr_recogniser_reads_the_reference_line() {
    let doc = reference("ppocrv6-rec-small");
    let inputs = reference_inputs(&doc);
    let Loaded::F(shape, data) = &inputs[0].1 else {
        panic!("f32 input expected")
    };
    let out = ocr()
        .rec_pool()
        .run_raw(&[("x", RawInput::F32(shape, data))])
        .unwrap();
    let (_, s, probs) = &out[0];
    let (text, conf) = ocr().decode_ctc(probs, s[1], s[2]);
    assert_eq!(text, "Meet me at room 42", "confidence {conf}");
}

#[test]
fn ocr_finds_nothing_on_a_photo_without_text() {
    let lines = ocr().read(&load_image("coffee.png")).unwrap();
    assert!(lines.len() <= 1, "{lines:?}");
}

// ---------------------------------------------------------------------------------------------
// Speech
// ---------------------------------------------------------------------------------------------

#[test]
fn vad_bounds_match_the_known_speech() {
    let (signal, truth) = speech_track();
    // Stream in odd-sized pieces to exercise the chunk carry-over.
    let mut stream = vad().stream();
    let mut segs: Vec<SpeechSegment> = Vec::new();
    for piece in signal.chunks(7_777) {
        segs.extend(stream.feed(piece).unwrap());
    }
    segs.extend(stream.finish().unwrap());
    eprintln!("vad segments {segs:?}\ntruth {truth:?}");
    for &(ts, te) in truth {
        let overlapping: Vec<&SpeechSegment> = segs
            .iter()
            .filter(|s| s.end_ms > ts && s.start_ms < te)
            .collect();
        assert!(!overlapping.is_empty(), "no segment for speech {ts}..{te}");
        let (s, e) = (overlapping[0].start_ms, overlapping.last().unwrap().end_ms);
        assert!(s.abs_diff(ts) <= 100, "start {s} vs true {ts}");
        assert!(e.abs_diff(te) <= 100, "end {e} vs true {te}");
    }
    // Nothing in the silences.
    for s in &segs {
        assert!(
            truth
                .iter()
                .any(|&(ts, te)| s.end_ms > ts && s.start_ms < te),
            "segment in silence {s:?}"
        );
    }
    // Whole-signal API agrees with streaming.
    assert_eq!(vad().detect(signal).unwrap(), segs);
}

#[test]
fn vad_is_quiet_on_silence_and_noise() {
    assert!(vad().detect(&vec![0.0; 16_000 * 3]).unwrap().is_empty());
    let mut x = 12345u32;
    let noise: Vec<f32> = (0..16_000 * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.02
        })
        .collect();
    assert!(vad().detect(&noise).unwrap().is_empty());
    assert!(vad().detect(&[]).unwrap().is_empty());
}

fn normalise(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word error rate: word-level edit distance / reference words.
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = normalise(reference);
    let h = normalise(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut cur = vec![i; h.len() + 1];
        for j in 1..=h.len() {
            let sub = prev[j - 1] + usize::from(r[i - 1] != h[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

#[test]
fn wer_function() {
    assert_eq!(wer("the cat sat", "the cat sat"), 0.0);
    assert!((wer("the cat sat", "the bat sat down") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(wer("Hello, World!", "hello world"), 0.0);
}

#[test]
fn whisper_log_mel_matches_reference() {
    let doc = reference("whisper-tiny.en-encoder");
    let audio = read_f32(&home().reference(doc["extra"]["audio"]["file"].as_str().unwrap()));
    let want = read_f32(&home().reference("whisper-tiny.en-encoder.input.f32"));
    let mut mel = Vec::new();
    whisper().log_mel().compute(&audio, &mut mel);
    let d = mel
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("log-mel max abs diff vs numpy: {d:.2e}");
    assert!(d < 1e-3, "log-mel differs by {d}");
}

#[test]
fn whisper_greedy_matches_reference_tokens() {
    let doc = reference("whisper-tiny.en-decoder");
    let want: Vec<u32> = doc["extra"]["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let enc = reference("whisper-tiny.en-encoder");
    let audio = read_f32(&home().reference(enc["extra"]["audio"]["file"].as_str().unwrap()));
    let w = whisper();
    let mut mel = Vec::new();
    w.log_mel().compute(&audio, &mut mel);
    let cross = w.encode(&mel).unwrap();
    assert_eq!(w.decode_greedy(cross, false).unwrap().0, vec![want]);
    let t = w.transcribe(&audio).unwrap();
    assert_eq!(t.text, doc["extra"]["greedy_text"].as_str().unwrap().trim());
    assert_eq!(t.segments.len(), 1);
    assert!(t.segments[0].end_ms <= (audio.len() / 16) as u64 + 20);
}

#[test]
fn whisper_transcribes_sentences_with_low_wer() {
    let (signal, truth) = speech_track();
    let reference = SENTENCES.join(" ");
    let t0 = std::time::Instant::now();
    let transcript = whisper().transcribe(signal).unwrap();
    let took = t0.elapsed().as_secs_f64();
    let e = wer(&reference, &transcript.text);
    eprintln!(
        "whisper: {:.1} s audio in {took:.1} s (RTF {:.2}), WER {:.1}%\n{}\n{:?}",
        signal.len() as f64 / 16_000.0,
        took / (signal.len() as f64 / 16_000.0),
        e * 100.0,
        transcript.text,
        transcript.segments
    );
    assert!(e <= 0.10, "WER {e}");
    let dur = (signal.len() / 16) as u64;
    assert_segments_on_sentences(&transcript.segments, truth, dur);
    // VAD-gated transcription gives the same words.
    let speech = vad().detect(signal).unwrap();
    let gated = whisper().transcribe_regions(signal, &speech).unwrap();
    let eg = wer(&reference, &gated.text);
    eprintln!("VAD-gated WER {:.1}%: {}", eg * 100.0, gated.text);
    assert!(eg <= 0.10, "gated WER {eg}");
    // The speech was packed without its pauses: the segment times must still be recording times.
    eprintln!("VAD-gated segments: {:?}", gated.segments);
    assert_segments_on_sentences(&gated.segments, truth, dur);
}

/// Transcript segments are ordered, well formed and inside the audio (`dur_ms`), each lies on a
/// true sentence (300 ms tolerance), and each sentence is covered by a segment.
fn assert_segments_on_sentences(segments: &[TranscriptSegment], truth: &[(u64, u64)], dur_ms: u64) {
    for w in segments.windows(2) {
        assert!(w[0].start_ms <= w[1].start_ms, "{segments:?}");
    }
    for s in segments {
        assert!(s.start_ms <= s.end_ms && s.end_ms <= dur_ms + 20, "{s:?}");
        assert!(
            truth
                .iter()
                .any(|&(ts, te)| s.start_ms < te + 300 && s.end_ms + 300 > ts),
            "segment {s:?} is on no sentence of {truth:?}"
        );
    }
    for &(ts, te) in truth {
        assert!(
            segments.iter().any(|s| s.start_ms < te && s.end_ms > ts),
            "no transcript segment over {ts}..{te}"
        );
    }
}

/// Decoding windows together must give each window exactly the tokens it gets alone, also
/// when windows leave the batch at different steps (different lengths of speech).
#[test]
fn whisper_batched_decoding_equals_one_window_at_a_time() {
    let (signal, truth) = speech_track();
    let w = whisper();
    // One piece per true sentence, plus one of silence (leaves the batch at once).
    let mut pieces: Vec<&[f32]> = truth
        .iter()
        .map(|&(s, e)| {
            &signal
                [(s as usize * 16).saturating_sub(3200)..(e as usize * 16 + 3200).min(signal.len())]
        })
        .collect();
    let silence = vec![0.0f32; 48_000];
    pieces.insert(1, &silence);
    let jobs: Vec<AudioJob<'_>> = pieces
        .iter()
        .map(|p| AudioJob {
            samples: p,
            regions: None,
        })
        .collect();
    let alone = w.transcribe_batch(&jobs, 1).unwrap();
    let batched = w.transcribe_batch(&jobs, 4).unwrap();
    assert_eq!(alone.windows, batched.windows);
    assert!(
        batched.decoder_steps * 2 < alone.decoder_steps,
        "batching saved too few decoder runs: {} vs {}",
        batched.decoder_steps,
        alone.decoder_steps
    );
    for (i, (a, b)) in alone
        .transcripts
        .iter()
        .zip(&batched.transcripts)
        .enumerate()
    {
        assert_eq!(a, b, "piece {i}");
    }
    eprintln!(
        "decoder runs: {} alone, {} batched; silence piece: {:?}",
        alone.decoder_steps, batched.decoder_steps, batched.transcripts[1].text
    );
    let words: usize = batched
        .transcripts
        .iter()
        .map(|t| t.text.split_whitespace().count())
        .sum();
    assert!(
        words >= SENTENCES.join(" ").split_whitespace().count() * 9 / 10,
        "{words} words"
    );
}

#[test]
fn whisper_handles_silence_and_tiny_inputs() {
    let t = whisper().transcribe(&[]).unwrap();
    assert!(t.text.is_empty() && t.segments.is_empty());
    let t = whisper().transcribe(&[0.0; 100]).unwrap();
    assert!(t.segments.is_empty());
    assert!(whisper()
        .transcribe_regions(&vec![0.0; 16_000], &[])
        .unwrap()
        .segments
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Robustness, errors, identity
// ---------------------------------------------------------------------------------------------

#[test]
fn degenerate_images_do_not_panic() {
    for (w, h) in [(1, 1), (2, 3), (1, 900), (900, 1), (7, 7)] {
        let img = RgbImage::from_pixel(w, h, image::Rgb([120, 80, 200]));
        yunet().detect(&img).unwrap();
        ultraface().detect(&img).unwrap();
        nsfw().score(&img).unwrap();
        ocr().read(&img).unwrap();
        let f = classguard::models::Face {
            bbox: [0.0, 0.0, w as f32, h as f32],
            score: 1.0,
            landmarks: None,
        };
        let _ = sface().embed(&img, &f);
    }
    let empty = RgbImage::new(0, 0);
    assert!(matches!(
        yunet().detect(&empty),
        Err(ModelError::Input { .. })
    ));
    assert!(nsfw().score(&empty).is_err());
    assert!(ocr().read(&empty).unwrap().is_empty());
}

#[test]
fn missing_model_is_a_clear_error() {
    let err = YuNet::load(Path::new("/nonexistent/yunet.onnx"), &opts())
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("yunet.onnx") && msg.contains("setup"), "{msg}");
}

#[test]
fn model_ids_and_hashes() {
    assert_eq!(sface().id(), "sface-2021dec-fp32");
    assert_eq!(nsfw().id(), "open-nsfw-1.0");
    assert_eq!(vad().id(), "silero-vad-v6");
    assert_eq!(whisper().id(), "whisper-tiny.en");
    assert_eq!(ocr().id(), "ppocrv6-small");
    // The manifest pins the installed files: our hashes must agree with it.
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let pinned = |name: &str| -> String {
        manifest["model"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .and_then(|m| m["result_sha256"].as_str())
            .unwrap_or_else(|| panic!("{name} not in manifest"))
            .to_string()
    };
    assert_eq!(yunet().sha256(), pinned("yunet.onnx"));
    assert_eq!(sface().sha256(), pinned("sface.onnx"));
    assert_eq!(nsfw().sha256(), pinned("open_nsfw.onnx"));
    assert_eq!(vad().sha256(), pinned("silero-vad-v6.onnx"));
}

#[test]
fn session_pool_serves_concurrent_callers() {
    let y = YuNet::load(
        &require(home().yunet()),
        &ModelOptions {
            pool_size: 2,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(y.pool().size(), 2);
    let img = load_image("astronaut.png");
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| y.detect(&img).unwrap().len()))
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), 1);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------------------------

#[test]
fn inspect_image_and_compare() {
    let o = classguard::inspect::InspectOptions::default();
    let v =
        classguard::inspect::inspect_image(&require(home().testdata("astronaut.png")), &o).unwrap();
    assert_eq!(v["faces"].as_array().unwrap().len(), 1);
    assert!(v["nsfw"].as_f64().unwrap() < 0.2);
    assert!(v.get("nudenet").is_none());
    assert!(v["ocr"].is_array());
    let (slide_path, _) = slide();
    let v = classguard::inspect::inspect_image(
        slide_path,
        &classguard::inspect::InspectOptions {
            nudenet: true,
            ..o.clone()
        },
    )
    .unwrap();
    assert!(v["faces"].as_array().unwrap().is_empty());
    assert!(v["nudenet"].is_array());
    assert_eq!(v["ocr"][1]["text"], "Email: tutor@example.com");
    assert_eq!(v["ocr"][1]["box"].as_array().unwrap().len(), 4);

    let flipped = tmpdir().path().join("astronaut-flipped.png");
    flip_horizontal(&load_image("astronaut.png"))
        .save(&flipped)
        .unwrap();
    let c =
        classguard::inspect::inspect_compare(&home().testdata("astronaut.png"), &flipped, 0.363)
            .unwrap();
    assert_eq!(c["same_person"], true, "{c}");
    let c = classguard::inspect::inspect_compare(
        &home().testdata("astronaut.png"),
        &home().testdata("t1.jpg"),
        0.363,
    )
    .unwrap();
    assert_eq!(c["same_person"], false, "{c}");
    let err = classguard::inspect::inspect_compare(&home().testdata("coffee.png"), &flipped, 0.363)
        .unwrap_err();
    assert!(
        err.to_string().contains("no face found in coffee.png"),
        "{err}"
    );
}

#[test]
fn inspect_audio_on_a_wav_file() {
    let dir = tmpdir().path();
    let raw = dir.join("inspect.raw.wav");
    let wav = dir.join("inspect.wav");
    run(Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw)
        .arg("Please open your books now"));
    // 44.1 kHz stereo with a second of silence in front: exercises downmix and resampling.
    run(Command::new("sox")
        .arg(&raw)
        .args(["-r", "44100", "-c", "2"])
        .arg(&wav)
        .args(["pad", "1", "1"]));
    let v = classguard::inspect::inspect_audio(&wav).unwrap();
    eprintln!("{v}");
    let speech = v["speech"].as_array().unwrap();
    assert_eq!(speech.len(), 1);
    assert!(speech[0]["start_ms"].as_u64().unwrap() >= 900);
    assert!(
        wer(
            "Please open your books now",
            v["transcript"]["text"].as_str().unwrap()
        ) <= 0.2
    );
}
