//! Sinks: where results land. Every file is written atomically (temp file, fsync, rename,
//! fsync of the folder), so a crash never leaves a half-written verdict, evidence file or
//! microphone file behind, and a renamed file survives a power loss. [`commit_audit`] is the one
//! place an audit's results are committed, for the CLI and the service alike.

pub mod slices;

use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Encode { path: String, reason: String },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl SinkError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        SinkError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Writes `bytes` to `path` via a temp file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| SinkError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        commit(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(SinkError::io(path, e));
    }
    Ok(())
}

/// Removes the temp files a killed run left in `dir` (`.NAME.PID.tmp` from [`write_atomic`] and
/// the microphone writer). Only call it while holding the recording's lock: then no live writer
/// owns a temp file there. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with('.') && n.ends_with(".tmp") && e.path().is_file()
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Puts a finished temp file in place: fsync the file, rename it over `path`, then fsync the
/// folder so the rename itself is durable. `tmp` must be in the same folder as `path`.
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(tmp)?
        .sync_all()?;
    std::fs::rename(tmp, path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), SinkError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| SinkError::Encode {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// File name of the extracted microphone in a recording's output folder.
pub const MIC_FILE: &str = "mic.webm";
/// File name of the verdict in a recording's output folder.
pub const VERDICT_FILE: &str = "verdict.json";

/// One audit's results, ready to commit.
pub struct AuditRecord<'a> {
    /// The recording's output folder (evidence files and the microphone are already there).
    pub out_dir: &'a Path,
    pub verdict: &'a crate::verdict::Verdict,
    /// Evidence files the audit wrote, relative to `out_dir`.
    pub evidence: &'a [String],
    /// Whose face or voice the files may hold: erasing this teacher deletes them.
    pub teacher_id: Option<&'a str>,
    pub expires_at: time::OffsetDateTime,
}

/// Commits an audit: the verdict, its findings and a retention row for every file that holds
/// the class's faces or voices (evidence and the extracted microphone) in one store
/// transaction, then `verdict.json`, written last and atomically: a verdict file on disk means
/// everything before it is committed. Idempotent: committing the same verdict twice changes
/// nothing but the rows' expiry. Returns whether the verdict was new to the store.
pub fn commit_audit(store: &crate::store::Store, rec: &AuditRecord<'_>) -> Result<bool, SinkError> {
    let entries = retention_entries(rec.out_dir, rec.evidence, rec.teacher_id, rec.expires_at);
    let new = store.record_verdict(rec.verdict, &entries)?;
    write_json_atomic(&rec.out_dir.join(VERDICT_FILE), rec.verdict)?;
    Ok(new)
}

/// The retention rows of an audit's files in `out_dir`: every evidence file, and the extracted
/// microphone when there is one (it holds the class's voices).
pub fn retention_entries(
    out_dir: &Path,
    evidence: &[String],
    teacher_id: Option<&str>,
    expires_at: time::OffsetDateTime,
) -> Vec<crate::store::EvidenceEntry> {
    let mut files: Vec<&str> = evidence.iter().map(String::as_str).collect();
    if out_dir.join(MIC_FILE).is_file() {
        files.push(MIC_FILE);
    }
    files
        .into_iter()
        .map(|rel| crate::store::EvidenceEntry {
            path: out_dir.join(rel).to_string_lossy().into_owned(),
            teacher_id: teacher_id.map(str::to_string),
            expires_at: expires_at.unix_timestamp(),
        })
        .collect()
}

/// Encodes an RGB image as JPEG and writes it atomically.
pub fn write_jpeg_atomic(
    path: &Path,
    image: &image::RgbImage,
    quality: u8,
) -> Result<(), SinkError> {
    let mut bytes = Vec::with_capacity(64 << 10);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .map_err(|e| SinkError::Encode {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_go_and_finished_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("verdict.json"), b"{}").unwrap();
        std::fs::write(dir.path().join(".mic.webm.4242.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("notes.tmp"), b"not ours").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(dir.path().join("verdict.json").exists());
        assert!(dir.path().join("notes.tmp").exists());
        assert!(!dir.path().join(".mic.webm.4242.tmp").exists());
    }
}
