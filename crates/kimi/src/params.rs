//! The body fields a target sends besides the conversation, as pure
//! functions over JSON maps:
//!
//! - once per target, at construction ([`TargetParams::resolve`]):
//!   `extra_kwargs` checked, the thinking switch written in the target's
//!   [`ThinkingFormat`], and for models whose API fixes sampling (the
//!   [`catalogue`]'s K2.5/K2.6) the accepted `temperature`/`top_p` for the
//!   thinking mode in force — added when unset, refused when wrong;
//! - per request ([`TargetParams::request_fields`]): the agent's
//!   [`LlmOptions`] on top — `tool_choice` and `parallel_tool_calls` (only
//!   when the request has tools), then `options.extra` over the configured
//!   fields, minus the keys a request may not change.

use agent::{LlmOptions, ToolChoice};
use serde_json::{Map, Value, json};

use crate::catalogue;
use crate::config::{RESERVED_BODY_KEYS, ThinkingFormat};
use crate::error::KimiError;

/// The body keys that carry a thinking switch, in any format.
const SWITCH_KEYS: &[&str] = &["thinking", "chat_template_kwargs", "chat_template_args"];
/// Sent only when the request has tools: OpenAI-style servers refuse them
/// otherwise.
const TOOL_KEYS: &[&str] = &["tool_choice", "parallel_tool_calls"];
/// How far a configured sampling value may be from the accepted one
/// (`temperature = 1` in TOML is the integer 1, which is fine).
const SAMPLING_EPSILON: f64 = 1e-9;

/// What one target sends in every body besides model, messages, tools and
/// streaming.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetParams {
    /// `extra_kwargs` with the thinking switch and the fixed sampling added.
    fields: Map<String, Value>,
    /// The thinking mode in force, when known: the `thinking` key, else a
    /// switch written in `extra_kwargs`, else the server's default for the
    /// model (`None` for a model without thinking the catalogue knows).
    thinking: Option<bool>,
    /// The model's API fixes sampling: a request may not change
    /// `temperature`, `top_p` or the thinking switch (the sampling was
    /// chosen for the mode).
    fixed: bool,
}

/// A key of `options.extra` that a request was not allowed to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The body key.
    pub key: String,
    /// Why it was left out.
    pub why: &'static str,
}

impl TargetParams {
    /// Resolves the fields for `model`, whose thinking switch is written as
    /// `format`. `thinking` is the configured switch (`None`: send none);
    /// `label` (`backend/model`) prefixes error messages.
    pub fn resolve(
        label: &str,
        model: &str,
        format: ThinkingFormat,
        thinking: Option<bool>,
        extra_kwargs: &Map<String, Value>,
    ) -> Result<Self, KimiError> {
        if let Some(key) = extra_kwargs
            .keys()
            .find(|k| RESERVED_BODY_KEYS.contains(&k.as_str()))
        {
            return Err(KimiError::Config(format!(
                "extra_kwargs may not set {key:?}: the client sets it{}",
                if key == "provider" {
                    " (use the provider key, sent as a header)"
                } else {
                    ""
                }
            )));
        }
        let written = switch_in(extra_kwargs);
        let mut fields = extra_kwargs.clone();
        if let Some(on) = thinking {
            if let Some((key, _)) = written {
                return Err(KimiError::Config(format!(
                    "{label}: thinking is set both by the thinking key and by \
                     extra_kwargs.{key}; keep one"
                )));
            }
            let key = format.body_key();
            if fields.get(key).is_some_and(|v| !v.is_object()) {
                return Err(KimiError::Config(format!(
                    "{label}: extra_kwargs.{key} must be a table to hold the thinking switch"
                )));
            }
            write_switch(format, on, &mut fields);
        }
        let info = catalogue::lookup(model);
        let server_default = format.default_thinking(info.and_then(|m| m.thinking_default));
        let mode = thinking.or(written.map(|(_, on)| on)).or(server_default);
        let sampling = info.and_then(|m| m.sampling);
        if let (Some(sampling), Some(info)) = (sampling, info) {
            // A model with fixed sampling has a thinking mode, so `mode` is
            // known; were the data ever otherwise, instant is the safer guess
            // (it is Baseten's default).
            let on = mode.unwrap_or(false);
            let how = match (thinking, written, on) {
                (Some(_), _, true) => "with thinking = true",
                (Some(_), _, false) => "with thinking = false",
                (None, Some(_), true) => "with thinking enabled in extra_kwargs",
                (None, Some(_), false) => "with thinking disabled in extra_kwargs",
                (None, None, true) => "with thinking on (the server's default)",
                (None, None, false) => "with thinking off (the server's default)",
            };
            for (key, accepted, other) in [
                (
                    "temperature",
                    sampling.temperature(on),
                    Some(sampling.temperature(!on)),
                ),
                ("top_p", sampling.top_p, None),
            ] {
                match fields.get(key) {
                    None => {
                        fields.insert(key.to_string(), Value::from(accepted));
                    }
                    Some(v)
                        if v.as_f64()
                            .is_some_and(|x| (x - accepted).abs() <= SAMPLING_EPSILON) => {}
                    Some(v) => {
                        let otherwise = match other {
                            Some(o) => {
                                format!(" ({o:?} with thinking {})", if on { "off" } else { "on" })
                            }
                            None => String::new(),
                        };
                        return Err(KimiError::Config(format!(
                            "{label}: extra_kwargs.{key} = {v} is refused by {}: {how} it \
                             accepts only {key} = {accepted:?}{otherwise}; remove the key \
                             and the client sends the accepted value",
                            info.id
                        )));
                    }
                }
            }
        }
        Ok(Self {
            fields,
            thinking: mode,
            fixed: sampling.is_some(),
        })
    }

