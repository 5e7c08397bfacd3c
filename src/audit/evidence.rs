//! Evidence files a reviewer opens: the slice image of a finding, or the audio clip of a spoken
//! one. Only what a finding references is written (privacy: no other faces or voices are kept),
//! under the recording's output folder, and each file is registered for retention.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::sink::{write_atomic, write_jpeg_atomic, SinkError};

pub struct EvidenceSink {
    root: PathBuf,
    written: Vec<String>,
}

impl EvidenceSink {
    /// `root` is the recording's output folder; files go to `root/evidence/`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            written: Vec::new(),
        }
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
            write_atomic(&self.root.join(&rel), &wav_16k_mono(samples))?;
            self.written.push(rel.clone());
        }
        Ok(rel)
    }
}

/// A minimal RIFF/WAVE file: PCM s16le, 16 kHz, mono.
pub fn wav_16k_mono(samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend(b"RIFF");
    out.extend((36 + data_len).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(16_000u32.to_le_bytes());
    out.extend(32_000u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data_len.to_le_bytes());
    for s in samples {
        out.extend(((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    out
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
