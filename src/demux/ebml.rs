//! EBML primitives: variable-length integers, element ids and sizes.
//!
//! These are the only functions that read raw length fields, so every size that later drives an
//! allocation or a skip passes through here first and can be checked against limits.

/// Result of reading a variable-length integer from a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarInt {
    /// Not enough bytes yet to know the value.
    Incomplete,
    /// The first byte is zero: no length marker within 8 bytes (or 4 for ids).
    Invalid,
    /// A value and the number of bytes it took.
    Value { value: u64, len: usize },
}

/// Marker for an element whose size field is all ones ("unknown size", used by live muxers).
pub const UNKNOWN_SIZE: u64 = u64::MAX;

/// Reads an element id (1..=4 bytes, marker bits kept as the id's value, as in the specification).
pub fn read_id(buf: &[u8]) -> VarInt {
    let Some(&first) = buf.first() else {
        return VarInt::Incomplete;
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return VarInt::Invalid;
    }
    if buf.len() < len {
        return VarInt::Incomplete;
    }
    let value = buf[..len]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    VarInt::Value { value, len }
}

/// Reads an element data size (1..=8 bytes, marker removed). All-ones for the field's length is
/// reported as [`UNKNOWN_SIZE`]: the marker depends on the length of the field, not on one value.
pub fn read_size(buf: &[u8]) -> VarInt {
    let Some(&first) = buf.first() else {
        return VarInt::Incomplete;
    };
    if first == 0 {
        return VarInt::Invalid;
    }
    let len = first.leading_zeros() as usize + 1;
    if buf.len() < len {
        return VarInt::Incomplete;
    }
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let mut value = u64::from(first & mask);
    let mut all_ones = (first & mask) == mask;
    for &b in &buf[1..len] {
        value = (value << 8) | u64::from(b);
        all_ones &= b == 0xFF;
    }
    if all_ones {
        return VarInt::Value {
            value: UNKNOWN_SIZE,
            len,
        };
    }
    VarInt::Value { value, len }
}

/// Reads a signed EBML lacing difference: the unsigned varint minus half its range.
pub fn read_signed(buf: &[u8]) -> VarInt {
    match read_size(buf) {
        VarInt::Value { value, len } => {
            // An all-ones field is a legal signed value here, not "unknown".
            let raw = if value == UNKNOWN_SIZE {
                (1u64 << (7 * len)) - 1
            } else {
                value
            };
            let bias = (1i64 << (7 * len - 1)) - 1;
            VarInt::Value {
                value: (raw as i64 - bias) as u64,
                len,
            }
        }
        other => other,
    }
}

