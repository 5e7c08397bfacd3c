//! The Tracks element: one [`TrackInfo`] per TrackEntry.

use serde::{Deserialize, Serialize};

use super::codec::Codec;
use super::ebml::{read_float, read_string, read_uint, Children};
use super::{malformed, DemuxError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoInfo {
    /// The size in the track header. Browsers keep the FIRST size here even after a resize,
    /// so decoded frames carry their own size.
    pub width: u32,
    pub height: u32,
    pub alpha_mode: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioInfo {
    pub sample_rate: f64,
    pub channels: u32,
    pub bit_depth: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackInfo {
    pub number: u64,
    pub kind: TrackKind,
    pub codec: Codec,
    pub codec_id: String,
    #[serde(skip)]
    pub codec_private: Vec<u8>,
    pub default_duration_ns: Option<u64>,
    pub codec_delay_ns: u64,
    pub seek_preroll_ns: u64,
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
    pub language: Option<String>,
    /// Header-stripping compression: bytes to put back in front of every frame.
    #[serde(skip)]
    pub strip_prefix: Vec<u8>,
}

mod id {
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const NUMBER: u32 = 0xD7;
    pub const TYPE: u32 = 0x83;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const DEFAULT_DURATION: u32 = 0x23E383;
    pub const CODEC_DELAY: u32 = 0x56AA;
    pub const SEEK_PREROLL: u32 = 0x56BB;
    pub const LANGUAGE: u32 = 0x22B59C;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const ALPHA_MODE: u32 = 0x53C0;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const BIT_DEPTH: u32 = 0x6264;
    pub const CONTENT_ENCODINGS: u32 = 0x6D80;
    pub const CONTENT_ENCODING: u32 = 0x6240;
    pub const CONTENT_COMPRESSION: u32 = 0x5034;
    pub const CONTENT_COMP_ALGO: u32 = 0x4254;
    pub const CONTENT_COMP_SETTINGS: u32 = 0x4255;
    pub const CONTENT_ENCRYPTION: u32 = 0x5035;
}

pub(super) fn parse_tracks(
    data: &[u8],
    at: u64,
    max_tracks: usize,
) -> Result<Vec<TrackInfo>, DemuxError> {
    let mut tracks = Vec::new();
    for child in Children::new(data) {
        let child = child.map_err(|e| malformed("Tracks", at, e))?;
        if child.id != id::TRACK_ENTRY {
            continue;
        }
        if tracks.len() >= max_tracks {
            return Err(DemuxError::TooManyTracks {
                count: tracks.len() + 1,
                limit: max_tracks,
            });
        }
        let track = parse_entry(child.data, at + child.offset as u64)?;
        if tracks.iter().any(|t: &TrackInfo| t.number == track.number) {
            return Err(DemuxError::Malformed {
                what: "TrackEntry",
                at,
                reason: format!("track number {} appears twice", track.number),
            });
        }
        tracks.push(track);
    }
    if tracks.is_empty() {
        return Err(DemuxError::Malformed {
            what: "Tracks",
            at,
            reason: "no TrackEntry".into(),
        });
    }
    Ok(tracks)
}

fn parse_entry(data: &[u8], at: u64) -> Result<TrackInfo, DemuxError> {
    let mut number = 0;
    let mut kind_code = 0;
    let mut codec_id = String::new();
    let mut track = TrackInfo {
        number: 0,
        kind: TrackKind::Other,
        codec: Codec::Other(String::new()),
        codec_id: String::new(),
        codec_private: Vec::new(),
        default_duration_ns: None,
        codec_delay_ns: 0,
        seek_preroll_ns: 0,
        video: None,
        audio: None,
        language: None,
        strip_prefix: Vec::new(),
    };
    for child in Children::new(data) {
        let child = child.map_err(|e| malformed("TrackEntry", at, e))?;
        let d = child.data;
        match child.id {
            id::NUMBER => number = read_uint(d).unwrap_or(0),
            id::TYPE => kind_code = read_uint(d).unwrap_or(0),
            id::CODEC_ID => codec_id = read_string(d),
            id::CODEC_PRIVATE => track.codec_private = d.to_vec(),
            id::DEFAULT_DURATION => track.default_duration_ns = read_uint(d).filter(|&v| v > 0),
            id::CODEC_DELAY => track.codec_delay_ns = read_uint(d).unwrap_or(0),
            id::SEEK_PREROLL => track.seek_preroll_ns = read_uint(d).unwrap_or(0),
            id::LANGUAGE => track.language = Some(read_string(d)),
            id::VIDEO => {
                let mut v = VideoInfo {
                    width: 0,
                    height: 0,
                    alpha_mode: false,
                };
                for c in Children::new(d) {
                    let c = c.map_err(|e| malformed("Video", at, e))?;
                    let value = read_uint(c.data).unwrap_or(0);
                    match c.id {
                        id::PIXEL_WIDTH => v.width = value.min(u64::from(u32::MAX)) as u32,
                        id::PIXEL_HEIGHT => v.height = value.min(u64::from(u32::MAX)) as u32,
                        id::ALPHA_MODE => v.alpha_mode = value == 1,
                        _ => {}
                    }
                }
                track.video = Some(v);
            }
            id::AUDIO => {
                let mut a = AudioInfo {
                    sample_rate: 8000.0,
                    channels: 1,
                    bit_depth: None,
                };
                for c in Children::new(d) {
                    let c = c.map_err(|e| malformed("Audio", at, e))?;
                    match c.id {
                        id::SAMPLING_FREQUENCY => {
                            a.sample_rate = read_float(c.data).unwrap_or(8000.0)
                        }
                        id::CHANNELS => a.channels = read_uint(c.data).unwrap_or(1).min(255) as u32,
                        id::BIT_DEPTH => a.bit_depth = read_uint(c.data).map(|b| b.min(64) as u32),
                        _ => {}
                    }
                }
                track.audio = Some(a);
            }
            id::CONTENT_ENCODINGS => track.strip_prefix = parse_encodings(d, at, number)?,
            _ => {}
        }
    }
    if number == 0 {
        return Err(DemuxError::Malformed {
            what: "TrackEntry",
            at,
            reason: "missing or zero TrackNumber".into(),
        });
    }
    track.number = number;
    track.kind = match kind_code {
        1 => TrackKind::Video,
        2 => TrackKind::Audio,
        _ => TrackKind::Other,
    };
    track.codec = Codec::from_codec_id(&codec_id);
    track.codec_id = codec_id;
    Ok(track)
}

/// Only header stripping (algorithm 3) is accepted: zlib/bzip/lzo and encryption are not used by
/// browsers, and guessing at them would hand garbage to the decoders.
fn parse_encodings(data: &[u8], at: u64, track: u64) -> Result<Vec<u8>, DemuxError> {
    let unsupported = |what: String| DemuxError::Malformed {
        what: "ContentEncodings",
        at,
        reason: format!("track {track}: {what} is not supported"),
    };
    let mut prefix = Vec::new();
    for enc in Children::new(data) {
        let enc = enc.map_err(|e| malformed("ContentEncodings", at, e))?;
        if enc.id != id::CONTENT_ENCODING {
            continue;
        }
        for c in Children::new(enc.data) {
            let c = c.map_err(|e| malformed("ContentEncoding", at, e))?;
            match c.id {
                id::CONTENT_ENCRYPTION => return Err(unsupported("encryption".into())),
                id::CONTENT_COMPRESSION => {
                    let mut algo = 0;
                    let mut settings = Vec::new();
                    for cc in Children::new(c.data) {
                        let cc = cc.map_err(|e| malformed("ContentCompression", at, e))?;
                        match cc.id {
                            id::CONTENT_COMP_ALGO => algo = read_uint(cc.data).unwrap_or(0),
                            id::CONTENT_COMP_SETTINGS => settings = cc.data.to_vec(),
                            _ => {}
                        }
                    }
                    if algo != 3 {
                        return Err(unsupported(format!("compression algorithm {algo}")));
                    }
                    prefix = settings;
                }
                _ => {}
            }
        }
    }
    Ok(prefix)
}
