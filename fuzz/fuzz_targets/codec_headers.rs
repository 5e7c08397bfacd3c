//! Codec header readers on arbitrary bytes.
#![no_main]

use classguard::demux::codec::{
    bitstream_keyframe, opus_packet_samples, parse_opus_head, split_xiph_headers, vp8_keyframe,
    vp8_keyframe_size, vp9_keyframe, Codec,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((w, h)) = vp8_keyframe_size(data) {
        assert!(w < 1 << 14 && h < 1 << 14);
        assert_eq!(vp8_keyframe(data), Some(true));
    }
    let _ = vp9_keyframe(data);
    assert_eq!(bitstream_keyframe(&Codec::Vp9, data), vp9_keyframe(data));
    assert_eq!(bitstream_keyframe(&Codec::Vp8, data), vp8_keyframe(data));
    if let Some(n) = opus_packet_samples(data) {
        assert!((120..=5760).contains(&n));
    }
    if let Some(head) = parse_opus_head(data) {
        assert_eq!(head.channels, data[9]);
    }
    if let Some(parts) = split_xiph_headers(data) {
        assert_eq!(parts.len(), usize::from(data[0]) + 1);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert!(total < data.len());
        for p in &parts {
            let start = p.as_ptr() as usize - data.as_ptr() as usize;
            assert!(start + p.len() <= data.len());
        }
    }
});
