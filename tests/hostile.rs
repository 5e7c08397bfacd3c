//! Hostile input: a corpus built here with the muxer's helpers (every damaged-file class of real
//! uploads plus lacing, size, id, timestamp and track edge cases), the fuzzers' regressions under
//! fixtures/regressions/, and a leak check of the real slicer over many bad or truncated files.
//!
//! Every case must end in the outcome written down for it, within a time bound, never a panic
//! or a hang, with the same result for any chunking of the input.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use classguard::demux::{DemuxError, DemuxLimits, Demuxer, Event, Frame, StreamEnd};
use classguard::mux::{
    element, id_bytes, simple_block, size_bytes, stream_start, uint_element, TrackSpec,
    UNKNOWN_SIZE_FIELD,
};
use classguard::slice::{self, SliceOptions};

// ---- allocation accounting (Rust heap of this test process) ----

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap growth above the level at the start of `f`, at its peak.
fn peak_growth(f: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// The tests of this file run one at a time: the leak check counts the process's threads and
/// the allocation checks its heap, which tests running beside them would disturb.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- stream building ----

const VP8_KEY: [u8; 10] = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
const OPUS_20MS: [u8; 3] = [0xF8, 0xAA, 0xBB];
const SEGMENT: u32 = 0x18538067;
const CLUSTER: u32 = 0x1F43B675;
const TRACKS: u32 = 0x1654AE6B;
const INFO: u32 = 0x1549A966;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const TIMESTAMP: u32 = 0xE7;

fn vp8(number: u64) -> TrackSpec {
    TrackSpec::vp8(number, (640, 480))
}

fn opus(number: u64) -> TrackSpec {
    TrackSpec::opus_mono(number)
}

/// EBML header, unknown-size Segment, Info, Tracks (VP8 track 1, Opus track 2): a browser start.
fn start() -> Vec<u8> {
    stream_start("webm", &[vp8(1), opus(2)])
}

/// `start()` plus an unknown-size Cluster at `ts` ms, ready for blocks.
fn in_cluster(ts: u64) -> Vec<u8> {
    let mut out = start();
    out.extend(id_bytes(CLUSTER));
    out.extend(UNKNOWN_SIZE_FIELD);
    out.extend(uint_element(TIMESTAMP, ts));
    out
}

/// A SimpleBlock for track 2 with raw lacing bytes: `flags` carries the lacing bits.
fn laced(flags: u8, lace: &[u8], frames: &[u8]) -> Vec<u8> {
    let mut p = vec![0x82, 0, 0, flags];
    p.extend_from_slice(lace);
    p.extend_from_slice(frames);
    element(SIMPLE_BLOCK, &p)
}

/// An element header with an explicit 8-byte size field.
fn header8(id: u32, size: u64) -> Vec<u8> {
    let mut out = id_bytes(id);
    out.extend(((1u64 << 56) | size).to_be_bytes());
    out
}

/// The EBML header, Segment with the given size field, and Info + Tracks.
fn with_segment_size(size: u64) -> Vec<u8> {
    let s = start();
    let seg_at = s
        .windows(4)
        .position(|w| w == [0x18, 0x53, 0x80, 0x67])
        .unwrap();
    let mut out = s[..seg_at].to_vec();
    out.extend(header8(SEGMENT, size));
    out.extend_from_slice(&s[seg_at + 12..]);
    out
}

fn tracks_of(n: u64, number: impl Fn(u64) -> u64) -> Vec<u8> {
    let entries: Vec<u8> = (0..n).flat_map(|i| vp8(number(i)).entry()).collect();
    let mut out = element(0x1A45DFA3, &element(0x4282, b"webm"));
    out.extend(id_bytes(SEGMENT));
    out.extend(UNKNOWN_SIZE_FIELD);
    out.extend(element(TRACKS, &entries));
    out.extend(id_bytes(CLUSTER));
    out.extend(UNKNOWN_SIZE_FIELD);
    out.extend(uint_element(TIMESTAMP, 0));
    out.extend(simple_block(1, 0, true, &VP8_KEY));
    out
}

fn with_info(info: &[u8]) -> Vec<u8> {
    let mut out = element(0x1A45DFA3, &element(0x4282, b"webm"));
    out.extend(id_bytes(SEGMENT));
    out.extend(UNKNOWN_SIZE_FIELD);
    out.extend(element(INFO, info));
    out.extend(element(TRACKS, &vp8(1).entry()));
    out.extend(id_bytes(CLUSTER));
    out.extend(UNKNOWN_SIZE_FIELD);
    out.extend(uint_element(TIMESTAMP, 1));
    out.extend(simple_block(1, 0, true, &VP8_KEY));
    out
}

// ---- running the demuxer ----

#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Event>,
    end: Result<StreamEnd, DemuxError>,
}

