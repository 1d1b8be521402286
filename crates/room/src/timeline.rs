//! The receive side's timeline of a subscribed stream, pure (no I/O, no clock):
//! RTP sequence numbers and timestamps in, what to emit before each packet out.
//!
//! It tells the decoder task (`remote_track.rs`) three things:
//!
//! - **loss**: a gap of up to [`MAX_CONCEALED`] sequence numbers is concealed with
//!   Opus's packet-loss concealment, one frame per lost packet; a longer gap is
//!   skipped (concealing it would only smear a stall);
//! - **duplicates and late packets** (a sequence number at or before the last one,
//!   modulo 2¹⁶) are dropped: the frame they carry has been played or concealed;
//! - **pauses**: a DTX sender (a browser's microphone, our own tracks) stops sending
//!   between utterances, and its next packet comes with the next sequence number but
//!   a jump in RTP time. While no packet comes, the task asks [`Timeline::on_quiet`]
//!   for silent frames in real time, once [`Timeline::fill_grace`] has passed (a
//!   short grace after silence, a long one after speech: no DTX sender stops
//!   mid-word, so that gap is a stall whose audio is still to come); when the next
//!   packet arrives, [`Timeline::on_packet`] says how much of the gap in RTP time
//!   is still unfilled (at most [`MAX_GAP_FILL`]).
//!
//! Consumers such as a VAD count time in frames; without the silence of a pause they
//! would not see the speaker stop until the next packet.
//!
//! All arithmetic on sequence numbers and timestamps (they come off the wire) wraps
//! or saturates: any value the sender picks is handled.

use std::time::Duration;

use crate::frame::FRAME_TICKS;

/// Packets lost in a row that we conceal with Opus PLC; longer gaps are skipped.
pub(crate) const MAX_CONCEALED: u16 = 5;

/// How long past the last packet before a quiet sender's silence is filled in: longer
/// than ordinary network jitter. A DTX sender goes quiet after frames of silence.
pub(crate) const FILL_GRACE: Duration = Duration::from_millis(60);

/// The same when the last packet carried speech: no DTX sender stops mid-word, so the
/// gap is the network or the sender stalling, and its audio is still to come. Filling
/// it with silence would cut the utterance in two.
pub(crate) const STALL_GRACE: Duration = Duration::from_millis(500);

/// Mean absolute sample above which a decoded frame counts as speech (about −45 dBFS);
/// silence and comfort noise stay far below it.
pub(crate) const LOUD_MEAN_ABS: u64 = 150;

/// Silent frames filled in per wake while a sender is quiet (60 ms).
pub(crate) const FILL_BATCH: u32 = 3;

/// Longest RTP-time gap filled with silence when a packet arrives (1 s); the rest of
/// a longer pause was filled in real time while it lasted.
pub(crate) const MAX_GAP_FILL: u32 = 50;

/// What to emit before decoding a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BeforePacket {
    /// Frames to conceal with Opus PLC (packets lost).
    pub(crate) conceal: u16,
    /// Silent frames to insert (a quiet sender's gap in RTP time not yet filled).
    pub(crate) silence: u32,
}

/// The timeline of a subscribed stream (pure): detects loss, duplicates and the gaps a
/// quiet (DTX) sender leaves, so that the decoded PCM keeps pace with the wall clock.
/// Consumers such as a VAD count time in frames; without the silence of a pause they
/// would not see the speaker stop until the next packet.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    last_seq: Option<u16>,
    /// RTP time the next packet should carry if the sender did not pause.
    expected_ts: Option<u32>,
    /// Silent frames filled in since the last packet.
    filled: u32,
    /// The last decoded packet carried speech.
    last_loud: bool,
}

