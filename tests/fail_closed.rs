//! Fail closed: a recording that was not fully audited never gets `pass`, and no stage failure
//! hangs the batch. Regression tests on real browser recordings (and files made from them or
//! by gst-launch-1.0 in the test), plus fault injection (`CLASSGUARD_FAULT`, src/fault.rs) that
//! makes each stage fail in turn.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use classguard::demux::{DemuxLimits, Event, Frame, StreamHeader, TrackKind};
use classguard::mux::{self, TrackSpec, WebmWriter};
use classguard::slice::{self, SliceError, SliceLimits, SliceOptions, SliceOutput, SliceReport};
use serde_json::Value;
use sha2::Digest;

/// Slices `path` with `limits`, counting the slices handed out.
fn slice_with(path: &Path, limits: SliceLimits) -> Result<(SliceReport, usize), SliceError> {
    let opts = SliceOptions {
        limits,
        ..SliceOptions::default()
    };
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut slices = 0;
    let report = slice::run_blocking(File::open(path).unwrap(), &name, opts, |o| {
        if let SliceOutput::Slice(_) = o {
            slices += 1;
        }
    })?;
    Ok((report, slices))
}

fn reason(r: &SliceReport) -> &str {
    r.partial_reason.as_deref().unwrap_or("")
}

/// Every header and frame of a recording, through the project's own demuxer.
fn demux_all(path: &Path) -> (StreamHeader, Vec<Frame>) {
    let bytes = std::fs::read(path).unwrap();
    let (events, end) =
        classguard::demux::demux_in_chunks(&bytes, 64 << 10, DemuxLimits::default());
    end.unwrap();
    let (mut header, mut frames) = (None, Vec::new());
    for ev in events {
        match ev {
            Event::Header(h) => header = Some(h),
            Event::Frame(f) => frames.push(f),
        }
    }
    (header.expect("a header"), frames)
}

/// Writes `frames` under `header`'s tracks as a browser-like WebM (SimpleBlocks, 1 ms scale).
fn remux(header: &StreamHeader, frames: &[Frame], out: &Path) {
    let specs: Vec<TrackSpec> = header
        .tracks
        .iter()
        .map(|t| TrackSpec {
            number: t.number,
            kind: if t.kind == TrackKind::Video { 1 } else { 2 },
            codec_id: t.codec_id.trim_end_matches('\0').to_string(),
            codec_private: t.codec_private.clone(),
            codec_delay_ns: t.codec_delay_ns,
            seek_preroll_ns: t.seek_preroll_ns,
            video_size: t.video.as_ref().map(|v| (v.width, v.height)),
            audio: t.audio.as_ref().map(|a| (a.sample_rate, a.channels)),
        })
        .collect();
    let mut w = WebmWriter::new(Vec::new(), "webm", &specs).unwrap();
    let mut sorted: Vec<&Frame> = frames.iter().collect();
    sorted.sort_by_key(|f| f.pts_ns);
    for f in sorted {
        w.write_frame(f.track, f.pts_ms(), f.keyframe, &f.data)
            .unwrap();
    }
    let (bytes, _) = w.finish().unwrap();
    std::fs::write(out, bytes).unwrap();
}

fn gst_launch(args: &str) {
    let ok = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(args.split_whitespace())
        .status()
        .expect("gst-launch-1.0 (scripts/setup installs gstreamer1.0-tools)")
        .success();
    assert!(ok, "gst-launch-1.0 {args}");
}

// ---- limits that keep frames from the models ----

#[test]
fn oversized_frames_are_refused_from_the_header_and_named_with_their_time_range() {
    for rel in [
        "browser/camera-vp8-opus.webm",
        "browser/camera-vp9-opus.webm",
    ] {
        let limits = SliceLimits {
            max_frame_pixels: 320 * 240,
            ..SliceLimits::default()
        };
        let (r, slices) = slice_with(&common::fixture(rel), limits).unwrap();
        assert_eq!(slices, 0, "{rel}: no slice of an oversized frame");
        assert!(r.partial, "{rel}: {r:#?}");
        let why = reason(&r);
        assert!(
            why.contains("frame size limit")
                && why.contains("640x480")
                && why.contains("not audited"),
            "{rel}: {why}"
        );
        assert!(
            why.contains(" 0-"),
            "{rel}: the range starts at the first frame: {why}"
        );
        let video = r
            .tracks
            .iter()
            .find(|t| t.kind == TrackKind::Video)
            .unwrap();
        assert_eq!(video.decoded, 0, "{rel}: refused before decoding");
        // The microphone is still audited.
        assert!(r.audio.is_some() || r.tracks.iter().any(|t| t.kind == TrackKind::Audio));
    }
}

