//! Streaming WebM/Matroska demuxer.
//!
//! Bytes are pushed as they arrive (a file read, an HTTP upload, an S3 stream) and the demuxer
//! yields the stream header and then frames; it never seeks and never needs the file's length.
//! This is what browser MediaRecorder uploads require: unknown-size Segment and Clusters, no Cues,
//! no Duration, chunks that end mid-block. Memory is bounded by the largest single element the
//! limits allow; skipped elements (Cues, Tags, attachments) are discarded as they stream past.
//!
//! Only Segment and Cluster are walked as open masters; everything else is either read whole
//! (Info, Tracks, SimpleBlock, BlockGroup: small and size-limited) or skipped.

pub mod block;
pub mod codec;
pub mod ebml;
mod tracks;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use codec::Codec;
use ebml::{read_id, read_size, read_uint, Children, VarInt, UNKNOWN_SIZE};
pub use tracks::{AudioInfo, TrackInfo, TrackKind, VideoInfo};

pub(crate) mod ids {
    pub const EBML: u32 = 0x1A45DFA3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const SEGMENT: u32 = 0x18538067;
    pub const SEEK_HEAD: u32 = 0x114D9B74;
    pub const INFO: u32 = 0x1549A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2AD7B1;
    pub const DURATION: u32 = 0x4489;
    pub const TRACKS: u32 = 0x1654AE6B;
    pub const CLUSTER: u32 = 0x1F43B675;
    pub const CUES: u32 = 0x1C53BB6B;
    pub const CHAPTERS: u32 = 0x1043A770;
    pub const TAGS: u32 = 0x1254C367;
    pub const ATTACHMENTS: u32 = 0x1941A469;
    pub const VOID: u32 = 0xEC;
    pub const CRC32: u32 = 0xBF;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const BLOCK_DURATION: u32 = 0x9B;
    pub const REFERENCE_BLOCK: u32 = 0xFB;
    pub const POSITION: u32 = 0xA7;
    pub const PREV_SIZE: u32 = 0xAB;
    pub const SILENT_TRACKS: u32 = 0x5854;
    pub const ENCRYPTED_BLOCK: u32 = 0xAF;
}

/// Hard limits against hostile sizes. Every limit is checked before any buffer grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemuxLimits {
    /// Largest header element read whole (EBML header, Info, Tracks).
    pub max_header_bytes: u64,
    /// Largest SimpleBlock/BlockGroup (one compressed frame, or one laced group).
    pub max_frame_bytes: u64,
    pub max_tracks: usize,
}

impl Default for DemuxLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 4 << 20,
            max_frame_bytes: 16 << 20,
            max_tracks: 16,
        }
    }
}

/// Everything known about the stream once its track list has been read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamHeader {
    pub doc_type: String,
    pub timestamp_scale_ns: u64,
    /// From Info/Duration, when the muxer wrote one (browsers do not).
    pub duration_ms: Option<f64>,
    pub tracks: Vec<TrackInfo>,
}

/// One compressed frame with its presentation time in the recording's own timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub track: u64,
    pub pts_ns: i64,
    pub duration_ns: Option<u64>,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn pts_ms(&self) -> i64 {
        self.pts_ns.div_euclid(1_000_000)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Header(StreamHeader),
    Frame(Frame),
}

/// Where and why a stream ended early. Everything before `at_byte` was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truncation {
    pub at_byte: u64,
    pub inside: String,
    pub reason: String,
}

/// What `finish` reports: how much was read and whether the stream was cut short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamEnd {
    pub bytes: u64,
    pub frames: u64,
    pub truncated: Option<Truncation>,
}

