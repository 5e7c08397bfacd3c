//! A minimal streaming WebM writer: enough to extract a track without re-encoding (the microphone
//! file) and to build precise test streams. Clusters are buffered and written with a known size;
//! the Segment keeps an unknown size so the file is valid at every flush, like a browser upload.

use std::io::{self, Write};

pub const TIMESTAMP_SCALE_NS: u64 = 1_000_000;
/// A cluster's blocks hold 16-bit relative timestamps; start a new cluster well before overflow.
const MAX_CLUSTER_SPAN_MS: i64 = 5_000;
/// A cluster is held in memory until it is written: frames that all share one timestamp must not
/// grow it to the size of the input, so a cluster also ends at this size.
pub const MAX_CLUSTER_BYTES: usize = 1 << 20;

/// Encodes an element id (ids keep their marker bits, so the value is written as is).
pub fn id_bytes(id: u32) -> Vec<u8> {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(3);
    bytes[skip..].to_vec()
}

/// Encodes a data size in the shortest field that can hold it.
pub fn size_bytes(size: u64) -> Vec<u8> {
    let mut len = 1;
    while len < 8 && size >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = size | (1u64 << (7 * len));
    marked.to_be_bytes()[8 - len..].to_vec()
}

/// One whole element: id, size, payload.
pub fn element(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = id_bytes(id);
    out.extend(size_bytes(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

pub fn uint_element(id: u32, value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    element(id, &bytes[skip..])
}

pub fn float_element(id: u32, value: f64) -> Vec<u8> {
    element(id, &value.to_be_bytes())
}

/// The 8-byte all-ones size that marks an unknown-size master.
pub const UNKNOWN_SIZE_FIELD: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// What the writer needs to describe one track.
#[derive(Debug, Clone)]
pub struct TrackSpec {
    pub number: u64,
    /// 1 video, 2 audio.
    pub kind: u8,
    pub codec_id: String,
    pub codec_private: Vec<u8>,
    pub codec_delay_ns: u64,
    pub seek_preroll_ns: u64,
    pub video_size: Option<(u32, u32)>,
    pub audio: Option<(f64, u32)>,
}

impl TrackSpec {
    /// A VP8 video track as browsers write it (no CodecPrivate).
    pub fn vp8(number: u64, size: (u32, u32)) -> Self {
        TrackSpec {
            number,
            kind: 1,
            codec_id: "V_VP8".into(),
            codec_private: Vec::new(),
            codec_delay_ns: 0,
            seek_preroll_ns: 0,
            video_size: Some(size),
            audio: None,
        }
    }

    /// A 48 kHz mono Opus track with a minimal OpusHead.
    pub fn opus_mono(number: u64) -> Self {
        TrackSpec {
            number,
            kind: 2,
            codec_id: "A_OPUS".into(),
            codec_private: b"OpusHead\x01\x01\x38\x01\x80\xbb\0\0\0\0\0".to_vec(),
            codec_delay_ns: 0,
            seek_preroll_ns: 0,
            video_size: None,
            audio: Some((48000.0, 1)),
        }
    }

    pub fn entry(&self) -> Vec<u8> {
        let mut e = uint_element(0xD7, self.number);
        e.extend(uint_element(0x73C5, self.number));
        e.extend(uint_element(0x83, u64::from(self.kind)));
        e.extend(element(0x86, self.codec_id.as_bytes()));
        if !self.codec_private.is_empty() {
            e.extend(element(0x63A2, &self.codec_private));
        }
        if self.codec_delay_ns > 0 {
            e.extend(uint_element(0x56AA, self.codec_delay_ns));
        }
        if self.seek_preroll_ns > 0 {
            e.extend(uint_element(0x56BB, self.seek_preroll_ns));
        }
        if let Some((w, h)) = self.video_size {
            let mut v = uint_element(0xB0, u64::from(w));
            v.extend(uint_element(0xBA, u64::from(h)));
            e.extend(element(0xE0, &v));
        }
        if let Some((rate, channels)) = self.audio {
            let mut a = float_element(0xB5, rate);
            a.extend(uint_element(0x9F, u64::from(channels)));
            e.extend(element(0xE1, &a));
        }
        element(0xAE, &e)
    }
}

/// EBML header + Segment start + Info + Tracks, as a browser writes them.
pub fn stream_start(doc_type: &str, tracks: &[TrackSpec]) -> Vec<u8> {
    let mut h = uint_element(0x4286, 1);
    h.extend(uint_element(0x42F7, 1));
    h.extend(uint_element(0x42F2, 4));
    h.extend(uint_element(0x42F3, 8));
    h.extend(element(0x4282, doc_type.as_bytes()));
    h.extend(uint_element(0x4287, 4));
    h.extend(uint_element(0x4285, 2));
    let mut out = element(0x1A45DFA3, &h);
    out.extend(id_bytes(0x18538067));
    out.extend(UNKNOWN_SIZE_FIELD);
    let mut info = uint_element(0x2AD7B1, TIMESTAMP_SCALE_NS);
    info.extend(element(0x4D80, b"classguard"));
    info.extend(element(0x5741, b"classguard"));
    out.extend(element(0x1549A966, &info));
    let entries: Vec<u8> = tracks.iter().flat_map(|t| t.entry()).collect();
    out.extend(element(0x1654AE6B, &entries));
    out
}

/// SimpleBlock payload for one unlaced frame.
pub fn simple_block(track: u64, relative_ms: i16, keyframe: bool, frame: &[u8]) -> Vec<u8> {
    let mut p = size_bytes(track);
    p.extend(relative_ms.to_be_bytes());
    p.push(if keyframe { 0x80 } else { 0 });
    p.extend_from_slice(frame);
    element(0xA3, &p)
}

/// Writes frames of any tracks into clusters of at most a few seconds.
pub struct WebmWriter<W: Write> {
    out: W,
    cluster_ts: Option<i64>,
    cluster: Vec<u8>,
    last_ts: i64,
    bytes: u64,
}

impl<W: Write> WebmWriter<W> {
    pub fn new(mut out: W, doc_type: &str, tracks: &[TrackSpec]) -> io::Result<Self> {
        let start = stream_start(doc_type, tracks);
        out.write_all(&start)?;
        Ok(Self {
            out,
            cluster_ts: None,
            cluster: Vec::new(),
            last_ts: 0,
            bytes: start.len() as u64,
        })
    }

    /// Adds one frame at `pts_ms`; timestamps must not go backwards by more than a cluster span.
    pub fn write_frame(
        &mut self,
        track: u64,
        pts_ms: i64,
        keyframe: bool,
        data: &[u8],
    ) -> io::Result<()> {
        let pts_ms = pts_ms.max(0);
        let start = match self.cluster_ts {
            Some(ts)
                if pts_ms >= ts
                    && pts_ms - ts <= MAX_CLUSTER_SPAN_MS
                    && self.cluster.len() + data.len() < MAX_CLUSTER_BYTES =>
            {
                ts
            }
            _ => {
                self.flush_cluster()?;
                self.cluster_ts = Some(pts_ms);
                self.cluster = uint_element(0xE7, pts_ms as u64);
                pts_ms
            }
        };
        self.cluster
            .extend(simple_block(track, (pts_ms - start) as i16, keyframe, data));
        self.last_ts = pts_ms;
        Ok(())
    }

    fn flush_cluster(&mut self) -> io::Result<()> {
        if self.cluster_ts.take().is_some() {
            let c = element(0x1F43B675, &self.cluster);
            self.out.write_all(&c)?;
            self.bytes += c.len() as u64;
            self.cluster.clear();
        }
        Ok(())
    }

    /// Flushes the last cluster and returns the sink and the bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.flush_all()?;
        Ok((self.out, self.bytes))
    }

    /// Writes the open cluster and flushes the sink; returns the bytes written so far.
    pub fn flush_all(&mut self) -> io::Result<u64> {
        self.flush_cluster()?;
        self.out.flush()?;
        Ok(self.bytes)
    }

    /// Bytes of the cluster held in memory.
    pub fn buffered(&self) -> usize {
        self.cluster.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_timestamp_frames_do_not_grow_one_cluster_without_bound() {
        let spec = super::TrackSpec::opus_mono(1);
        let mut w = super::WebmWriter::new(Vec::new(), "webm", &[spec]).unwrap();
        let frame = vec![0u8; 4096];
        let mut most = 0;
        for _ in 0..2_000 {
            w.write_frame(1, 1_000, true, &frame).unwrap();
            most = most.max(w.buffered());
        }
        assert!(most <= super::MAX_CLUSTER_BYTES, "{most} bytes held");
        let (out, bytes) = w.finish().unwrap();
        assert_eq!(out.len() as u64, bytes);
        assert!(bytes > 2_000 * 4096);
    }

    use super::*;
    use crate::demux::{ebml, Demuxer, Event};

    #[test]
    fn sizes_roundtrip_through_the_reader() {
        for v in [0u64, 1, 126, 127, 128, 16382, 16383, 1 << 20, (1 << 56) - 2] {
            let b = size_bytes(v);
            assert_eq!(
                ebml::read_size(&b),
                ebml::VarInt::Value {
                    value: v,
                    len: b.len()
                },
                "{v}"
            );
        }
        assert_eq!(id_bytes(0xA3), vec![0xA3]);
        assert_eq!(id_bytes(0x1A45DFA3), vec![0x1A, 0x45, 0xDF, 0xA3]);
    }

    #[test]
    fn written_stream_demuxes() {
        let spec = TrackSpec {
            number: 1,
            kind: 2,
            codec_id: "A_OPUS".into(),
            codec_private: b"OpusHead\x01\x01\x38\x01\x80\xbb\0\0\0\0\0".to_vec(),
            codec_delay_ns: 6_500_000,
            seek_preroll_ns: 80_000_000,
            video_size: None,
            audio: Some((48000.0, 1)),
        };
        let mut w = WebmWriter::new(Vec::new(), "webm", &[spec]).unwrap();
        for i in 0..400 {
            w.write_frame(1, i * 20, true, &[0xF8, 1, 2, 3]).unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        let mut d = Demuxer::default();
        d.push(&bytes);
        let mut frames = Vec::new();
        while let Some(ev) = d.next_event().unwrap() {
            if let Event::Frame(f) = ev {
                frames.push(f);
            }
        }
        let end = d.finish().unwrap();
        assert!(end.truncated.is_none());
        assert_eq!(frames.len(), 400);
        assert_eq!(frames[399].pts_ms(), 399 * 20);
        assert_eq!(frames[0].duration_ns, Some(20_000_000));
    }
}
