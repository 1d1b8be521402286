//! Turn taking as a plain state machine: when the user's turn is over, when the
//! user interrupts the agent, and what the agent's state is.
//!
//! No I/O and no clock: the session feeds [`Input`]s with the current time
//! (`handle_input(now, input)`), wakes it at [`TurnMachine::poll_timeout`]
//! (`handle_timeout(now)`), and drains [`TurnMachine::poll_action`] after each
//! call. Deadlines live in one table keyed by [`Timer`].
//!
//! The rules (defaults from LiveKit Agents):
//! - A user turn is committed `min_delay` after the user's speech ended, once
//!   the STT has finalized that speech and there are words; when the
//!   end-of-turn detector judges the words unfinished, `max_delay` instead.
//!   Speech that resumes first cancels the pending commit. Only a commit starts
//!   a reply, so no LLM request leaves before the turn is judged complete.
//! - User speech voiced for `min_interruption_duration` (and carrying
//!   `min_interruption_words`, when set) while a reply is active interrupts it.
//!   A reply still thinking is cancelled at once. A speaking reply is paused;
//!   words from the STT confirm the interruption (the reply is cancelled and
//!   its unplayed audio dropped); no words within `false_interruption_timeout`
//!   after the user falls silent resume it. A reply started with
//!   interruptions disallowed is never interrupted by speech.
//! - Replies the agent starts itself (`say`, `generate_reply`, hooks) are
//!   queued behind the reply in progress and start, in order, when it ends.
//!   A committed user turn drops the queue: the user's words come first.
//!   [`TurnMachine::interrupt`] cancels the reply in progress, whatever its
//!   setting, and drops the queue.
//!
//! One file (~630 lines before its tests): it is one state machine, and the
//! rules above read against its one `impl`.

use std::time::{Duration, Instant};

/// The agent's state as other participants see it (`lk.agent.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AgentState {
    Initializing,
    Idle,
    Listening,
    Thinking,
    Speaking,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Initializing => "initializing",
            AgentState::Idle => "idle",
            AgentState::Listening => "listening",
            AgentState::Thinking => "thinking",
            AgentState::Speaking => "speaking",
        }
    }
}

/// Turn-taking settings. Defaults follow LiveKit Agents 1.7.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnOptions {
    /// Silence after speech before a likely-finished turn is committed.
    pub min_endpointing_delay: Duration,
    /// Silence after speech before a likely-unfinished turn is committed.
    pub max_endpointing_delay: Duration,
    pub allow_interruptions: bool,
    /// User speech must last this long to interrupt the agent.
    pub min_interruption_duration: Duration,
    /// User speech must carry this many words to interrupt (0: no minimum).
    pub min_interruption_words: usize,
    /// After an interruption with no words, resume the paused reply once the
    /// user has been silent this long. `None`: every interruption is final.
    pub false_interruption_timeout: Option<Duration>,
}

impl Default for TurnOptions {
    fn default() -> Self {
        Self {
            min_endpointing_delay: Duration::from_millis(500),
            max_endpointing_delay: Duration::from_millis(3000),
            allow_interruptions: true,
            min_interruption_duration: Duration::from_millis(500),
            min_interruption_words: 0,
            false_interruption_timeout: Some(Duration::from_millis(2000)),
        }
    }
}