/// A stream that cannot be demuxed (from this byte on). The caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemuxError {
    #[error("empty file")]
    Empty,
    #[error("not a WebM/Matroska file: {0}")]
    NotMatroska(String),
    #[error("unsupported document type {0:?} (expected webm or matroska)")]
    DocType(String),
    #[error("invalid element id at byte {at}")]
    BadId { at: u64 },
    #[error("invalid element size at byte {at}")]
    BadSize { at: u64 },
    #[error("element 0x{id:X} at byte {at} declares {size} bytes, over the limit of {limit}")]
    TooLarge {
        id: u32,
        at: u64,
        size: u64,
        limit: u64,
    },
    #[error("element 0x{id:X} at byte {at} ({size} bytes) extends beyond its parent 0x{parent:X}, which ends at byte {parent_end}")]
    BeyondParent {
        id: u32,
        at: u64,
        size: u64,
        parent: u32,
        parent_end: u64,
    },
    #[error(
        "element 0x{id:X} at byte {at} has unknown size, which only Segment and Cluster may have"
    )]
    UnknownSize { id: u32, at: u64 },
    #[error("malformed {what} at byte {at}: {reason}")]
    Malformed {
        what: &'static str,
        at: u64,
        reason: String,
    },
    #[error("{count} tracks, over the limit of {limit}")]
    TooManyTracks { count: usize, limit: usize },
    #[error("block at byte {at} belongs to unknown track {track}")]
    UnknownTrack { at: u64, track: u64 },
    #[error("cluster at byte {at} comes before the track list")]
    NoTracks { at: u64 },
    #[error("stream ended before the track list (read {bytes} bytes)")]
    NoHeader { bytes: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Open {
    id: u32,
    /// Absolute end offset; `None` for unknown size.
    end: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Body,
    /// A second EBML header (concatenated file) or a hard error: ignore the rest.
    Done,
}

/// The push-based demuxer. Feed with [`Demuxer::push`], drain with [`Demuxer::next_event`],
/// close with [`Demuxer::finish`].
pub struct Demuxer {
    limits: DemuxLimits,
    buf: Vec<u8>,
    /// Read cursor within `buf`.
    pos: usize,
    /// Absolute offset of `buf[0]`.
    base: u64,
    skip: u64,
    skipping: Option<(u32, u64)>,
    stack: Vec<Open>,
    phase: Phase,
    doc_type: String,
    timestamp_scale: u64,
    duration: Option<f64>,
    tracks: Vec<TrackInfo>,
    header_sent: bool,
    cluster_ts: Option<i64>,
    pending: VecDeque<Event>,
    frames: u64,
    error: Option<DemuxError>,
    /// Where a second, concatenated file began (its bytes are counted, not parsed).
    second_file_at: Option<u64>,
}

/// Bytes `not_matroska_reason` looks at. Non-Matroska input is reported once this much has
/// arrived (or at `finish`), so the reason is the same however the input was chunked.
const SNIFF_BYTES: usize = 64 << 10;

enum Step {
    NeedMore,
    Progress,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new(DemuxLimits::default())
    }
}

