//! What Opus costs per 20 ms frame, and what it keeps, in each application (VoIP and
//! CELT-only low delay), encoder complexity and bitrate: the figures behind
//! `ConnectOptions::opus_application` and `opus_complexity`'s defaults.
//!
//! ```text
//! espeak-ng -w /tmp/speech.wav "…some sentences…"
//! sox /tmp/speech.wav -r 48000 -c 1 -b 16 -e signed -t raw /tmp/speech48.raw
//! cargo run --release -p room --example opus_cost -- /tmp/speech48.raw
//! ```
//!
//! Input: raw mono s16le PCM at 48 kHz (without a file, a synthetic gliding tone with
//! noise). The encoder is set up the way published tracks are (voice signal; in-band
//! FEC in VoIP mode). For every setting it prints the encode and decode times per frame
//! (the best of five passes over the whole input, so other load on the machine
//! inflates them least),
//! the bitrate produced, and the waveform SNR and segmental SNR of the decoded audio
//! against the input (aligned by the encoder's look-ahead). SNR is a crude quality
//! measure for a perceptual codec, but differences between settings on the same input
//! are meaningful.
//!
//! ## Results
//!
//! On the project's 2-core machine (espeak-ng speech, automatic bitrate, best of 5
//! passes), the figures behind published tracks being CELT only at complexity 3:
//!
//! | application | complexity | encode | decode to 48 kHz | kbit/s | SNR / segmental SNR |
//! |---|---|---|---|---|---|
//! | VoIP (SILK/hybrid) | 0 | 79 µs | 36 µs | 47 | 10.6 / 7.9 dB |
//! | VoIP | 3 | 130 µs | 38 µs | 47 | 10.8 / 8.1 dB |
//! | VoIP | 5 | 166 µs | 39 µs | 48 | 10.9 / 8.2 dB |
//! | VoIP | 10 | 303 µs | 39 µs | 49 | 11.0 / 8.3 dB |
//! | low delay (CELT only) | 0 | 23 µs | 21 µs | 51 | 18.6 / 16.6 dB |
//! | low delay | 3 | 39 µs | 25 µs | 51 | 16.5 / 15.7 dB |
//! | low delay | 5 | 57 µs | 26 µs | 51 | 17.9 / 16.8 dB |
//! | low delay | 10 | 84 µs | – | – | – |
//!
//! CELT only takes a third of the encoder CPU of VoIP mode, a cheaper decode for
//! every listener, 4 ms less algorithmic delay (2.5 ms look-ahead instead of 6.5 ms),
//! and gives a waveform much closer to the input at the same ~50 kbit/s (SNR is crude
//! for a perceptual codec, but a 6 dB gap is not noise). Decoding costs 36–39 µs in
//! VoIP mode and 21–26 µs for CELT only.

use std::time::Instant;

use opus::{Application, Bitrate, Channels, Encoder, Signal};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

const RATE: usize = 48_000;
const FRAME: usize = RATE / 50;

/// An encoder set up as a published track's is (voice signal; in-band FEC in VoIP
/// mode), at `complexity` and `bitrate`.
fn encoder(application: Application, complexity: i32, bitrate: Bitrate) -> R<Encoder> {
    let mut enc = Encoder::new(RATE as u32, Channels::Mono, application)?;
    enc.set_complexity(complexity)?;
    enc.set_inband_fec(application == Application::Voip)?;
    enc.set_signal(Signal::Voice)?;
    enc.set_bitrate(bitrate)?;
    Ok(enc)
}

fn input() -> R<Vec<i16>> {
    if let Some(path) = std::env::args().nth(1) {
        let bytes = std::fs::read(path)?;
        return Ok(bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect());
    }
    let mut seed: u32 = 0x1234_5678;
    Ok((0..RATE * 10)
        .map(|i| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let t = i as f64 / RATE as f64;
            let freq = 200.0 + 150.0 * (t * 3.1).sin();
            let envelope = 0.5 + 0.5 * (t * 7.0).sin();
            let noise = ((seed >> 16) as f64 / 65_536.0 - 0.5) * 2000.0;
            (envelope * 6000.0 * (2.0 * std::f64::consts::PI * freq * t).sin() + noise) as i16
        })
        .collect())
}

