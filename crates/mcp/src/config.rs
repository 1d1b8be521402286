//! The `[[mcp]]` tables of `agent.toml`: [`McpServerConfig`], its checks
//! ([`McpServerConfig::validate`], [`validate_all`]) and its resolution into
//! what the connect loop uses ([`Resolved`]), where `env:NAME` values are
//! read from the environment.
//!
//! Header values and child environment values may be secrets: `Debug` shows
//! only their keys, errors name keys and variable names, never values,
//! resolved header values are marked sensitive, resolved environment values
//! are `livekit_plumbing::Secret`s, and both are known to the resolution's
//! `Redactor`, which scrubs them from what a server or a child says.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use livekit_plumbing::{Redactor, Secret};
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::error::McpError;

/// The default `timeout`, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;
/// The longest `timeout` accepted, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 600.0;

/// The prefix of a value read from an environment variable.
const ENV_PREFIX: &str = "env:";

/// Headers rmcp's Streamable HTTP client sets itself and refuses as custom
/// headers.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// One MCP server, as a `[[mcp]]` table of `agent.toml`:
///
/// ```toml
/// [[mcp]]
/// name = "everything"
/// command = "node"                    # stdio: a child process, stopped with the agent
/// args = ["dist/index.js", "stdio"]
/// # env = { KEY = "value" }, cwd = "…" (stdio only)
/// # url = "http://127.0.0.1:3001/mcp" # or Streamable HTTP: exactly one of command / url
/// # headers = { Authorization = "env:MCP_TOKEN" }  # "env:NAME" reads a variable
/// allowed_tools = ["get-sum"]         # optional filter
/// timeout = 10.0                      # seconds per call
/// ```
///
/// A stdio server inherits the agent's environment, plus `env`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct McpServerConfig {
    /// Names the server in logs and errors; unique among the servers.
    pub name: String,
    /// The program of a stdio server.
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables added to its environment; a value `env:NAME` is read from
    /// the agent's variable `NAME`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory (the agent's otherwise).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The endpoint of a Streamable HTTP server.
    #[serde(default)]
    pub url: Option<String>,
    /// Headers sent with every HTTP request; a value `env:NAME` is read from
    /// the variable `NAME`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Offer only these of the server's tools (all when absent).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Seconds one call may take.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn default_timeout() -> f64 {
    DEFAULT_TIMEOUT_SECS
}