#[test]
fn a_5k_screen_share_is_partial_and_never_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lesson-screen.webm");
    gst_launch(&format!(
        "videotestsrc num-buffers=3 pattern=ball ! video/x-raw,width=5120,height=2880,framerate=1/1,format=I420 \
         ! vp8enc deadline=1 cpu-used=16 ! webmmux ! filesink location={}",
        path.display()
    ));
    let (r, slices) = slice_with(&path, SliceLimits::default()).unwrap();
    assert_eq!(slices, 0);
    assert!(r.partial, "{r:#?}");
    assert!(reason(&r).contains("5120x2880"), "{}", reason(&r));
    assert_eq!(
        r.tracks[0].decoded, 0,
        "the 5K frames never reach the decoder"
    );
}

#[test]
fn a_track_at_its_slice_limit_is_partial_with_the_range_not_audited() {
    let limits = SliceLimits {
        max_slices_per_track: 2,
        ..SliceLimits::default()
    };
    let (r, slices) = slice_with(&common::fixture("browser/camera-vp8-opus.webm"), limits).unwrap();
    assert_eq!(slices, 2);
    assert!(r.partial);
    let why = reason(&r);
    assert!(
        why.contains("limit of 2 slices") && why.contains("ms not audited"),
        "{why}"
    );
}

// ---- no media ----

/// The bytes before the first Cluster: EBML header, Segment, Info and Tracks (what the first
/// upload chunk of a browser recording starts with).
fn headers_only(rel: &str) -> Vec<u8> {
    let bytes = std::fs::read(common::fixture(rel)).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .expect("a cluster");
    bytes[..at].to_vec()
}

#[test]
fn headers_without_media_are_an_error_not_a_clean_audit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("first-chunk.webm");
    let head = headers_only("browser/camera-vp8-opus.webm");
    assert!(head.len() < 400, "{} bytes of headers", head.len());
    std::fs::write(&path, &head).unwrap();
    match slice_with(&path, SliceLimits::default()) {
        Err(SliceError::NoMedia { bytes, .. }) => assert_eq!(bytes, head.len() as u64),
        other => panic!("expected NoMedia, got {other:?}"),
    }
}

#[test]
fn a_video_track_with_no_decodable_frame_is_partial() {
    // The camera recording without its video keyframes: every video frame refers to a picture
    // the decoder never had.
    let dir = tempfile::tempdir().unwrap();
    let (header, frames) = demux_all(&common::fixture("browser/camera-vp8-opus.webm"));
    let video = header
        .tracks
        .iter()
        .find(|t| t.kind == TrackKind::Video)
        .unwrap()
        .number;
    let kept: Vec<Frame> = frames
        .into_iter()
        .filter(|f| !(f.track == video && f.keyframe))
        .collect();
    let path = dir.path().join("no-keyframes.webm");
    remux(&header, &kept, &path);
    let (r, slices) = slice_with(&path, SliceLimits::default()).unwrap();
    assert_eq!(slices, 0);
    assert!(r.partial, "{r:#?}");
    assert!(
        reason(&r).contains(&format!("track {video}")),
        "{}",
        reason(&r)
    );
}

// ---- content hash, duration ----

#[test]
fn the_sha256_names_the_whole_file_past_the_size_limit() {
    let path = common::fixture("browser/camera-vp8-opus.webm");
    let whole = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    for max in [100_000u64, 65_536 + 1, 200_000] {
        let limits = SliceLimits {
            max_file_bytes: max,
            ..SliceLimits::default()
        };
        let (r, _) = slice_with(&path, limits).unwrap();
        assert!(r.partial && reason(&r).contains("file size limit"));
        assert_eq!(r.sha256, whole, "limit {max}");
    }
}

#[test]
fn the_header_duration_is_not_taken_on_trust() {
    // The camera recording re-muxed with an Info/Duration claiming ten hours.
    let dir = tempfile::tempdir().unwrap();
    let (header, frames) = demux_all(&common::fixture("browser/camera-vp8-opus.webm"));
    let plain = dir.path().join("plain.webm");
    remux(&header, &frames, &plain);
    let bytes = std::fs::read(&plain).unwrap();
    let mut info = mux::uint_element(0x2AD7B1, mux::TIMESTAMP_SCALE_NS);
    info.extend(mux::element(0x4D80, b"classguard"));
    info.extend(mux::element(0x5741, b"classguard"));
    let old = mux::element(0x1549A966, &info);
    info.extend(mux::float_element(0x4489, 36_000_000.0));
    let new = mux::element(0x1549A966, &info);
    let at = bytes
        .windows(old.len())
        .position(|w| w == old)
        .expect("Info");
    let mut lying = bytes[..at].to_vec();
    lying.extend(&new);
    lying.extend(&bytes[at + old.len()..]);
    let path = dir.path().join("lying.webm");
    std::fs::write(&path, lying).unwrap();
    let (r, _) = slice_with(&path, SliceLimits::default()).unwrap();
    // fixtures.json measures 12069 ms with gst-launch; the claimed ten hours must not count.
    assert!(
        (11_500..=12_500).contains(&r.duration_ms),
        "duration {} ms",
        r.duration_ms
    );
    let limits = SliceLimits {
        max_duration_ms: 5_000,
        ..SliceLimits::default()
    };
    let (r, _) = slice_with(&path, limits).unwrap();
    assert!(r.duration_ms <= 5_000, "duration {} ms", r.duration_ms);
    assert!(r.partial);
}

