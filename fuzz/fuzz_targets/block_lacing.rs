//! Block/SimpleBlock payloads with every lacing: Ok results describe frames that lie inside the
//! input, in order, without overlap, each non-empty, covering the payload after the lace header.
#![no_main]

use classguard::demux::block::parse_block;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = parse_block(data) else { return };
    assert!(!b.frames.is_empty());
    let lacing = (b.flags >> 1) & 3;
    if lacing == 0 {
        assert_eq!(b.frames.len(), 1);
    } else {
        assert!(b.frames.len() <= 256);
    }
    let mut prev_end = 0usize;
    for (i, &(off, len)) in b.frames.iter().enumerate() {
        let end = off.checked_add(len).expect("range overflows");
        assert!(
            end <= data.len(),
            "frame {i} {off}+{len} past {}",
            data.len()
        );
        assert!(len > 0, "empty frame {i}");
        assert!(off >= prev_end, "frame {i} overlaps the previous one");
        assert!(off >= 4, "frame {i} inside the block header");
        if i > 0 {
            assert_eq!(off, prev_end, "frames are contiguous");
        }
        prev_end = end;
    }
    assert_eq!(prev_end, data.len(), "the last frame ends the block");
    if lacing == 0b10 {
        let first = b.frames[0].1;
        assert!(b.frames.iter().all(|f| f.1 == first), "fixed lacing uneven");
    }
});
