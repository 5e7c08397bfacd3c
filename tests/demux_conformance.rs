//! The streaming demuxer against public WebM/Matroska files (../shared/conformance, see its
//! SOURCES.md): no panic, a few seconds at most per file, the same events for any chunking,
//! per-track frame counts and first/last timestamps equal to those of `matroska-demuxer` where
//! that crate reads the file as a complete file, and a specific expected outcome for every file
//! whose name says it is invalid.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use classguard::demux::{self, DemuxError, DemuxLimits, Event, StreamEnd, StreamHeader};

/// Per file: a few seconds (debug build, 2 cores) for the whole-file read.
const TIME_BOUND: Duration = Duration::from_secs(5);

/// What a file named invalid_* must give. Anything not listed here fails the test, so a new file
/// in the corpus needs its expectation written down.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A demux error of this kind.
    Error(fn(&DemuxError) -> bool, &'static str),
    /// Success with exactly the events of the named valid file: the violation is in an element
    /// the demuxer does not use, and the frames are not affected.
    SameAs(&'static str),
    /// A valid file that lives among the invalid ones: complete, with frames.
    Valid,
    /// Frames, then `truncated: Some`.
    Partial,
}

fn invalid_expectations() -> BTreeMap<&'static str, Expect> {
    BTreeMap::from([
        // libwebm testing/testdata/invalid/block_ends_beyond_cluster.mkv: a block overruns its
        // known-size Cluster.
        (
            "libwebm__invalid_block_ends_beyond_cluster.mkv",
            Expect::Error(
                |e| {
                    matches!(
                        e,
                        DemuxError::BeyondParent {
                            parent: 0x1F43B675,
                            ..
                        }
                    )
                },
                "BeyondParent (Cluster)",
            ),
        ),
        // libwebm .../invalid/fixed_lacing_bad_lace_size.mkv: fixed lacing that does not split.
        (
            "libwebm__invalid_fixed_lacing_bad_lace_size.mkv",
            Expect::Error(
                |e| matches!(e, DemuxError::Malformed { what: "block", reason, .. } if reason.contains("fixed lacing")),
                "Malformed block: fixed lacing uneven",
            ),
        ),
        // libwebm .../invalid/invalid_vp9_bitstream-bug_1416.webm: corrupt VP9 frames in a
        // well-formed container.
        // libwebm .../invalid/invalid_vp9_bitstream-bug_1416.webm: SOURCES.md says corrupt VP9
        // in a valid container with a corrupt DocType field; the DocType reads "0000".
        (
            "libwebm__invalid_vp9_bitstream-bug_1416.webm",
            Expect::Error(
                |e| matches!(e, DemuxError::DocType(d) if d == "0000"),
                "DocType error (\"0000\")",
            ),
        ),
        // ietf-wg-cellar invalid_ebml/reference.mkv: the valid file the others are edits of.
        ("cellar__invalid_ebml__reference.mkv", Expect::Valid),
        // Not named invalid, but not demuxable as a stream, written down so a change shows:
        // Tracks come after the first Cluster (reachable only through the SeekHead; a streaming
        // demuxer cannot know the track list in time).
        (
            "matroska-demuxer__no_cluster_position.mkv",
            Expect::Error(
                |e| matches!(e, DemuxError::NoTracks { at: 13755 }),
                "NoTracks",
            ),
        ),
        // 73 bytes of bare clusters behind an empty Tracks: nothing to audit.
        (
            "webmetro__encode_webm_test.webm",
            Expect::Error(
                |e| matches!(e, DemuxError::Malformed { what: "Tracks", .. }),
                "Malformed Tracks: no TrackEntry",
            ),
        ),
        // The recording ends with a SimpleBlock id and no size (a cut upload): partial.
        ("ts-ebml__chrome57.webm", Expect::Partial),
        // ietf-wg-cellar invalid_ebml/unknown_sized_non_master_element.mkv: DocType (a string)
        // with an unknown size inside the EBML header.
        (
            "cellar__invalid_ebml__unknown_sized_non_master_element.mkv",
            Expect::Error(
                |e| matches!(e, DemuxError::Malformed { what: "EBML header", reason, .. } if reason.contains("UnknownSize")),
                "Malformed EBML header: unknown-size child",
            ),
        ),
        // ietf-wg-cellar invalid_ebml/element_outside_of_size_range.mkv: the reference file with
        // an 8-byte SegmentUUID (must be 16) followed by a Void; the demuxer ignores SegmentUUID,
        // so the recording's frames are exactly the reference file's.
        (
            "cellar__invalid_ebml__element_outside_of_size_range.mkv",
            Expect::SameAs("cellar__invalid_ebml__reference.mkv"),
        ),
    ])
}