impl Timeline {
    /// A packet `seq` with RTP time `ts` arrived. `None`: a duplicate or a packet
    /// older than one already decoded; drop it.
    pub(crate) fn on_packet(&mut self, seq: u16, ts: u32) -> Option<BeforePacket> {
        let mut before = BeforePacket {
            conceal: 0,
            silence: 0,
        };
        if let Some(prev) = self.last_seq {
            let gap = seq.wrapping_sub(prev);
            if gap == 0 || gap > u16::MAX / 2 {
                return None;
            }
            let lost = gap - 1;
            let filled = u16::try_from(self.filled).unwrap_or(u16::MAX);
            if lost > 0 && lost <= MAX_CONCEALED {
                before.conceal = lost.saturating_sub(filled);
            } else if lost == 0
                && let Some(expected) = self.expected_ts
            {
                // Contiguous sequence numbers with a jump in RTP time: the sender was
                // quiet. Fill what real time has not filled already.
                let jump = ts.wrapping_sub(expected);
                if jump < u32::MAX / 2 {
                    before.silence = (jump / FRAME_TICKS)
                        .saturating_sub(self.filled)
                        .min(MAX_GAP_FILL);
                }
            }
        }
        self.last_seq = Some(seq);
        self.filled = 0;
        Some(before)
    }

    /// The packet at `ts` decoded to `ticks` of RTP time.
    pub(crate) fn on_decoded(&mut self, ts: u32, ticks: u32, pcm: &[i16]) {
        self.expected_ts = Some(ts.wrapping_add(ticks));
        let sum: u64 = pcm.iter().map(|&x| u64::from(x.unsigned_abs())).sum();
        self.last_loud = sum > LOUD_MEAN_ABS * pcm.len() as u64;
    }

    /// How long to wait for the next packet before filling silence in.
    pub(crate) fn fill_grace(&self) -> Duration {
        if self.last_loud {
            STALL_GRACE
        } else {
            FILL_GRACE
        }
    }