impl Outcome {
    fn frames(&self) -> Vec<&Frame> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Frame(f) => Some(f),
                _ => None,
            })
            .collect()
    }
}

fn feed(bytes: &[u8], chunk: usize) -> Outcome {
    let (events, end) = classguard::demux::demux_in_chunks(bytes, chunk, DemuxLimits::default());
    Outcome { events, end }
}

const CASE_TIME: Duration = Duration::from_secs(3);

/// Whole-input feeding, checked against chunked feeding, without panic and within the bound.
fn run_case(name: &str, bytes: &[u8]) -> Outcome {
    let started = Instant::now();
    let whole = catch_unwind(AssertUnwindSafe(|| feed(bytes, bytes.len())))
        .unwrap_or_else(|_| panic!("{name}: the demuxer panicked"));
    let chunks: &[usize] = if bytes.len() <= 256 << 10 {
        &[1, 7, 4096]
    } else {
        &[4096, 65536]
    };
    for &chunk in chunks {
        let run = catch_unwind(AssertUnwindSafe(|| feed(bytes, chunk)))
            .unwrap_or_else(|_| panic!("{name}: the demuxer panicked (chunk {chunk})"));
        assert_eq!(run.end, whole.end, "{name}: chunk {chunk} ends differently");
        assert!(
            run.events == whole.events,
            "{name}: chunk {chunk} gives other events"
        );
    }
    let took = started.elapsed();
    assert!(took < CASE_TIME, "{name}: took {took:?}");
    whole
}

/// The outcome written down for a case.
enum Want {
    Error(fn(&DemuxError) -> bool),
    /// Success, cut short: `truncated` is set.
    Partial,
    /// Success, complete, and this holds of the frames.
    Complete(fn(&[&Frame]) -> bool),
}

fn check(name: &str, bytes: &[u8], want: Want) {
    let out = run_case(name, bytes);
    match (&want, &out.end) {
        (Want::Error(is), Err(e)) if is(e) => println!("{name}: error as expected: {e}"),
        (Want::Partial, Ok(end)) if end.truncated.is_some() => println!(
            "{name}: partial as expected after {} frames: {:?}",
            end.frames, end.truncated
        ),
        (Want::Complete(ok), Ok(end)) if end.truncated.is_none() && ok(&out.frames()) => {
            println!("{name}: complete as expected, {} frames", end.frames)
        }
        _ => panic!(
            "{name}: unexpected outcome {:?} ({} frames)",
            out.end,
            out.frames().len()
        ),
    }
}

fn malformed(what: &'static str) -> impl Fn(&DemuxError) -> bool {
    move |e| matches!(e, DemuxError::Malformed { what: w, .. } if *w == what)
}

macro_rules! want_err {
    ($pat:pat) => {
        Want::Error(|e| matches!(e, $pat))
    };
    ($pat:pat if $guard:expr) => {
        Want::Error(|e| matches!(e, $pat if $guard))
    };
}

// ---- the damaged-file classes of real uploads ----

