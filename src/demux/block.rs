//! Matroska Block / SimpleBlock payloads: track number, relative timestamp, flags and lacing.

use super::ebml::{read_signed, read_size, VarInt};

/// A parsed block header plus the byte ranges of its (possibly laced) frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub track: u64,
    pub relative_ts: i16,
    pub flags: u8,
    /// (offset, len) of each frame within the block payload.
    pub frames: Vec<(usize, usize)>,
}

impl BlockHeader {
    pub fn keyframe_flag(&self) -> bool {
        self.flags & 0x80 != 0
    }
    pub fn discardable(&self) -> bool {
        self.flags & 0x01 != 0
    }
}

/// Why a block could not be parsed. Offsets are relative to the block payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block too short for its header")]
    Truncated,
    #[error("bad track number in block header")]
    BadTrackNumber,
    #[error("lace sizes ({declared} bytes) exceed the block ({available} bytes)")]
    LaceOverrun { declared: u64, available: usize },
    #[error("fixed lacing: {len} bytes do not split into {count} equal frames")]
    FixedLaceUneven { len: usize, count: usize },
    #[error("bad lace size field")]
    BadLaceSize,
    #[error("empty frame in block")]
    EmptyFrame,
}

/// Parses a block payload. The payload is the full element data of a SimpleBlock or Block.
pub fn parse_block(data: &[u8]) -> Result<BlockHeader, BlockError> {
    let (track, len) = match read_size(data) {
        VarInt::Value { value, len } if value != super::ebml::UNKNOWN_SIZE => (value, len),
        VarInt::Incomplete => return Err(BlockError::Truncated),
        _ => return Err(BlockError::BadTrackNumber),
    };
    if data.len() < len + 3 {
        return Err(BlockError::Truncated);
    }
    let relative_ts = i16::from_be_bytes([data[len], data[len + 1]]);
    let flags = data[len + 2];
    let mut pos = len + 3;
    let lacing = (flags >> 1) & 0x03;
    let frames = if lacing == 0 {
        vec![(pos, data.len() - pos)]
    } else {
        let count = usize::from(*data.get(pos).ok_or(BlockError::Truncated)?) + 1;
        pos += 1;
        let mut sizes: Vec<usize> = Vec::with_capacity(count);
        match lacing {
            0b01 => {
                for _ in 0..count - 1 {
                    let mut size = 0usize;
                    loop {
                        let b = *data.get(pos).ok_or(BlockError::Truncated)?;
                        pos += 1;
                        size += usize::from(b);
                        if b != 255 {
                            break;
                        }
                    }
                    sizes.push(size);
                }
            }
            0b11 => {
                let mut prev: i64 = 0;
                for i in 0..count - 1 {
                    let field = data.get(pos..).ok_or(BlockError::Truncated)?;
                    let (value, used) = if i == 0 {
                        match read_size(field) {
                            VarInt::Value { value, len } if value != super::ebml::UNKNOWN_SIZE => (
                                i64::try_from(value).map_err(|_| BlockError::BadLaceSize)?,
                                len,
                            ),
                            VarInt::Incomplete => return Err(BlockError::Truncated),
                            _ => return Err(BlockError::BadLaceSize),
                        }
                    } else {
                        match read_signed(field) {
                            VarInt::Value { value, len } => (
                                prev.checked_add(value as i64)
                                    .ok_or(BlockError::BadLaceSize)?,
                                len,
                            ),
                            VarInt::Incomplete => return Err(BlockError::Truncated),
                            VarInt::Invalid => return Err(BlockError::BadLaceSize),
                        }
                    };
                    if value < 0 || value > data.len() as i64 {
                        return Err(BlockError::BadLaceSize);
                    }
                    pos += used;
                    prev = value;
                    sizes.push(value as usize);
                }
            }
            _ => {
                let len = data.len() - pos;
                if !len.is_multiple_of(count) {
                    return Err(BlockError::FixedLaceUneven { len, count });
                }
                sizes = vec![len / count; count - 1];
            }
        }
        let available = data.len() - pos;
        let declared: u64 = sizes.iter().map(|&s| s as u64).sum();
        if declared > available as u64 {
            return Err(BlockError::LaceOverrun {
                declared,
                available,
            });
        }
        sizes.push(available - declared as usize);
        let mut frames = Vec::with_capacity(count);
        for size in sizes {
            frames.push((pos, size));
            pos += size;
        }
        frames
    };
    if frames.iter().any(|&(_, len)| len == 0) {
        return Err(BlockError::EmptyFrame);
    }
    Ok(BlockHeader {
        track,
        relative_ts,
        flags,
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlaced_simple_block() {
        let data = [0x81, 0x00, 0x10, 0x80, 1, 2, 3];
        let b = parse_block(&data).unwrap();
        assert_eq!(b.track, 1);
        assert_eq!(b.relative_ts, 16);
        assert!(b.keyframe_flag());
        assert_eq!(b.frames, vec![(4, 3)]);
    }

    #[test]
    fn negative_relative_timestamp() {
        let data = [0x82, 0xFF, 0xF0, 0x00, 9];
        assert_eq!(parse_block(&data).unwrap().relative_ts, -16);
    }

    #[test]
    fn xiph_lacing() {
        // 3 frames: sizes 2, 256 (255+1), rest 1.
        let mut data = vec![0x81, 0, 0, 0b0000_0010, 2, 2, 255, 1];
        data.extend(std::iter::repeat_n(7, 2 + 256 + 1));
        let b = parse_block(&data).unwrap();
        assert_eq!(
            b.frames.iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![2, 256, 1]
        );
    }

    #[test]
    fn ebml_lacing() {
        // 3 frames: 4, then +(-1) = 3, rest 2. Signed 1-byte: raw = diff + 63.
        let mut data = vec![0x81, 0, 0, 0b0000_0110, 2, 0x84, 0x80 | (63 - 1)];
        data.extend([1u8; 4 + 3 + 2]);
        let b = parse_block(&data).unwrap();
        assert_eq!(
            b.frames.iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![4, 3, 2]
        );
    }

    #[test]
    fn fixed_lacing_and_errors() {
        let mut data = vec![0x81, 0, 0, 0b0000_0100, 1];
        data.extend([5u8; 6]);
        assert_eq!(parse_block(&data).unwrap().frames, vec![(5, 3), (8, 3)]);
        data.push(1);
        assert!(matches!(
            parse_block(&data),
            Err(BlockError::FixedLaceUneven { .. })
        ));
        let over = [0x81, 0, 0, 0b0000_0010, 1, 200, 1, 2];
        assert!(matches!(
            parse_block(&over),
            Err(BlockError::LaceOverrun { .. })
        ));
        assert_eq!(parse_block(&[0x81, 0]), Err(BlockError::Truncated));
        assert_eq!(parse_block(&[0x00]), Err(BlockError::BadTrackNumber));
    }
}