    /// The fields every body of this target carries.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The thinking mode in force, when known.
    pub fn thinking(&self) -> Option<bool> {
        self.thinking
    }

    /// The fields for one request: these fields, then `options` over them.
    /// `tool_choice` and `parallel_tool_calls` (from any source) are sent
    /// only when `has_tools`. Typed options win over `options.extra`, which
    /// wins over the configured fields, except for the keys returned as
    /// [`Dropped`]: reserved keys, and for models with fixed sampling a
    /// different `temperature`/`top_p` or a thinking switch.
    pub fn request_fields(
        &self,
        options: &LlmOptions,
        has_tools: bool,
    ) -> (Map<String, Value>, Vec<Dropped>) {
        let mut fields = self.fields.clone();
        let mut dropped = Vec::new();
        for (key, value) in &options.extra {
            if RESERVED_BODY_KEYS.contains(&key.as_str()) {
                dropped.push(Dropped {
                    key: key.clone(),
                    why: "the client sets it",
                });
                continue;
            }
            if self.fixed {
                if SWITCH_KEYS.contains(&key.as_str()) {
                    dropped.push(Dropped {
                        key: key.clone(),
                        why: "this model's sampling was chosen for its configured thinking mode",
                    });
                    continue;
                }
                if matches!(key.as_str(), "temperature" | "top_p") {
                    let same = match (value.as_f64(), fields.get(key).and_then(Value::as_f64)) {
                        (Some(a), Some(b)) => (a - b).abs() <= SAMPLING_EPSILON,
                        _ => false,
                    };
                    if !same {
                        dropped.push(Dropped {
                            key: key.clone(),
                            why: "this model accepts only its fixed sampling",
                        });
                    }
                    continue;
                }
            }
            fields.insert(key.clone(), value.clone());
        }
        if let Some(choice) = &options.tool_choice {
            fields.insert("tool_choice".into(), tool_choice_json(choice));
        }
        if let Some(parallel) = options.parallel_tool_calls {
            fields.insert("parallel_tool_calls".into(), Value::Bool(parallel));
        }
        if !has_tools {
            for key in TOOL_KEYS {
                fields.remove(*key);
            }
        }
        (fields, dropped)
    }
}

impl ThinkingFormat {
    /// The top-level body key this format's switch lives in.
    fn body_key(self) -> &'static str {
        match self {
            ThinkingFormat::Moonshot => "thinking",
            ThinkingFormat::ChatTemplateKwargs => "chat_template_kwargs",
            ThinkingFormat::Baseten => "chat_template_args",
        }
    }
}