#[test]
fn damaged_upload_classes() {
    let _serial = serial();
    let mut full = in_cluster(0);
    for cluster in 0..3u64 {
        if cluster > 0 {
            full.extend(id_bytes(CLUSTER));
            full.extend(UNKNOWN_SIZE_FIELD);
            full.extend(uint_element(TIMESTAMP, cluster * 1000));
        }
        for i in 0..50i16 {
            let key = cluster == 0 && i == 0;
            full.extend(simple_block(
                1,
                i * 20,
                key,
                &[&VP8_KEY[..], &[7u8; 600][..]].concat(),
            ));
            full.extend(simple_block(2, i * 20, true, &OPUS_20MS));
        }
    }
    // Upload died mid-SimpleBlock.
    let cut = full.len() - 300;
    check("truncated mid-block", &full[..cut], Want::Partial);
    // First chunk lost: starts inside a cluster.
    let cluster_at = full
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .unwrap();
    check(
        "missing first chunk",
        &full[cluster_at + 30..],
        want_err!(DemuxError::NotMatroska(r) if r.contains("mid-stream")),
    );
    check("empty", &[], want_err!(DemuxError::Empty));
    let random: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    check(
        "random bytes",
        &random,
        want_err!(DemuxError::NotMatroska(_)),
    );
    let mut ebml_garbage = element(0x1A45DFA3, &element(0x4282, b"webm"));
    ebml_garbage.extend(&random);
    check(
        "EBML header then garbage",
        &ebml_garbage,
        Want::Error(|_| true),
    );
    let mut huge = in_cluster(0);
    huge.extend(header8(SIMPLE_BLOCK, (1 << 56) - 2));
    huge.extend([0x82, 0, 0, 0x80, 1, 2, 3]);
    check(
        "2^56 SimpleBlock",
        &huge,
        want_err!(DemuxError::TooLarge { .. }),
    );
    let mut mp4 = b"\0\0\0\x18ftypisom\0\0\0\0isomiso2".to_vec();
    mp4.extend(&random);
    check(
        "MP4 named .webm",
        &mp4,
        want_err!(DemuxError::NotMatroska(r) if r.contains("MP4")),
    );
    let mut concatenated = full.clone();
    concatenated.extend(&full);
    check(
        "concatenated file (unknown-size Segment)",
        &concatenated,
        Want::Partial,
    );
    let out = run_case("concatenated", &concatenated);
    assert_eq!(out.frames().len(), 300, "only the first file's frames");
    let t = out.end.unwrap().truncated.unwrap();
    assert_eq!(t.at_byte, full.len() as u64, "{t:?}");

    // The committed damaged fixtures, made from a real browser recording.
    let expect: [(&str, Want); 7] = [
        ("truncated.webm", Want::Partial),
        (
            "missing-first-chunk.webm",
            want_err!(DemuxError::NotMatroska(r) if r.contains("mid-stream")),
        ),
        ("empty.webm", want_err!(DemuxError::Empty)),
        ("garbage.webm", want_err!(DemuxError::NotMatroska(_))),
        ("ebml-garbage.webm", Want::Error(|_| true)),
        ("huge-element.webm", want_err!(DemuxError::TooLarge { .. })),
        (
            "mp4-named.webm",
            want_err!(DemuxError::NotMatroska(r) if r.contains("MP4")),
        ),
    ];
    for (file, want) in expect {
        let bytes = std::fs::read(common::fixture(&format!("damaged/{file}"))).unwrap();
        check(file, &bytes, want);
    }
}

// ---- lacing and block edge cases ----

#[test]
fn lacing_edge_cases() {
    let _serial = serial();
    let case = |name: &str, block: Vec<u8>, want: Want| {
        let mut s = in_cluster(0);
        s.extend(block);
        check(name, &s, want);
    };
    let block_err = || Want::Error(|e| matches!(e, DemuxError::Malformed { what: "block", .. }));
    // Xiph: 255-runs that continue past the end of the block.
    case(
        "xiph 255-run past the end",
        laced(0x02, &[3, 255, 255, 255], &[]),
        block_err(),
    );
    case(
        "xiph sizes over the block",
        laced(0x02, &[1, 255, 10], &[0xF8; 20]),
        block_err(),
    );
    // EBML lacing: first size 2, then a difference of -3 (raw 63 - 3 in one byte): negative.
    case(
        "ebml lacing negative size",
        laced(0x06, &[2, 0x82, 0x80 | 60], &[0xF8; 12]),
        block_err(),
    );
    case(
        "ebml lacing size over the block",
        laced(0x06, &[1, 0x40, 0xFF], &[0xF8; 12]),
        block_err(),
    );
    case(
        "fixed lacing uneven",
        laced(0x04, &[2], &[0xF8; 10]),
        block_err(),
    );
    case(
        "zero-size xiph frame",
        laced(0x02, &[2, 0, 3], &[0xF8; 6]),
        block_err(),
    );
    case(
        "zero-size unlaced frame",
        element(SIMPLE_BLOCK, &[0x82, 0, 0, 0x80]),
        block_err(),
    );
    case(
        "lace count 255, too few bytes",
        laced(0x04, &[255], &[0xF8; 255]),
        block_err(),
    );
    case(
        "lace count 255 (256 frames)",
        laced(0x04, &[255], &[0xF8; 256]),
        Want::Complete(|f| f.len() == 256 && f[255].pts_ms() == 255 * 20 && f[1].pts_ms() == 20),
    );
    case(
        "block header cut short",
        element(SIMPLE_BLOCK, &[0x82, 0]),
        block_err(),
    );
    case(
        "lace count byte missing",
        element(SIMPLE_BLOCK, &[0x82, 0, 0, 0x06]),
        block_err(),
    );
    case(
        "block for an unknown track",
        simple_block(9, 0, true, &VP8_KEY),
        want_err!(DemuxError::UnknownTrack { track: 9, .. }),
    );
    case(
        "track number 0 in a block",
        simple_block(0, 0, true, &VP8_KEY),
        want_err!(DemuxError::UnknownTrack { track: 0, .. }),
    );
    case(
        "BlockGroup without Block",
        element(BLOCK_GROUP, &uint_element(0x9B, 20)),
        Want::Error(malformed_fn_blockgroup),
    );
    // Relative timestamps at the i16 limits, around a cluster at 40 s.
    let mut s = in_cluster(40_000);
    s.extend(simple_block(1, i16::MIN, true, &VP8_KEY));
    s.extend(simple_block(1, i16::MAX, false, &[0x51, 0, 0]));
    check(
        "relative timestamps at the i16 limits",
        &s,
        Want::Complete(|f| f[0].pts_ms() == 40_000 - 32_768 && f[1].pts_ms() == 40_000 + 32_767),
    );
    // A cluster at 1 s with a block 32768 ms earlier: negative presentation time, not a wrap.
    let mut s = in_cluster(1_000);
    s.extend(simple_block(1, i16::MIN, true, &VP8_KEY));
    check(
        "negative block time",
        &s,
        Want::Complete(|f| f[0].pts_ms() == 1_000 - 32_768),
    );
}