impl Demuxer {
    pub fn new(limits: DemuxLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            skip: 0,
            skipping: None,
            stack: Vec::new(),
            phase: Phase::Start,
            doc_type: String::new(),
            timestamp_scale: 1_000_000,
            duration: None,
            tracks: Vec::new(),
            header_sent: false,
            cluster_ts: None,
            pending: VecDeque::new(),
            frames: 0,
            error: None,
            second_file_at: None,
        }
    }

    /// Absolute offset of the next unread byte.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Total bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Appends bytes. Bytes inside a skipped element are dropped without being buffered.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.phase == Phase::Done {
            // Nothing more is parsed (an error, or a concatenated second file): count, don't keep.
            self.base += data.len() as u64;
            return;
        }
        if self.skip > 0 && self.pos == self.buf.len() {
            let n = self.skip.min(data.len() as u64) as usize;
            self.skip -= n as u64;
            self.base += (self.buf.len() + n) as u64;
            self.buf.clear();
            self.pos = 0;
            data = &data[n..];
        }
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next header or frame, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, DemuxError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if let Some(err) = &self.error {
                return Err(err.clone());
            }
            if self.phase == Phase::Done {
                return Ok(None);
            }
            match self.step() {
                Ok(Step::Progress) => continue,
                Ok(Step::NeedMore) => return Ok(None),
                Err(e) => {
                    self.error = Some(e.clone());
                    self.phase = Phase::Done;
                    return Err(e);
                }
            }
        }
    }

    /// Declares the end of input and reports whether the stream was complete.
    /// Call after draining `next_event` to `Ok(None)`.
    pub fn finish(&mut self) -> Result<StreamEnd, DemuxError> {
        let bytes = self.bytes_received();
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        if bytes == 0 {
            return Err(DemuxError::Empty);
        }
        if self.phase == Phase::Start {
            return Err(self.not_matroska_reason());
        }
        if !self.header_sent {
            if self.tracks.is_empty() {
                return Err(DemuxError::NoHeader { bytes });
            }
            self.emit_header();
        }
        let mut truncated = None;
        let leftover = self.buf.len() - self.pos;
        if let Some(at) = self.second_file_at {
            truncated = Some(Truncation {
                at_byte: at,
                inside: "Segment".to_string(),
                reason: format!(
                    "a second EBML header (concatenated file) begins at byte {at}; its {} bytes were not read",
                    bytes - at
                ),
            });
        } else if self.skip > 0 {
            let (id, at) = self.skipping.unwrap_or((0, self.offset()));
            truncated = Some(Truncation {
                at_byte: bytes,
                inside: element_name(id).to_string(),
                reason: format!(
                    "element at byte {at} is missing its last {} bytes",
                    self.skip
                ),
            });
        } else if leftover > 0 {
            let at = self.offset();
            let rest = &self.buf[self.pos..];
            let (inside, reason) = match read_id(rest) {
                VarInt::Value { value, len } => match read_size(&rest[len..]) {
                    VarInt::Value {
                        value: size,
                        len: slen,
                    } => (
                        element_name(value as u32).to_string(),
                        format!(
                            "element at byte {at} declares {size} bytes, only {} arrived",
                            leftover - len - slen
                        ),
                    ),
                    _ => (
                        element_name(value as u32).to_string(),
                        format!("element header at byte {at} is incomplete"),
                    ),
                },
                _ => (
                    "element header".to_string(),
                    format!("{leftover} stray bytes at byte {at}"),
                ),
            };
            truncated = Some(Truncation {
                at_byte: bytes,
                inside,
                reason,
            });
        } else if let Some(open) = self
            .stack
            .iter()
            .rev()
            .find(|o| o.end.is_some_and(|e| e > bytes))
        {
            truncated = Some(Truncation {
                at_byte: bytes,
                inside: element_name(open.id).to_string(),
                reason: format!(
                    "declared to end at byte {}, stream ended at {bytes}",
                    open.end.unwrap_or(0)
                ),
            });
        }
        self.phase = Phase::Done;
        Ok(StreamEnd {
            bytes,
            frames: self.frames,
            truncated,
        })
    }

    /// The most helpful one-line reason for a stream that never showed an EBML header.
    fn not_matroska_reason(&self) -> DemuxError {
        let head = &self.buf[..self.buf.len().min(SNIFF_BYTES)];
        if head.len() >= 8 && &head[4..8] == b"ftyp" {
            return DemuxError::NotMatroska(
                "this is an MP4/ISO-BMFF file (ftyp box), not WebM".into(),
            );
        }
        if head.windows(4).any(|w| w == [0x1F, 0x43, 0xB6, 0x75]) {
            return DemuxError::NotMatroska(
                "no EBML header: the recording starts mid-stream (its first chunk, with the header and track list, is missing)".into(),
            );
        }
        let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        DemuxError::NotMatroska(format!("no EBML header (starts with {})", shown.join(" ")))
    }

    fn step(&mut self) -> Result<Step, DemuxError> {
        if self.skip > 0 {
            let avail = (self.buf.len() - self.pos) as u64;
            if avail == 0 {
                return Ok(Step::NeedMore);
            }
            let n = self.skip.min(avail);
            self.pos += n as usize;
            self.skip -= n;
            return Ok(Step::Progress);
        }
        let at = self.offset();
        // Close known-size masters we have read to the end of.
        while let Some(open) = self.stack.last() {
            match open.end {
                Some(end) if at >= end => {
                    self.close(open.id);
                    self.stack.pop();
                }
                _ => break,
            }
        }
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return Ok(Step::NeedMore);
        }
        if self.phase == Phase::Start {
            // Non-Matroska input: decided on the first SNIFF_BYTES (or at finish), not on whatever
            // the first chunk held, so that the reason does not depend on the chunking.
            let n = rest.len().min(4);
            if rest[..n] != [0x1A, 0x45, 0xDF, 0xA3][..n] {
                if self.buf.len() >= SNIFF_BYTES {
                    return Err(self.not_matroska_reason());
                }
                return Ok(Step::NeedMore);
            }
        }
        let (id, id_len) = match read_id(rest) {
            VarInt::Value { value, len } => (value as u32, len),
            VarInt::Incomplete => return Ok(Step::NeedMore),
            VarInt::Invalid => return Err(DemuxError::BadId { at }),
        };
        let (size, size_len) = match read_size(&rest[id_len..]) {
            VarInt::Value { value, len } => (value, len),
            VarInt::Incomplete => return Ok(Step::NeedMore),
            VarInt::Invalid => return Err(DemuxError::BadSize { at }),
        };
        let header_len = id_len + size_len;

        // An unknown-size master ends where an element that cannot be its child begins.
        if let Some(open) = self.stack.last() {
            if open.end.is_none() && !is_child_of(open.id, id) {
                let closed = open.id;
                self.close(closed);
                self.stack.pop();
                if id == ids::EBML && closed == ids::SEGMENT {
                    self.phase = Phase::Done; // a second, concatenated file: we audit the first
                    self.second_file_at = Some(at);
                }
                return Ok(Step::Progress);
            }
        }
        if size != UNKNOWN_SIZE {
            if let Some(parent) = self.stack.last() {
                if let Some(parent_end) = parent.end {
                    let end = at + header_len as u64 + size;
                    if end > parent_end {
                        return Err(DemuxError::BeyondParent {
                            id,
                            at,
                            size,
                            parent: parent.id,
                            parent_end,
                        });
                    }
                }
            }
        }

        match (self.phase, self.stack.last().map(|o| o.id), id) {
            (Phase::Start, _, ids::EBML) => {
                let Some(data) =
                    self.read_whole(id, at, size, header_len, self.limits.max_header_bytes)?
                else {
                    return Ok(Step::NeedMore);
                };
                self.doc_type = parse_ebml_header(&data, at)?;
                self.phase = Phase::Body;
            }
            (Phase::Body, None, ids::SEGMENT) => self.open(id, at, size, header_len),
            (Phase::Body, None, other) if other != ids::VOID && other != ids::CRC32 => {
                return Err(DemuxError::Malformed {
                    what: "file",
                    at,
                    reason: format!(
                        "expected a Segment after the EBML header, found element 0x{other:X}"
                    ),
                });
            }
            (Phase::Body, Some(ids::SEGMENT), ids::INFO) => {
                let Some(data) =
                    self.read_whole(id, at, size, header_len, self.limits.max_header_bytes)?
                else {
                    return Ok(Step::NeedMore);
                };
                self.parse_info(&data, at)?;
            }
            (Phase::Body, Some(ids::SEGMENT), ids::TRACKS) => {
                let Some(data) =
                    self.read_whole(id, at, size, header_len, self.limits.max_header_bytes)?
                else {
                    return Ok(Step::NeedMore);
                };
                let tracks = tracks::parse_tracks(&data, at, self.limits.max_tracks)?;
                if !self.header_sent {
                    self.tracks = tracks;
                }
            }
            (Phase::Body, Some(ids::SEGMENT), ids::CLUSTER) => {
                if self.tracks.is_empty() {
                    return Err(DemuxError::NoTracks { at });
                }
                if !self.header_sent {
                    self.emit_header();
                }
                self.cluster_ts = None;
                self.open(id, at, size, header_len);
            }
            (Phase::Body, Some(ids::CLUSTER), ids::TIMESTAMP) => {
                let Some(data) = self.read_whole(id, at, size, header_len, 8)? else {
                    return Ok(Step::NeedMore);
                };
                let ts = read_uint(&data).ok_or(DemuxError::Malformed {
                    what: "cluster timestamp",
                    at,
                    reason: "longer than 8 bytes".into(),
                })?;
                self.cluster_ts = Some(i64::try_from(ts).map_err(|_| DemuxError::Malformed {
                    what: "cluster timestamp",
                    at,
                    reason: "out of range".into(),
                })?);
            }
            (Phase::Body, Some(ids::CLUSTER), ids::SIMPLE_BLOCK) => {
                let Some(data) =
                    self.read_whole(id, at, size, header_len, self.limits.max_frame_bytes)?
                else {
                    return Ok(Step::NeedMore);
                };
                self.emit_block(&data, at, None, None)?;
            }
            (Phase::Body, Some(ids::CLUSTER), ids::BLOCK_GROUP) => {
                let limit = self.limits.max_frame_bytes + (1 << 20);
                let Some(data) = self.read_whole(id, at, size, header_len, limit)? else {
                    return Ok(Step::NeedMore);
                };
                self.emit_block_group(&data, at + header_len as u64)?;
            }
            (Phase::Start, _, _) => return Err(self.not_matroska_reason()),
            _ => {
                if size == UNKNOWN_SIZE {
                    return Err(DemuxError::UnknownSize { id, at });
                }
                // Anything else (SeekHead, Cues, Tags, Void, CRC-32, unknown ids) streams past.
                self.pos += header_len;
                self.skip = size;
                self.skipping = Some((id, at));
            }
        }
        Ok(Step::Progress)
    }

    fn open(&mut self, id: u32, at: u64, size: u64, header_len: usize) {
        self.pos += header_len;
        let end = (size != UNKNOWN_SIZE).then(|| at + header_len as u64 + size);
        self.stack.push(Open { id, end });
    }

    fn close(&mut self, id: u32) {
        if id == ids::CLUSTER {
            self.cluster_ts = None;
        }
    }

    /// Returns the element's payload once it has fully arrived, enforcing `limit` first.
    fn read_whole(
        &mut self,
        id: u32,
        at: u64,
        size: u64,
        header_len: usize,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, DemuxError> {
        if size == UNKNOWN_SIZE {
            return Err(DemuxError::UnknownSize { id, at });
        }
        if size > limit {
            return Err(DemuxError::TooLarge {
                id,
                at,
                size,
                limit,
            });
        }
        let total = header_len + size as usize;
        if self.buf.len() - self.pos < total {
            return Ok(None);
        }
        let data = self.buf[self.pos + header_len..self.pos + total].to_vec();
        self.pos += total;
        Ok(Some(data))
    }

    fn parse_info(&mut self, data: &[u8], at: u64) -> Result<(), DemuxError> {
        for child in Children::new(data) {
            let child = child.map_err(|e| malformed("Info", at, e))?;
            match child.id {
                ids::TIMESTAMP_SCALE => {
                    let scale = read_uint(child.data).unwrap_or(0);
                    if scale == 0 || scale > 1_000_000_000 {
                        return Err(DemuxError::Malformed {
                            what: "Info",
                            at,
                            reason: format!("TimestampScale {scale} out of range"),
                        });
                    }
                    self.timestamp_scale = scale;
                }
                ids::DURATION => self.duration = ebml::read_float(child.data),
                _ => {}
            }
        }
        Ok(())
    }

    fn emit_header(&mut self) {
        self.header_sent = true;
        let scale = self.timestamp_scale as f64;
        self.pending.push_back(Event::Header(StreamHeader {
            doc_type: self.doc_type.clone(),
            timestamp_scale_ns: self.timestamp_scale,
            // A NaN, infinite or negative Duration is no duration (and NaN would compare unequal).
            duration_ms: self
                .duration
                .map(|d| d * scale / 1e6)
                .filter(|d| d.is_finite() && *d >= 0.0),
            tracks: self.tracks.clone(),
        }));
    }

    fn emit_block_group(&mut self, data: &[u8], at: u64) -> Result<(), DemuxError> {
        let mut block: Option<&[u8]> = None;
        let mut referenced = false;
        let mut duration = None;
        for child in Children::new(data) {
            let child = child.map_err(|e| malformed("BlockGroup", at, e))?;
            match child.id {
                ids::BLOCK => block = Some(child.data),
                ids::REFERENCE_BLOCK => referenced = true,
                ids::BLOCK_DURATION => duration = read_uint(child.data),
                // BlockAdditions carry VP8/VP9 alpha planes; moderation audits the colour planes.
                _ => {}
            }
        }
        let Some(block) = block else {
            return Err(DemuxError::Malformed {
                what: "BlockGroup",
                at,
                reason: "no Block inside".into(),
            });
        };
        self.emit_block(block, at, Some(!referenced), duration)
    }

    fn emit_block(
        &mut self,
        data: &[u8],
        at: u64,
        group_keyframe: Option<bool>,
        group_duration: Option<u64>,
    ) -> Result<(), DemuxError> {
        let header = block::parse_block(data).map_err(|e| DemuxError::Malformed {
            what: "block",
            at,
            reason: e.to_string(),
        })?;
        let Some(track) = self.tracks.iter().find(|t| t.number == header.track) else {
            return Err(DemuxError::UnknownTrack {
                at,
                track: header.track,
            });
        };
        let cluster_ts = self.cluster_ts.ok_or(DemuxError::Malformed {
            what: "cluster",
            at,
            reason: "block before the cluster timestamp".into(),
        })?;
        let scale = self.timestamp_scale as i64;
        // A cluster timestamp near i64::MAX plus a positive relative one must not overflow.
        let mut pts_ns = cluster_ts
            .saturating_add(i64::from(header.relative_ts))
            .saturating_mul(scale);
        let flag_key = group_keyframe.unwrap_or(header.keyframe_flag());
        let lace_count = header.frames.len() as u64;
        // Header stripping puts the prefix back in front of every laced frame: a large prefix
        // times 256 frames must stay within the frame limit, like the block itself.
        let expanded = (track.strip_prefix.len() as u64).saturating_mul(lace_count);
        if expanded > self.limits.max_frame_bytes {
            return Err(DemuxError::Malformed {
                what: "block",
                at,
                reason: format!(
                    "{lace_count} frames with a {}-byte stripped header would add {expanded} bytes, over the frame limit of {}",
                    track.strip_prefix.len(),
                    self.limits.max_frame_bytes
                ),
            });
        }
        let block_duration_ns = group_duration.map(|d| d.saturating_mul(self.timestamp_scale));
        for &(off, len) in &header.frames {
            let mut bytes = Vec::with_capacity(track.strip_prefix.len() + len);
            bytes.extend_from_slice(&track.strip_prefix);
            bytes.extend_from_slice(&data[off..off + len]);
            let keyframe = codec::bitstream_keyframe(&track.codec, &bytes).unwrap_or(flag_key);
            let duration_ns = match track.codec {
                Codec::Opus => {
                    codec::opus_packet_samples(&bytes).map(|s| u64::from(s) * 1_000_000 / 48)
                }
                _ => None,
            }
            .or(track.default_duration_ns)
            .or(block_duration_ns.map(|d| d / lace_count));
            self.pending.push_back(Event::Frame(Frame {
                track: track.number,
                pts_ns,
                duration_ns,
                keyframe,
                data: bytes,
            }));
            self.frames += 1;
            // A DefaultDuration over i64::MAX ns must not wrap to a negative step.
            pts_ns =
                pts_ns.saturating_add(i64::try_from(duration_ns.unwrap_or(0)).unwrap_or(i64::MAX));
        }
        Ok(())
    }
}

