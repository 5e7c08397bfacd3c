//! `classguard slice`: recordings in, slice JPEGs + extracted microphone + slices.json out.

use std::path::{Path, PathBuf};

use crate::ingest::Recording;
use crate::sink::slices::{SliceDirWriter, SliceManifest};
use crate::slice::{self, SliceOptions, SliceOutput};

/// Why one recording could not be sliced. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct RecordingFailed {
    pub file: String,
    pub reason: String,
}

/// Slices one recording into `out/<recording id>/`.
pub fn slice_one(
    rec: &Recording,
    out: &Path,
    mut opts: SliceOptions,
) -> Result<SliceManifest, RecordingFailed> {
    let fail = |reason: String| RecordingFailed {
        file: rec.path.display().to_string(),
        reason,
    };
    let dir = out.join(&rec.id);
    let mut writer = SliceDirWriter::new(&dir).map_err(|e| fail(e.to_string()))?;
    opts.mic_path = Some(writer.mic_path());
    opts.decode_audio = false;
    let reader = rec.open().map_err(|e| fail(e.to_string()))?;
    let mut write_error = None;
    let report = slice::run_blocking(reader, &rec.file_name(), opts, |output| {
        if let SliceOutput::Slice(s) = output {
            if write_error.is_none() {
                if let Err(e) = writer.add(&s) {
                    write_error = Some(e.to_string());
                }
            }
        }
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(fail(e.to_string()));
        }
    };
    if let Some(e) = write_error {
        return Err(fail(e));
    }
    writer.finish(rec, &report).map_err(|e| fail(e.to_string()))
}

/// The output folder of one recording.
pub fn recording_dir(out: &Path, rec: &Recording) -> PathBuf {
    out.join(&rec.id)
}