fn malformed_fn_blockgroup(e: &DemuxError) -> bool {
    malformed("BlockGroup")(e)
}

// ---- element structure: unknown sizes, parents, 2^56 sizes, long ids ----

#[test]
fn element_structure_edge_cases() {
    let _serial = serial();
    // Unknown size on elements that are not Segment or Cluster.
    let mut s = in_cluster(0);
    s.extend(id_bytes(SIMPLE_BLOCK));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend([0x81, 0, 0, 0x80, 1, 2]);
    check(
        "unknown-size SimpleBlock",
        &s,
        want_err!(DemuxError::UnknownSize { id: 0xA3, .. }),
    );
    let mut s = in_cluster(0);
    s.extend(id_bytes(TIMESTAMP));
    s.extend([0xFF, 1]);
    check(
        "unknown-size Timestamp (1-byte field)",
        &s,
        want_err!(DemuxError::UnknownSize { .. }),
    );
    let mut s = start();
    s.extend(id_bytes(0xEC));
    s.extend(UNKNOWN_SIZE_FIELD);
    check(
        "unknown-size Void in Segment",
        &s,
        want_err!(DemuxError::UnknownSize { id: 0xEC, .. }),
    );
    let mut s = element(0x1A45DFA3, &[0x42, 0x82, 0xFF, b'w', b'e', b'b', b'm']);
    s.extend(id_bytes(SEGMENT));
    s.extend(UNKNOWN_SIZE_FIELD);
    check(
        "unknown-size DocType",
        &s,
        Want::Error(|e| malformed("EBML header")(e)),
    );
    let mut s = start();
    s.extend(id_bytes(TRACKS));
    s.extend(UNKNOWN_SIZE_FIELD);
    check(
        "unknown-size Tracks",
        &s,
        want_err!(DemuxError::UnknownSize { .. }),
    );

    // A child running past its known-size parent.
    let mut cluster = uint_element(TIMESTAMP, 0);
    cluster.extend(simple_block(1, 0, true, &VP8_KEY));
    let mut s = start();
    s.extend(id_bytes(CLUSTER));
    s.extend(size_bytes(cluster.len() as u64 - 4));
    s.extend(&cluster);
    check(
        "block beyond its Cluster",
        &s,
        want_err!(DemuxError::BeyondParent {
            parent: 0x1F43B675,
            ..
        }),
    );
    let mut s = with_segment_size(30);
    s.truncate(s.len().min(200));
    check(
        "Info/Tracks beyond a small Segment",
        &s,
        want_err!(DemuxError::BeyondParent {
            parent: 0x18538067,
            ..
        }),
    );

    // 2^56 - 2 (the largest known size) at each level.
    let big = (1u64 << 56) - 2;
    let mut s = with_segment_size(big);
    s.extend(element(
        CLUSTER,
        &[
            uint_element(TIMESTAMP, 0),
            simple_block(1, 0, true, &VP8_KEY),
        ]
        .concat(),
    ));
    check("2^56 Segment", &s, Want::Partial);
    let mut s = start();
    s.extend(header8(CLUSTER, big));
    s.extend(uint_element(TIMESTAMP, 0));
    s.extend(simple_block(1, 0, true, &VP8_KEY));
    check("2^56 Cluster", &s, Want::Partial);
    let mut s = element(0x1A45DFA3, &element(0x4282, b"webm"));
    s.extend(id_bytes(SEGMENT));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(header8(TRACKS, big));
    s.extend(vp8(1).entry());
    check(
        "2^56 Tracks",
        &s,
        want_err!(DemuxError::TooLarge { id: 0x1654AE6B, .. }),
    );
    let mut s = in_cluster(0);
    s.extend(header8(SIMPLE_BLOCK, big));
    s.extend([0x81, 0, 0, 0x80]);
    check(
        "2^56 SimpleBlock",
        &s,
        want_err!(DemuxError::TooLarge { id: 0xA3, .. }),
    );
    let mut s = in_cluster(0);
    s.extend(header8(BLOCK_GROUP, big));
    s.extend([0xA1, 0x85, 0x81, 0, 0, 0x80, 1]);
    check(
        "2^56 BlockGroup",
        &s,
        want_err!(DemuxError::TooLarge { id: 0xA0, .. }),
    );
    let mut s = start();
    s.extend(header8(0x1C53BB6B, big)); // Cues: skipped, never buffered
    s.extend([0u8; 1000]);
    check("2^56 Cues (skipped)", &s, Want::Partial);
    let mut s = header8(0x1A45DFA3, big);
    s.extend([0u8; 16]);
    check(
        "2^56 EBML header",
        &s,
        want_err!(DemuxError::TooLarge { id: 0x1A45DFA3, .. }),
    );

    // Ids longer than 4 bytes (5 to 8 bytes): invalid wherever they appear.
    for (len, first) in [(5u8, 0x08u8), (6, 0x04), (7, 0x02), (8, 0x01)] {
        let mut s = in_cluster(0);
        s.push(first);
        s.extend(vec![0x11; usize::from(len) - 1]);
        s.extend([0x81, 0]);
        let name = format!("{len}-byte id in a Cluster");
        check(&name, &s, want_err!(DemuxError::BadId { .. }));
        let mut s = start();
        s.push(first);
        s.extend(vec![0x11; usize::from(len) - 1]);
        s.extend([0x81, 0]);
        check(
            &format!("{len}-byte id in the Segment"),
            &s,
            want_err!(DemuxError::BadId { .. }),
        );
    }
    let mut s = in_cluster(0);
    s.extend([0xA3, 0x00, 0x81]);
    check(
        "size field with no marker",
        &s,
        want_err!(DemuxError::BadSize { .. }),
    );
    // A Segment inside an unknown-size Segment closes the first; a Cluster before any Tracks.
    let mut s = element(0x1A45DFA3, &element(0x4282, b"webm"));
    s.extend(id_bytes(SEGMENT));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(id_bytes(CLUSTER));
    s.extend(UNKNOWN_SIZE_FIELD);
    check(
        "Cluster before Tracks",
        &s,
        want_err!(DemuxError::NoTracks { .. }),
    );
}