fn malformed(what: &'static str, at: u64, e: ebml::ChildError) -> DemuxError {
    DemuxError::Malformed {
        what,
        at,
        reason: format!("{e:?}"),
    }
}

fn parse_ebml_header(data: &[u8], at: u64) -> Result<String, DemuxError> {
    let mut doc_type = None;
    for child in Children::new(data) {
        let child = child.map_err(|e| malformed("EBML header", at, e))?;
        if child.id == ids::DOC_TYPE {
            doc_type = Some(ebml::read_string(child.data));
        }
    }
    match doc_type {
        Some(d) if d == "webm" || d == "matroska" => Ok(d),
        Some(d) => Err(DemuxError::DocType(d)),
        None => Ok("matroska".to_string()),
    }
}

/// Whether `child` may appear directly inside an unknown-size `parent`. An id outside this set
/// closes the parent (Matroska's rule for live streams).
fn is_child_of(parent: u32, child: u32) -> bool {
    use ids::*;
    match parent {
        SEGMENT => !matches!(child, EBML | SEGMENT),
        CLUSTER => matches!(
            child,
            TIMESTAMP
                | SIMPLE_BLOCK
                | BLOCK_GROUP
                | POSITION
                | PREV_SIZE
                | SILENT_TRACKS
                | ENCRYPTED_BLOCK
                | VOID
                | CRC32
        ),
        _ => true,
    }
}

