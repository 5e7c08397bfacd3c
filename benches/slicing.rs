//! Micro-benchmarks of the slicing stage's own CPU work (no GStreamer): streaming demux of a
//! browser-style stream, I420 -> RGB, the scene-change thumbnail and the slice downscale.
//!
//!   cargo bench --bench slicing
//!
//! Quick by design (10 samples, short measurement): these guard against regressions of the
//! per-frame costs the e2e benchmark cannot separate from decoding.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use classguard::demux::{Demuxer, Event};
use classguard::mux::{
    id_bytes, simple_block, stream_start, uint_element, TrackSpec, UNKNOWN_SIZE_FIELD,
};
use classguard::slice::frame::{fit_within, I420};

fn vp8_track() -> TrackSpec {
    TrackSpec::vp8(1, (640, 480))
}

fn opus_track() -> TrackSpec {
    TrackSpec::opus_mono(2)
}

/// A browser-style recording (unknown-size Segment and Clusters, one cluster a second, no Cues)
/// with realistic block sizes: 30 fps video at about 1 Mbit/s (a 30 KB keyframe every 3 s,
/// ~4 KB inter frames) and 20 ms Opus packets of 80 bytes.
fn browser_stream(seconds: i64) -> Vec<u8> {
    let key = {
        let mut f = vec![0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        f.resize(30_000, 0x5A);
        f
    };
    let inter = {
        let mut f = vec![0x51, 0x00, 0x00, 0x00];
        f.resize(4_000, 0xA5);
        f
    };
    let opus = vec![0xF8; 80];
    let mut out = stream_start("webm", &[vp8_track(), opus_track()]);
    for s in 0..seconds {
        out.extend(id_bytes(0x1F43B675));
        out.extend(UNKNOWN_SIZE_FIELD);
        out.extend(uint_element(0xE7, (s * 1000) as u64));
        for ms in (0..1000i16).step_by(10) {
            if ms % 100 == 0 || ms % 100 == 30 || ms % 100 == 70 {
                // ~30 fps: frames at 0, 30, 70 ms of every 100 ms.
                let is_key = s % 3 == 0 && ms == 0;
                out.extend(simple_block(
                    1,
                    ms,
                    is_key,
                    if is_key { &key } else { &inter },
                ));
            }
            if ms % 20 == 0 {
                out.extend(simple_block(2, ms, true, &opus));
            }
        }
    }
    out
}

fn demux(c: &mut Criterion) {
    let stream = browser_stream(60);
    let mut g = c.benchmark_group("demux");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in [4 << 10, 64 << 10] {
        g.bench_function(format!("browser-60s-{}KiB-chunks", chunk >> 10), |b| {
            b.iter(|| {
                let mut d = Demuxer::default();
                let mut frames = 0u64;
                for part in stream.chunks(chunk) {
                    d.push(part);
                    while let Some(ev) = d.next_event().expect("valid stream") {
                        if let Event::Frame(f) = ev {
                            frames += f.data.len() as u64;
                        }
                    }
                }
                black_box(d.finish().expect("complete stream"));
                black_box(frames)
            })
        });
    }
    g.finish();
}

struct Planes {
    w: u32,
    h: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Planes {
    /// A gradient frame with a stride wider than the picture, as decoders hand out.
    fn new(w: u32, h: u32) -> Self {
        let (ws, hs) = (w as usize + 32, h as usize);
        let cs = ws / 2;
        let y = (0..ws * hs).map(|i| (i % 251) as u8).collect();
        let u = (0..cs * hs / 2).map(|i| (i % 241) as u8).collect();
        let v = (0..cs * hs / 2).map(|i| (i % 239) as u8).collect();
        Self { w, h, y, u, v }
    }

    fn i420(&self) -> I420<'_> {
        I420 {
            width: self.w,
            height: self.h,
            y: &self.y,
            u: &self.u,
            v: &self.v,
            y_stride: self.w as usize + 32,
            uv_stride: (self.w as usize + 32) / 2,
        }
    }
}

fn pixels(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for (w, h) in [(640u32, 480u32), (1280, 720)] {
        let p = Planes::new(w, h);
        g.throughput(Throughput::Elements(u64::from(w * h)));
        g.bench_function(format!("i420-to-rgb-{w}x{h}"), |b| {
            b.iter(|| black_box(black_box(&p).i420().to_rgb()))
        });
    }
    let p = Planes::new(1280, 720);
    g.throughput(Throughput::Elements(1));
    g.bench_function("thumbnail-1280x720", |b| {
        b.iter(|| black_box(black_box(&p).i420().thumbnail()))
    });
    let rgb = p.i420().to_rgb();
    g.bench_function("fit-within-1280x720-to-640", |b| {
        b.iter_batched(
            || rgb.clone(),
            |img| black_box(fit_within(img, 640)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = demux, pixels
}
criterion_main!(benches);