#[test]
fn the_microphone_file_appears_only_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mic = dir.path().join("mic.webm");
    let opts = SliceOptions {
        mic_path: Some(mic.clone()),
        ..SliceOptions::default()
    };
    let path = common::fixture("browser/camera-vp8-opus.webm");
    let r = slice::run_blocking(File::open(&path).unwrap(), "camera.webm", opts, |_| {}).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["mic.webm".to_string()], "no temp file left");
    assert_eq!(
        std::fs::metadata(&mic).unwrap().len(),
        r.audio.unwrap().bytes
    );
    // A run that fails before the end leaves neither the file nor a temp file.
    let dir2 = tempfile::tempdir().unwrap();
    let opts = SliceOptions {
        mic_path: Some(dir2.path().join("mic.webm")),
        ..SliceOptions::default()
    };
    let (rx, handle) = slice::start(File::open(&path).unwrap(), "camera.webm", opts);
    drop(rx);
    assert!(matches!(handle.join().unwrap(), Err(SliceError::Cancelled)));
    assert_eq!(std::fs::read_dir(dir2.path()).unwrap().count(), 0);
}

// ---- whole scans with the real models ----

/// Runs `classguard scan --jsonl` over `inputs` with `env`, killed if it takes longer than
/// `limit`: (exit code, verdicts in input order, stderr).
fn scan(
    dir: &Path,
    inputs: &[&Path],
    extra: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (Option<i32>, Vec<Value>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_classguard"));
    c.arg("scan")
        .args(inputs)
        .args(["--jobs", "1", "--jsonl", "--out"])
        .arg(dir.join("out"))
        .arg("--store")
        .arg(dir.join("store.sqlite"))
        .args(extra)
        .env("RUST_LOG", "classguard=warn")
        .env_remove("CLASSGUARD_FAULT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scan did not finish within {limit:?}: a stage hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let verdicts: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code(),
        verdicts,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verdict_of<'a>(verdicts: &'a [Value], name: &str) -> &'a Value {
    verdicts
        .iter()
        .find(|v| v["recording"]["source"].as_str().unwrap().contains(name))
        .unwrap_or_else(|| panic!("no verdict for {name}: {verdicts:#?}"))
}

fn copy_as(dir: &Path, rel: &str, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(common::fixture(rel), &p).unwrap();
    p
}

const SCAN_LIMIT: Duration = Duration::from_secs(300);

#[test]
fn a_headers_only_upload_is_an_error_verdict_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first-chunk.webm");
    std::fs::write(&first, headers_only("browser/video-only-vp8.webm")).unwrap();
    let normal = copy_as(dir.path(), "browser/video-only-vp8.webm", "normal.webm");
    let (code, verdicts, stderr) = scan(dir.path(), &[&first, &normal], &[], &[], SCAN_LIMIT);
    assert_eq!(code, Some(1), "{stderr}");
    let v = verdict_of(&verdicts, "first-chunk");
    assert_eq!(v["decision"], "error", "{v:#}");
    assert!(v["recording"]["error"]
        .as_str()
        .unwrap()
        .contains("no media"));
    assert_eq!(
        verdict_of(&verdicts, "normal")["recording"]["partial"],
        false
    );
}

#[test]
fn a_camera_recording_named_screen_does_not_skip_the_face_checks_silently() {
    let dir = tempfile::tempdir().unwrap();
    let named = copy_as(
        dir.path(),
        "browser/camera-vp8-opus.webm",
        "lesson-screen.webm",
    );
    let board = copy_as(
        dir.path(),
        "browser/whiteboard-clean.webm",
        "board-screen.webm",
    );
    let (code, verdicts, stderr) = scan(dir.path(), &[&named, &board], &[], &[], SCAN_LIMIT);
    assert_eq!(code, Some(0), "{stderr}");
    let v = verdict_of(&verdicts, "lesson-screen");
    assert_eq!(v["recording"]["partial"], true, "{v:#}");
    assert!(
        v["recording"]["partial_reason"]
            .as_str()
            .unwrap()
            .contains("shows a face"),
        "{v:#}"
    );
    assert_ne!(v["decision"], "pass");
    // A real screen share is not affected.
    let b = verdict_of(&verdicts, "board-screen");
    assert_eq!(b["recording"]["partial"], false, "{b:#}");
}