impl McpServerConfig {
    /// A stdio server: `command` started as a child process.
    pub fn stdio(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            command: Some(command.into()),
            ..Self::empty(name.into())
        }
    }

    /// A Streamable HTTP server at `url`.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::empty(name.into())
        }
    }

    fn empty(name: String) -> Self {
        Self {
            name,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            url: None,
            headers: BTreeMap::new(),
            allowed_tools: None,
            timeout: DEFAULT_TIMEOUT_SECS,
        }
    }

    /// Sets the arguments of a stdio server.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a variable to a stdio server's environment.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets a stdio server's working directory.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Adds a header to an HTTP server's requests.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Offers only these tools.
    pub fn allowed_tools<I, S>(mut self, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_tools = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the time one call may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.as_secs_f64();
        self
    }

    /// Checks this server's values; keys in errors start with `mcp`
    /// (`mcp.url`). [`validate_all`] checks a file's servers with their
    /// index (`mcp[2].url`) and that their names are unique.
    ///
    /// Variables named by `env:NAME` are looked up when the server starts.
    pub fn validate(&self) -> Result<(), McpError> {
        self.validate_at("mcp")
    }

    pub(crate) fn validate_at(&self, at: &str) -> Result<(), McpError> {
        if self.name.trim().is_empty() {
            return Err(McpError::config(format!("{at}.name"), "must not be empty"));
        }
        match (&self.command, &self.url) {
            (None, None) => {
                return Err(McpError::config(
                    at,
                    "set `command` (a stdio server) or `url` (a Streamable HTTP server)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(McpError::config(
                    format!("{at}.url"),
                    "`command` is set too: a server is either stdio (`command`) or Streamable HTTP (`url`)",
                ));
            }
            (Some(command), None) => {
                if command.trim().is_empty() {
                    return Err(McpError::config(
                        format!("{at}.command"),
                        "must not be empty",
                    ));
                }
                if !self.headers.is_empty() {
                    return Err(McpError::config(
                        format!("{at}.headers"),
                        "only a Streamable HTTP server (`url`) takes headers",
                    ));
                }
                for (key, value) in &self.env {
                    let key_at = format!("{at}.env.{key}");
                    if key.is_empty() || key.contains(['=', '\0']) {
                        return Err(McpError::config(
                            key_at,
                            "is not a valid environment variable name",
                        ));
                    }
                    check_env_reference(&key_at, value)?;
                }
            }
            (None, Some(url)) => {
                check_url(&format!("{at}.url"), url)?;
                for (key, value) in [
                    ("args", !self.args.is_empty()),
                    ("env", !self.env.is_empty()),
                    ("cwd", self.cwd.is_some()),
                ] {
                    if value {
                        return Err(McpError::config(
                            format!("{at}.{key}"),
                            "only a stdio server (`command`) takes it",
                        ));
                    }
                }
                for (name, value) in &self.headers {
                    let key_at = format!("{at}.headers.{name}");
                    header_name(&key_at, name)?;
                    if check_env_reference(&key_at, value)?.is_none() {
                        header_value(&key_at, value.clone())?;
                    }
                }
            }
        }
        if let Some(tools) = &self.allowed_tools {
            if tools.is_empty() {
                return Err(McpError::config(
                    format!("{at}.allowed_tools"),
                    "names no tool: leave it out to offer all of the server's tools",
                ));
            }
            if let Some(i) = tools.iter().position(|t| t.trim().is_empty()) {
                return Err(McpError::config(
                    format!("{at}.allowed_tools[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= MAX_TIMEOUT_SECS) {
            return Err(McpError::config(
                format!("{at}.timeout"),
                format!(
                    "must be more than 0 and at most {MAX_TIMEOUT_SECS} seconds, not {}",
                    self.timeout
                ),
            ));
        }
        Ok(())
    }

    /// The time one call may take (call [`validate`](Self::validate) first:
    /// an invalid value gives the default).
    pub fn timeout_duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS))
    }

    /// Checks the values, reads `env:NAME` values from `lookup`, and builds
    /// what the connect loop needs.
    pub(crate) fn resolve(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Resolved, McpError> {
        let at = format!("mcp[{}]", self.name);
        self.validate_at(&at)?;
        let mut redactor = Redactor::default();
        let transport = match (&self.command, &self.url) {
            (Some(command), _) => {
                let mut env = Vec::with_capacity(self.env.len());
                for (key, value) in &self.env {
                    let key_at = format!("{at}.env.{key}");
                    let value = Secret::new(resolve_value(&key_at, value, lookup)?);
                    redactor.add(&value);
                    env.push((key.clone(), value));
                }
                Transport::Stdio {
                    command: command.clone(),
                    args: self.args.clone(),
                    env,
                    cwd: self.cwd.clone(),
                }
            }
            (None, Some(url)) => {
                let mut headers = HashMap::with_capacity(self.headers.len());
                for (name, value) in &self.headers {
                    let key_at = format!("{at}.headers.{name}");
                    let value = resolve_value(&key_at, value, lookup)?;
                    redact_header_value(&mut redactor, &value);
                    headers.insert(header_name(&key_at, name)?, header_value(&key_at, value)?);
                }
                Transport::Http {
                    url: url.clone(),
                    headers,
                }
            }
            (None, None) => return Err(McpError::config(at, "set `command` or `url`")),
        };
        Ok(Resolved {
            name: self.name.clone(),
            transport,
            redactor,
            allowed_tools: self.allowed_tools.clone(),
            timeout: self.timeout_duration(),
        })
    }
}

/// Shows keys only for `env` and `headers`: their values may be secrets.
impl fmt::Debug for McpServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpServerConfig")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &Redacted(&self.env))
            .field("cwd", &self.cwd)
            .field("url", &self.url)
            .field("headers", &Redacted(&self.headers))
            .field("allowed_tools", &self.allowed_tools)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A map shown as `{key: "[redacted]", …}`.
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[redacted]")))
            .finish()
    }
}