// ---- timestamps, TimestampScale, tracks ----

#[test]
fn timestamp_and_track_edge_cases() {
    let _serial = serial();
    let mut s = start();
    s.extend(id_bytes(CLUSTER));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(element(TIMESTAMP, &u64::MAX.to_be_bytes()));
    s.extend(simple_block(1, 0, true, &VP8_KEY));
    check(
        "cluster timestamp u64::MAX",
        &s,
        Want::Error(|e| malformed("cluster timestamp")(e)),
    );
    let mut s = start();
    s.extend(id_bytes(CLUSTER));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(element(TIMESTAMP, &[0; 9]));
    check(
        "9-byte cluster timestamp",
        &s,
        want_err!(DemuxError::TooLarge { .. }),
    );
    // i64::MAX plus a positive relative time: saturates, never wraps (it overflowed before).
    let mut s = start();
    s.extend(id_bytes(CLUSTER));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(element(TIMESTAMP, &(i64::MAX as u64).to_be_bytes()));
    s.extend(simple_block(1, i16::MAX, true, &VP8_KEY));
    s.extend(laced(0x02, &[1, 1], &[0xF8; 3]));
    check(
        "cluster timestamp i64::MAX + relative",
        &s,
        Want::Complete(|f| f.iter().all(|f| f.pts_ns == i64::MAX)),
    );
    let mut s = in_cluster(0);
    s.extend(simple_block(1, 0, true, &VP8_KEY));
    let missing_ts = {
        let mut s = start();
        s.extend(id_bytes(CLUSTER));
        s.extend(UNKNOWN_SIZE_FIELD);
        s.extend(simple_block(1, 0, true, &VP8_KEY));
        s
    };
    check(
        "block before the cluster timestamp",
        &missing_ts,
        Want::Error(|e| malformed("cluster")(e)),
    );

    check(
        "TimestampScale 0",
        &with_info(&uint_element(0x2AD7B1, 0)),
        Want::Error(|e| malformed("Info")(e)),
    );
    check(
        "TimestampScale empty",
        &with_info(&element(0x2AD7B1, &[])),
        Want::Error(|e| malformed("Info")(e)),
    );
    check(
        "TimestampScale 2^64-1",
        &with_info(&uint_element(0x2AD7B1, u64::MAX)),
        Want::Error(|e| malformed("Info")(e)),
    );
    check(
        "TimestampScale 1 s (largest allowed)",
        &with_info(&uint_element(0x2AD7B1, 1_000_000_000)),
        Want::Complete(|f| f[0].pts_ms() == 1000),
    );
    // A NaN or infinite Duration is dropped (NaN also made equal streams compare unequal).
    for (name, bits) in [
        ("Duration NaN", f64::NAN),
        ("Duration -inf", f64::NEG_INFINITY),
        ("Duration 1e308", 1e308),
    ] {
        let s = with_info(
            &[
                uint_element(0x2AD7B1, 1_000_000_000),
                element(0x4489, &bits.to_be_bytes()),
            ]
            .concat(),
        );
        check(name, &s, Want::Complete(|f| f.len() == 1));
        let out = run_case(name, &s);
        let Some(Event::Header(h)) = out.events.first() else {
            panic!("{name}: no header")
        };
        assert_eq!(h.duration_ms, None, "{name}");
    }
    let s = with_info(
        &[
            uint_element(0x2AD7B1, 1_000_000),
            element(0x4489, &1500f32.to_be_bytes()),
        ]
        .concat(),
    );
    let out = run_case("Duration 1500 (f32)", &s);
    let Some(Event::Header(h)) = out.events.first() else {
        panic!("no header")
    };
    assert_eq!(h.duration_ms, Some(1500.0));

    check(
        "17 tracks",
        &tracks_of(17, |i| i + 1),
        want_err!(DemuxError::TooManyTracks { .. }),
    );
    check(
        "255 tracks",
        &tracks_of(255, |i| i + 1),
        want_err!(DemuxError::TooManyTracks { .. }),
    );
    check(
        "16 tracks (the limit)",
        &tracks_of(16, |i| i + 1),
        Want::Complete(|f| f.len() == 1),
    );
    check(
        "duplicate track numbers",
        &tracks_of(2, |_| 1),
        Want::Error(|e| malformed("TrackEntry")(e)),
    );
    check(
        "track number 0",
        &tracks_of(1, |_| 0),
        Want::Error(|e| malformed("TrackEntry")(e)),
    );
    let mut s = element(0x1A45DFA3, &element(0x4282, b"webm"));
    s.extend(id_bytes(SEGMENT));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(element(TRACKS, &element(0xEC, &[0; 4])));
    check(
        "Tracks without TrackEntry",
        &s,
        Want::Error(|e| malformed("Tracks")(e)),
    );

    // A second EBML header after a known-size Segment: an error, not a silent second file.
    let mut seg = element(TRACKS, &vp8(1).entry());
    seg.extend(element(
        CLUSTER,
        &[
            uint_element(TIMESTAMP, 0),
            simple_block(1, 0, true, &VP8_KEY),
        ]
        .concat(),
    ));
    let mut one = element(0x1A45DFA3, &element(0x4282, b"webm"));
    one.extend(element(SEGMENT, &seg));
    let two = [one.clone(), one].concat();
    check(
        "concatenated file (known-size Segment)",
        &two,
        Want::Error(|e| malformed("file")(e)),
    );
}

