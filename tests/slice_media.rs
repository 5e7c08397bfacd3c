//! Slicing real browser recordings with real GStreamer: slice counts and timestamps, resizes,
//! microphone extraction, truncation and hostile files.

mod common;

use std::fs::File;
use std::process::Command;

use classguard::demux::{self, DemuxLimits, Event};
use classguard::slice::{
    self, audio::decode_file_16k_mono, Role, SliceOptions, SliceOutput, SliceReport,
};

struct Sliced {
    report: SliceReport,
    slices: Vec<(i64, u32, u32, Role)>,
    audio_samples: usize,
    audio_first_ms: Option<i64>,
}

fn slice_fixture(rel: &str, mic: Option<std::path::PathBuf>) -> Result<Sliced, slice::SliceError> {
    let path = common::fixture(rel);
    let opts = SliceOptions {
        mic_path: mic,
        ..SliceOptions::default()
    };
    let mut slices = Vec::new();
    let mut audio_samples = 0;
    let mut audio_first_ms = None;
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let report = slice::run_blocking(File::open(&path).unwrap(), &name, opts, |out| match out {
        SliceOutput::Slice(s) => {
            assert!(s.image.width().max(s.image.height()) <= 1280);
            slices.push((s.pts_ms, s.width, s.height, s.role));
        }
        SliceOutput::Audio(a) => {
            audio_first_ms.get_or_insert(a.start_ms);
            audio_samples += a.samples.len();
        }
        SliceOutput::Header(_) => {}
    })?;
    Ok(Sliced {
        report,
        slices,
        audio_samples,
        audio_first_ms,
    })
}

fn assert_interval_sampling(s: &Sliced, duration_ms: i64) {
    let interval = 1000;
    let expected = duration_ms / interval;
    let n = s.slices.len() as i64;
    assert!((n - expected).abs() <= 1, "{n} slices for {duration_ms} ms");
    for (i, (pts, ..)) in s.slices.iter().enumerate() {
        let target = i as i64 * interval;
        assert!(
            (pts - target).abs() <= interval,
            "slice {i} at {pts} ms, expected near {target}"
        );
    }
}

