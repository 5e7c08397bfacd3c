//! EBML variable-length integers and the child iterator on arbitrary bytes, and round trips
//! through the muxer's encoders.
#![no_main]

use classguard::demux::ebml::{
    read_float, read_id, read_signed, read_size, read_string, read_uint, Children, VarInt,
    UNKNOWN_SIZE,
};
use classguard::mux::{id_bytes, size_bytes};
use libfuzzer_sys::fuzz_target;

/// Encodes `v` as a signed lacing difference in exactly `len` bytes (the inverse of read_signed).
fn signed_bytes(v: i64, len: usize) -> Option<Vec<u8>> {
    let bias = (1i64 << (7 * len - 1)) - 1;
    let raw = v.checked_add(bias)?;
    if raw < 0 || raw as u64 > (1u64 << (7 * len)) - 1 {
        return None;
    }
    let marked = raw as u64 | (1u64 << (7 * len));
    Some(marked.to_be_bytes()[8 - len..].to_vec())
}

fuzz_target!(|data: &[u8]| {
    match read_id(data) {
        VarInt::Value { value, len } => {
            assert!((1..=4).contains(&len) && len <= data.len());
            assert_eq!(
                id_bytes(value as u32),
                data[..len].to_vec(),
                "id round trip"
            );
        }
        VarInt::Incomplete => {
            assert!(data.is_empty() || data[0].leading_zeros() as usize >= data.len())
        }
        VarInt::Invalid => assert!(data[0] < 0x10),
    }
    match read_size(data) {
        VarInt::Value { value, len } => {
            assert!((1..=8).contains(&len) && len <= data.len());
            if value != UNKNOWN_SIZE {
                assert!(value < (1u64 << (7 * len)) - 1, "value fits its field");
                let enc = size_bytes(value);
                assert!(enc.len() <= len, "shortest encoding is not longer");
                assert_eq!(
                    read_size(&enc),
                    VarInt::Value {
                        value,
                        len: enc.len()
                    }
                );
            } else {
                // All ones for the field's length, and nothing else.
                let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
                assert_eq!(data[0] & mask, mask);
                assert!(data[1..len].iter().all(|&b| b == 0xFF));
            }
        }
        VarInt::Incomplete => {}
        VarInt::Invalid => assert_eq!(data[0], 0),
    }
    match read_signed(data) {
        VarInt::Value { value, len } => {
            let v = value as i64;
            let bias = (1i64 << (7 * len - 1)) - 1;
            assert!(
                v >= -bias && v <= bias + 1,
                "signed value in range for {len} bytes"
            );
            assert_eq!(
                signed_bytes(v, len).as_deref(),
                Some(&data[..len]),
                "signed round trip"
            );
        }
        VarInt::Incomplete | VarInt::Invalid => {}
    }
    // Values chosen by the input must survive the writer and the reader.
    if data.len() >= 8 {
        let v = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 56 + 8);
        if v < (1u64 << 56) - 1 {
            let enc = size_bytes(v);
            assert_eq!(
                read_size(&enc),
                VarInt::Value {
                    value: v,
                    len: enc.len()
                }
            );
        }
        let len = 1 + usize::from(data[1] % 8);
        let s = (u64::from_le_bytes(data[..8].try_into().unwrap()) as i64) >> (64 - 7 * len);
        if let Some(enc) = signed_bytes(s, len) {
            assert_eq!(
                read_signed(&enc),
                VarInt::Value {
                    value: s as u64,
                    len
                }
            );
        }
    }
    let mut seen = 0usize;
    let mut last_end = 0usize;
    for child in Children::new(data) {
        let Ok(c) = child else { break };
        assert!(c.offset >= last_end);
        let start = c.data.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start > c.offset && start + c.data.len() <= data.len());
        last_end = start + c.data.len();
        seen += 1;
        assert!(seen <= data.len(), "iterator does not terminate");
        let _ = (read_uint(c.data), read_float(c.data), read_string(c.data));
    }
});
