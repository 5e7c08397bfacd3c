//! Shared by the demuxer targets: small limits and a complete run over given chunks.
#![allow(dead_code)]

use classguard::demux::{DemuxError, DemuxLimits, Demuxer, Event, StreamEnd};

/// Small limits so that no input can make the demuxer allocate much: the run uses
/// `-malloc_limit_mb=64`, and a single frame or header may never come near it.
pub const LIMITS: DemuxLimits = DemuxLimits {
    max_header_bytes: 256 << 10,
    max_frame_bytes: 1 << 20,
    max_tracks: 16,
};

/// Everything a run produced: its events in order, then how it ended.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub end: Result<StreamEnd, DemuxError>,
}

/// Feeds `chunks` one by one, draining events after each, then finishes (and drains what
/// `finish` may still emit: the header of a stream with tracks but no clusters).
pub fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut d = Demuxer::new(LIMITS);
    let mut events = Vec::new();
    let mut total = 0u64;
    for chunk in chunks {
        total += chunk.len() as u64;
        d.push(chunk);
        loop {
            match d.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    // An error is sticky: more input and `finish` report the same error.
                    assert_eq!(d.next_event(), Err(e.clone()));
                    return Outcome {
                        events,
                        end: Err(e),
                    };
                }
            }
        }
    }
    let end = d.finish();
    while let Ok(Some(ev)) = d.next_event() {
        events.push(ev);
    }
    check(&events, &end, total);
    Outcome { events, end }
}

/// Properties of every successful run.
fn check(events: &[Event], end: &Result<StreamEnd, DemuxError>, total: u64) {
    let Ok(end) = end else { return };
    assert_eq!(end.bytes, total, "bytes counted");
    let frames = events
        .iter()
        .filter(|e| matches!(e, Event::Frame(_)))
        .count() as u64;
    assert_eq!(end.frames, frames, "frames counted");
    let headers: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Header(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(headers.len(), 1, "exactly one header on success");
    assert!(
        matches!(events.first(), Some(Event::Header(_))),
        "header first"
    );
    let header = headers[0];
    for ev in events {
        if let Event::Frame(f) = ev {
            let track = header
                .tracks
                .iter()
                .find(|t| t.number == f.track)
                .expect("frame of a declared track");
            assert!(!f.data.is_empty(), "empty frame");
            // A BlockGroup may be 1 MiB over max_frame_bytes (its BlockAdditions).
            assert!(
                f.data.len() as u64
                    <= LIMITS.max_frame_bytes + (1 << 20) + track.strip_prefix.len() as u64,
                "frame over the limit"
            );
        }
    }
    if let Some(t) = &end.truncated {
        assert!(t.at_byte <= total);
    }
}