/// Identifies one agent reply (one committed user turn).
pub type ReplyId = u64;

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The VAD heard the user start speaking at `at`.
    SpeechStarted {
        at: Instant,
    },
    /// The current speech has been voiced for `voiced` so far (sent by the
    /// VAD while the user speaks; silence inside the VAD's window not counted).
    SpeechProgress {
        voiced: Duration,
    },
    /// The VAD heard the user stop; speech actually ended at `at` (before the
    /// VAD's own silence window).
    SpeechEnded {
        at: Instant,
    },
    Interim {
        text: String,
    },
    Final {
        text: String,
    },
    /// The STT finalized the last speech with no (further) words.
    FinalEmpty,
    /// The end-of-turn detector's answer for prediction `seq`.
    EndOfTurn {
        seq: u64,
        probability: f32,
        unlikely_threshold: f32,
    },
    /// Typed user input: a complete turn, committed at once.
    UserText {
        text: String,
    },
    /// The reply's first audio started playing.
    PlaybackStarted {
        reply: ReplyId,
    },
    /// The reply is over: played to the end, cancelled, or failed.
    ReplyEnded {
        reply: ReplyId,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Ask the end-of-turn detector about the words so far.
    PredictEndOfTurn {
        seq: u64,
        transcript: String,
    },
    /// The user's turn is complete: add it to the chat and start reply `reply`.
    CommitUserTurn {
        reply: ReplyId,
        text: String,
        timing: TurnTiming,
    },
    /// Stop playback, keeping the queued audio (a possible false interruption).
    PauseOutput {
        reply: ReplyId,
    },
    ResumeOutput {
        reply: ReplyId,
    },
    /// Cancel the reply's LLM and TTS work and drop its unplayed audio.
    Interrupt {
        reply: ReplyId,
    },
    /// Start reply `reply`, queued by [`TurnMachine::queue_reply`].
    StartReply {
        reply: ReplyId,
    },
    /// Reply `reply`, queued, will never start.
    DropReply {
        reply: ReplyId,
    },
    AgentState(AgentState),
    UserSpeaking(bool),
}

/// When a committed turn's speech ended and was transcribed, for metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TurnTiming {
    /// When the user's speech ended (`None` for typed input).
    pub speech_ended: Option<Instant>,
    /// When the final transcript that completed the turn arrived.
    pub transcribed: Option<Instant>,
    pub committed: Instant,
}

/// The machine's deadlines. Each has one slot in the timer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Commit the user's turn.
    EndOfTurn = 0,
    /// Stop waiting for the STT to finalize the last speech.
    SttWait = 1,
    /// No words came after a pausing interruption: resume.
    FalseInterruption = 2,
}

const TIMERS: [Timer; 3] = [Timer::EndOfTurn, Timer::SttWait, Timer::FalseInterruption];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Committed; no audio yet.
    Thinking,
    Speaking,
    /// Paused by an interruption that may be false.
    Paused,
    /// Interrupted; waiting for the session to report the reply ended.
    Cancelling,
}

#[derive(Clone, Copy, Debug)]
struct Reply {
    id: ReplyId,
    phase: Phase,
    /// User speech may interrupt it.
    interruptible: bool,
}

pub struct TurnMachine {
    opts: TurnOptions,
    timers: [Option<Instant>; 3],
    actions: std::collections::VecDeque<Action>,

    user_speaking: bool,
    /// Voiced time of the current speech, from [`Input::SpeechProgress`].
    voiced: Duration,
    last_speech_end: Option<Instant>,
    /// Final transcripts of the turn not yet committed.
    transcript: String,
    /// Words heard (interim or final) since the user started speaking.
    words_in_speech: usize,
    /// A SpeechEnded has not yet been answered by a Final or FinalEmpty.
    stt_pending: bool,
    last_final_at: Option<Instant>,
    /// Increments whenever the pending prediction becomes stale.
    eou_seq: u64,
    eou_requested: bool,
    /// The commit delay chosen by the detector for the current `eou_seq`.
    endpointing_delay: Option<Duration>,
    has_detector: bool,

    next_reply: ReplyId,
    reply: Option<Reply>,
    /// Agent replies waiting for the one in progress: id and interruptible.
    queue: std::collections::VecDeque<(ReplyId, bool)>,
    state: AgentState,
}

impl TurnMachine {
    /// `has_detector`: whether an end-of-turn detector will answer
    /// [`Action::PredictEndOfTurn`]; without one every turn uses `min_delay`.
    pub fn new(opts: TurnOptions, has_detector: bool) -> Self {
        Self {
            opts,
            timers: [None; 3],
            actions: Default::default(),
            user_speaking: false,
            voiced: Duration::ZERO,
            last_speech_end: None,
            transcript: String::new(),
            words_in_speech: 0,
            stt_pending: false,
            last_final_at: None,
            eou_seq: 0,
            eou_requested: false,
            endpointing_delay: None,
            has_detector,
            next_reply: 1,
            reply: None,
            queue: Default::default(),
            state: AgentState::Initializing,
        }
    }

    /// Ends initialization: the agent is listening.
    pub fn start(&mut self) {
        self.set_state(AgentState::Listening);
    }

    pub fn agent_state(&self) -> AgentState {
        self.state
    }

