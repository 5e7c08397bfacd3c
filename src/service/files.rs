//! Uploaded bytes on disk and the reader the auditor uses while they grow.
//!
//! A PATCH appends to `uploads/<id>.webm`, fsyncs, records the new offset in the store, and only
//! then acknowledges; [`Signal`] then wakes the auditor's [`GrowingReader`], which never reads past
//! the acknowledged offset (bytes still being written or failing their checksum stay invisible).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How an upload ended, for the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// More bytes may come.
    Open,
    /// Every byte is in.
    Complete,
    /// Nothing came for too long: audit what there is, as partial.
    Expired,
    /// The client deleted it: stop.
    Terminated,
}

#[derive(Debug)]
struct SignalState {
    persisted: u64,
    end: End,
}

/// Acknowledged length and end state of one upload, shared by its writer and its reader.
#[derive(Debug)]
pub struct Signal {
    state: Mutex<SignalState>,
    cond: Condvar,
}

impl Signal {
    fn new(persisted: u64, end: End) -> Self {
        Signal {
            state: Mutex::new(SignalState { persisted, end }),
            cond: Condvar::new(),
        }
    }

    /// After the bytes up to `persisted` are on disk and in the store.
    pub fn advance(&self, persisted: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.persisted = s.persisted.max(persisted);
        self.cond.notify_all();
    }

    pub fn end(&self, end: End) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.end == End::Open || end == End::Terminated {
            s.end = end;
        }
        self.cond.notify_all();
    }

    pub fn snapshot(&self) -> (u64, End) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.persisted, s.end)
    }

    /// Waits until more than `pos` bytes are acknowledged or the upload ends (or `timeout`).
    fn wait_beyond(&self, pos: u64, timeout: Duration) -> (u64, End) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .cond
            .wait_timeout_while(s, timeout, |s| s.persisted <= pos && s.end == End::Open)
            .unwrap_or_else(|p| p.into_inner());
        (s.persisted, s.end)
    }
}

/// The uploads folder and the live signals of its uploads.
pub struct Uploads {
    dir: PathBuf,
    signals: Mutex<HashMap<String, Arc<Signal>>>,
}

impl Uploads {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Uploads {
            dir,
            signals: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.webm"))
    }

    /// The signal of an upload, created from what the store says when first asked (after a
    /// restart the store is the truth).
    pub fn signal(&self, id: &str, persisted: u64, end: End) -> Arc<Signal> {
        self.signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Signal::new(persisted, end)))
            .clone()
    }

    /// The signal if one is live.
    pub fn existing(&self, id: &str) -> Option<Arc<Signal>> {
        self.signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Forgets the signal once nobody reads the upload any more.
    pub fn forget(&self, id: &str) {
        self.signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Writes `data` at `offset` of the upload file and fsyncs it. On error the file is cut back to
/// `offset`, so the next attempt finds the offset it was told.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let result = (|| {
        f.set_len(offset)?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)?;
        f.sync_data()
    })();
    if result.is_err() {
        let _ = f.set_len(offset);
    }
    result
}

/// Reads an upload as it grows: blocks at the acknowledged end until more bytes come, the upload
/// completes or expires (then EOF), or it is terminated (then an error, so the audit stops).
pub struct GrowingReader {
    file: File,
    pos: u64,
    signal: Arc<Signal>,
}

impl GrowingReader {
    pub fn open(path: &Path, signal: Arc<Signal>) -> std::io::Result<Self> {
        // The first PATCH creates the file; until then there is nothing to open.
        loop {
            match File::open(path) {
                Ok(file) => {
                    return Ok(GrowingReader {
                        file,
                        pos: 0,
                        signal,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (_, end) = signal.wait_beyond(0, Duration::from_millis(200));
                    if end == End::Terminated {
                        return Err(terminated());
                    }
                    if end != End::Open && signal.snapshot().0 == 0 {
                        // Ended with no bytes at all: an empty stream.
                        std::fs::write(path, b"")?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn terminated() -> std::io::Error {
    std::io::Error::other("upload terminated by the client")
}

impl Read for GrowingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (persisted, end) = self.signal.snapshot();
            if end == End::Terminated {
                return Err(terminated());
            }
            if persisted > self.pos {
                let want = (persisted - self.pos).min(buf.len() as u64) as usize;
                let n = self.file.read(&mut buf[..want])?;
                if n > 0 {
                    self.pos += n as u64;
                    return Ok(n);
                }
                // Acknowledged but not visible yet: cannot happen after fsync; do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if end != End::Open {
                return Ok(0);
            }
            self.signal.wait_beyond(self.pos, Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_blocks_until_bytes_are_acknowledged_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.webm");
        let signal = Arc::new(Signal::new(0, End::Open));
        write_at(&path, 0, b"hello").unwrap();
        // Written but not acknowledged: invisible.
        let reader_signal = signal.clone();
        let p = path.clone();
        let reader = std::thread::spawn(move || {
            let mut r = GrowingReader::open(&p, reader_signal).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            out
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !reader.is_finished(),
            "reader must wait for acknowledged bytes"
        );
        signal.advance(5);
        write_at(&path, 5, b" world").unwrap();
        signal.advance(11);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished(), "an open upload has no end yet");
        signal.end(End::Complete);
        assert_eq!(reader.join().unwrap(), b"hello world");
    }

    #[test]
    fn termination_is_an_error_and_write_at_cuts_back_on_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.webm");
        write_at(&path, 0, b"abcdef").unwrap();
        // A retry at offset 3 replaces what came after it.
        write_at(&path, 3, b"XY").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcXY");
        let signal = Arc::new(Signal::new(5, End::Open));
        let mut r = GrowingReader::open(&path, signal.clone()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).unwrap(), 5);
        signal.end(End::Terminated);
        assert!(r.read(&mut buf).is_err());
    }
}