/// Checks every server of a file (keys `mcp[i].…`) and that no two share a
/// name.
pub fn validate_all(servers: &[McpServerConfig]) -> Result<(), McpError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(servers.len());
    for (i, server) in servers.iter().enumerate() {
        server.validate_at(&format!("mcp[{i}]"))?;
        if let Some(first) = seen.insert(server.name.trim(), i) {
            return Err(McpError::config(
                format!("mcp[{i}].name"),
                format!("\"{}\" is also the name of mcp[{first}]", server.name),
            ));
        }
    }
    Ok(())
}

/// A server's configuration with `env:` values read and headers parsed.
pub(crate) struct Resolved {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    /// Knows every resolved header and environment value: scrubs them from
    /// what a server or a child says before it is logged or shown.
    pub(crate) redactor: Redactor,
    pub(crate) allowed_tools: Option<Vec<String>>,
    pub(crate) timeout: Duration,
}

/// How to reach a server.
pub(crate) enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        /// Resolved values: may hold secrets, never logged.
        env: Vec<(String, Secret)>,
        cwd: Option<PathBuf>,
    },
    Http {
        url: String,
        /// Values marked sensitive: their `Debug` prints `Sensitive`.
        headers: HashMap<HeaderName, HeaderValue>,
    },
}

impl Transport {
    /// What to call this transport in logs (no secrets: the URL and program).
    pub(crate) fn describe(&self) -> String {
        match self {
            Transport::Stdio { command, .. } => format!("stdio `{command}`"),
            Transport::Http { url, .. } => format!("Streamable HTTP {url}"),
        }
    }
}

/// `Some(NAME)` for a value `env:NAME`; an error for `env:` alone.
fn check_env_reference<'a>(key: &str, value: &'a str) -> Result<Option<&'a str>, McpError> {
    match value.strip_prefix(ENV_PREFIX) {
        None => Ok(None),
        Some(var) if var.trim().is_empty() || var.contains(['=', '\0']) => Err(McpError::config(
            key,
            "`env:` must be followed by the name of an environment variable",
        )),
        Some(var) => Ok(Some(var.trim())),
    }
}

fn resolve_value(
    key: &str,
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, McpError> {
    match check_env_reference(key, value)? {
        None => Ok(value.to_string()),
        Some(var) => lookup(var).ok_or_else(|| McpError::EnvVarUnset {
            key: key.to_string(),
            var: var.to_string(),
        }),
    }
}

/// Reads a variable of the process environment (unset if not UTF-8).
pub(crate) fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

fn check_url(key: &str, url: &str) -> Result<(), McpError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(_) => Err(McpError::config(
            key,
            format!("\"{url}\" is not an http:// or https:// URL"),
        )),
        Err(e) => Err(McpError::config(
            key,
            format!("\"{url}\" is not a valid URL: {e}"),
        )),
    }
}

fn header_name(key: &str, name: &str) -> Result<HeaderName, McpError> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| McpError::config(key, "is not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(McpError::config(
            key,
            "is set by the MCP client itself and cannot be configured",
        ));
    }
    Ok(parsed)
}

/// The value as a header, marked sensitive. The error never shows it.
/// Adds a header value to `redactor`, and its credentials alone when it has
/// an auth scheme in front (`Bearer TOKEN`): a server may echo either.
fn redact_header_value(redactor: &mut Redactor, value: &str) {
    redactor.add(&Secret::from(value));
    if let Some((scheme, credentials)) = value.trim().split_once(' ')
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        redactor.add(&Secret::from(credentials.trim()));
    }
}