struct Run {
    events: Vec<Event>,
    end: Result<StreamEnd, DemuxError>,
}

fn feed(bytes: &[u8], chunk: usize) -> Run {
    let (events, end) = classguard::demux::demux_in_chunks(bytes, chunk, DemuxLimits::default());
    Run { events, end }
}

#[derive(Debug, Clone, PartialEq)]
struct TrackSummary {
    codec_id: String,
    frames: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

fn summarize(
    header: Option<&StreamHeader>,
    frames: impl Iterator<Item = (u64, i64)>,
) -> BTreeMap<u64, TrackSummary> {
    let mut out = BTreeMap::new();
    if let Some(h) = header {
        for t in &h.tracks {
            out.insert(
                t.number,
                TrackSummary {
                    codec_id: t.codec_id.clone(),
                    frames: 0,
                    first_ms: None,
                    last_ms: None,
                },
            );
        }
    }
    for (track, ms) in frames {
        let s = out.entry(track).or_insert(TrackSummary {
            codec_id: String::new(),
            frames: 0,
            first_ms: None,
            last_ms: None,
        });
        s.frames += 1;
        s.first_ms.get_or_insert(ms);
        s.last_ms = Some(ms);
    }
    out
}

/// Per-track summary by `matroska-demuxer` (timestamps in ms), `None` where it cannot read the
/// file as a complete file. It needs Read + Seek: a plain File.
fn reference_summary(path: &Path) -> Option<(BTreeMap<u64, TrackSummary>, bool)> {
    // It panics (arithmetic overflow) on some files, e.g. unknown-size elements: no reference.
    catch_unwind(AssertUnwindSafe(|| reference_summary_inner(path)))
        .ok()
        .flatten()
}

fn reference_summary_inner(path: &Path) -> Option<(BTreeMap<u64, TrackSummary>, bool)> {
    use matroska_demuxer::{Frame, MatroskaFile};
    let mut mkv = MatroskaFile::open(File::open(path).ok()?).ok()?;
    let scale = mkv.info().timestamp_scale().get();
    let mut out: BTreeMap<u64, TrackSummary> = mkv
        .tracks()
        .iter()
        .map(|t| {
            (
                t.track_number().get(),
                TrackSummary {
                    codec_id: t.codec_id().trim_end_matches('\0').to_string(),
                    frames: 0,
                    first_ms: None,
                    last_ms: None,
                },
            )
        })
        .collect();
    let mut frame = Frame::default();
    let mut laced = false;
    let mut last_ts: BTreeMap<u64, u64> = BTreeMap::new();
    loop {
        match mkv.next_frame(&mut frame) {
            Ok(true) => {
                // It gives every frame of a laced block the block's timestamp.
                if last_ts.insert(frame.track, frame.timestamp) == Some(frame.timestamp) {
                    laced = true;
                }
                let ms = (u128::from(frame.timestamp) * u128::from(scale) / 1_000_000) as i64;
                let s = out.entry(frame.track).or_insert(TrackSummary {
                    codec_id: String::new(),
                    frames: 0,
                    first_ms: None,
                    last_ms: None,
                });
                s.frames += 1;
                s.first_ms.get_or_insert(ms);
                s.last_ms = Some(ms);
            }
            Ok(false) => return Some((out, laced)),
            Err(_) => return None,
        }
    }
}

fn header_of(events: &[Event]) -> Option<&StreamHeader> {
    events.iter().find_map(|e| match e {
        Event::Header(h) => Some(h),
        _ => None,
    })
}

fn frame_list(events: &[Event]) -> impl Iterator<Item = (u64, i64)> + '_ {
    events.iter().filter_map(|e| match e {
        Event::Frame(f) => Some((f.track, f.pts_ms())),
        _ => None,
    })
}

