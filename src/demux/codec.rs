//! Just enough of each codec's frame header to know what the container does not say reliably:
//! whether a frame is a keyframe (Chrome's BlockGroups carry no keyframe flag), the coded size of
//! VP8 keyframes, and the duration of an Opus packet (for audio timestamps and extraction).

use serde::{Deserialize, Serialize};

/// Codecs the pipeline knows how to decode. Anything else is carried as `Other` and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Vp8,
    Vp9,
    Av1,
    H264,
    Opus,
    Vorbis,
    Other(String),
}

impl Codec {
    pub fn from_codec_id(id: &str) -> Self {
        match id {
            "V_VP8" => Codec::Vp8,
            "V_VP9" => Codec::Vp9,
            "V_AV1" => Codec::Av1,
            "V_MPEG4/ISO/AVC" => Codec::H264,
            "A_OPUS" => Codec::Opus,
            "A_VORBIS" => Codec::Vorbis,
            other => Codec::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Codec::Vp8 => "vp8",
            Codec::Vp9 => "vp9",
            Codec::Av1 => "av1",
            Codec::H264 => "h264",
            Codec::Opus => "opus",
            Codec::Vorbis => "vorbis",
            Codec::Other(s) => s,
        }
    }
}

/// Keyframe status read from the bitstream, when the codec makes it cheap and certain.
pub fn bitstream_keyframe(codec: &Codec, frame: &[u8]) -> Option<bool> {
    match codec {
        Codec::Vp8 => vp8_keyframe(frame),
        Codec::Vp9 => vp9_keyframe(frame),
        _ => None,
    }
}

/// VP8 frame tag: bit 0 of the first byte is 0 for a keyframe (RFC 6386 section 9.1).
pub fn vp8_keyframe(frame: &[u8]) -> Option<bool> {
    frame.first().map(|b| b & 1 == 0)
}

/// Coded width and height from a VP8 keyframe header (start code 9d 01 2a, then 14-bit sizes).
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3FFF);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3FFF);
    Some((w, h))
}

/// VP9 uncompressed header: frame_marker, profile, show_existing_frame, frame_type (0 = key).
pub fn vp9_keyframe(frame: &[u8]) -> Option<bool> {
    let mut bits = BitReader {
        data: frame,
        pos: 0,
    };
    if bits.read(2)? != 0b10 {
        return None;
    }
    let profile = bits.read(1)? | (bits.read(1)? << 1);
    if profile == 3 {
        bits.read(1)?; // reserved zero
    }
    if bits.read(1)? == 1 {
        return Some(false); // show_existing_frame: repeats a decoded frame
    }
    Some(bits.read(1)? == 0)
}

/// Coded width and height from a VP9 keyframe's uncompressed header (VP9 bitstream spec 6.2:
/// frame marker, profile, flags, sync code 49 83 42, colour config, then 16-bit sizes minus 1).
/// Lets the slicer refuse an oversized frame before the decoder allocates it.
pub fn vp9_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    let mut bits = BitReader {
        data: frame,
        pos: 0,
    };
    if bits.read(2)? != 0b10 {
        return None;
    }
    let profile = bits.read(1)? | (bits.read(1)? << 1);
    if profile == 3 {
        bits.read(1)?;
    }
    if bits.read(1)? == 1 || bits.read(1)? != 0 {
        return None; // show_existing_frame, or not a keyframe
    }
    bits.read(2)?; // show_frame, error_resilient_mode
    if bits.read(24)? != 0x49_83_42 {
        return None;
    }
    if profile >= 2 {
        bits.read(1)?; // ten_or_twelve_bit
    }
    let color_space = bits.read(3)?;
    if color_space != 7 {
        bits.read(1)?; // color_range
        if profile == 1 || profile == 3 {
            bits.read(3)?; // subsampling_x, subsampling_y, reserved
        }
    } else if profile == 1 || profile == 3 {
        bits.read(1)?;
    }
    let w = bits.read(16)? + 1;
    let h = bits.read(16)? + 1;
    Some((w, h))
}

/// Coded size of a keyframe, where the codec's header gives it cheaply (VP8, VP9).
pub fn keyframe_size(codec: &Codec, frame: &[u8]) -> Option<(u32, u32)> {
    match codec {
        Codec::Vp8 => vp8_keyframe_size(frame),
        Codec::Vp9 => vp9_keyframe_size(frame),
        _ => None,
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Some(v)
    }
}