#[test]
fn browser_vp8_opus_camera() {
    let dir = tempfile::tempdir().unwrap();
    let mic = dir.path().join("mic.webm");
    let facts = common::facts("browser/camera-vp8-opus.webm");
    let s = slice_fixture("browser/camera-vp8-opus.webm", Some(mic.clone())).unwrap();
    assert!(!s.report.partial, "{:?}", s.report.partial_reason);
    assert_eq!(s.report.duration_ms, facts["duration_ms"].as_i64().unwrap());
    assert_interval_sampling(&s, facts["decoded"]["video"]["end_ms"].as_i64().unwrap());
    assert!(s
        .slices
        .iter()
        .all(|&(_, w, h, role)| (w, h) == (640, 480) && role == Role::Camera));
    let video = &s.report.tracks[0];
    assert_eq!(
        video.frames,
        facts["decoded"]["video"]["frames"].as_u64().unwrap()
    );
    assert_eq!(video.decoded, video.frames);
    assert!(video.keyframes >= 2 && video.keyframes < video.frames / 10);

    // The extracted microphone file: same packets, not re-encoded, same duration (±50 ms).
    let audio = s.report.audio.as_ref().expect("microphone extracted");
    let want = facts["decoded"]["audio"]["end_ms"].as_i64().unwrap()
        - facts["decoded"]["audio"]["first_pts_ms"].as_i64().unwrap();
    assert!(
        (audio.duration_ms - want).abs() <= 50,
        "mic {} ms vs {want} ms",
        audio.duration_ms
    );
    assert_eq!(audio.codec, "opus");
    let mut packets = 0;
    let end = demux::demux_reader(File::open(&mic).unwrap(), DemuxLimits::default(), |ev| {
        if let Event::Frame(_) = ev {
            packets += 1;
        }
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert!(end.truncated.is_none());
    assert_eq!(packets, s.report.tracks[1].frames);
    let decoded = decode_file_16k_mono(&mic).unwrap();
    let decoded_ms = decoded.len() as i64 * 1000 / 16000;
    assert!(
        (decoded_ms - want).abs() <= 50,
        "decoded mic {decoded_ms} ms vs {want} ms"
    );

    // Decoded microphone for the models: 16 kHz mono covering the recording.
    let pcm_ms = s.audio_samples as i64 * 1000 / 16000;
    assert!((pcm_ms - want).abs() <= 50, "pcm {pcm_ms} ms vs {want} ms");
    assert!(s.audio_first_ms.unwrap() <= 20);
}

#[test]
fn browser_vp9_opus_camera() {
    let facts = common::facts("browser/camera-vp9-opus.webm");
    let s = slice_fixture("browser/camera-vp9-opus.webm", None).unwrap();
    assert!(!s.report.partial);
    assert_interval_sampling(&s, facts["decoded"]["video"]["end_ms"].as_i64().unwrap());
    assert_eq!(s.report.tracks[0].codec, "vp9");
    assert!(s.report.audio.is_none());
}

#[test]
fn video_only_and_audio_only() {
    let v = slice_fixture("browser/video-only-vp8.webm", None).unwrap();
    assert_eq!(v.report.tracks.len(), 1);
    assert_interval_sampling(&v, 6032);
    assert_eq!(v.audio_samples, 0);

    let dir = tempfile::tempdir().unwrap();
    let a = slice_fixture(
        "browser/audio-only-opus.webm",
        Some(dir.path().join("mic.webm")),
    )
    .unwrap();
    assert!(a.slices.is_empty());
    let audio = a.report.audio.unwrap();
    assert!(
        (audio.duration_ms - 6060).abs() <= 50,
        "{}",
        audio.duration_ms
    );
    assert!((a.audio_samples as i64 * 1000 / 16000 - 6060).abs() <= 60);
}

#[test]
fn whiteboard_block_groups_scene_changes_and_resizes() {
    let facts = common::facts("browser/whiteboard-contact.webm");
    let s = slice_fixture("browser/whiteboard-contact.webm", None).unwrap();
    assert!(!s.report.partial, "{:?}", s.report.partial_reason);
    assert!(
        s.slices.iter().all(|s| s.3 == Role::Desktop),
        "role from the file name"
    );
    let track = &s.report.tracks[0];
    assert_eq!(
        track.header_size,
        Some((1280, 720)),
        "header keeps the first size"
    );
    assert_eq!(track.sizes_seen, vec![(1280, 720), (960, 540), (1280, 720)]);
    assert_eq!(track.decoded, track.frames);
    // One slide per change, each within one check interval (500 ms) after the change.
    let changes: Vec<i64> = common::ground_truth(&facts, "slide_change_ms");
    assert_eq!(s.slices[0].0, 0);
    for change in &changes {
        assert!(
            s.slices
                .iter()
                .any(|(pts, ..)| *pts >= *change && *pts <= change + 600),
            "no slice within 600 ms after the slide change at {change} ms: {:?}",
            s.slices
        );
    }
    // Slices taken after the resize carry the real decoded size.
    assert!(
        s.slices
            .iter()
            .any(|&(pts, w, h, _)| pts > 10847 && pts < 13347 && (w, h) == (960, 540))
            || s.slices
                .iter()
                .all(|&(pts, ..)| !(10847..13347).contains(&pts))
    );
    assert!(
        s.slices.len() <= changes.len() + 3,
        "too many slides: {:?}",
        s.slices
    );
}

#[test]
fn truncated_upload_is_partial_and_sliced_up_to_the_cut() {
    let facts = common::facts("damaged/truncated.webm");
    let s = slice_fixture("damaged/truncated.webm", None).unwrap();
    assert!(s.report.partial);
    let reason = s.report.partial_reason.clone().unwrap();
    assert!(reason.contains("truncated at byte 269308"), "{reason}");
    assert!(reason.contains("SimpleBlock"), "{reason}");
    let cut_ms = facts["duration_ms"].as_i64().unwrap();
    let last = s.slices.last().unwrap().0;
    assert!(
        last >= cut_ms - 1000 && last <= cut_ms,
        "last slice {last} ms, cut at {cut_ms} ms"
    );
    assert_interval_sampling(&s, cut_ms);
}

#[test]
fn huge_element_before_any_frame_is_no_media_naming_why() {
    // The oversized element comes before the first frame: nothing was audited, so this is an
    // error (never a clean or partial audit), and the error says where reading stopped.
    match slice_fixture("damaged/huge-element.webm", None) {
        Err(e @ slice::SliceError::NoMedia { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("over the limit"), "{msg}");
        }
        other => panic!("expected NoMedia, got {:?}", other.map(|s| s.report)),
    }
}

/// The CLI: bad files give one line naming the file and the reason, a non-zero exit, no panic.
#[test]
fn cli_reports_bad_files_and_keeps_going() {
    let out = tempfile::tempdir().unwrap();
    let cases = [
        ("damaged/empty.webm", "empty file"),
        ("damaged/garbage.webm", "no EBML header"),
        ("damaged/mp4-named.webm", "MP4"),
        ("damaged/missing-first-chunk.webm", "starts mid-stream"),
        ("damaged/ebml-garbage.webm", "expected a Segment"),
    ];
    for (rel, want) in cases {
        let path = common::fixture(rel);
        let run = Command::new(env!("CARGO_BIN_EXE_classguard"))
            .args([
                "slice",
                path.to_str().unwrap(),
                "--out",
                out.path().to_str().unwrap(),
            ])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{rel}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{rel}: {stderr}");
        assert!(
            lines[0].contains(path.to_str().unwrap()) && lines[0].contains(want),
            "{rel}: {}",
            lines[0]
        );
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
    }
    // One bad input among good ones: the good one is still sliced, the exit code says failure.
    let run = Command::new(env!("CARGO_BIN_EXE_classguard"))
        .args([
            "slice",
            common::fixture("damaged/garbage.webm").to_str().unwrap(),
            common::fixture("browser/video-only-vp8.webm")
                .to_str()
                .unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("6 slices"), "{stdout}");
    let manifest_dir = stdout.split('\t').next_back().unwrap().trim();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(manifest_dir).join("slices.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["slices"].as_array().unwrap().len(), 6);
    assert!(manifest["sha256"].as_str().unwrap().len() == 64);
    for s in manifest["slices"].as_array().unwrap() {
        let jpg = std::path::Path::new(manifest_dir).join(s["path"].as_str().unwrap());
        let img = image::open(&jpg).unwrap();
        assert_eq!((img.width(), img.height()), (640, 480));
    }
}

#[test]
fn frame_rate_limit_stops_decoding_a_flooded_track() {
    let path = common::fixture("browser/camera-vp8-opus.webm");
    let mut opts = SliceOptions::default();
    opts.limits.max_fps = 5.0; // the fixture runs at ~25 fps
    let report =
        slice::run_blocking(File::open(&path).unwrap(), "camera.webm", opts, |_| {}).unwrap();
    assert!(report.partial);
    let reason = report.partial_reason.unwrap();
    assert!(reason.contains("frames per second"), "{reason}");
    assert!(report.tracks[0].decoded < report.tracks[0].frames);
}
