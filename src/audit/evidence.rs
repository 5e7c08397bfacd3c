//! Evidence files a reviewer opens: the slice image of a finding, or the audio clip of a spoken
//! one. Only what a finding references is written (privacy: no other faces or voices are kept),
//! under the recording's output folder, and each file is registered for retention.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::sink::{write_atomic, write_jpeg_atomic, SinkError};

pub struct EvidenceSink {
    root: PathBuf,
    written: Vec<String>,
    /// Test only ([`crate::fault`]): every write fails.
    fault: bool,
}

impl EvidenceSink {
    /// `root` is the recording's output folder; files go to `root/evidence/`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            written: Vec::new(),
            fault: false,
        }
    }

    /// Test only ([`crate::fault`]): makes every later write fail.
    pub fn inject_fault(&mut self) {
        self.fault = true;
    }

    fn check_fault(&self, path: &Path) -> Result<(), SinkError> {
        if self.fault {
            return Err(SinkError::Encode {
                path: path.display().to_string(),
                reason: "evidence: injected write fault (test only)".into(),
            });
        }
        Ok(())
    }

    /// Paths written so far, relative to the recording's folder.
    pub fn written(&self) -> &[String] {
        &self.written
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn slice(
        &mut self,
        label: &str,
        pts_ms: u64,
        image: &RgbImage,
    ) -> Result<String, SinkError> {
        let rel = format!("evidence/{label}-{pts_ms:09}.jpg");
        if !self.written.contains(&rel) {
            self.check_fault(Path::new(&rel))?;
            write_jpeg_atomic(&self.root.join(&rel), image, 85)?;
            self.written.push(rel.clone());
        }
        Ok(rel)
    }

    /// 16 kHz mono f32 samples as a 16-bit PCM WAV clip.
    pub fn audio(
        &mut self,
        label: &str,
        start_ms: u64,
        samples: &[f32],
    ) -> Result<String, SinkError> {
        let rel = format!("evidence/{label}-{start_ms:09}.wav");
        if !self.written.contains(&rel) {
            self.check_fault(Path::new(&rel))?;
            write_atomic(&self.root.join(&rel), &wav_16k_mono(samples))?;
            self.written.push(rel.clone());
        }
        Ok(rel)
    }
}

/// A PCM s16le, 16 kHz, mono WAV file in memory.
pub fn wav_16k_mono(samples: &[f32]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        // Writing into memory cannot fail: every error below is an I/O error of the Vec.
        let mut w = hound::WavWriter::new(&mut out, spec).expect("in-memory WAV header");
        for s in samples {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            w.write_sample(v).expect("in-memory WAV sample");
        }
        w.finalize().expect("in-memory WAV");
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    #[test]
    fn wav_header_is_consistent() {
        let w = super::wav_16k_mono(&[0.0, 1.0, -1.0]);
        assert_eq!(w.len(), 44 + 6);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(w[40..44].try_into().unwrap()), 6);
        assert_eq!(i16::from_le_bytes([w[46], w[47]]), 32767);
    }
}