// ---- regressions: fixes made in the demuxer, and the fuzzers' crashes ----

/// Header stripping with a large prefix and 256 laced frames asked for 256 copies of the prefix
/// (1 GiB for a 4 MiB prefix) in one block; now refused before any copy is made.
#[test]
fn stripped_header_times_lace_count_stays_within_the_frame_limit() {
    let _serial = serial();
    let prefix = vec![0x9D; 1 << 20];
    let mut settings = uint_element(0x4254, 3);
    settings.extend(element(0x4255, &prefix));
    let encodings = element(0x6D80, &element(0x6240, &element(0x5034, &settings)));
    let mut entry = vp8(1).entry();
    // Append ContentEncodings inside the TrackEntry: rebuild it with the extra child.
    let classguard::demux::ebml::VarInt::Value { len, .. } =
        classguard::demux::ebml::read_size(&entry[1..])
    else {
        unreachable!()
    };
    let mut inner = entry.split_off(1 + len);
    inner.extend(encodings);
    let mut s = element(0x1A45DFA3, &element(0x4282, b"webm"));
    s.extend(id_bytes(SEGMENT));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(element(TRACKS, &element(0xAE, &inner)));
    s.extend(id_bytes(CLUSTER));
    s.extend(UNKNOWN_SIZE_FIELD);
    s.extend(uint_element(TIMESTAMP, 0));
    let mut one = s.clone();
    one.extend(simple_block(1, 0, true, &[0x01, 0x02]));
    let mut p = vec![0x81, 0, 0, 0x84, 255];
    p.extend([0x01; 256]);
    s.extend(element(SIMPLE_BLOCK, &p));
    let grew = peak_growth(|| {
        let mut d = Demuxer::new(DemuxLimits::default());
        d.push(&s);
        let mut err = None;
        loop {
            match d.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(
            matches!(err, Some(DemuxError::Malformed { what: "block", .. })),
            "{err:?}"
        );
    });
    println!(
        "256 frames x 1 MiB stripped header: heap grew {} KiB at peak",
        grew >> 10
    );
    assert!(grew < 32 << 20, "heap grew {grew} bytes");
    // One unlaced frame with the same prefix is fine: the prefix is put back.
    let out = run_case("stripped header, one frame", &one);
    let f = out.frames();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].data.len(), (1 << 20) + 2);
    assert_eq!(&f[0].data[(1 << 20)..], &[0x01, 0x02]);
}

