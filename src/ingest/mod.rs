//! Ingest: where recordings come from (files, folders, S3 prefixes), named by a stable id that
//! carries no personal data, opened as plain byte streams for the streaming demuxer.

pub mod s3;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{0}")]
    S3(#[from] s3::S3Error),
}

/// One recording to audit. `id` is derived from the source location, so logs can name the
/// recording without revealing file names (which often contain a teacher's name).
#[derive(Debug, Clone)]
pub struct Recording {
    pub id: String,
    pub source: String,
    pub path: PathBuf,
}

impl Recording {
    pub fn from_path(path: &Path) -> Self {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let source = canonical.to_string_lossy().into_owned();
        Self {
            id: recording_id(&source),
            source,
            path: canonical,
        }
    }

    /// The file name, for role detection and session grouping (never logged).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn open(&self) -> Result<Box<dyn Read + Send>, IngestError> {
        let err = |reason: String| IngestError::Open {
            path: self.path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(&self.path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        Ok(Box::new(
            File::open(&self.path).map_err(|e| err(e.to_string()))?,
        ))
    }
}

/// `rec-` and 16 hex digits of the sha256 of the source location.
pub fn recording_id(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    format!("rec-{}", &hex::encode(digest)[..16])
}

const MEDIA_EXTENSIONS: [&str; 3] = ["webm", "mkv", "mka"];

/// Whether a file name or object key has a media extension (case-insensitive).
pub fn is_media_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MEDIA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One recording found by [`expand_sources`]: a local file, or an S3 object pinned to the
/// version (ETag, size) that was listed.
#[derive(Debug, Clone)]
pub struct Input {
    pub recording: Recording,
    pub object: Option<s3::ObjectInfo>,
}

impl Recording {
    /// An S3 object: the id derives from its URI, the key's last part stands in for the file name
    /// (role words and session prefixes).
    pub fn from_object(o: &s3::ObjectInfo) -> Self {
        let source = o.uri();
        Self {
            id: recording_id(&source),
            source,
            path: PathBuf::from(&o.key),
        }
    }
}

/// [`expand_inputs`] for local paths mixed with `s3://bucket/prefix` URLs, in the order given
/// (files and folders first, then each prefix's objects in key order). `s3` is only asked for
/// when there is an `s3://` input. Errors are reported per input, never fatal.
pub fn expand_sources(
    inputs: &[String],
    s3: &mut dyn FnMut() -> Result<s3::S3Client, s3::S3Error>,
) -> (Vec<Input>, Vec<IngestError>) {
    let mut paths = Vec::new();
    let mut urls = Vec::new();
    let mut errors = Vec::new();
    for i in inputs {
        match s3::S3Url::parse(i) {
            None => paths.push(PathBuf::from(i)),
            Some(Ok(u)) => urls.push(u),
            Some(Err(e)) => errors.push(e.into()),
        }
    }
    let (files, file_errors) = expand_inputs(&paths);
    errors.extend(file_errors);
    let mut found: Vec<Input> = files
        .into_iter()
        .map(|recording| Input {
            recording,
            object: None,
        })
        .collect();
    if !urls.is_empty() {
        match s3() {
            Ok(client) => {
                let mut seen = std::collections::HashSet::new();
                for u in &urls {
                    match client.list(u) {
                        Ok(objects) => {
                            found.extend(objects.into_iter().filter(|o| seen.insert(o.uri())).map(
                                |o| Input {
                                    recording: Recording::from_object(&o),
                                    object: Some(o),
                                },
                            ))
                        }
                        Err(e) => errors.push(e.into()),
                    }
                }
            }
            Err(e) => errors.push(e.into()),
        }
    }
    (found, errors)
}

/// Expands files and folders (recursively, media extensions only, sorted) into recordings.
/// A missing path is reported, not fatal: one bad input never stops the others.
pub fn expand_inputs(inputs: &[PathBuf]) -> (Vec<Recording>, Vec<IngestError>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => walk(input, &mut found, &mut errors),
            Ok(_) => found.push(Recording::from_path(input)),
            Err(e) => errors.push(IngestError::Open {
                path: input.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    (found, errors)
}

fn walk(dir: &Path, found: &mut Vec<Recording>, errors: &mut Vec<IngestError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(IngestError::Open {
                path: dir.display().to_string(),
                reason: e.to_string(),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, found, errors);
        } else if ft.is_file() && is_media_name(&path.to_string_lossy()) {
            found.push(Recording::from_path(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_carry_no_name() {
        let a = recording_id("/data/classes/jane-doe-math.webm");
        assert_eq!(a, recording_id("/data/classes/jane-doe-math.webm"));
        assert!(a.starts_with("rec-") && a.len() == 20);
        assert!(!a.contains("jane"));
    }

    #[test]
    fn folders_expand_to_media_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.webm"), b"x").unwrap();
        std::fs::write(dir.path().join("sub/b.MKV"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let (found, errors) =
            expand_inputs(&[dir.path().to_path_buf(), dir.path().join("missing.webm")]);
        assert_eq!(found.len(), 2);
        assert_eq!(errors.len(), 1);
    }
}