    /// No packet for a while: silent frames to emit now (none before the first packet).
    pub(crate) fn on_quiet(&mut self) -> u32 {
        if self.last_seq.is_none() {
            return 0;
        }
        self.filled = self.filled.saturating_add(FILL_BATCH);
        FILL_BATCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_fills_a_quiet_senders_gap_and_conceals_loss() {
        let none = BeforePacket {
            conceal: 0,
            silence: 0,
        };
        let mut t = Timeline::default();
        assert_eq!(t.on_quiet(), 0, "nothing to fill before the first packet");
        // Talking: contiguous packets 20 ms apart.
        assert_eq!(t.on_packet(10, 1000), Some(none));
        t.on_decoded(1000, 960, &[0; 960]);
        assert_eq!(t.on_packet(11, 1960), Some(none));
        t.on_decoded(1960, 960, &[0; 960]);
        // A duplicate and a late packet are dropped.
        assert_eq!(t.on_packet(11, 1960), None);
        assert_eq!(t.on_packet(9, 40), None);
        // Two packets lost: concealed.
        assert_eq!(
            t.on_packet(14, 1960 + 3 * 960),
            Some(BeforePacket {
                conceal: 2,
                silence: 0
            })
        );
        t.on_decoded(4840, 960, &[0; 960]);
        // The sender goes quiet for 500 ms (next sequence number, RTP time 25 frames
        // on): 24 frames of silence, less the 2 batches real time already filled.
        assert_eq!(t.on_quiet(), FILL_BATCH);
        assert_eq!(t.on_quiet(), FILL_BATCH);
        assert_eq!(
            t.on_packet(15, 5800 + 24 * 960),
            Some(BeforePacket {
                conceal: 0,
                silence: 24 - 2 * FILL_BATCH
            })
        );
        t.on_decoded(5800 + 24 * 960, 960, &[0; 960]);
        // A pause filled entirely in real time adds nothing on arrival, and a very
        // long one is capped.
        for _ in 0..40 {
            t.on_quiet();
        }
        let next = 5800 + 25 * 960;
        assert_eq!(t.on_packet(16, next + 100 * 960), Some(none));
        t.on_decoded(next + 100 * 960, 960, &[0; 960]);
        let next = next + 101 * 960;
        assert_eq!(
            t.on_packet(17, next + 500 * 960),
            Some(BeforePacket {
                conceal: 0,
                silence: MAX_GAP_FILL
            })
        );
    }

    #[test]
    fn a_stall_mid_speech_is_not_taken_for_a_pause() {
        let mut t = Timeline::default();
        t.on_packet(1, 0);
        // Speech (a tone at about −20 dBFS): the next gap is waited out longer.
        let speech: Vec<i16> = (0..960)
            .map(|i| if i % 2 == 0 { 3000 } else { -3000 })
            .collect();
        t.on_decoded(0, 960, &speech);
        assert_eq!(t.fill_grace(), STALL_GRACE);
        // Silence, or a DTX sender's comfort noise: a gap is filled in soon.
        t.on_packet(2, 960);
        t.on_decoded(960, 960, &[40; 960]);
        assert_eq!(t.fill_grace(), FILL_GRACE);
    }

    #[test]
    fn the_first_packet_needs_nothing_before_it() {
        let mut t = Timeline::default();
        assert_eq!(
            t.on_packet(40_000, 123),
            Some(BeforePacket {
                conceal: 0,
                silence: 0
            })
        );
    }

    #[test]
    fn sequence_numbers_and_timestamps_wrap() {
        let mut t = Timeline::default();
        t.on_packet(u16::MAX, u32::MAX - 100);
        t.on_decoded(u32::MAX - 100, 960, &[0; 960]);
        // Next sequence number (0) and RTP time (wrapped): contiguous.
        let ts = (u32::MAX - 100).wrapping_add(960);
        assert_eq!(
            t.on_packet(0, ts),
            Some(BeforePacket {
                conceal: 0,
                silence: 0
            })
        );
        t.on_decoded(ts, 960, &[0; 960]);
        // One lost across the wrap of the next packet's number.
        assert_eq!(
            t.on_packet(2, ts.wrapping_add(2 * 960)).map(|b| b.conceal),
            Some(1)
        );
        // A packet from before the wrap is late.
        assert_eq!(t.on_packet(u16::MAX - 3, 0), None);
    }

    #[test]
    fn a_long_loss_is_skipped_not_concealed() {
        let mut t = Timeline::default();
        t.on_packet(100, 0);
        t.on_decoded(0, 960, &[0; 960]);
        let lost = MAX_CONCEALED + 1;
        assert_eq!(
            t.on_packet(101 + lost, u32::from(lost + 1) * 960),
            Some(BeforePacket {
                conceal: 0,
                silence: 0
            })
        );
        // Exactly MAX_CONCEALED lost is concealed.
        let next = 101 + lost + 1 + MAX_CONCEALED;
        assert_eq!(t.on_packet(next, 0).map(|b| b.conceal), Some(MAX_CONCEALED));
    }

    #[test]
    fn silence_filled_while_waiting_counts_against_concealment() {
        let mut t = Timeline::default();
        t.on_packet(1, 0);
        t.on_decoded(0, 960, &[0; 960]);
        // Real time filled a batch of silence before the packets after a loss came.
        assert_eq!(t.on_quiet(), FILL_BATCH);
        let lost = u16::try_from(FILL_BATCH).unwrap() + 2;
        assert_eq!(
            t.on_packet(2 + lost, 0).map(|b| b.conceal),
            Some(2),
            "only what real time did not fill"
        );
    }

    #[test]
    fn a_timestamp_going_back_adds_no_silence() {
        let mut t = Timeline::default();
        t.on_packet(1, 100_000);
        t.on_decoded(100_000, 960, &[0; 960]);
        // Contiguous sequence number, RTP time 1 s earlier (a sender restarting its
        // clock): not a pause.
        assert_eq!(
            t.on_packet(2, 100_000 - 48_000),
            Some(BeforePacket {
                conceal: 0,
                silence: 0
            })
        );
    }

    #[test]
    fn a_short_jump_in_rtp_time_is_not_a_frame_of_silence() {
        let mut t = Timeline::default();
        t.on_packet(1, 0);
        t.on_decoded(0, 960, &[0; 960]);
        // Less than a frame of RTP time missing: nothing to fill.
        assert_eq!(t.on_packet(2, 960 + 959).map(|b| b.silence), Some(0));
    }
}