pub(crate) fn element_name(id: u32) -> &'static str {
    match id {
        ids::EBML => "EBML header",
        ids::SEGMENT => "Segment",
        ids::INFO => "Info",
        ids::TRACKS => "Tracks",
        ids::CLUSTER => "Cluster",
        ids::SIMPLE_BLOCK => "SimpleBlock",
        ids::BLOCK_GROUP => "BlockGroup",
        ids::CUES => "Cues",
        ids::SEEK_HEAD => "SeekHead",
        ids::TAGS => "Tags",
        ids::CHAPTERS => "Chapters",
        ids::ATTACHMENTS => "Attachments",
        ids::TIMESTAMP => "Cluster Timestamp",
        ids::VOID => "Void",
        _ => "element",
    }
}

/// Feeds `bytes` to a fresh demuxer `chunk` bytes at a time, as an upload would arrive, and
/// returns every event plus how the stream ended (the first error stops the feeding). Tests,
/// conformance checks and fuzzing use it to compare chunkings of the same bytes.
pub fn demux_in_chunks(
    bytes: &[u8],
    chunk: usize,
    limits: DemuxLimits,
) -> (Vec<Event>, Result<StreamEnd, DemuxError>) {
    let mut d = Demuxer::new(limits);
    let mut events = Vec::new();
    for part in bytes.chunks(chunk.max(1)) {
        d.push(part);
        loop {
            match d.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => return (events, Err(e)),
            }
        }
    }
    let end = d.finish();
    // finish() emits the header of a stream that has tracks but no clusters.
    while let Ok(Some(e)) = d.next_event() {
        events.push(e);
    }
    (events, end)
}

/// Demuxes a whole `Read` stream (no seeking), calling `on_event` for each header and frame.
/// Reads in 64 KiB chunks; the returned [`StreamEnd`] says whether the stream was complete.
pub fn demux_reader<R: std::io::Read>(
    mut reader: R,
    limits: DemuxLimits,
    mut on_event: impl FnMut(Event) -> std::ops::ControlFlow<()>,
) -> Result<StreamEnd, ReadError> {
    let mut demuxer = Demuxer::new(limits);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        while let Some(ev) = demuxer.next_event()? {
            if on_event(ev).is_break() {
                return Ok(StreamEnd {
                    bytes: demuxer.bytes_received(),
                    frames: demuxer.frames,
                    truncated: None,
                });
            }
        }
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        demuxer.push(&chunk[..n]);
    }
    while let Some(ev) = demuxer.next_event()? {
        if on_event(ev).is_break() {
            break;
        }
    }
    Ok(demuxer.finish()?)
}

/// Failure of [`demux_reader`]: the source could not be read, or its bytes are not demuxable.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Demux(#[from] DemuxError),
}

#[cfg(test)]
mod tests;
