//! `decode = "adaptive"` (keyframe-plus-gap decoding) on real GStreamer: what it saves on a still
//! picture, and what it must not lose: slide changes, and something shown between two keyframes
//! that look alike.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use classguard::slice::sampling::DecodeMode;
use classguard::slice::{self, SliceOptions, SliceOutput, SliceReport};

/// (pts, mean luma of the slice) for every slice, and the report.
fn slice_with(path: &Path, mode: DecodeMode) -> (SliceReport, Vec<(i64, f64)>) {
    let mut opts = SliceOptions::default();
    opts.sampling.camera.decode = mode;
    opts.sampling.desktop.decode = mode;
    let mut slices = Vec::new();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let report = slice::run_blocking(File::open(path).unwrap(), &name, opts, |out| {
        if let SliceOutput::Slice(s) = out {
            let px = s.image.as_raw();
            let mean = px.iter().map(|&v| f64::from(v)).sum::<f64>() / px.len() as f64;
            slices.push((s.pts_ms, mean));
        }
    })
    .unwrap();
    (report, slices)
}

/// A 320x240 30 fps VP8 camera recording, 10 s, keyframe every 3 s: flat grey, with the lower
/// half white from `flash_ms.0` to `flash_ms.1` (if any). Made with gst-launch from raw frames.
fn still_camera(dir: &Path, name: &str, flash_ms: Option<(i64, i64)>) -> PathBuf {
    let (w, h, fps, secs) = (320usize, 240usize, 30usize, 10usize);
    let out = dir.join(name);
    let mut child = Command::new("gst-launch-1.0")
        .args(["-q", "-e", "fdsrc", "fd=0", "!", "rawvideoparse"])
        .args([
            format!("width={w}"),
            format!("height={h}"),
            format!("framerate={fps}/1"),
        ])
        .args(["format=i420", "!", "vp8enc", "deadline=1", "cpu-used=8"])
        .args(["keyframe-max-dist=90", "!", "webmmux", "!", "filesink"])
        .arg(format!("location={}", out.display()))
        .stdin(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0");
    {
        let stdin = child.stdin.as_mut().unwrap();
        for i in 0..fps * secs {
            let t = (i * 1000 / fps) as i64;
            let lit = flash_ms.is_some_and(|(a, b)| t >= a && t < b);
            let mut frame = vec![90u8; w * h];
            if lit {
                frame[w * h / 2..].fill(235);
            }
            frame.extend(std::iter::repeat_n(128u8, w * h / 2));
            stdin.write_all(&frame).unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "gst-launch failed");
    out
}

fn video(report: &SliceReport) -> &slice::TrackReport {
    report.tracks.iter().find(|t| t.sampled > 0).unwrap()
}

#[test]
fn a_still_picture_is_decoded_at_its_keyframes() {
    let dir = tempfile::tempdir().unwrap();
    let path = still_camera(dir.path(), "still-camera.webm", None);
    let (all, all_slices) = slice_with(&path, DecodeMode::All);
    let (adaptive, slices) = slice_with(&path, DecodeMode::Adaptive);
    let (a, b) = (video(&all), video(&adaptive));
    assert_eq!(a.decoded, a.frames);
    assert!(
        b.decoded * 3 < b.frames,
        "decoded {} of {}",
        b.decoded,
        b.frames
    );
    assert_eq!(b.gap_frames_dropped + b.decoded, b.frames);
    assert!(!adaptive.partial, "{:?}", adaptive.partial_reason);
    // The keyframes still give slices, and the last gap (after the last keyframe) is decoded.
    assert!(slices.len() >= 4, "{slices:?}");
    assert_eq!(
        slices.last().map(|s| s.0 / 1000),
        all_slices.last().map(|s| s.0 / 1000)
    );
}

#[test]
fn something_shown_between_two_alike_keyframes_is_still_sliced() {
    let dir = tempfile::tempdir().unwrap();
    // Keyframes at 0, 3 and 6 s are all grey; the lower half is white from 4.2 s to 5.4 s.
    let path = still_camera(dir.path(), "flash-camera.webm", Some((4200, 5400)));
    for mode in [DecodeMode::All, DecodeMode::Adaptive] {
        let (report, slices) = slice_with(&path, mode);
        let bright: Vec<i64> = slices
            .iter()
            .filter(|(_, mean)| *mean > 120.0)
            .map(|s| s.0)
            .collect();
        assert!(
            bright.iter().any(|t| (4200..5400).contains(t)),
            "{mode:?}: no slice of the white frames: {slices:?}"
        );
        assert!(!report.partial);
    }
}

#[test]
fn adaptive_whiteboard_keeps_every_slide_change() {
    let facts = common::facts("browser/whiteboard-contact.webm");
    let changes: Vec<i64> = common::ground_truth(&facts, "slide_change_ms");
    let (report, slices) = slice_with(
        &common::fixture("browser/whiteboard-contact.webm"),
        DecodeMode::Adaptive,
    );
    assert!(!report.partial, "{:?}", report.partial_reason);
    for change in &changes {
        assert!(
            slices
                .iter()
                .any(|(pts, _)| *pts >= *change && *pts <= change + 600),
            "no slice within 600 ms after the slide change at {change} ms: {slices:?}"
        );
    }
}