/// Samples (at 48 kHz) in one Opus packet, from its TOC byte and frame count (RFC 6716 3.1).
pub fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame_samples: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames: u32 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let total = frame_samples * frames;
    // A packet may not exceed 120 ms; a larger count means a corrupt TOC.
    (total > 0 && total <= 5760).then_some(total)
}

/// Fields of an `OpusHead` (the Matroska CodecPrivate of an Opus track).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
}

pub fn parse_opus_head(data: &[u8]) -> Option<OpusHead> {
    if data.len() < 19 || &data[..8] != b"OpusHead" {
        return None;
    }
    Some(OpusHead {
        channels: data[9],
        pre_skip: u16::from_le_bytes([data[10], data[11]]),
        input_rate: u32::from_le_bytes([data[12], data[13], data[14], data[15]]),
    })
}

/// Splits Xiph-laced codec headers (Vorbis CodecPrivate: count-1, sizes, then the packets).
pub fn split_xiph_headers(data: &[u8]) -> Option<Vec<&[u8]>> {
    let count = usize::from(*data.first()?) + 1;
    let mut pos = 1;
    let mut sizes = Vec::with_capacity(count);
    for _ in 0..count - 1 {
        let mut size = 0usize;
        loop {
            let b = *data.get(pos)?;
            pos += 1;
            size += usize::from(b);
            if b != 255 {
                break;
            }
        }
        sizes.push(size);
    }
    let mut out = Vec::with_capacity(count);
    for size in sizes {
        let end = pos.checked_add(size)?;
        out.push(data.get(pos..end)?);
        pos = end;
    }
    out.push(data.get(pos..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_size() {
        let key = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        assert_eq!(vp8_keyframe(&key), Some(true));
        assert_eq!(vp8_keyframe_size(&key), Some((640, 480)));
        assert_eq!(vp8_keyframe(&[0x51]), Some(false));
        assert_eq!(vp8_keyframe_size(&[0x51, 0, 0]), None);
    }

    #[test]
    fn vp9_keyframe_size_from_the_uncompressed_header() {
        // marker 10, profile 0, show_existing 0, key 0, show 1, error_res 0, sync code,
        // colour space 2 + range 0, then 5120-1 and 2880-1.
        let mut bits = String::from("10000010");
        bits += &format!("{:024b}", 0x49_83_42);
        bits += "0100";
        bits += &format!("{:016b}{:016b}", 5119, 2879);
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let bytes: Vec<u8> = bits
            .as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect();
        assert_eq!(vp9_keyframe_size(&bytes), Some((5120, 2880)));
        assert_eq!(vp9_keyframe_size(&bytes[..6]), None, "cut short");
        let mut inter = bytes.clone();
        inter[0] |= 0b0000_0100;
        assert_eq!(vp9_keyframe_size(&inter), None, "not a keyframe");
    }

    #[test]
    fn vp9_frame_type() {
        // frame_marker=10, profile 0 (0,0), show_existing=0, frame_type=0 -> 1000 00xx
        assert_eq!(vp9_keyframe(&[0b1000_0000]), Some(true));
        assert_eq!(vp9_keyframe(&[0b1000_0100]), Some(false));
        assert_eq!(vp9_keyframe(&[0b1000_1000]), Some(false)); // show existing
        assert_eq!(vp9_keyframe(&[0b0000_0000]), None);
        assert_eq!(vp9_keyframe(&[]), None);
    }

    #[test]
    fn opus_durations() {
        assert_eq!(opus_packet_samples(&[0xFC]), Some(960)); // CELT 20 ms, one frame
        assert_eq!(opus_packet_samples(&[(31 << 3) | 1]), Some(1920));
        assert_eq!(opus_packet_samples(&[(31 << 3) | 3, 3]), Some(2880));
        assert_eq!(opus_packet_samples(&[(31 << 3) | 3, 63]), None);
        assert_eq!(opus_packet_samples(&[]), None);
        assert_eq!(opus_packet_samples(&[(1 << 3)]), Some(960));
    }

    #[test]
    fn xiph_split() {
        let data = [2u8, 3, 2, b'a', b'b', b'c', b'd', b'e', b'f'];
        let parts = split_xiph_headers(&data).unwrap();
        assert_eq!(parts, vec![&b"abc"[..], &b"de"[..], &b"f"[..]]);
        assert!(split_xiph_headers(&[2, 255]).is_none());
    }
}