    /// The reply in progress, if any.
    pub fn active_reply(&self) -> Option<ReplyId> {
        self.reply.map(|r| r.id)
    }

    /// Queues a reply the agent starts itself (not an answer to a user turn)
    /// and returns its id. It starts ([`Action::StartReply`]) at once when no
    /// reply is in progress, else when the replies before it have ended.
    pub fn queue_reply(&mut self, allow_interruptions: bool) -> ReplyId {
        let id = self.next_reply;
        self.next_reply += 1;
        self.queue.push_back((id, allow_interruptions));
        if self.reply.is_none() {
            self.start_queued();
        }
        id
    }

    /// Cancels the reply in progress, even one that disallows interruptions,
    /// and drops the queued ones.
    pub fn interrupt(&mut self) {
        self.drop_queue();
        if let Some(reply) = self.reply {
            self.cancel_reply(reply);
        }
    }

    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::SpeechStarted { at } => self.on_speech_started(now, at),
            Input::SpeechProgress { voiced } => {
                self.voiced = voiced;
                if voiced >= self.opts.min_interruption_duration {
                    self.maybe_interrupt();
                }
            }
            Input::SpeechEnded { at } => self.on_speech_ended(now, at),
            Input::Interim { text } => {
                self.count_words(&text);
                self.check_interruption_words();
            }
            Input::Final { text } => {
                self.count_words(&text);
                let text = text.trim();
                if !text.is_empty() {
                    if !self.transcript.is_empty() {
                        self.transcript.push(' ');
                    }
                    self.transcript.push_str(text);
                    self.last_final_at = Some(now);
                }
                if !self.user_speaking {
                    self.stt_pending = false;
                    self.timers[Timer::SttWait as usize] = None;
                }
                self.check_interruption_words();
                self.new_words_arrived();
                self.maybe_start_end_of_turn(now);
            }
            Input::FinalEmpty => {
                if !self.user_speaking {
                    self.stt_pending = false;
                    self.timers[Timer::SttWait as usize] = None;
                }
                self.maybe_start_end_of_turn(now);
            }
            Input::EndOfTurn {
                seq,
                probability,
                unlikely_threshold,
            } => {
                if seq != self.eou_seq || self.user_speaking {
                    return; // stale: the user spoke again since it was asked
                }
                let delay = if probability < unlikely_threshold {
                    self.opts.max_endpointing_delay
                } else {
                    self.opts.min_endpointing_delay
                };
                self.endpointing_delay = Some(delay);
                self.arm_end_of_turn(now);
            }
            Input::UserText { text } => {
                let text = text.trim().to_string();
                if text.is_empty() {
                    return;
                }
                if let Some(reply) = self.reply {
                    self.cancel_reply(reply);
                }
                self.transcript.clear();
                self.commit(now, text, None);
            }
            Input::PlaybackStarted { reply } => {
                if let Some(r) = self.reply.as_mut().filter(|r| r.id == reply)
                    && r.phase == Phase::Thinking
                {
                    r.phase = Phase::Speaking;
                    self.set_state(AgentState::Speaking);
                }
            }
            Input::ReplyEnded { reply } => {
                if self.reply.is_some_and(|r| r.id == reply) {
                    self.reply = None;
                    self.timers[Timer::FalseInterruption as usize] = None;
                    if !self.start_queued() {
                        self.set_state(AgentState::Listening);
                    }
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in TIMERS {
            let slot = &mut self.timers[timer as usize];
            if slot.is_some_and(|at| at <= now) {
                *slot = None;
                self.on_timer(now, timer);
            }
        }
    }

    /// The earliest deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn on_timer(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::EndOfTurn => {
                if self.user_speaking || self.transcript.is_empty() {
                    return;
                }
                let text = std::mem::take(&mut self.transcript);
                let timing = (self.last_speech_end, self.last_final_at);
                if let Some(reply) = self.reply {
                    // Speech too short to interrupt while the agent talks: a
                    // backchannel ("mm-hm"), not a new turn.
                    if reply.phase != Phase::Cancelling {
                        return;
                    }
                }
                self.commit(now, text, Some(timing));
            }
            Timer::SttWait => {
                // The STT never finalized; go on with the words we have.
                self.stt_pending = false;
                self.maybe_start_end_of_turn(now);
            }
            Timer::FalseInterruption => {
                if let Some(r) = self.reply.as_mut()
                    && r.phase == Phase::Paused
                    && !self.user_speaking
                {
                    r.phase = Phase::Speaking;
                    let id = r.id;
                    self.actions.push_back(Action::ResumeOutput { reply: id });
                    self.set_state(AgentState::Speaking);
                }
            }
        }
    }

    fn on_speech_started(&mut self, _now: Instant, _at: Instant) {
        self.user_speaking = true;
        self.voiced = Duration::ZERO;
        self.words_in_speech = 0;
        // Resumed speech: any pending commit or prediction is void.
        self.timers[Timer::EndOfTurn as usize] = None;
        self.timers[Timer::SttWait as usize] = None;
        self.timers[Timer::FalseInterruption as usize] = None;
        self.new_words_arrived();
        self.actions.push_back(Action::UserSpeaking(true));
    }

    fn on_speech_ended(&mut self, now: Instant, at: Instant) {
        self.user_speaking = false;
        self.last_speech_end = Some(at);
        self.stt_pending = true;
        self.timers[Timer::SttWait as usize] = Some(at + self.opts.max_endpointing_delay);
        self.actions.push_back(Action::UserSpeaking(false));
        if let Some(r) = self.reply
            && r.phase == Phase::Paused
            && let Some(timeout) = self.opts.false_interruption_timeout
        {
            self.timers[Timer::FalseInterruption as usize] = Some(at + timeout);
        }
        self.maybe_start_end_of_turn(now);
    }

    /// Starts the next queued reply; false when there is none.
    fn start_queued(&mut self) -> bool {
        let Some((id, interruptible)) = self.queue.pop_front() else {
            return false;
        };
        self.reply = Some(Reply {
            id,
            phase: Phase::Thinking,
            interruptible,
        });
        self.actions.push_back(Action::StartReply { reply: id });
        self.set_state(AgentState::Thinking);
        true
    }

    fn drop_queue(&mut self) {
        for (id, _) in std::mem::take(&mut self.queue) {
            self.actions.push_back(Action::DropReply { reply: id });
        }
    }

    fn count_words(&mut self, text: &str) {
        if self.user_speaking || self.reply.is_some_and(|r| r.phase == Phase::Paused) {
            self.words_in_speech = self.words_in_speech.max(text.split_whitespace().count());
        }
    }

    /// Words confirm a paused interruption, or complete one that was only
    /// waiting for `min_interruption_words`.
    fn check_interruption_words(&mut self) {
        let Some(reply) = self.reply else { return };
        if self.words_in_speech == 0 || !reply.interruptible {
            return;
        }
        match reply.phase {
            Phase::Paused => {
                if self.words_in_speech >= self.opts.min_interruption_words.max(1) {
                    self.cancel_reply(reply);
                }
            }
            Phase::Thinking | Phase::Speaking => {
                if self.user_speaking && self.voiced >= self.opts.min_interruption_duration {
                    self.maybe_interrupt();
                }
            }
            Phase::Cancelling => {}
        }
    }

    fn maybe_interrupt(&mut self) {
        let Some(reply) = self.reply else { return };
        if !self.opts.allow_interruptions || !reply.interruptible || !self.user_speaking {
            return;
        }
        if self.words_in_speech < self.opts.min_interruption_words {
            return; // re-checked as transcripts arrive
        }
        match reply.phase {
            Phase::Thinking => self.cancel_reply(reply),
            Phase::Speaking => {
                if self.opts.false_interruption_timeout.is_some() && self.words_in_speech == 0 {
                    self.set_phase(Phase::Paused);
                    self.actions
                        .push_back(Action::PauseOutput { reply: reply.id });
                    self.set_state(AgentState::Listening);
                } else {
                    self.cancel_reply(reply);
                }
            }
            Phase::Paused | Phase::Cancelling => {}
        }
    }

    fn cancel_reply(&mut self, reply: Reply) {
        if reply.phase == Phase::Cancelling {
            return;
        }
        self.set_phase(Phase::Cancelling);
        self.timers[Timer::FalseInterruption as usize] = None;
        self.actions
            .push_back(Action::Interrupt { reply: reply.id });
        self.set_state(AgentState::Listening);
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(r) = self.reply.as_mut() {
            r.phase = phase;
        }
    }

    /// Words changed or speech resumed: the last prediction no longer applies.
    fn new_words_arrived(&mut self) {
        self.eou_seq += 1;
        self.eou_requested = false;
        self.endpointing_delay = None;
        self.timers[Timer::EndOfTurn as usize] = None;
    }

    fn maybe_start_end_of_turn(&mut self, now: Instant) {
        if self.user_speaking || self.stt_pending || self.transcript.is_empty() {
            return;
        }
        if !self.has_detector {
            self.endpointing_delay = Some(self.opts.min_endpointing_delay);
            self.arm_end_of_turn(now);
        } else if !self.eou_requested {
            self.eou_requested = true;
            self.actions.push_back(Action::PredictEndOfTurn {
                seq: self.eou_seq,
                transcript: self.transcript.clone(),
            });
        }
    }

    fn arm_end_of_turn(&mut self, now: Instant) {
        let Some(delay) = self.endpointing_delay else {
            return;
        };
        // Typed-in-the-gap case: no speech end known, count from now.
        let base = self.last_speech_end.unwrap_or(now);
        let at = (base + delay).max(now);
        self.timers[Timer::EndOfTurn as usize] = Some(at);
        if at <= now {
            self.handle_timeout(now);
        }
    }

    fn commit(
        &mut self,
        now: Instant,
        text: String,
        timing: Option<(Option<Instant>, Option<Instant>)>,
    ) {
        let id = self.next_reply;
        self.next_reply += 1;
        self.drop_queue();
        self.reply = Some(Reply {
            id,
            phase: Phase::Thinking,
            interruptible: true,
        });
        self.new_words_arrived();
        let (speech_ended, transcribed) = timing.unwrap_or((None, None));
        self.last_speech_end = None;
        self.last_final_at = None;
        self.actions.push_back(Action::CommitUserTurn {
            reply: id,
            text,
            timing: TurnTiming {
                speech_ended,
                transcribed,
                committed: now,
            },
        });
        self.set_state(AgentState::Thinking);
    }

    fn set_state(&mut self, state: AgentState) {
        if self.state != state {
            self.state = state;
            self.actions.push_back(Action::AgentState(state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Harness {
        m: TurnMachine,
        t0: Instant,
        now: Instant,
        log: Vec<(u64, Action)>,
    }

    impl Harness {
        fn new(opts: TurnOptions, detector: bool) -> Self {
            let t0 = Instant::now();
            let mut m = TurnMachine::new(opts, detector);
            m.start();
            let mut h = Self {
                m,
                t0,
                now: t0,
                log: Vec::new(),
            };
            h.drain();
            h.log.clear();
            h
        }

        fn at(&self, n: u64) -> Instant {
            self.t0 + ms(n)
        }

        fn drain(&mut self) {
            let t = (self.now - self.t0).as_millis() as u64;
            while let Some(a) = self.m.poll_action() {
                self.log.push((t, a));
            }
        }

        /// Runs timers up to `n` ms, stepping to each deadline, then feeds the input at `n`.
        fn advance(&mut self, n: u64) {
            let target = self.at(n);
            while let Some(d) = self.m.poll_timeout().filter(|&d| d <= target) {
                self.now = d.max(self.now);
                self.m.handle_timeout(self.now);
                self.drain();
            }
            self.now = target;
        }

        fn input(&mut self, n: u64, input: Input) {
            self.advance(n);
            self.m.handle_input(self.now, input);
            self.drain();
        }

        fn commits(&self) -> Vec<(u64, String)> {
            self.log
                .iter()
                .filter_map(|(t, a)| match a {
                    Action::CommitUserTurn { text, .. } => Some((*t, text.clone())),
                    _ => None,
                })
                .collect()
        }

        fn has(&self, want: &Action) -> Option<u64> {
            self.log.iter().find(|(_, a)| a == want).map(|(t, _)| *t)
        }

        /// User says `text` from `start` to `end` ms; the VAD reports the end
        /// `vad_lag` later and the STT finalizes `stt_lag` after that.
        fn utterance(&mut self, start: u64, end: u64, text: &str) {
            let (s, e) = (self.at(start), self.at(end));
            self.input(start, Input::SpeechStarted { at: s });
            self.input(end + 300, Input::SpeechEnded { at: e });
            self.input(end + 400, Input::Final { text: text.into() });
        }
    }

    #[test]
    fn commits_exactly_min_delay_after_speech_end() {
        let mut h = Harness::new(TurnOptions::default(), false);
        h.utterance(0, 1000, "hello there");
        h.advance(5000);
        assert_eq!(h.commits(), vec![(1500, "hello there".to_string())]);
    }

    #[test]
    fn unfinished_turn_waits_max_delay() {
        let mut h = Harness::new(TurnOptions::default(), true);
        h.utterance(0, 1000, "I would like to");
        let seq = h
            .log
            .iter()
            .find_map(|(_, a)| match a {
                Action::PredictEndOfTurn { seq, .. } => Some(*seq),
                _ => None,
            })
            .expect("prediction requested");
        h.input(
            1450,
            Input::EndOfTurn {
                seq,
                probability: 0.1,
                unlikely_threshold: 0.5,
            },
        );
        h.advance(3999);
        assert!(h.commits().is_empty(), "committed before max delay");
        h.advance(6000);
        assert_eq!(h.commits(), vec![(4000, "I would like to".to_string())]);
    }

    #[test]
    fn likely_finished_turn_uses_min_delay_with_detector() {
        let mut h = Harness::new(TurnOptions::default(), true);
        h.utterance(0, 1000, "what time is it?");
        h.input(
            1420,
            Input::EndOfTurn {
                seq: h.m.eou_seq,
                probability: 0.9,
                unlikely_threshold: 0.5,
            },
        );
        h.advance(5000);
        assert_eq!(h.commits(), vec![(1500, "what time is it?".to_string())]);
    }

    #[test]
    fn resumed_speech_cancels_pending_commit_and_joins_the_words() {
        let mut h = Harness::new(TurnOptions::default(), false);
        h.utterance(0, 1000, "book a table");
        // Speaks again before 1500: the commit is void.
        h.input(1450, Input::SpeechStarted { at: h.at(1450) });
        h.advance(3000);
        assert!(h.commits().is_empty());
        h.input(3300, Input::SpeechEnded { at: h.at(3000) });
        h.input(
            3350,
            Input::Final {
                text: "for two".into(),
            },
        );
        h.advance(9000);
        assert_eq!(
            h.commits(),
            vec![(3500, "book a table for two".to_string())]
        );
    }

    #[test]
    fn stale_prediction_is_ignored() {
        let mut h = Harness::new(TurnOptions::default(), true);
        h.utterance(0, 1000, "so");
        let stale = h.m.eou_seq;
        h.input(1410, Input::SpeechStarted { at: h.at(1410) });
        h.input(
            1420,
            Input::EndOfTurn {
                seq: stale,
                probability: 0.99,
                unlikely_threshold: 0.5,
            },
        );
        h.advance(10_000);
        assert!(h.commits().is_empty());
    }

    #[test]
    fn waits_for_the_stt_to_finalize_before_committing() {
        let mut h = Harness::new(TurnOptions::default(), false);
        h.input(0, Input::SpeechStarted { at: h.at(0) });
        h.input(500, Input::Final { text: "hi".into() });
        h.input(1300, Input::SpeechEnded { at: h.at(1000) });
        // Without the finalization of the last speech, no commit at 1500.
        h.advance(1900);
        assert!(h.commits().is_empty());
        h.input(
            1900,
            Input::Final {
                text: "how are you".into(),
            },
        );
        h.advance(3000);
        assert_eq!(h.commits(), vec![(1900, "hi how are you".to_string())]);
    }

    #[test]
    fn noise_without_words_never_commits() {
        let mut h = Harness::new(TurnOptions::default(), false);
        h.input(0, Input::SpeechStarted { at: h.at(0) });
        h.input(600, Input::SpeechEnded { at: h.at(300) });
        h.input(700, Input::FinalEmpty);
        h.advance(10_000);
        assert!(h.commits().is_empty());
    }

    fn speaking(h: &mut Harness) -> ReplyId {
        h.utterance(0, 1000, "tell me a story");
        h.advance(1500);
        let reply = h.m.active_reply().expect("reply");
        h.input(2000, Input::PlaybackStarted { reply });
        assert_eq!(h.m.agent_state(), AgentState::Speaking);
        reply
    }

    #[test]
    fn short_speech_does_not_interrupt() {
        let mut h = Harness::new(TurnOptions::default(), false);
        let reply = speaking(&mut h);
        h.input(3000, Input::SpeechStarted { at: h.at(3000) });
        h.input(3300, Input::SpeechProgress { voiced: ms(300) });
        h.input(3600, Input::SpeechEnded { at: h.at(3300) });
        h.advance(10_000);
        assert_eq!(h.has(&Action::PauseOutput { reply }), None);
        assert_eq!(h.has(&Action::Interrupt { reply }), None);
    }

    #[test]
    fn interruption_pauses_at_min_duration_and_words_confirm_it() {
        let mut h = Harness::new(TurnOptions::default(), false);
        let reply = speaking(&mut h);
        h.input(3000, Input::SpeechStarted { at: h.at(3000) });
        h.input(3400, Input::SpeechProgress { voiced: ms(400) });
        h.input(3500, Input::SpeechProgress { voiced: ms(500) });
        assert_eq!(h.has(&Action::PauseOutput { reply }), Some(3500));
        h.input(
            3700,
            Input::Interim {
                text: "wait".into(),
            },
        );
        assert_eq!(h.has(&Action::Interrupt { reply }), Some(3700));
        h.input(3800, Input::ReplyEnded { reply });
        h.input(4300, Input::SpeechEnded { at: h.at(4000) });
        h.input(
            4400,
            Input::Final {
                text: "wait stop".into(),
            },
        );
        h.advance(10_000);
        assert_eq!(h.commits().last().map(|c| c.0), Some(4500));
    }

    #[test]
    fn false_interruption_resumes_after_timeout() {
        let mut h = Harness::new(TurnOptions::default(), false);
        let reply = speaking(&mut h);
        h.input(3000, Input::SpeechStarted { at: h.at(3000) });
        h.input(3500, Input::SpeechProgress { voiced: ms(500) });
        h.input(3900, Input::SpeechEnded { at: h.at(3600) });
        h.input(4000, Input::FinalEmpty);
        h.advance(10_000);
        assert_eq!(h.has(&Action::PauseOutput { reply }), Some(3500));
        assert_eq!(h.has(&Action::ResumeOutput { reply }), Some(5600));
        assert_eq!(h.has(&Action::Interrupt { reply }), None);
        assert_eq!(h.m.agent_state(), AgentState::Speaking);
    }

    #[test]
    fn without_resume_interruption_cancels_at_once() {
        let opts = TurnOptions {
            false_interruption_timeout: None,
            ..Default::default()
        };
        let mut h = Harness::new(opts, false);
        let reply = speaking(&mut h);
        h.input(3000, Input::SpeechStarted { at: h.at(3000) });
        h.input(3500, Input::SpeechProgress { voiced: ms(500) });
        assert_eq!(h.has(&Action::Interrupt { reply }), Some(3500));
        assert_eq!(h.has(&Action::PauseOutput { reply }), None);
    }

    #[test]
    fn speech_while_thinking_cancels_the_reply() {
        let mut h = Harness::new(TurnOptions::default(), false);
        h.utterance(0, 1000, "what's the weather");
        h.advance(1500);
        let reply = h.m.active_reply().expect("reply");
        h.input(1600, Input::SpeechStarted { at: h.at(1600) });
        h.input(2100, Input::SpeechProgress { voiced: ms(500) });
        assert_eq!(h.has(&Action::Interrupt { reply }), Some(2100));
    }

    #[test]
    fn min_words_holds_the_interruption_until_words_arrive() {
        let opts = TurnOptions {
            min_interruption_words: 2,
            ..Default::default()
        };
        let mut h = Harness::new(opts, false);
        let reply = speaking(&mut h);
        h.input(3000, Input::SpeechStarted { at: h.at(3000) });
        h.input(3500, Input::SpeechProgress { voiced: ms(500) });
        h.input(3600, Input::Interim { text: "hey".into() });
        assert_eq!(h.has(&Action::PauseOutput { reply }), None);
        h.input(
            3800,
            Input::Interim {
                text: "hey wait".into(),
            },
        );
        assert_eq!(h.has(&Action::Interrupt { reply }), Some(3800));
    }

    #[test]
    fn typed_text_commits_at_once_and_state_follows_the_reply() {
        let mut h = Harness::new(TurnOptions::default(), false);
        h.input(
            10,
            Input::UserText {
                text: "hello".into(),
            },
        );
        assert_eq!(h.commits(), vec![(10, "hello".to_string())]);
        assert_eq!(h.m.agent_state(), AgentState::Thinking);
        let reply = h.m.active_reply().expect("reply");
        h.input(300, Input::PlaybackStarted { reply });
        h.input(900, Input::ReplyEnded { reply });
        let states: Vec<_> = h
            .log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::AgentState(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(
            states,
            vec![
                AgentState::Thinking,
                AgentState::Speaking,
                AgentState::Listening
            ]
        );
    }

    fn started(h: &Harness) -> Vec<(u64, ReplyId)> {
        h.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::StartReply { reply } => Some((*t, *reply)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn agent_replies_queue_behind_the_one_in_progress_and_start_in_order() {
        let mut h = Harness::new(TurnOptions::default(), false);
        let first = h.m.queue_reply(true);
        let second = h.m.queue_reply(true);
        h.drain();
        assert_eq!(started(&h), vec![(0, first)], "only the first starts");
        assert_eq!(h.m.agent_state(), AgentState::Thinking);
        h.input(100, Input::PlaybackStarted { reply: first });
        h.input(900, Input::ReplyEnded { reply: first });
        assert_eq!(started(&h), vec![(0, first), (900, second)]);
        assert_eq!(h.m.agent_state(), AgentState::Thinking);
        h.input(1500, Input::ReplyEnded { reply: second });
        assert_eq!(h.m.agent_state(), AgentState::Listening);
        assert_eq!(h.m.active_reply(), None);
    }

    #[test]
    fn a_user_turn_drops_queued_agent_replies() {
        let mut h = Harness::new(TurnOptions::default(), false);
        let first = h.m.queue_reply(true);
        let queued = h.m.queue_reply(true);
        h.drain();
        h.input(10, Input::PlaybackStarted { reply: first });
        // Long enough to interrupt: the reply is paused, then words cancel it.
        let start = h.at(100);
        h.input(100, Input::SpeechStarted { at: start });
        h.input(700, Input::SpeechProgress { voiced: ms(600) });
        h.input(1300, Input::SpeechEnded { at: h.at(1000) });
        h.input(
            1400,
            Input::Final {
                text: "stop please".into(),
            },
        );
        h.advance(3000);
        assert!(h.has(&Action::Interrupt { reply: first }).is_some());
        assert!(h.has(&Action::DropReply { reply: queued }).is_some());
        assert_eq!(h.commits().len(), 1);
        let reply = h.m.active_reply().expect("answering the user");
        h.input(3100, Input::ReplyEnded { reply: first });
        assert_eq!(
            h.m.active_reply(),
            Some(reply),
            "a stale end changes nothing"
        );
        assert_eq!(
            started(&h),
            vec![(0, first)],
            "the dropped reply never starts"
        );
    }

    #[test]
    fn speech_never_interrupts_a_reply_that_disallows_it_but_interrupt_does() {
        let mut h = Harness::new(TurnOptions::default(), false);
        let id = h.m.queue_reply(false);
        h.drain();
        h.input(10, Input::PlaybackStarted { reply: id });
        let start = h.at(100);
        h.input(100, Input::SpeechStarted { at: start });
        h.input(900, Input::SpeechProgress { voiced: ms(800) });
        h.input(1800, Input::SpeechEnded { at: h.at(1500) });
        h.input(
            1900,
            Input::Final {
                text: "hello hello".into(),
            },
        );
        h.advance(4000);
        assert!(
            !h.log
                .iter()
                .any(|(_, a)| matches!(a, Action::Interrupt { .. } | Action::PauseOutput { .. })),
            "{:?}",
            h.log
        );
        assert!(h.commits().is_empty(), "words over it are not a turn");
        assert_eq!(h.m.agent_state(), AgentState::Speaking);
        let queued = h.m.queue_reply(true);
        h.m.interrupt();
        h.drain();
        assert!(h.has(&Action::Interrupt { reply: id }).is_some());
        assert!(h.has(&Action::DropReply { reply: queued }).is_some());
        assert_eq!(h.m.agent_state(), AgentState::Listening);
        h.input(4100, Input::ReplyEnded { reply: id });
        assert_eq!(started(&h), vec![(0, id)]);
    }
}
