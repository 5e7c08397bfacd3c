//! The `slice` command's output: per recording, slice JPEGs, the extracted microphone file and a
//! `slices.json` manifest describing both.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{write_jpeg_atomic, write_json_atomic, SinkError};
use crate::ingest::Recording;
use crate::slice::{KeepReason, Role, Slice, SliceReport};

#[derive(Debug, Serialize)]
pub struct SliceEntry {
    pub track: u64,
    pub role: Role,
    pub pts_ms: i64,
    pub width: u32,
    pub height: u32,
    pub path: String,
    pub keyframe: bool,
    pub reason: KeepReason,
}

#[derive(Debug, Serialize)]
pub struct TrackEntry {
    pub number: u64,
    pub kind: crate::demux::TrackKind,
    pub role: Option<Role>,
    pub codec: String,
    pub header_size: Option<(u32, u32)>,
    pub sizes_seen: Vec<(u32, u32)>,
    pub frames: u64,
    pub keyframes: u64,
    pub decoded: u64,
    pub sampled: u64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AudioEntry {
    pub path: String,
    pub codec: String,
    pub container: &'static str,
    pub frames: u64,
    pub start_ms: i64,
    pub duration_ms: i64,
}

/// The `slices.json` document.
#[derive(Debug, Serialize)]
pub struct SliceManifest {
    pub recording_id: String,
    pub source: String,
    pub sha256: String,
    pub bytes: u64,
    pub doc_type: String,
    pub duration_ms: i64,
    pub partial: bool,
    pub partial_reason: Option<String>,
    pub tracks: Vec<TrackEntry>,
    pub slices: Vec<SliceEntry>,
    pub audio: Option<AudioEntry>,
}

/// Writes slices as they arrive and the manifest at the end.
pub struct SliceDirWriter {
    dir: PathBuf,
    entries: Vec<SliceEntry>,
    quality: u8,
}

impl SliceDirWriter {
    pub fn new(dir: &Path) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir.join("slices")).map_err(|e| SinkError::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
            quality: 85,
        })
    }

    pub fn mic_path(&self) -> PathBuf {
        self.dir.join("mic.webm")
    }

    pub fn add(&mut self, slice: &Slice) -> Result<(), SinkError> {
        let rel = format!("slices/t{}-{:09}.jpg", slice.track, slice.pts_ms.max(0));
        write_jpeg_atomic(&self.dir.join(&rel), &slice.image, self.quality)?;
        self.entries.push(SliceEntry {
            track: slice.track,
            role: slice.role,
            pts_ms: slice.pts_ms,
            width: slice.width,
            height: slice.height,
            path: rel,
            keyframe: slice.keyframe,
            reason: slice.reason,
        });
        Ok(())
    }

    pub fn finish(self, rec: &Recording, report: &SliceReport) -> Result<SliceManifest, SinkError> {
        let manifest = SliceManifest {
            recording_id: rec.id.clone(),
            source: rec.source.clone(),
            sha256: report.sha256.clone(),
            bytes: report.bytes,
            doc_type: report.doc_type.clone(),
            duration_ms: report.duration_ms,
            partial: report.partial,
            partial_reason: report.partial_reason.clone(),
            tracks: report
                .tracks
                .iter()
                .map(|t| TrackEntry {
                    number: t.number,
                    kind: t.kind,
                    role: t.role,
                    codec: t.codec.clone(),
                    header_size: t.header_size,
                    sizes_seen: t.sizes_seen.clone(),
                    frames: t.frames,
                    keyframes: t.keyframes,
                    decoded: t.decoded,
                    sampled: t.sampled,
                    error: t.error.clone(),
                })
                .collect(),
            slices: self.entries,
            audio: report.audio.as_ref().map(|a| AudioEntry {
                path: a
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                codec: a.codec.clone(),
                container: a.container,
                frames: a.frames,
                start_ms: a.start_ms,
                duration_ms: a.duration_ms,
            }),
        };
        write_json_atomic(&self.dir.join("slices.json"), &manifest)?;
        Ok(manifest)
    }
}
