use super::*;
use crate::mux::{
    element, id_bytes, simple_block, stream_start, uint_element, TrackSpec, UNKNOWN_SIZE_FIELD,
};

fn vp8_track() -> TrackSpec {
    TrackSpec::vp8(1, (640, 480))
}

fn opus_track() -> TrackSpec {
    TrackSpec::opus_mono(2)
}

const VP8_KEY: [u8; 10] = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
const VP8_INTER: [u8; 4] = [0x51, 0x00, 0x00, 0x00];

/// A browser-style stream: unknown-size Segment and Clusters, a cluster about every second,
/// clusters not starting on keyframes.
fn browser_stream(seconds: i64) -> Vec<u8> {
    let mut out = stream_start("webm", &[vp8_track(), opus_track()]);
    for s in 0..seconds {
        out.extend(id_bytes(0x1F43B675));
        out.extend(UNKNOWN_SIZE_FIELD);
        out.extend(uint_element(0xE7, (s * 1000) as u64));
        for i in 0..50i16 {
            if i % 2 == 0 {
                let key = s % 3 == 0 && i == 0;
                let frame: &[u8] = if key { &VP8_KEY } else { &VP8_INTER };
                out.extend(simple_block(1, i * 20, key, frame));
            }
            out.extend(simple_block(2, i * 20, true, &[0xF8, 0xAA]));
        }
    }
    out
}

fn collect(bytes: &[u8], chunk: usize) -> (Vec<Event>, Result<StreamEnd, DemuxError>) {
    demux_in_chunks(bytes, chunk, DemuxLimits::default())
}