/// Checks one file; returns lines for the report, or the reason it failed.
fn check_file(path: &Path, expect: Option<Expect>) -> Result<String, String> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;

    // 1. The real entry point on a plain reader, within the time bound.
    let started = Instant::now();
    let mut n_events = 0u64;
    let read = demux::demux_reader(File::open(path).unwrap(), DemuxLimits::default(), |_| {
        n_events += 1;
        std::ops::ControlFlow::Continue(())
    });
    let took = started.elapsed();
    if took > TIME_BOUND {
        return Err(format!("demux_reader took {took:?}"));
    }

    // 2. Chunking invariance.
    let whole = feed(&bytes, bytes.len());
    for chunk in [1, 7, 4096] {
        let run = feed(&bytes, chunk);
        if run.end != whole.end {
            return Err(format!(
                "chunk {chunk}: end {:?} != whole {:?}",
                run.end, whole.end
            ));
        }
        if run.events != whole.events {
            return Err(format!(
                "chunk {chunk}: events differ from whole-file feeding"
            ));
        }
    }
    match (&read, &whole.end) {
        (Ok(a), Ok(b)) if a == b => {}
        (Err(demux::ReadError::Demux(a)), Err(b)) if a == b => {}
        _ => {
            return Err(format!(
                "demux_reader gave {read:?}, pushing gave {:?}",
                whole.end
            ))
        }
    }

    let ours = summarize(header_of(&whole.events), frame_list(&whole.events));
    let mut line = format!("{name}: {took:?}, {n_events} events, ");
    match &whole.end {
        Ok(end) => {
            line += &format!(
                "ok, {} frames, truncated {:?}",
                end.frames,
                end.truncated.as_ref().map(|t| &t.reason)
            )
        }
        Err(e) => line += &format!("error: {e}"),
    }

    // 3. The outcome written down for the file (required for every invalid_* file).
    if name.contains("invalid_") && expect.is_none() {
        return Err(format!(
            "{name} has no expectation in invalid_expectations()"
        ));
    }
    if let Some(expect) = expect {
        match expect {
            Expect::Error(is, what) => match &whole.end {
                Err(e) if is(e) => line += &format!(" [expected: {what}]"),
                other => return Err(format!("expected {what}, got {other:?}")),
            },
            Expect::SameAs(reference) => {
                let ref_path = path.with_file_name(reference);
                let ref_bytes =
                    std::fs::read(&ref_path).map_err(|e| format!("{reference}: {e}"))?;
                let reference_run = feed(&ref_bytes, ref_bytes.len());
                let (Ok(a), Ok(b)) = (&whole.end, &reference_run.end) else {
                    return Err(format!(
                        "expected success like {reference}, got {:?}",
                        whole.end
                    ));
                };
                if a.truncated.is_some()
                    || a.frames != b.frames
                    || frame_events(&whole.events) != frame_events(&reference_run.events)
                {
                    return Err(format!("frames differ from {reference}"));
                }
                line += &format!(" [expected: the frames of {reference}]");
            }
            Expect::Partial => match &whole.end {
                Ok(end) if end.truncated.is_some() && end.frames > 0 => {
                    line += " [expected: partial]"
                }
                other => return Err(format!("expected partial, got {other:?}")),
            },
            Expect::Valid => match &whole.end {
                Ok(end) if end.truncated.is_none() && end.frames > 0 => {
                    line += " [expected: valid]"
                }
                other => return Err(format!("expected a complete container, got {other:?}")),
            },
        }
    }

    // 4. Cross-check with matroska-demuxer where it reads the file completely.
    if let Ok(end) = &whole.end {
        match reference_summary(path) {
            None => line += "; matroska-demuxer cannot read it completely: no cross-check",
            Some((theirs, laced)) => {
                for (track, t) in &theirs {
                    let Some(o) = ours.get(track) else {
                        return Err(format!("track {track} missing (theirs {t:?})"));
                    };
                    if o.codec_id != t.codec_id || o.frames != t.frames || o.first_ms != t.first_ms
                    {
                        return Err(format!("track {track}: ours {o:?}, theirs {t:?}"));
                    }
                    let last_ok = if laced {
                        // Ours gives laced frames consecutive times from their durations.
                        matches!((o.last_ms, t.last_ms), (Some(a), Some(b)) if a >= b && a - b <= 1000)
                    } else {
                        o.last_ms == t.last_ms
                    };
                    if !last_ok {
                        return Err(format!(
                            "track {track}: last ms ours {:?}, theirs {:?}",
                            o.last_ms, t.last_ms
                        ));
                    }
                }
                if ours.values().map(|s| s.frames).sum::<u64>() != end.frames {
                    return Err("frame count differs from finish()".into());
                }
                line += &format!(
                    "; matches matroska-demuxer on {} tracks{}",
                    theirs.len(),
                    if laced { " (laced)" } else { "" }
                );
            }
        }
    }
    Ok(line)
}

fn frame_events(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::Frame(_)))
        .collect()
}

#[test]
fn public_files_demux_like_the_reference_and_invalid_ones_fail_as_expected() {
    let Some(dir) = common::conformance_dir() else {
        return;
    };
    let expectations = invalid_expectations();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("webm" | "mkv")))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no files in {}", dir.display());
    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expect = expectations.get(name.as_str()).copied();
        match catch_unwind(AssertUnwindSafe(|| check_file(path, expect))) {
            Ok(Ok(line)) => println!("{line}"),
            Ok(Err(why)) => failures.push(format!("{name}: {why}")),
            Err(_) => failures.push(format!("{name}: PANIC")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}
