//! What this crate knows about Kimi models, as data: which ids LiveKit
//! Inference lists (and which it retired), whether a model thinks by default,
//! and the sampling values a model accepts when its server fixes them. Any id
//! may be configured; an id the catalogue does not know is sent as it is,
//! with nothing added. Also the one-time warning for a retired id.
//!
//! | model | retired | thinks by default | sampling |
//! |---|---|---|---|
//! | `moonshotai/kimi-k2-instruct` | yes | no thinking mode | free |
//! | `moonshotai/kimi-k2.5` | yes | yes | fixed |
//! | `moonshotai/kimi-k2.6` | no | yes | fixed |
//!
//! LiveKit's Kimi page lists K2.6 (provider `baseten`) as the one current
//! model and both K2 Instruct and K2.5 as retired.
//!
//! "Thinks by default" is the model's own default (Moonshot's API and the
//! model's chat template); a serving stack may differ — Baseten's Model APIs
//! make thinking opt-in — which [`crate::params`] accounts for.

use std::sync::Mutex;

/// A Kimi model this crate knows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelInfo {
    /// The id as LiveKit Inference spells it, sent in `model`.
    pub id: &'static str,
    /// Other spellings of the same model (Moonshot's own API drops the
    /// `moonshotai/` prefix). Matching is ASCII case-insensitive, so
    /// Baseten's `moonshotai/Kimi-K2.6` needs no alias.
    pub aliases: &'static [&'static str],
    /// LiveKit marks this model retired; requests still go out.
    pub retired: bool,
    /// Whether the model thinks (streams `reasoning_content`) when the
    /// request does not say; `None` when it has no thinking mode.
    pub thinking_default: Option<bool>,
    /// The only sampling values the model accepts, when its API fixes them
    /// (other values get HTTP 400).
    pub sampling: Option<FixedSampling>,
}

/// Sampling a model's API fixes: Moonshot answers HTTP 400
/// (`invalid temperature: only 1 is allowed for this model`) to anything else.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedSampling {
    /// `temperature` with thinking on.
    pub temperature_thinking: f64,
    /// `temperature` with thinking off (Moonshot's "instant" mode).
    pub temperature_instant: f64,
    /// `top_p`, whatever the mode.
    pub top_p: f64,
}

impl FixedSampling {
    /// The accepted `temperature` for the thinking mode in force.
    pub fn temperature(&self, thinking: bool) -> f64 {
        if thinking {
            self.temperature_thinking
        } else {
            self.temperature_instant
        }
    }
}

/// K2.5 and K2.6: temperature 1.0 thinking, 0.6 instant, top_p 0.95
/// (Moonshot's model parameter reference: "cannot be modified").
const K2_5_SAMPLING: FixedSampling = FixedSampling {
    temperature_thinking: 1.0,
    temperature_instant: 0.6,
    top_p: 0.95,
};

/// The id to move to from a retired model.
pub const CURRENT_KIMI_MODEL: &str = "moonshotai/kimi-k2.6";

/// Known Kimi models, oldest first.
pub const CATALOGUE: &[ModelInfo] = &[
    ModelInfo {
        id: "moonshotai/kimi-k2-instruct",
        aliases: &[],
        retired: true,
        thinking_default: None,
        sampling: None,
    },
    ModelInfo {
        id: "moonshotai/kimi-k2.5",
        aliases: &["kimi-k2.5"],
        retired: true,
        thinking_default: Some(true),
        sampling: Some(K2_5_SAMPLING),
    },
    ModelInfo {
        id: "moonshotai/kimi-k2.6",
        aliases: &["kimi-k2.6"],
        retired: false,
        thinking_default: Some(true),
        sampling: Some(K2_5_SAMPLING),
    },
];

/// Looks a model id up by id or alias, ASCII case-insensitive (Baseten spells
/// them `moonshotai/Kimi-K2-Instruct`, `moonshotai/Kimi-K2.6`).
pub fn lookup(model: &str) -> Option<&'static ModelInfo> {
    let model = model.trim();
    CATALOGUE.iter().find(|m| {
        m.id.eq_ignore_ascii_case(model) || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(model))
    })
}

/// The warning to log for `model`, if it is retired.
pub fn retirement_notice(model: &str) -> Option<String> {
    let info = lookup(model)?;
    info.retired.then(|| {
        format!(
            "LLM model {} is retired on LiveKit Inference; requests are still sent, \
             but set model = \"{CURRENT_KIMI_MODEL}\" in [llm]",
            info.id
        )
    })
}

/// Models already warned about in this process.
static WARNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Logs the retirement warning for `model` once per process. Returns whether
/// it logged now.
pub fn warn_if_retired(model: &str) -> bool {
    let Some(notice) = retirement_notice(model) else {
        return false;
    };
    let Some(info) = lookup(model) else {
        return false;
    };
    // A poisoned lock only means another thread panicked while pushing; the
    // list is still usable.
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.contains(&info.id) {
        return false;
    }
    warned.push(info.id);
    drop(warned);
    tracing::warn!(model = info.id, current = CURRENT_KIMI_MODEL, "{notice}");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_knows_the_three_ids_and_their_spellings() {
        let k2 = lookup("moonshotai/kimi-k2-instruct").unwrap();
        assert!(k2.retired);
        assert_eq!(k2.thinking_default, None);
        assert_eq!(k2.sampling, None);
        assert_eq!(
            lookup("moonshotai/Kimi-K2-Instruct").map(|m| m.id),
            Some("moonshotai/kimi-k2-instruct")
        );
        for spelling in [
            "moonshotai/kimi-k2.6",
            "moonshotai/Kimi-K2.6",
            "kimi-k2.6",
            " MOONSHOTAI/KIMI-K2.6 ",
        ] {
            let m = lookup(spelling).unwrap_or_else(|| panic!("{spelling}"));
            assert_eq!(m.id, "moonshotai/kimi-k2.6");
            assert!(!m.retired);
            assert_eq!(m.thinking_default, Some(true));
        }
        let k25 = lookup("moonshotai/Kimi-K2.5").unwrap();
        assert_eq!(k25.id, "moonshotai/kimi-k2.5");
        assert!(k25.retired);
        assert!(lookup("other/model").is_none());
        assert!(
            lookup("moonshotai/kimi-k2.6-turbo").is_none(),
            "no prefix match"
        );
        let notice = retirement_notice("moonshotai/kimi-k2-instruct").unwrap();
        assert!(notice.contains(CURRENT_KIMI_MODEL));
        assert!(retirement_notice("moonshotai/kimi-k2.6").is_none());
        assert!(retirement_notice("other/model").is_none());
    }

    #[test]
    fn k2_5_and_k2_6_fix_their_sampling_per_mode() {
        for id in ["moonshotai/kimi-k2.5", "moonshotai/kimi-k2.6"] {
            let s = lookup(id).and_then(|m| m.sampling).unwrap();
            assert_eq!(s.temperature(true), 1.0);
            assert_eq!(s.temperature(false), 0.6);
            assert_eq!(s.top_p, 0.95);
        }
    }

    #[test]
    fn warns_once_per_process() {
        // The first call may have happened in another test of this binary;
        // after it, never again.
        warn_if_retired("moonshotai/kimi-k2-instruct");
        assert!(!warn_if_retired("moonshotai/kimi-k2-instruct"));
        assert!(!warn_if_retired("moonshotai/Kimi-K2-Instruct"));
        assert!(!warn_if_retired("moonshotai/kimi-k2.6"));
    }
}