/// After a concatenated second file the demuxer stops parsing; it kept buffering every later
/// byte (a 2 GB upload was held in memory). Now those bytes are counted and dropped.
#[test]
fn bytes_after_a_concatenated_file_are_not_buffered() {
    let _serial = serial();
    let mut first = in_cluster(0);
    first.extend(simple_block(1, 0, true, &VP8_KEY));
    let mut second = first.clone();
    second.resize(second.len() + (48 << 20), 0xEC);
    let total = (first.len() + second.len()) as u64;
    let chunk = vec![0u8; 64 << 10];
    let mut end = None;
    let grew = peak_growth(|| {
        let mut d = Demuxer::new(DemuxLimits::default());
        d.push(&first);
        for part in second.chunks(chunk.len()) {
            d.push(part);
            while let Some(_ev) = d.next_event().unwrap() {}
        }
        end = Some(d.finish().unwrap());
    });
    let end = end.unwrap();
    println!(
        "48 MiB after a concatenated file: heap grew {} KiB at peak",
        grew >> 10
    );
    assert!(
        grew < 4 << 20,
        "buffered the ignored bytes: heap grew {grew} bytes"
    );
    assert_eq!(end.bytes, total);
    assert_eq!(end.frames, 1);
    assert_eq!(end.truncated.unwrap().at_byte, first.len() as u64);
}

/// Files under fixtures/regressions/ (minimal inputs of fuzzer crashes, named after what they
/// broke): no panic, within the time bound, identical results for any chunking.
#[test]
fn fuzz_regressions_replay() {
    let _serial = serial();
    let dir = common::root().join("fixtures/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let out = run_case(&name, &bytes);
        for chunk in [2, 3, 5] {
            assert_eq!(feed(&bytes, chunk), out, "{name}: chunk {chunk}");
        }
        let _ = classguard::demux::block::parse_block(&bytes);
        println!("{name}: {:?}", out.end);
        n += 1;
    }
    // not-matroska-4-bytes.raw: 4 bytes that are not an EBML header. In 1-byte chunks the reason
    // was decided on the first 3 bytes ("starts with 79 f1 fd") instead of 4.
    let bytes = std::fs::read(dir.join("not-matroska-4-bytes.raw")).unwrap();
    assert_eq!(
        feed(&bytes, 1).end,
        Err(DemuxError::NotMatroska(
            "no EBML header (starts with 79 f1 fd 05)".into()
        ))
    );
    // nan-duration.webm: Info/Duration is a NaN. The header carried it, so two runs over the
    // same bytes gave events that compared unequal; a NaN/infinite/negative Duration is now none.
    let out = feed(&std::fs::read(dir.join("nan-duration.webm")).unwrap(), 5);
    let Some(Event::Header(h)) = out.events.first() else {
        panic!("no header")
    };
    assert_eq!(h.duration_ms, None);
    assert_eq!(out.frames().len(), 1);
    assert!(n >= 2);
}

