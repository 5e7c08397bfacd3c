//! Per-model latency at one intra-op thread on the default input size, each wrapper beside a
//! bare `Session::run` of the same model on the same input tensor (so the cost of pre- and
//! post-processing is visible), then Whisper's real-time factor on 60 s of synthetic speech.
//!
//! Needs the installation of `scripts/setup-models.sh`, plus `espeak-ng`, `sox` and
//! ImageMagick `convert` for the speech and slide inputs.
//!
//!     cargo bench --bench models            # all
//!     cargo bench --bench models -- yunet   # one group

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use classguard::models::imageops::resize_rgb;
use classguard::models::ocr::crop_box;
use classguard::models::{
    FaceEmbedder, ModelHome, ModelOptions, NsfwClassifier, NudeNetDetector, Ocr, RawInput,
    UltraFace, Vad, Whisper, YuNet,
};
use criterion::{black_box, Criterion};
use image::RgbImage;

fn home() -> ModelHome {
    ModelHome::locate()
}

fn opts() -> ModelOptions {
    ModelOptions {
        intra_threads: 1,
        pool_size: 1,
        ..Default::default()
    }
}

fn need(p: PathBuf) -> PathBuf {
    if !p.is_file() {
        eprintln!("{} is missing: run scripts/setup-models.sh", p.display());
        std::process::exit(1);
    }
    p
}

fn image(name: &str) -> RgbImage {
    classguard::inspect::load_rgb(&need(home().testdata(name))).unwrap_or_else(|e| panic!("{e}"))
}

fn tool(cmd: &mut Command) {
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("{cmd:?} failed (espeak-ng, sox and ImageMagick are needed)");
        std::process::exit(1);
    }
}

fn slide(dir: &Path) -> RgbImage {
    let p = dir.join("slide.png");
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
    for (i, l) in [
        "Week 3: Linear Equations",
        "Email: tutor@example.com",
        "Slides: https://example.org/algebra",
        "Phone: +1 555 0100",
    ]
    .iter()
    .enumerate()
    {
        c.args(["-annotate", &format!("+60+{}", 120 + i * 130), l]);
    }
    c.arg(&p);
    tool(&mut c);
    classguard::inspect::load_rgb(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn speech(dir: &Path, seconds: f32) -> Vec<f32> {
    let text = "Good morning everyone and welcome back to our science class. Today we will learn why the sky \
                looks blue on a sunny day. Please remember to hand in your homework before Friday. Raise your \
                hand if you have a question about the lesson. We will have a short quiz at the end of the week.";
    let raw = dir.join("speech.raw.wav");
    let wav = dir.join("speech.wav");
    tool(Command::new("espeak-ng").arg("-w").arg(&raw).arg(text));
    tool(
        Command::new("sox")
            .arg(&raw)
            .args(["-r", "16000", "-c", "1", "-b", "16"])
            .arg(&wav),
    );
    let one = classguard::inspect::decode_audio_16k_mono(&wav).unwrap_or_else(|e| panic!("{e}"));
    let n = (seconds * 16_000.0) as usize;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend_from_slice(&one[..one.len().min(n - out.len())]);
        out.extend(std::iter::repeat_n(
            0.0f32,
            8_000.min(n.saturating_sub(out.len())),
        ));
    }
    out
}

fn bench_images(c: &mut Criterion, slide_img: &RgbImage) {
    let astro = image("astronaut.png");
    let h = home();

    let yn = YuNet::load(&need(h.yunet()), &opts()).unwrap();
    let mut t = Vec::new();
    let (w, hh) = yn.input_size();
    yn.preprocess(&astro, &mut t).unwrap();
    let mut g = c.benchmark_group("yunet");
    g.bench_function("wrapper", |b| {
        b.iter(|| black_box(yn.detect(&astro).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                yn.pool()
                    .run_raw(&[("input", RawInput::F32(&[1, 3, hh, w], &t))])
                    .unwrap(),
            )
        })
    });
    g.finish();

    let uf = UltraFace::load(&need(h.ultraface()), &opts()).unwrap();
    uf.preprocess(&astro, &mut t).unwrap();
    let (w, hh) = uf.input_size();
    let mut g = c.benchmark_group("ultraface");
    g.bench_function("wrapper", |b| {
        b.iter(|| black_box(uf.detect(&astro).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                uf.pool()
                    .run_raw(&[("input", RawInput::F32(&[1, 3, hh, w], &t))])
                    .unwrap(),
            )
        })
    });
    g.finish();

    let sf = FaceEmbedder::load(&need(h.sface()), &opts()).unwrap();
    let face = yn.detect(&astro).unwrap().into_iter().next().expect("face");
    FaceEmbedder::preprocess(&FaceEmbedder::align(&astro, &face).unwrap(), &mut t);
    let mut g = c.benchmark_group("sface");
    g.bench_function("wrapper_align_embed", |b| {
        b.iter(|| black_box(sf.embed(&astro, &face).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                sf.pool()
                    .run_raw(&[("data", RawInput::F32(&[1, 3, 112, 112], &t))])
                    .unwrap(),
            )
        })
    });
    g.finish();

    let ns = NsfwClassifier::load(&need(h.open_nsfw()), &opts()).unwrap();
    t.clear();
    NsfwClassifier::preprocess_into(&astro, &mut t).unwrap();
    let mut g = c.benchmark_group("open_nsfw");
    g.bench_function("wrapper", |b| {
        b.iter(|| black_box(ns.score(&astro).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                ns.pool()
                    .run_raw(&[("input_0", RawInput::F32(&[1, 224, 224, 3], &t))])
                    .unwrap(),
            )
        })
    });
    g.finish();

    let nn = NudeNetDetector::load(&need(h.nudenet()), &opts()).unwrap();
    nn.preprocess(&astro, &mut t).unwrap();
    let mut g = c.benchmark_group("nudenet");
    g.bench_function("wrapper", |b| {
        b.iter(|| black_box(nn.detect(&astro).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                nn.pool()
                    .run_raw(&[("images", RawInput::F32(&[1, 3, 320, 320], &t))])
                    .unwrap(),
            )
        })
    });
    g.finish();

    let ocr = Ocr::load(&h, &opts()).unwrap();
    let (dw, dh) = ocr.det_preprocess(slide_img, &mut t).unwrap();
    let mut g = c.benchmark_group("ocr_det_1280x720");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("wrapper_detect", |b| {
        b.iter(|| black_box(ocr.detect(slide_img).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                ocr.det_pool()
                    .run_raw(&[("x", RawInput::F32(&[1, 3, dh as usize, dw as usize], &t))])
                    .unwrap(),
            )
        })
    });
    g.finish();
    let boxes = ocr.detect(slide_img).unwrap();
    let line = crop_box(slide_img, &boxes[1]);
    let line48 = resize_rgb(
        &line,
        ((48.0 * line.width() as f32 / line.height() as f32).ceil() as u32).max(320),
        48,
    )
    .unwrap();
    let mut rt = vec![0.0f32; 3 * 48 * line48.width() as usize];
    let plane = 48 * line48.width() as usize;
    for (i, p) in line48.as_raw().chunks_exact(3).enumerate() {
        rt[i] = p[2] as f32 / 127.5 - 1.0;
        rt[plane + i] = p[1] as f32 / 127.5 - 1.0;
        rt[2 * plane + i] = p[0] as f32 / 127.5 - 1.0;
    }
    let mut g = c.benchmark_group("ocr_rec_line");
    g.bench_function("wrapper_recognize", |b| {
        b.iter(|| black_box(ocr.recognize(&[&line]).unwrap()))
    });
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                ocr.rec_pool()
                    .run_raw(&[(
                        "x",
                        RawInput::F32(&[1, 3, 48, line48.width() as usize], &rt),
                    )])
                    .unwrap(),
            )
        })
    });
    g.finish();
    let mut g = c.benchmark_group("ocr_full_slide");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("wrapper_read", |b| {
        b.iter(|| black_box(ocr.read(slide_img).unwrap()))
    });
    g.finish();
}

