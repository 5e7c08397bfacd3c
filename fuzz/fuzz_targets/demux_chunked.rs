//! The demuxer must be chunking-invariant: the first two bytes choose chunk sizes, the rest is
//! the stream; its events and its end (success, truncation or the exact error) must equal those
//! of feeding the stream at once.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (sel, stream) = (data[..2].to_vec(), &data[2..]);
    let base = [1usize, 2, 3, 4, 5, 7, 13, 64, 189, 190, 1000, 4096][usize::from(sel[0] % 12)];
    let jitter = sel[0] >= 128;
    // Chunk sizes in 1..=2*base, varied by a small LCG seeded from the second byte.
    let mut state = u32::from(sel[1]) | 1;
    let mut chunks = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let size = if jitter {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            1 + (state >> 16) as usize % (2 * base)
        } else {
            base
        };
        let end = (pos + size).min(stream.len());
        chunks.push(&stream[pos..end]);
        pos = end;
    }
    let whole = common::run([stream]);
    let chunked = common::run(chunks.iter().copied());
    assert_eq!(
        chunked.end, whole.end,
        "end differs (base {base}, jitter {jitter})"
    );
    assert_eq!(
        chunked.events.len(),
        whole.events.len(),
        "event count differs"
    );
    assert!(chunked.events == whole.events, "events differ");
});
