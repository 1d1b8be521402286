//! What this crate knows about Kimi model ids on LiveKit Inference, and the
//! one-time warning for a retired id. Any id may be configured; the catalogue
//! only informs.

use std::sync::Mutex;

/// A Kimi model LiveKit Inference lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The id as sent in `model`.
    pub id: &'static str,
    /// LiveKit marks this model retired; requests still go out.
    pub retired: bool,
}

/// The id to move to from a retired model.
pub const CURRENT_KIMI_MODEL: &str = "moonshotai/kimi-k2.6";

/// Known Kimi models, oldest first.
pub const CATALOGUE: &[ModelInfo] = &[
    ModelInfo {
        id: "moonshotai/kimi-k2-instruct",
        retired: true,
    },
    ModelInfo {
        id: "moonshotai/kimi-k2.5",
        retired: false,
    },
    ModelInfo {
        id: "moonshotai/kimi-k2.6",
        retired: false,
    },
];

/// Looks a model id up (ASCII case-insensitive, as Baseten spells it
/// `Kimi-K2-Instruct`).
pub fn lookup(model: &str) -> Option<&'static ModelInfo> {
    CATALOGUE.iter().find(|m| m.id.eq_ignore_ascii_case(model))
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
    fn catalogue_knows_the_three_ids() {
        assert!(lookup("moonshotai/kimi-k2-instruct").is_some_and(|m| m.retired));
        assert!(lookup("moonshotai/Kimi-K2-Instruct").is_some());
        assert!(lookup("moonshotai/kimi-k2.5").is_some_and(|m| !m.retired));
        assert!(lookup("moonshotai/kimi-k2.6").is_some_and(|m| !m.retired));
        assert!(lookup("other/model").is_none());
        let notice = retirement_notice("moonshotai/kimi-k2-instruct").unwrap();
        assert!(notice.contains(CURRENT_KIMI_MODEL));
        assert!(retirement_notice("moonshotai/kimi-k2.6").is_none());
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