fn frames(events: &[Event]) -> Vec<&Frame> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::Frame(f) = e {
                Some(f)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn unknown_size_clusters_and_any_chunking_give_the_same_frames() {
    let bytes = browser_stream(4);
    let (whole, end) = collect(&bytes, bytes.len());
    let end = end.unwrap();
    assert!(end.truncated.is_none(), "{end:?}");
    let whole_frames = frames(&whole);
    assert_eq!(whole_frames.len(), 4 * 75);
    for chunk in [1, 2, 3, 7, 13, 190, 4096] {
        let (ev, end) = collect(&bytes, chunk);
        assert!(end.unwrap().truncated.is_none());
        assert_eq!(ev, whole, "chunk size {chunk}");
    }
    let Event::Header(h) = &whole[0] else {
        panic!("header first")
    };
    assert_eq!(h.tracks.len(), 2);
    assert_eq!(h.tracks[0].codec, Codec::Vp8);
    assert_eq!(h.tracks[1].codec, Codec::Opus);
    let video: Vec<_> = whole_frames.iter().filter(|f| f.track == 1).collect();
    assert_eq!(video[0].pts_ms(), 0);
    assert!(video[0].keyframe);
    assert!(!video[1].keyframe);
    assert_eq!(video[25].pts_ms(), 1000);
    assert_eq!(video.iter().filter(|f| f.keyframe).count(), 2); // seconds 0 and 3
}

#[test]
fn truncation_mid_block_is_reported_and_earlier_frames_are_kept() {
    let bytes = browser_stream(3);
    let cut = bytes.len() * 6 / 10;
    let (ev, end) = collect(&bytes[..cut], 1000);
    let end = end.unwrap();
    let t = end.truncated.expect("truncated");
    assert_eq!(t.at_byte, cut as u64);
    assert!(frames(&ev).len() > 100);
    assert!(t.reason.contains("only"), "{}", t.reason);
}

#[test]
fn known_size_segment_cut_short_is_truncated() {
    let mut body = Vec::new();
    body.extend(uint_element(0x2AD7B1, 1_000_000));
    let mut seg = element(0x1549A966, &body);
    seg.extend(element(0x1654AE6B, &vp8_track().entry()));
    let mut cluster = uint_element(0xE7, 0);
    cluster.extend(simple_block(1, 0, true, &VP8_KEY));
    seg.extend(element(0x1F43B675, &cluster));
    let full_len = seg.len() + 100;
    let mut bytes = stream_start("webm", &[])[..0].to_vec();
    bytes.extend(element(0x1A45DFA3, &element(0x4282, b"webm")));
    bytes.extend(id_bytes(0x18538067));
    bytes.extend(crate::mux::size_bytes(full_len as u64));
    bytes.extend(seg);
    let (ev, end) = collect(&bytes, 64);
    assert_eq!(frames(&ev).len(), 1);
    assert_eq!(end.unwrap().truncated.unwrap().inside, "Segment");
}

#[test]
fn hostile_inputs_give_clear_errors() {
    assert_eq!(collect(&[], 10).1, Err(DemuxError::Empty));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(matches!(
        collect(&garbage, 100).1,
        Err(DemuxError::NotMatroska(_))
    ));
    let mp4 = b"\0\0\0\x18ftypisom\0\0\0\0isomiso2";
    let err = collect(mp4, 100).1.unwrap_err().to_string();
    assert!(err.contains("MP4"), "{err}");
    // The first upload chunk is missing: the stream starts inside a cluster.
    let bytes = browser_stream(2);
    let err = collect(&bytes[400..], 4096).1.unwrap_err().to_string();
    assert!(
        err.contains("starts mid-stream") || err.contains("no EBML header"),
        "{err}"
    );

    // A SimpleBlock declaring 2^56 - 2 bytes: an error at once, no allocation.
    let mut huge = stream_start("webm", &[vp8_track()]);
    huge.extend(id_bytes(0x1F43B675));
    huge.extend(UNKNOWN_SIZE_FIELD);
    huge.extend(uint_element(0xE7, 0));
    huge.extend([0xA3, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]);
    let err = collect(&huge, 4096).1.unwrap_err();
    assert!(matches!(err, DemuxError::TooLarge { .. }), "{err}");

    // A child that claims to run past its known-size parent.
    let mut beyond = stream_start("webm", &[vp8_track()]);
    let mut cluster = uint_element(0xE7, 0);
    cluster.extend([0xA3, 0x90, 0x81, 0, 0, 0x80]);
    beyond.extend(element(0x1F43B675, &cluster));
    let err = collect(&beyond, 4096).1.unwrap_err();
    assert!(matches!(err, DemuxError::BeyondParent { .. }), "{err}");

    let mut bad_doc = element(0x1A45DFA3, &element(0x4282, b"avi"));
    bad_doc.extend([0; 8]);
    assert_eq!(
        collect(&bad_doc, 64).1,
        Err(DemuxError::DocType("avi".into()))
    );
}

#[test]
fn too_many_tracks_is_an_error() {
    let tracks: Vec<TrackSpec> = (1..=20)
        .map(|n| TrackSpec {
            number: n,
            ..vp8_track()
        })
        .collect();
    let mut bytes = stream_start("webm", &tracks);
    bytes.extend([0u8; 16]);
    assert!(matches!(
        collect(&bytes, 4096).1,
        Err(DemuxError::TooManyTracks { .. })
    ));
}

#[test]
fn block_groups_use_reference_block_and_bitstream_for_keyframes() {
    let mut bytes = stream_start("webm", &[vp8_track()]);
    let mut cluster = uint_element(0xE7, 5000);
    // Chrome: BlockGroup with BlockAdditions (alpha), no keyframe flag in the block itself.
    let block_payload = |ts: i16, frame: &[u8]| {
        let mut p = vec![0x81];
        p.extend(ts.to_be_bytes());
        p.push(0);
        p.extend_from_slice(frame);
        p
    };
    let mut g1 = element(0xA1, &block_payload(0, &VP8_KEY));
    g1.extend(element(
        0x75A1,
        &element(0xA6, &[0xEE, 0x81, 0x01, 0xA5, 0x81, 0x00]),
    ));
    cluster.extend(element(0xA0, &g1));
    let mut g2 = element(0xA1, &block_payload(33, &VP8_INTER));
    g2.extend(uint_element(0xFB, 33));
    cluster.extend(element(0xA0, &g2));
    bytes.extend(element(0x1F43B675, &cluster));
    let (ev, end) = collect(&bytes, 7);
    assert!(end.unwrap().truncated.is_none());
    let f = frames(&ev);
    assert_eq!(f.len(), 2);
    assert!(f[0].keyframe && !f[1].keyframe);
    assert_eq!(f[0].pts_ms(), 5000);
    assert_eq!(f[1].pts_ms(), 5033);
}

#[test]
fn laced_opus_frames_get_consecutive_timestamps_with_any_timestamp_scale() {
    let mut info = uint_element(0x2AD7B1, 100_000); // 0.1 ms ticks, as some muxers write
    info.extend(element(0x4D80, b"test"));
    let mut bytes = element(0x1A45DFA3, &element(0x4282, b"webm"));
    bytes.extend(id_bytes(0x18538067));
    bytes.extend(UNKNOWN_SIZE_FIELD);
    bytes.extend(element(0x1549A966, &info));
    bytes.extend(element(0x1654AE6B, &opus_track().entry()));
    let mut cluster = uint_element(0xE7, 10_000); // 1 s
    let mut p = vec![0x82, 0, 0, 0x80 | 0b0000_0010, 2, 2, 2];
    p.extend([0xF8, 1, 0xF8, 2, 0xF8, 3]);
    cluster.extend(element(0xA3, &p));
    bytes.extend(element(0x1F43B675, &cluster));
    let (ev, end) = collect(&bytes, 5);
    end.unwrap();
    let f = frames(&ev);
    assert_eq!(
        f.iter().map(|f| f.pts_ms()).collect::<Vec<_>>(),
        vec![1000, 1020, 1040]
    );
    assert_eq!(f[2].data, vec![0xF8, 3]);
}

#[test]
fn skipped_elements_are_not_buffered() {
    let mut bytes = stream_start("webm", &[vp8_track()]);
    // A 3 MB Void element followed by a cluster: streams past without growing the buffer.
    let void = vec![0u8; 3 << 20];
    bytes.extend(element(0xEC, &void));
    let mut cluster = uint_element(0xE7, 0);
    cluster.extend(simple_block(1, 0, true, &VP8_KEY));
    bytes.extend(element(0x1F43B675, &cluster));
    let mut d = Demuxer::default();
    let mut max_buf = 0;
    let mut n = 0;
    for part in bytes.chunks(64 << 10) {
        d.push(part);
        max_buf = max_buf.max(d.buf.len());
        while let Some(ev) = d.next_event().unwrap() {
            n += matches!(ev, Event::Frame(_)) as usize;
        }
    }
    assert_eq!(n, 1);
    assert!(max_buf < 256 << 10, "buffer grew to {max_buf}");
}