// ---- the real slicer: no thread or memory leak over many bad inputs ----

fn proc_status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

fn threads() -> u64 {
    proc_status("Threads:")
}

fn rss_kib() -> u64 {
    proc_status("VmRSS:")
}

/// Small xorshift generator: the same offsets on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn slicer_leaks_no_threads_or_memory_over_bad_inputs() {
    let _serial = serial();
    let damaged: Vec<(String, Vec<u8>)> = [
        "truncated.webm",
        "missing-first-chunk.webm",
        "empty.webm",
        "garbage.webm",
        "ebml-garbage.webm",
        "huge-element.webm",
        "mp4-named.webm",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read(common::fixture(&format!("damaged/{f}"))).unwrap(),
        )
    })
    .collect();
    let source = std::fs::read(common::fixture("browser/camera-vp8-opus.webm")).unwrap();

    // Inputs: the damaged fixtures in turn, and truncations of a real recording. Cuts at random
    // offsets in the first 16 KiB (header, track list, first frames: every decoder is set up and
    // torn down) are cheap; cuts anywhere in the file decode up to 12 s of VP8 + Opus each, so
    // only every 8th input is one (125 of 1000), to keep the test well under a minute on 2 cores.
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    const COUNT: usize = 1000;
    for i in 0..COUNT {
        let input = match i % 4 {
            0 | 2 => damaged[(i / 2) % damaged.len()].clone(),
            _ if i % 8 == 1 => {
                let cut = 200 + (rng.next() % (source.len() as u64 - 200)) as usize;
                (format!("camera-cut-{cut}.webm"), source[..cut].to_vec())
            }
            _ => {
                let cut = (rng.next() % (16 << 10)) as usize;
                (format!("camera-cut-{cut}.webm"), source[..cut].to_vec())
            }
        };
        inputs.push(input);
    }

    let run = |name: &str, bytes: &[u8]| {
        let opts = SliceOptions {
            stall_timeout: Duration::from_secs(10),
            ..SliceOptions::default()
        };
        let started = Instant::now();
        let result = slice::run_blocking(std::io::Cursor::new(bytes.to_vec()), name, opts, |_| {});
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "{name}: {took:?}");
        result
    };
    // Warm-up: GStreamer's registry, plugins and global threads exist before the baseline.
    for (name, bytes) in inputs.iter().take(8) {
        let _ = run(name, bytes);
    }
    let cut_full = source[..source.len() / 3].to_vec();
    let _ = run("warm-up-cut.webm", &cut_full);
    std::thread::sleep(Duration::from_millis(500));
    let (threads_before, rss_before) = (threads(), rss_kib());

    let started = Instant::now();
    let (mut errors, mut partial, mut ok) = (0, 0, 0);
    for (name, bytes) in &inputs {
        match run(name, bytes) {
            Err(_) => errors += 1,
            Ok(r) if r.partial => partial += 1,
            Ok(r) => {
                // Only a cut exactly at the end of a complete element can look complete, and
                // then the report must still account for every byte.
                assert_eq!(r.bytes as usize, bytes.len(), "{name}");
                ok += 1;
            }
        }
    }
    let elapsed = started.elapsed();

    // Settle: decoder and puller threads are joined by run_blocking; GStreamer's pool threads
    // may take a moment to exit.
    let settle = Instant::now();
    while threads() > threads_before && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (threads_after, rss_after) = (threads(), rss_kib());
    println!(
        "slicer over {} bad inputs in {elapsed:?}: {errors} errors, {partial} partial, {ok} complete",
        inputs.len()
    );
    println!(
        "threads {threads_before} -> {threads_after} (settled in {:?}); VmRSS {} KiB -> {} KiB ({:+} KiB)",
        settle.elapsed(),
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64
    );
    assert_eq!(errors + partial + ok, inputs.len());
    assert!(errors > 0 && partial > 0);
    // Not more threads than before. (Fewer is possible: a test-harness thread of another test,
    // or a GStreamer pool thread from the warm-up, may exit meanwhile.)
    assert!(
        threads_after <= threads_before,
        "threads leaked: {threads_before} -> {threads_after}"
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "VmRSS grew {} KiB",
        rss_after - rss_before
    );
}