#[test]
fn spoken_findings_stay_on_the_recording_timeline_across_an_audio_gap() {
    let dir = tempfile::tempdir().unwrap();
    let rel = "browser/camera-speech-contact.webm";
    let facts = common::facts(rel);
    let speech = &facts["ground_truth"]["speech"];
    let (s0, s1) = (
        speech["start_ms"].as_u64().unwrap(),
        speech["end_ms"].as_u64().unwrap(),
    );
    // 5 s of the microphone missing at 2 s, before the speech (an upload that lost a piece of
    // audio): every later audio frame moves 5 s later, the video stays as it was.
    const GAP_MS: u64 = 5_000;
    let (header, frames) = demux_all(&common::fixture(rel));
    let audio = header
        .tracks
        .iter()
        .find(|t| t.kind == TrackKind::Audio)
        .unwrap()
        .number;
    let shifted: Vec<Frame> = frames
        .into_iter()
        .map(|mut f| {
            if f.track == audio && f.pts_ms() >= 2_000 {
                f.pts_ns += GAP_MS as i64 * 1_000_000;
            }
            f
        })
        .collect();
    let gapped = dir.path().join("gap-camera.webm");
    remux(&header, &shifted, &gapped);
    let (code, verdicts, stderr) = scan(dir.path(), &[&gapped], &[], &[], SCAN_LIMIT);
    assert_eq!(code, Some(0), "{stderr}");
    let v = &verdicts[0];
    let spoken: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["track"] == "microphone" && f["label"] != "silence")
        .collect();
    assert!(!spoken.is_empty(), "the spoken contact is found: {v:#}");
    for f in spoken {
        let (a, b) = (
            f["start_ms"].as_u64().unwrap(),
            f["end_ms"].as_u64().unwrap(),
        );
        assert!(
            a + 300 >= s0 + GAP_MS && b <= s1 + GAP_MS + 300,
            "{} at {a}..{b}, the speech is at {}..{} on the recording's timeline",
            f["label"],
            s0 + GAP_MS,
            s1 + GAP_MS
        );
    }
}

// ---- fault injection: each stage fails in turn ----

/// The first recording of a two-recording batch has `fault`; it must come out partial (or
/// error) naming `stage`, within a time bound, and the second one must be audited normally.
fn fault_case(fault: &str, faulty: &str, stage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let first = copy_as(dir.path(), faulty, "faulty.webm");
    let second = copy_as(dir.path(), "browser/video-only-vp8.webm", "next.webm");
    let policy = dir.path().join("policy.toml");
    // The shipped policy, so the whiteboard's contact slide gives a finding with evidence.
    std::fs::copy(common::root().join("pipelines/classroom.toml"), &policy).unwrap();
    let started = Instant::now();
    let (code, verdicts, stderr) = scan(
        dir.path(),
        &[&first, &second],
        &["--policy", policy.to_str().unwrap()],
        &[("CLASSGUARD_FAULT", fault)],
        SCAN_LIMIT,
    );
    assert!(code.is_some(), "{fault}: killed by a signal: {stderr}");
    let v = verdict_of(&verdicts, "faulty");
    assert_ne!(v["decision"], "pass", "{fault}: {v:#}");
    let why = format!(
        "{} {}",
        v["recording"]["partial_reason"].as_str().unwrap_or(""),
        v["recording"]["error"].as_str().unwrap_or("")
    );
    assert_eq!(v["recording"]["partial"], true, "{fault}: {v:#}");
    assert!(why.contains(stage), "{fault}: '{why}' names no '{stage}'");
    let n = verdict_of(&verdicts, "next");
    assert_eq!(n["recording"]["partial"], false, "{fault}: next one: {n:#}");
    assert!(n["recording"]["error"].is_null());
    assert!(
        started.elapsed() < SCAN_LIMIT,
        "{fault}: {:?}",
        started.elapsed()
    );
}

#[test]
fn fault_in_the_video_decoder() {
    fault_case("decoder", "browser/video-only-vp8.webm", "video decoder");
}

#[test]
fn fault_in_a_model() {
    fault_case("model", "browser/camera-vp8-opus.webm", "model: injected");
}

#[test]
fn fault_a_model_worker_panics() {
    fault_case(
        "worker-panic",
        "browser/camera-vp8-opus.webm",
        "model worker panicked",
    );
}

#[test]
fn fault_the_speech_thread_panics() {
    fault_case(
        "speech-panic",
        "browser/audio-only-opus.webm",
        "speech stage panicked",
    );
}

#[test]
fn fault_writing_evidence() {
    fault_case(
        "evidence",
        "browser/whiteboard-contact.webm",
        "evidence: injected",
    );
}