/// (SNR dB, segmental SNR dB over 20 ms segments with signal, clamped to [-10, 35]).
fn snr(reference: &[i16], decoded: &[i16]) -> (f64, f64) {
    let (mut s, mut n) = (0f64, 0f64);
    let mut seg = Vec::new();
    for (r, d) in reference.chunks(FRAME).zip(decoded.chunks(FRAME)) {
        let ss: f64 = r.iter().map(|&x| (x as f64).powi(2)).sum();
        let nn: f64 = r
            .iter()
            .zip(d)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        s += ss;
        n += nn;
        if ss / FRAME as f64 > 100.0 * 100.0 {
            seg.push((10.0 * (ss / nn.max(1.0)).log10()).clamp(-10.0, 35.0));
        }
    }
    let segmental = seg.iter().sum::<f64>() / seg.len().max(1) as f64;
    (10.0 * (s / n.max(1.0)).log10(), segmental)
}

fn main() -> R {
    let pcm = input()?;
    let frames: Vec<&[i16]> = pcm.chunks_exact(FRAME).collect();
    println!(
        "{} frames of 20 ms; encode and decode (to 48 kHz) µs per frame (best of 5 passes), kbit/s, SNR / segmental SNR dB",
        frames.len()
    );
    let mut out = vec![0u8; 1500];
    let applications = [
        (Application::Voip, "voip"),
        (Application::LowDelay, "low delay"),
    ];
    for (application, app_label) in applications {
        for bitrate in [Bitrate::Auto, Bitrate::Bits(32_000), Bitrate::Bits(24_000)] {
            for complexity in [0, 1, 3, 5, 7, 10] {
                let mut best = f64::MAX;
                let mut best_decode = f64::MAX;
                let mut bytes = 0usize;
                let mut decoded = Vec::with_capacity(pcm.len());
                let mut lookahead = 0;
                for pass in 0..5 {
                    let mut enc = encoder(application, complexity, bitrate)?;
                    lookahead = usize::try_from(enc.get_lookahead()?).unwrap_or(0);
                    let mut packets = Vec::with_capacity(frames.len());
                    let t = Instant::now();
                    for f in &frames {
                        let n = enc.encode(f, &mut out)?;
                        packets.push(out[..n].to_vec());
                    }
                    let us = t.elapsed().as_secs_f64() * 1e6 / frames.len() as f64;
                    best = best.min(us);
                    let mut dec = opus::Decoder::new(RATE as u32, opus::Channels::Mono)?;
                    let mut buf = vec![0i16; FRAME * 6];
                    let t = Instant::now();
                    for p in &packets {
                        let n = dec.decode(p, &mut buf, false)?;
                        if pass == 0 {
                            decoded.extend_from_slice(&buf[..n]);
                        }
                    }
                    let us = t.elapsed().as_secs_f64() * 1e6 / frames.len() as f64;
                    best_decode = best_decode.min(us);
                    if pass == 0 {
                        bytes = packets.iter().map(Vec::len).sum();
                    }
                }
                let kbps = bytes as f64 * 8.0 / (frames.len() as f64 * 0.02) / 1000.0;
                // The decoder's output lags the input by the encoder's look-ahead; check the
                // neighbourhood too, and keep the best alignment.
                let (snr, seg) = (lookahead.saturating_sub(48)..lookahead + 48)
                    .map(|lag| snr(&pcm, decoded.get(lag..).unwrap_or(&[])))
                    .fold((f64::MIN, f64::MIN), |a, b| if b.0 > a.0 { b } else { a });
                let label = match bitrate {
                    Bitrate::Bits(b) => format!("{}k", b / 1000),
                    _ => "auto".to_string(),
                };
                println!(
                    "{app_label:>9} bitrate {label:>4} complexity {complexity:>2}: encode {best:6.1} µs, decode {best_decode:5.1} µs, {kbps:5.1} kbit/s, SNR {snr:5.2} dB, segSNR {seg:5.2} dB"
                );
            }
        }
    }
    Ok(())
}