/// Big-endian unsigned integer element payload (0..=8 bytes).
pub fn read_uint(data: &[u8]) -> Option<u64> {
    if data.len() > 8 {
        return None;
    }
    Some(data.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Float element payload (0, 4 or 8 bytes).
pub fn read_float(data: &[u8]) -> Option<f64> {
    match data.len() {
        0 => Some(0.0),
        4 => Some(f64::from(f32::from_be_bytes(data.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(data.try_into().ok()?)),
        _ => None,
    }
}

/// String element payload; Matroska pads strings with NULs, which are not part of the value.
pub fn read_string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Iterates over the children of a fully buffered master element.
pub struct Children<'a> {
    data: &'a [u8],
    pos: usize,
}

/// One child element of a buffered master.
#[derive(Debug)]
pub struct Child<'a> {
    pub id: u32,
    pub offset: usize,
    pub data: &'a [u8],
}

impl<'a> Children<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
}

/// Why a buffered master could not be walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildError {
    BadId {
        offset: usize,
    },
    BadSize {
        offset: usize,
    },
    UnknownSize {
        offset: usize,
        id: u32,
    },
    Overrun {
        offset: usize,
        id: u32,
        size: u64,
        available: usize,
    },
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<Child<'a>, ChildError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.data.len() {
            return None;
        }
        let offset = self.pos;
        let rest = &self.data[self.pos..];
        let (id, id_len) = match read_id(rest) {
            VarInt::Value { value, len } => (value as u32, len),
            _ => {
                self.pos = self.data.len();
                return Some(Err(ChildError::BadId { offset }));
            }
        };
        let (size, size_len) = match read_size(&rest[id_len..]) {
            VarInt::Value { value, len } => (value, len),
            _ => {
                self.pos = self.data.len();
                return Some(Err(ChildError::BadSize { offset }));
            }
        };
        if size == UNKNOWN_SIZE {
            self.pos = self.data.len();
            return Some(Err(ChildError::UnknownSize { offset, id }));
        }
        let start = id_len + size_len;
        let available = rest.len() - start;
        if size > available as u64 {
            self.pos = self.data.len();
            return Some(Err(ChildError::Overrun {
                offset,
                id,
                size,
                available,
            }));
        }
        let size = size as usize;
        self.pos += start + size;
        Some(Ok(Child {
            id,
            offset,
            data: &rest[start..start + size],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_marker_bits() {
        assert_eq!(
            read_id(&[0x1A, 0x45, 0xDF, 0xA3]),
            VarInt::Value {
                value: 0x1A45DFA3,
                len: 4
            }
        );
        assert_eq!(
            read_id(&[0xA3]),
            VarInt::Value {
                value: 0xA3,
                len: 1
            }
        );
        assert_eq!(read_id(&[0x1A, 0x45]), VarInt::Incomplete);
        assert_eq!(read_id(&[0x08, 0, 0, 0, 0]), VarInt::Invalid);
        assert_eq!(read_id(&[]), VarInt::Incomplete);
    }

    #[test]
    fn sizes_and_unknown_marker_per_length() {
        assert_eq!(read_size(&[0x81]), VarInt::Value { value: 1, len: 1 });
        assert_eq!(read_size(&[0x40, 0x02]), VarInt::Value { value: 2, len: 2 });
        assert_eq!(
            read_size(&[0xFF]),
            VarInt::Value {
                value: UNKNOWN_SIZE,
                len: 1
            }
        );
        assert_eq!(
            read_size(&[0x7F, 0xFF]),
            VarInt::Value {
                value: UNKNOWN_SIZE,
                len: 2
            }
        );
        let chrome = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(
            read_size(&chrome),
            VarInt::Value {
                value: UNKNOWN_SIZE,
                len: 8
            }
        );
        let big = [0x01, 0x00, 0, 0, 0, 0, 0, 0x05];
        assert_eq!(read_size(&big), VarInt::Value { value: 5, len: 8 });
        assert_eq!(read_size(&[0x00, 1]), VarInt::Invalid);
        assert_eq!(read_size(&[0x10, 1]), VarInt::Incomplete);
    }

    #[test]
    fn signed_lacing_differences() {
        // 1-byte signed: raw 63 (0xBF) is zero, 0x80 is -63.
        assert_eq!(read_signed(&[0xBF]), VarInt::Value { value: 0, len: 1 });
        assert_eq!(
            read_signed(&[0x80]),
            VarInt::Value {
                value: (-63i64) as u64,
                len: 1
            }
        );
        assert_eq!(read_signed(&[0xFF]), VarInt::Value { value: 64, len: 1 });
    }

    #[test]
    fn scalars() {
        assert_eq!(read_uint(&[0x0F, 0x42, 0x40]), Some(1_000_000));
        assert_eq!(read_uint(&[0; 9]), None);
        assert_eq!(read_float(&1.5f32.to_be_bytes()), Some(1.5));
        assert_eq!(read_float(&[1, 2, 3]), None);
        assert_eq!(read_string(b"V_VP8\0\0"), "V_VP8");
    }

    #[test]
    fn children_reject_overrun_and_unknown_size() {
        let data = [0x86, 0x82, b'A', b'B', 0xD7, 0x81, 0x01];
        let kids: Vec<_> = Children::new(&data).collect::<Result<_, _>>().unwrap();
        assert_eq!(kids.len(), 2);
        assert_eq!(kids[0].data, b"AB");
        let bad = [0x86, 0x85, b'A'];
        assert!(matches!(
            Children::new(&bad).next(),
            Some(Err(ChildError::Overrun { .. }))
        ));
        let unk = [0x86, 0xFF, b'A'];
        assert!(matches!(
            Children::new(&unk).next(),
            Some(Err(ChildError::UnknownSize { .. }))
        ));
    }
}
