//! WAV files: any integer or float PCM in, 16-bit mono out.

use std::path::{Path, PathBuf};

use crate::ConsoleError;

/// A whole WAV file as interleaved 16-bit PCM.
pub struct WavAudio {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
    pub channels: u16,
}

fn wav_error(path: &Path, reason: impl ToString) -> ConsoleError {
    ConsoleError::Wav {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub fn read(path: &Path) -> Result<WavAudio, ConsoleError> {
    let reader = hound::WavReader::open(path).map_err(|e| wav_error(path, e))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(wav_error(path, "no channels or a zero sample rate"));
    }
    let samples: Vec<i16> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => reader
            .into_samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| wav_error(path, e))?,
        (hound::SampleFormat::Int, bits) if bits <= 32 => {
            let shift = bits.saturating_sub(16);
            reader
                .into_samples::<i32>()
                .map(|s| {
                    s.map(|v| {
                        if bits < 16 {
                            (v << (16 - bits)) as i16
                        } else {
                            (v >> shift) as i16
                        }
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(|e| wav_error(path, e))?
        }
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i16))
            .collect::<Result<_, _>>()
            .map_err(|e| wav_error(path, e))?,
        (format, bits) => {
            return Err(wav_error(
                path,
                format!("unsupported sample format {format:?} with {bits} bits"),
            ));
        }
    };
    Ok(WavAudio {
        samples,
        sample_rate: spec.sample_rate,
        channels: spec.channels,
    })
}

/// Writes 16-bit mono PCM as it comes.
pub struct WavWriter {
    path: PathBuf,
    inner: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
}

impl WavWriter {
    pub fn create(path: &Path, sample_rate: u32) -> Result<Self, ConsoleError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let inner = hound::WavWriter::create(path, spec).map_err(|e| wav_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    pub fn write(&mut self, samples: &[i16]) -> Result<(), ConsoleError> {
        for &s in samples {
            self.inner
                .write_sample(s)
                .map_err(|e| wav_error(&self.path, e))?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), ConsoleError> {
        let path = self.path;
        self.inner.finalize().map_err(|e| wav_error(&path, e))
    }
}

/// Writes two 16-bit mono streams as the left and right channels of one
/// stereo file, block by block.
pub struct StereoWavWriter {
    path: PathBuf,
    inner: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
}

impl StereoWavWriter {
    pub fn create(path: &Path, sample_rate: u32) -> Result<Self, ConsoleError> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let inner = hound::WavWriter::create(path, spec).map_err(|e| wav_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// `left` and `right` of equal length (the shorter one sets it).
    pub fn write(&mut self, left: &[i16], right: &[i16]) -> Result<(), ConsoleError> {
        for (&l, &r) in left.iter().zip(right) {
            self.inner
                .write_sample(l)
                .and_then(|()| self.inner.write_sample(r))
                .map_err(|e| wav_error(&self.path, e))?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), ConsoleError> {
        let path = self.path;
        self.inner.finalize().map_err(|e| wav_error(&path, e))
    }
}
