//! Shared storage of the scale-out mode (`--storage s3://bucket/prefix`): the bytes of every
//! recording the service takes in, and the audit outputs the workers write.
//!
//! ```text
//!  <prefix>/uploads/<recording id>/<offset, 20 digits>   one segment per acknowledged write
//!  <prefix>/recordings/<recording id>.webm               the whole recording, once it ended
//!  <prefix>/outputs/<recording id>/verdict.json, evidence/*.jpg, mic.webm
//! ```
//!
//! S3 objects cannot grow, so a live upload is stored as segments, each named by the offset of
//! its first byte: `serve` writes a segment *before* it records the new offset in the database and
//! acknowledges the client, and a worker on another machine reads the segments in order, never
//! past the offset the database says is acknowledged. A segment written but never acknowledged
//! (the serve node died in between) is overwritten when the client resends from that offset, so
//! a reader never sees bytes the client was not told are safe.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ingest::s3::{ObjectReader, S3Client, S3Error, S3Options, S3Url};
use crate::service::files::End;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("--storage {0:?}: expected s3://bucket/prefix")]
    BadUrl(String),
    #[error("{0}")]
    S3(#[from] S3Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// How far a recording is acknowledged and whether more may come; asked by a [`SegmentReader`]
/// whenever it reaches the acknowledged end (the database is the truth, not the bucket listing).
pub type AckedFn = dyn Fn() -> Result<(u64, End), String> + Send + Sync;

/// How often a reader at the acknowledged end of a live upload asks again.
const POLL: Duration = Duration::from_millis(200);

/// The bucket and prefix all nodes share.
#[derive(Clone, Debug)]
pub struct Storage {
    client: S3Client,
    root: S3Url,
}

impl Storage {
    pub fn new(url: &str, opts: &S3Options) -> Result<Storage, StorageError> {
        let root = match S3Url::parse(url) {
            Some(Ok(u)) => u,
            _ => return Err(StorageError::BadUrl(url.to_string())),
        };
        Ok(Storage {
            client: S3Client::new(opts)?,
            root,
        })
    }

    pub fn root(&self) -> &S3Url {
        &self.root
    }

    pub fn client(&self) -> &S3Client {
        &self.client
    }

    /// The key of the segment of recording `id` that starts at byte `offset`.
    pub fn segment_key(&self, id: &str, offset: u64) -> String {
        self.root.key(&format!("uploads/{id}/{offset:020}"))
    }

    /// Where the outputs of recording `id` go.
    pub fn outputs_url(&self, id: &str) -> S3Url {
        S3Url {
            bucket: self.root.bucket.clone(),
            prefix: self.root.key(&format!("outputs/{id}/")),
        }
    }

    /// Stores bytes `from..to` of the local spool file as the segment starting at `from`.
    pub fn put_segment(
        &self,
        id: &str,
        file: &Path,
        from: u64,
        to: u64,
    ) -> Result<(), StorageError> {
        if to <= from {
            return Ok(());
        }
        self.client.put_file_range(
            &self.root.bucket,
            &self.segment_key(id, from),
            file,
            from,
            to - from,
        )?;
        Ok(())
    }

    /// A reader of recording `id` from byte 0, following it while it grows (see the module docs).
    pub fn follow(&self, id: &str, acked: Arc<AckedFn>) -> SegmentReader {
        SegmentReader {
            storage: self.clone(),
            id: id.to_string(),
            acked,
            pos: 0,
            current: None,
        }
    }

    /// Where a finished recording is kept whole, for `classguard scan s3://...` rescans.
    pub fn recording_key(&self, id: &str) -> String {
        self.root.key(&format!("recordings/{id}.webm"))
    }

    /// Replaces the segments of a recording that ended with one object holding its `len` bytes
    /// (read back through `acked`), then deletes the segments. Idempotent: a retry after a crash
    /// in between writes the same object again and deletes what is left. The copy goes through a
    /// temporary file in `scratch`, never memory.
    pub fn assemble(
        &self,
        id: &str,
        acked: Arc<AckedFn>,
        scratch: &Path,
    ) -> Result<u64, StorageError> {
        let io = |path: &Path, source: io::Error| StorageError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(scratch).map_err(|e| io(scratch, e))?;
        let spool = scratch.join(format!("{id}.webm.part"));
        let mut file = std::fs::File::create(&spool).map_err(|e| io(&spool, e))?;
        let copied = std::io::copy(&mut self.follow(id, acked), &mut file);
        drop(file);
        let result = match copied {
            Ok(n) => self
                .client
                .put_file(
                    &self.root.bucket,
                    &self.recording_key(id),
                    &spool,
                    "video/webm",
                )
                .map(|_| n)
                .map_err(StorageError::from),
            Err(e) => Err(io(&spool, e)),
        };
        let _ = std::fs::remove_file(&spool);
        let n = result?;
        self.delete_segments(id)?;
        Ok(n)
    }

    /// Deletes every stored segment of a recording.
    pub fn delete_segments(&self, id: &str) -> Result<(), StorageError> {
        let segments = S3Url {
            bucket: self.root.bucket.clone(),
            prefix: self.root.key(&format!("uploads/{id}/")),
        };
        for o in self.client.list_all(&segments)? {
            self.client.delete(&o.bucket, &o.key)?;
        }
        Ok(())
    }

    /// Uploads every file under `dir` to the recording's outputs; returns how many.
    pub fn put_outputs(&self, id: &str, dir: &Path) -> Result<usize, StorageError> {
        let dest = self.outputs_url(id);
        let mut n = 0;
        for (path, rel) in files_under(dir)? {
            let content_type = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => "application/json",
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("png") => "image/png",
                Some("webm") => "audio/webm",
                _ => "application/octet-stream",
            };
            self.client
                .put_file(&dest.bucket, &dest.key(&rel), &path, content_type)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Regular files under `dir` with their paths relative to it ('/'-separated), sorted.
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, String)>, StorageError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StorageError::Io {
                    path: d.display().to_string(),
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| StorageError::Io {
                path: d.display().to_string(),
                source,
            })?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Reads a stored recording's segments in order as one byte stream: blocks at the acknowledged
/// end of a live upload until more is acknowledged (EOF once it is complete or expired; an error
/// once the client terminated it, so the audit stops).
pub struct SegmentReader {
    storage: Storage,
    id: String,
    acked: Arc<AckedFn>,
    pos: u64,
    /// The segment being read and the offset just past it.
    current: Option<(ObjectReader, u64)>,
}

impl SegmentReader {
    /// Opens the segment starting at `self.pos` once the database acknowledges all of it;
    /// `Ok(false)` at the end of a finished recording.
    fn next_segment(&mut self) -> io::Result<bool> {
        loop {
            let (acked, end) = (self.acked)().map_err(io::Error::other)?;
            if end == End::Terminated {
                return Err(io::Error::other("upload terminated by the client"));
            }
            if acked > self.pos {
                let key = self.storage.segment_key(&self.id, self.pos);
                let info = self
                    .storage
                    .client
                    .head(&self.storage.root.bucket, &key)
                    .map_err(io::Error::other)?
                    .ok_or_else(|| {
                        io::Error::other(format!(
                            "s3://{}/{key}: the segment at byte {} is missing although {acked} bytes are acknowledged",
                            self.storage.root.bucket, self.pos
                        ))
                    })?;
                let end_at = self.pos + info.size;
                // A longer segment than acknowledged is a write the serve node never confirmed
                // (it died in between); wait until the client's resend replaces it.
                if info.size > 0 && end_at <= acked {
                    let reader = self.storage.client.open(&info, 0);
                    self.current = Some((reader, end_at));
                    return Ok(true);
                }
            } else if end != End::Open {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((reader, end_at)) = &mut self.current {
                let n = reader.read(buf)?;
                if n > 0 {
                    self.pos += n as u64;
                    return Ok(n);
                }
                if self.pos != *end_at {
                    return Err(io::Error::other(format!(
                        "segment of recording {} ended at byte {} instead of {end_at}",
                        self.id, self.pos
                    )));
                }
                self.current = None;
            }
            if !self.next_segment()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_keys_sort_by_offset_and_live_under_the_prefix() {
        let s = Storage {
            client: S3Client::new(&S3Options::default()).unwrap(),
            root: S3Url::parse("s3://bucket-a/cg").unwrap().unwrap(),
        };
        let a = s.segment_key("rec-1", 9);
        let b = s.segment_key("rec-1", 10);
        assert_eq!(a, "cg/uploads/rec-1/00000000000000000009");
        assert!(a < b, "lexical order is byte order");
        assert_eq!(
            s.outputs_url("rec-1").key("verdict.json"),
            "cg/outputs/rec-1/verdict.json"
        );
        assert!(matches!(
            Storage::new("/tmp/x", &S3Options::default()),
            Err(StorageError::BadUrl(_))
        ));
    }

    #[test]
    fn files_under_lists_nested_files_relative_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("evidence")).unwrap();
        std::fs::write(dir.path().join("verdict.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("evidence/a.jpg"), b"x").unwrap();
        let got: Vec<String> = files_under(dir.path())
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(got, ["evidence/a.jpg", "verdict.json"]);
        assert!(files_under(&dir.path().join("none")).unwrap().is_empty());
    }
}