/// OpenAI's `tool_choice`: `"auto"`, `"none"`, `"required"` or
/// `{"type":"function","function":{"name":…}}`.
pub fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => Value::from("auto"),
        ToolChoice::None => Value::from("none"),
        ToolChoice::Required => Value::from("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// Writes the switch into `fields`. The chat-template forms are merged into
/// an existing table, keeping its other template arguments.
fn write_switch(format: ThinkingFormat, on: bool, fields: &mut Map<String, Value>) {
    let (key, inner, value) = match format {
        ThinkingFormat::Moonshot => {
            let kind = if on { "enabled" } else { "disabled" };
            fields.insert("thinking".into(), json!({ "type": kind }));
            return;
        }
        ThinkingFormat::ChatTemplateKwargs => ("chat_template_kwargs", "thinking", on),
        ThinkingFormat::Baseten => ("chat_template_args", "enable_thinking", on),
    };
    let table = fields
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !table.is_object() {
        *table = Value::Object(Map::new());
    }
    if let Value::Object(table) = table {
        table.insert(inner.into(), Value::Bool(value));
    }
}

/// A thinking switch written by hand in `extra_kwargs`, in any format: the
/// key path and whether it turns thinking on.
fn switch_in(extra: &Map<String, Value>) -> Option<(&'static str, bool)> {
    if let Some(kind) = extra
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
    {
        match kind {
            "enabled" => return Some(("thinking", true)),
            "disabled" => return Some(("thinking", false)),
            _ => {}
        }
    }
    if let Some(on) = extra
        .get("chat_template_kwargs")
        .and_then(|t| t.get("thinking"))
        .and_then(Value::as_bool)
    {
        return Some(("chat_template_kwargs.thinking", on));
    }
    extra
        .get("chat_template_args")
        .and_then(|t| t.get("enable_thinking"))
        .and_then(Value::as_bool)
        .map(|on| ("chat_template_args.enable_thinking", on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ThinkingFormat::*;

    const K26: &str = "moonshotai/kimi-k2.6";

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn resolve(
        model: &str,
        format: ThinkingFormat,
        thinking: Option<bool>,
        extra: Value,
    ) -> Result<TargetParams, KimiError> {
        TargetParams::resolve("t/m", model, format, thinking, &map(extra))
    }

    fn config_message(e: KimiError) -> String {
        match e {
            KimiError::Config(m) => m,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn the_switch_is_written_in_each_format() {
        let on = |format, on| {
            Value::Object(
                resolve(K26, format, Some(on), json!({}))
                    .unwrap()
                    .fields()
                    .clone(),
            )
        };
        assert_eq!(on(Moonshot, false)["thinking"], json!({"type": "disabled"}));
        assert_eq!(on(Moonshot, true)["thinking"], json!({"type": "enabled"}));
        assert_eq!(
            on(ChatTemplateKwargs, false)["chat_template_kwargs"],
            json!({"thinking": false})
        );
        assert_eq!(
            on(Baseten, true)["chat_template_args"],
            json!({"enable_thinking": true})
        );
        // Only the chosen format's key is written.
        let v = on(Baseten, false);
        assert!(v.get("thinking").is_none() && v.get("chat_template_kwargs").is_none());
        // Unset: no switch at all.
        let p = resolve(K26, Moonshot, None, json!({})).unwrap();
        assert!(SWITCH_KEYS.iter().all(|k| !p.fields().contains_key(*k)));
    }

    #[test]
    fn the_switch_joins_other_template_arguments() {
        let p = resolve(
            K26,
            ChatTemplateKwargs,
            Some(false),
            json!({"chat_template_kwargs": {"foo": 1}}),
        )
        .unwrap();
        assert_eq!(
            p.fields()["chat_template_kwargs"],
            json!({"foo": 1, "thinking": false})
        );
        let e = resolve(
            K26,
            ChatTemplateKwargs,
            Some(false),
            json!({"chat_template_kwargs": "x"}),
        )
        .unwrap_err();
        assert!(config_message(e).contains("must be a table"));
    }

    #[test]
    fn sampling_follows_the_mode_in_force() {
        let sampling = |format, thinking, extra| {
            let p = resolve(K26, format, thinking, extra).unwrap();
            (
                p.thinking(),
                p.fields()["temperature"].as_f64(),
                p.fields()["top_p"].as_f64(),
            )
        };
        // Set explicitly.
        assert_eq!(
            sampling(Moonshot, Some(true), json!({})),
            (Some(true), Some(1.0), Some(0.95))
        );
        assert_eq!(
            sampling(Moonshot, Some(false), json!({})),
            (Some(false), Some(0.6), Some(0.95))
        );
        // Unset: the server's default (Moonshot and vLLM think, Baseten not).
        assert_eq!(
            sampling(Moonshot, None, json!({})),
            (Some(true), Some(1.0), Some(0.95))
        );
        assert_eq!(
            sampling(ChatTemplateKwargs, None, json!({})),
            (Some(true), Some(1.0), Some(0.95))
        );
        assert_eq!(
            sampling(Baseten, None, json!({})),
            (Some(false), Some(0.6), Some(0.95))
        );
        // A switch written by hand in extra_kwargs is read.
        assert_eq!(
            sampling(Moonshot, None, json!({"thinking": {"type": "disabled"}})),
            (Some(false), Some(0.6), Some(0.95))
        );
        assert_eq!(
            sampling(
                Baseten,
                None,
                json!({"chat_template_args": {"enable_thinking": true}})
            ),
            (Some(true), Some(1.0), Some(0.95))
        );
        assert_eq!(
            sampling(
                Moonshot,
                None,
                json!({"chat_template_kwargs": {"thinking": false}})
            ),
            (Some(false), Some(0.6), Some(0.95))
        );
        // Baseten's spelling and Moonshot's bare id are the same model.
        for id in ["moonshotai/Kimi-K2.6", "kimi-k2.6", "moonshotai/Kimi-K2.5"] {
            let p = resolve(id, Moonshot, Some(false), json!({})).unwrap();
            assert_eq!(p.fields()["temperature"], 0.6, "{id}");
        }
    }

    #[test]
    fn accepted_values_pass_and_others_are_refused_by_name() {
        // The accepted value, even as a TOML integer, is kept.
        let p = resolve(
            K26,
            Moonshot,
            Some(true),
            json!({"temperature": 1, "top_p": 0.95}),
        )
        .unwrap();
        assert_eq!(p.fields()["temperature"], 1);
        let p = resolve(K26, Baseten, None, json!({"temperature": 0.6})).unwrap();
        assert_eq!(p.fields()["temperature"], 0.6);

        let e = resolve(K26, Moonshot, Some(true), json!({"temperature": 0.6})).unwrap_err();
        let m = config_message(e);
        assert!(m.contains("extra_kwargs.temperature = 0.6"), "{m}");
        assert!(m.contains("only temperature = 1.0"), "{m}");
        assert!(m.contains("thinking = true"), "{m}");
        assert!(m.contains("moonshotai/kimi-k2.6"), "{m}");

        let e = resolve(K26, Baseten, None, json!({"temperature": 0.7})).unwrap_err();
        let m = config_message(e);
        assert!(m.contains("only temperature = 0.6"), "{m}");
        assert!(m.contains("server's default"), "{m}");

        let e = resolve(K26, Moonshot, Some(false), json!({"top_p": 0.9})).unwrap_err();
        let m = config_message(e);
        assert!(m.contains("extra_kwargs.top_p = 0.9"), "{m}");
        assert!(m.contains("only top_p = 0.95"), "{m}");

        let e = resolve(K26, Moonshot, Some(false), json!({"temperature": "hot"})).unwrap_err();
        assert!(config_message(e).contains("temperature"));
    }

    #[test]
    fn models_without_fixed_sampling_are_left_alone() {
        for model in ["moonshotai/kimi-k2-instruct", "openai/gpt-4.1-mini"] {
            let p = resolve(model, Moonshot, None, json!({"temperature": 0.3})).unwrap();
            assert_eq!(
                Value::Object(p.fields().clone()),
                json!({"temperature": 0.3})
            );
            assert_eq!(p.thinking(), None);
        }
        // The switch still goes out when set.
        let p = resolve("llama", ChatTemplateKwargs, Some(false), json!({})).unwrap();
        assert_eq!(
            Value::Object(p.fields().clone()),
            json!({"chat_template_kwargs": {"thinking": false}})
        );
    }

    #[test]
    fn a_switch_in_two_places_and_reserved_keys_are_refused() {
        let e = resolve(
            K26,
            Moonshot,
            Some(false),
            json!({"thinking": {"type": "enabled"}}),
        )
        .unwrap_err();
        assert!(config_message(e).contains("extra_kwargs.thinking"));
        for key in ["model", "messages", "tools", "stream", "stream_options"] {
            let e = resolve(K26, Moonshot, None, json!({ key: 1 })).unwrap_err();
            assert!(config_message(e).contains(key));
        }
        let e = resolve(K26, Moonshot, None, json!({"provider": "baseten"})).unwrap_err();
        assert!(config_message(e).contains("header"));
    }

    #[test]
    fn options_go_on_the_wire_as_openai_spells_them() {
        let p = resolve(
            "llama",
            ChatTemplateKwargs,
            None,
            json!({"max_completion_tokens": 300, "tool_choice": "auto"}),
        )
        .unwrap();
        for (choice, wire) in [
            (ToolChoice::Auto, json!("auto")),
            (ToolChoice::None, json!("none")),
            (ToolChoice::Required, json!("required")),
            (
                ToolChoice::Function("get_weather".into()),
                json!({"type": "function", "function": {"name": "get_weather"}}),
            ),
        ] {
            let options = LlmOptions::new()
                .with_tool_choice(choice)
                .with_parallel_tool_calls(false);
            let (f, dropped) = p.request_fields(&options, true);
            assert!(dropped.is_empty());
            assert_eq!(f["tool_choice"], wire);
            assert_eq!(f["parallel_tool_calls"], false);
            assert_eq!(f["max_completion_tokens"], 300);
        }
        // Without tools neither key goes out, whoever set it.
        let options = LlmOptions::new()
            .with_tool_choice(ToolChoice::Required)
            .with_parallel_tool_calls(true);
        let (f, _) = p.request_fields(&options, false);
        assert!(!f.contains_key("tool_choice") && !f.contains_key("parallel_tool_calls"));
        assert_eq!(f["max_completion_tokens"], 300);
        // No options: the configured fields as they are.
        let (f, _) = p.request_fields(&LlmOptions::default(), true);
        assert_eq!(&f, p.fields());
    }

    #[test]
    fn options_extra_merges_over_the_configuration_minus_what_it_may_not_change() {
        let p = resolve(
            K26,
            Moonshot,
            Some(false),
            json!({"max_completion_tokens": 300}),
        )
        .unwrap();
        let options = LlmOptions::new()
            .with_extra("max_completion_tokens", json!(80))
            .with_extra("stop", json!(["\n"]))
            .with_extra("model", json!("other"))
            .with_extra("stream", json!(false))
            .with_extra("temperature", json!(0.2))
            .with_extra("top_p", json!(0.95))
            .with_extra("thinking", json!({"type": "enabled"}))
            .with_extra("tool_choice", json!("none"))
            .with_tool_choice(ToolChoice::Auto);
        let (f, dropped) = p.request_fields(&options, true);
        assert_eq!(f["max_completion_tokens"], 80);
        assert_eq!(f["stop"], json!(["\n"]));
        assert_eq!(f["temperature"], 0.6, "fixed sampling kept");
        assert_eq!(f["top_p"], 0.95);
        assert_eq!(f["thinking"], json!({"type": "disabled"}), "mode kept");
        assert_eq!(f["tool_choice"], "auto", "the typed option wins");
        assert!(!f.contains_key("model") && !f.contains_key("stream"));
        let mut keys: Vec<&str> = dropped.iter().map(|d| d.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec!["model", "stream", "temperature", "thinking"]);

        // A model without fixed sampling takes any temperature per request.
        let p = resolve(
            "llama",
            ChatTemplateKwargs,
            None,
            json!({"temperature": 0.6}),
        )
        .unwrap();
        let (f, dropped) = p.request_fields(
            &LlmOptions::new().with_extra("temperature", json!(0.2)),
            false,
        );
        assert!(dropped.is_empty());
        assert_eq!(f["temperature"], 0.2);
    }
}