fn bench_audio(c: &mut Criterion, audio: &[f32]) {
    let h = home();
    let vad = Vad::load(&need(h.silero_vad()), &opts()).unwrap();
    let window: Vec<f32> = audio[..576].to_vec();
    let state = vec![0.0f32; 256];
    let mut new_state = vec![0.0f32; 256];
    let mut g = c.benchmark_group("silero_vad_chunk");
    g.bench_function("wrapper_run", |b| {
        b.iter(|| black_box(vad.run_raw(&window, &state, &mut new_state).unwrap()))
    });
    let sr = [16_000i64];
    g.bench_function("raw_session_run", |b| {
        b.iter(|| {
            black_box(
                vad.pool()
                    .run_raw(&[
                        ("input", RawInput::F32(&[1, 576], &window)),
                        ("state", RawInput::F32(&[2, 1, 128], &state)),
                        ("sr", RawInput::I64(&[], &sr)),
                    ])
                    .unwrap(),
            )
        })
    });
    g.finish();
    let ten = &audio[..160_000];
    let mut g = c.benchmark_group("silero_vad_10s");
    g.sample_size(10);
    g.bench_function("wrapper_detect", |b| {
        b.iter(|| black_box(vad.detect(ten).unwrap()))
    });
    g.finish();

    let w = Whisper::load(&h, &opts()).unwrap();
    let mut mel = Vec::new();
    w.log_mel().compute(&audio[..480_000], &mut mel);
    let mut g = c.benchmark_group("whisper");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("log_mel_30s", |b| {
        b.iter(|| w.log_mel().compute(black_box(&audio[..480_000]), &mut mel))
    });
    g.bench_function("encoder_wrapper", |b| {
        b.iter(|| black_box(w.encode(&mel).unwrap()))
    });
    g.bench_function("encoder_raw_session_run", |b| {
        b.iter(|| {
            black_box(
                w.encoder_pool()
                    .run_raw(&[("mel", RawInput::F32(&[1, 80, 3000], &mel))])
                    .unwrap(),
            )
        })
    });
    let cross = w.encode(&mel).unwrap();
    // One decoder step with 32 cached positions.
    let layers = cross.layers();
    let cross_shape = [1, cross.heads, cross.frames, cross.dim];
    let past_shape = [layers, 1, cross.heads, 32, cross.dim];
    let past = vec![0.01f32; past_shape.iter().product()];
    let tok = [50257i64];
    let off = [32i64];
    let names: Vec<(String, String)> = (0..layers)
        .map(|l| (format!("cross_k_{l}"), format!("cross_v_{l}")))
        .collect();
    g.bench_function("decoder_step_raw_session_run", |b| {
        b.iter(|| {
            let mut inputs = vec![
                ("tokens", RawInput::I64(&[1, 1], &tok)),
                ("offset", RawInput::I64(&[1], &off)),
                ("past_k", RawInput::F32(&past_shape, &past)),
                ("past_v", RawInput::F32(&past_shape, &past)),
            ];
            for (l, (kn, vn)) in names.iter().enumerate() {
                inputs.push((kn.as_str(), RawInput::F32(&cross_shape, &cross.k[l])));
                inputs.push((vn.as_str(), RawInput::F32(&cross_shape, &cross.v[l])));
            }
            black_box(w.decoder_pool().run_raw(&inputs).unwrap());
        })
    });
    g.bench_function("decode_window_greedy", |b| {
        b.iter(|| black_box(w.decode_greedy(cross.clone(), true).unwrap()))
    });
    // The same window four times in one batch: the cost per window of batched decoding.
    let mut four = cross.clone();
    for _ in 0..3 {
        w.encode_into(&mel, &mut four).unwrap();
    }
    g.bench_function("decode_4_windows_batched", |b| {
        b.iter(|| black_box(w.decode_greedy(four.clone(), true).unwrap()))
    });
    g.finish();
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Prints the medians criterion measured, wrapper beside raw run.
fn print_medians() {
    let rows = [
        ("yunet", "wrapper", "raw_session_run"),
        ("ultraface", "wrapper", "raw_session_run"),
        ("sface", "wrapper_align_embed", "raw_session_run"),
        ("open_nsfw", "wrapper", "raw_session_run"),
        ("nudenet", "wrapper", "raw_session_run"),
        ("ocr_det_1280x720", "wrapper_detect", "raw_session_run"),
        ("ocr_rec_line", "wrapper_recognize", "raw_session_run"),
        ("ocr_full_slide", "wrapper_read", ""),
        ("silero_vad_chunk", "wrapper_run", "raw_session_run"),
        ("silero_vad_10s", "wrapper_detect", ""),
        ("whisper", "encoder_wrapper", "encoder_raw_session_run"),
        ("whisper", "log_mel_30s", "decoder_step_raw_session_run"),
        ("whisper", "decode_window_greedy", ""),
        ("whisper", "decode_4_windows_batched", ""),
    ];
    let median_ms = |g: &str, f: &str| -> Option<f64> {
        if f.is_empty() {
            return None;
        }
        let p = criterion_dir().join(g).join(f).join("new/estimates.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64().map(|ns| ns / 1e6)
    };
    let fmt = |v: Option<f64>| {
        v.map(|x| format!("{x:10.3}"))
            .unwrap_or_else(|| format!("{:>10}", "-"))
    };
    println!("\nmedian latency, 1 intra-op thread (ms)");
    println!(
        "{:<18} {:<24} {:>10}   {:<30} {:>10}",
        "group", "wrapper", "ms", "raw", "ms"
    );
    for (g, a, b) in rows {
        println!(
            "{g:<18} {a:<24} {}   {b:<30} {}",
            fmt(median_ms(g, a)),
            fmt(median_ms(g, b))
        );
    }
}

fn whisper_rtf(audio: &[f32]) {
    let w = Whisper::load(&home(), &opts()).unwrap();
    let vad = Vad::load(&need(home().silero_vad()), &opts()).unwrap();
    let secs = audio.len() as f64 / 16_000.0;
    let t = Instant::now();
    let tr = w.transcribe(audio).unwrap();
    let full = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let speech = vad.detect(audio).unwrap();
    let vad_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let gated = w.transcribe_regions(audio, &speech).unwrap();
    let gated_s = t.elapsed().as_secs_f64();
    println!(
        "\nwhisper tiny.en, 1 thread, {secs:.0} s of speech: transcribe {full:.2} s (real-time factor {:.3}, {} segments); \
         VAD {vad_s:.2} s (RTF {:.4}) + gated transcribe {gated_s:.2} s (RTF {:.3}, {} segments)",
        full / secs,
        tr.segments.len(),
        vad_s / secs,
        gated_s / secs,
        gated.segments.len()
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let slide_img = slide(dir.path());
    let audio = speech(dir.path(), 60.0);
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    bench_images(&mut c, &slide_img);
    bench_audio(&mut c, &audio);
    c.final_summary();
    print_medians();
    whisper_rtf(&audio);
}