fn header_value(key: &str, value: String) -> Result<HeaderValue, McpError> {
    let mut parsed = HeaderValue::try_from(value).map_err(|_| {
        McpError::config(
            key,
            "the value is not a valid HTTP header value (control characters?)",
        )
    })?;
    parsed.set_sensitive(true);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        mcp: Vec<McpServerConfig>,
    }

    fn parse(toml_text: &str) -> Result<Vec<McpServerConfig>, toml::de::Error> {
        toml::from_str::<File>(toml_text).map(|f| f.mcp)
    }

    fn key_of(result: Result<(), McpError>) -> String {
        match result {
            Err(e) => e
                .config_key()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string()),
            Ok(()) => "ok".into(),
        }
    }

    #[test]
    fn parses_the_documented_tables() {
        let servers = parse(
            r#"
            [[mcp]]
            name = "everything"
            command = "node"
            args = ["dist/index.js", "stdio"]
            env = { LOG = "1", TOKEN = "env:MY_TOKEN" }
            cwd = "/srv/mcp"
            allowed_tools = ["get-sum"]
            timeout = 2.5

            [[mcp]]
            name = "remote"
            url = "http://127.0.0.1:3001/mcp"
            headers = { Authorization = "env:MCP_TOKEN" }
            "#,
        )
        .expect("valid TOML");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].command.as_deref(), Some("node"));
        assert_eq!(servers[0].args, vec!["dist/index.js", "stdio"]);
        assert_eq!(servers[0].env["TOKEN"], "env:MY_TOKEN");
        assert_eq!(servers[0].cwd, Some(PathBuf::from("/srv/mcp")));
        assert_eq!(
            servers[0].allowed_tools.as_deref(),
            Some(&["get-sum".to_string()][..])
        );
        assert_eq!(servers[0].timeout_duration(), Duration::from_millis(2500));
        assert_eq!(servers[1].url.as_deref(), Some("http://127.0.0.1:3001/mcp"));
        assert_eq!(servers[1].timeout_duration(), Duration::from_secs(10));
        assert!(validate_all(&servers).is_ok());

        let typo = parse("[[mcp]]\nname = \"x\"\ncommand = \"node\"\ntimout = 3.0\n");
        let message = typo.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("timout"), "{message}");
    }

    #[test]
    fn errors_name_the_key_that_is_wrong() {
        let stdio = || McpServerConfig::stdio("a", "node");
        let http = || McpServerConfig::http("b", "http://127.0.0.1:1/mcp");
        let mut neither = stdio();
        neither.command = None;
        let mut both = stdio();
        both.url = Some("http://127.0.0.1:1/mcp".into());
        let cases: Vec<(McpServerConfig, &str)> = vec![
            (neither, "mcp[0]"),
            (both, "mcp[0].url"),
            (McpServerConfig::stdio(" ", "node"), "mcp[0].name"),
            (McpServerConfig::stdio("a", ""), "mcp[0].command"),
            (McpServerConfig::http("b", "ftp://host/x"), "mcp[0].url"),
            (McpServerConfig::http("b", "not a url"), "mcp[0].url"),
            (stdio().header("X-Key", "v"), "mcp[0].headers"),
            (http().args(["x"]), "mcp[0].args"),
            (http().env_var("K", "v"), "mcp[0].env"),
            (http().cwd("/tmp"), "mcp[0].cwd"),
            (http().header("bad name", "v"), "mcp[0].headers.bad name"),
            (http().header("Accept", "v"), "mcp[0].headers.Accept"),
            (http().header("X-Key", "a\nb"), "mcp[0].headers.X-Key"),
            (http().header("X-Key", "env:"), "mcp[0].headers.X-Key"),
            (stdio().env_var("A=B", "v"), "mcp[0].env.A=B"),
            (
                stdio().allowed_tools(Vec::<String>::new()),
                "mcp[0].allowed_tools",
            ),
            (stdio().allowed_tools(["ok", ""]), "mcp[0].allowed_tools[1]"),
            (stdio().timeout(Duration::ZERO), "mcp[0].timeout"),
        ];
        for (config, key) in cases {
            assert_eq!(
                key_of(validate_all(std::slice::from_ref(&config))),
                key,
                "{config:?}"
            );
        }
        for bad in [-1.0, 601.0, f64::NAN, f64::INFINITY] {
            let mut config = stdio();
            config.timeout = bad;
            assert_eq!(key_of(validate_all(&[config])), "mcp[0].timeout");
        }
        assert_eq!(key_of(validate_all(&[stdio(), http()])), "ok");
        assert_eq!(
            key_of(validate_all(&[stdio(), http(), stdio()])),
            "mcp[2].name"
        );
        let dup = validate_all(&[stdio(), http(), stdio()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(dup.contains("mcp[0]"), "{dup}");
        assert_eq!(
            key_of(stdio().allowed_tools(["x", ""]).validate()),
            "mcp.allowed_tools[1]"
        );
    }

    #[test]
    fn env_values_are_read_at_resolution_and_never_shown() {
        let secret = "s3cr3t-token-value";
        let config = McpServerConfig::http("remote", "http://127.0.0.1:1/mcp")
            .header("Authorization", "env:MCP_TOKEN")
            .header("X-Plain", "plain-secret-too");
        let lookup = |var: &str| (var == "MCP_TOKEN").then(|| format!("Bearer {secret}"));
        let resolved = config.resolve(&lookup).expect("variable set");
        // What a server echoes is scrubbed: the whole value, or the token.
        let echoed = format!("refused Bearer {secret}; token {secret}; plain-secret-too");
        let scrubbed = resolved.redactor.clean(&echoed);
        assert_eq!(scrubbed, "refused [redacted]; token [redacted]; [redacted]");
        let Transport::Http { headers, .. } = &resolved.transport else {
            panic!("an HTTP transport");
        };
        let auth = headers
            .get(&reqwest::header::AUTHORIZATION)
            .expect("header set");
        assert_eq!(auth.to_str().ok(), Some(&*format!("Bearer {secret}")));
        assert!(auth.is_sensitive());
        let shown = format!("{config:?} {headers:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains("plain-secret-too"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");

        let unset = config
            .resolve(&|_: &str| None)
            .err()
            .expect("variable unset");
        assert!(
            matches!(&unset, McpError::EnvVarUnset { var, .. } if var == "MCP_TOKEN"),
            "{unset:?}"
        );
        assert_eq!(
            unset.config_key(),
            Some("mcp[remote].headers.Authorization")
        );
        assert!(unset.to_string().contains("MCP_TOKEN"), "{unset}");

        // A value that is not a valid header says so without showing it.
        let bad = config
            .resolve(&|_: &str| Some(format!("{secret}\r\n")))
            .err();
        let text = bad.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("headers.Authorization"), "{text}");
        assert!(!text.contains(secret), "{text}");

        let child = McpServerConfig::stdio("local", "node")
            .env_var("API_KEY", "env:THE_KEY")
            .env_var("MODE", "fast");
        let resolved = child
            .resolve(&|var: &str| (var == "THE_KEY").then(|| secret.to_string()))
            .expect("variable set");
        let Transport::Stdio { env, .. } = &resolved.transport else {
            panic!("a stdio transport");
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(env, vec![("API_KEY", secret), ("MODE", "fast")]);
        assert!(
            !resolved
                .redactor
                .clean(&format!("key={secret}"))
                .contains(secret)
        );
        assert!(!format!("{child:?}").contains("fast"));
        assert!(!resolved.transport.describe().contains(secret));
    }
}
