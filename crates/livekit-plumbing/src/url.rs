//! Service URLs: a configured base (`LIVEKIT_URL`, `LIVEKIT_INFERENCE_URL`,
//! a `base_url`) plus the endpoint's path, in the scheme family the client
//! speaks. Parsed and built with the `url` crate; query values are
//! percent-encoded with one set for every client.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// Which scheme family a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http` or `https`; a `ws(s)` base is refused.
    Http,
    /// `ws` or `wss`; an `http(s)` base maps onto it (`http` → `ws`,
    /// `https` → `wss`), as LiveKit's SDKs do with `LIVEKIT_URL`.
    WebSocket,
}

/// A base URL that cannot be used. Holds no part of the URL: a base may
/// carry credentials in its user-info.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Parse(#[from] url::ParseError),
    #[error("the URL must start with {expected}, not {found}://")]
    Scheme {
        expected: &'static str,
        found: String,
    },
    #[error("the URL has no host")]
    NoHost,
}

/// What a query value keeps unescaped: RFC 3986's unreserved characters, and
/// `/` and `:`, which a query may hold as they are (model ids such as
/// `deepgram/nova-3` stay readable, and the gateway matches them verbatim).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':');

/// `base`'s scheme in `scheme`'s family, `path` appended to `base`'s path (a
/// path prefix is kept, slashes between are not doubled), `base`'s query and
/// fragment dropped: a base names a place, the endpoint says what to ask.
///
/// `service_url("http://h:7880/", Scheme::WebSocket, "agent")` is
/// `ws://h:7880/agent`.
pub fn service_url(base: &str, scheme: Scheme, path: &str) -> Result<Url, UrlError> {
    let mut url = Url::parse(base.trim())?;
    let target = match (scheme, url.scheme()) {
        (Scheme::Http, s @ ("http" | "https")) => s.to_owned(),
        (Scheme::WebSocket, "http" | "ws") => "ws".to_owned(),
        (Scheme::WebSocket, "https" | "wss") => "wss".to_owned(),
        (Scheme::Http, other) => {
            return Err(UrlError::Scheme {
                expected: "http:// or https://",
                found: other.to_owned(),
            });
        }
        (Scheme::WebSocket, other) => {
            return Err(UrlError::Scheme {
                expected: "ws://, wss://, http:// or https://",
                found: other.to_owned(),
            });
        }
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    if url.scheme() != target {
        // Between special schemes with the same default port: cannot fail.
        url.set_scheme(&target).map_err(|()| UrlError::Scheme {
            expected: "ws://, wss://, http:// or https://",
            found: url.scheme().to_owned(),
        })?;
    }
    url.set_query(None);
    url.set_fragment(None);
    let mut full = url.path().trim_end_matches('/').to_owned();
    let tail = path.trim_matches('/');
    if !tail.is_empty() {
        full.push('/');
        full.push_str(tail);
    }
    if full.is_empty() {
        full.push('/');
    }
    url.set_path(&full);
    Ok(url)
}

/// `value` percent-encoded for a query string (see `QUERY_VALUE`).
pub fn encode_query_value(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Replaces `url`'s query with `pairs`, keys and values percent-encoded.
pub fn set_query<'a>(url: &mut Url, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let mut query = String::new();
    for (key, value) in pairs {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&encode_query_value(key));
        query.push('=');
        query.push_str(&encode_query_value(value));
    }
    url.set_query((!query.is_empty()).then_some(query.as_str()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(base: &str, path: &str) -> Result<String, UrlError> {
        service_url(base, Scheme::WebSocket, path).map(String::from)
    }

    #[test]
    fn http_maps_onto_ws_and_the_path_goes_under_the_base() {
        assert_eq!(ws("http://h:7880", "agent").unwrap(), "ws://h:7880/agent");
        assert_eq!(ws("https://h/", "agent").unwrap(), "wss://h/agent");
        assert_eq!(ws("ws://h", "agent").unwrap(), "ws://h/agent");
        assert_eq!(ws("WSS://H.example", "rtc").unwrap(), "wss://h.example/rtc");
        assert_eq!(
            ws(" http://127.0.0.1:9/v1/ ", "stt").unwrap(),
            "ws://127.0.0.1:9/v1/stt"
        );
        // A prefix is kept; the base's query and fragment are not.
        assert_eq!(
            ws("wss://example.test/base/?x=1#f", "rtc").unwrap(),
            "wss://example.test/base/rtc"
        );
        assert_eq!(ws("http://h/v1//", "/stt/").unwrap(), "ws://h/v1/stt");
        assert_eq!(ws("http://h/v1/", "").unwrap(), "ws://h/v1");
        assert_eq!(ws("http://h", "").unwrap(), "ws://h/");
        // Default ports vanish with the mapping, others stay.
        assert_eq!(ws("https://h:443/", "a").unwrap(), "wss://h/a");
        assert_eq!(ws("http://[::1]:7880", "a").unwrap(), "ws://[::1]:7880/a");
    }

    #[test]
    fn http_clients_keep_http_and_refuse_ws() {
        let http = |b| service_url(b, Scheme::Http, "chat/completions").map(String::from);
        assert_eq!(
            http("http://h/v1/").unwrap(),
            "http://h/v1/chat/completions"
        );
        assert_eq!(
            http("https://h/v1").unwrap(),
            "https://h/v1/chat/completions"
        );
        assert!(matches!(
            http("ws://h/v1"),
            Err(UrlError::Scheme { found, .. }) if found == "ws"
        ));
    }

    #[test]
    fn unusable_bases_are_refused_without_quoting_them() {
        assert!(matches!(
            ws("h:7880", "agent"),
            Err(UrlError::Scheme { .. })
        ));
        assert!(matches!(
            ws("ftp://x", "agent"),
            Err(UrlError::Scheme { .. })
        ));
        assert!(matches!(ws("nohost", "agent"), Err(UrlError::Parse(_))));
        assert!(matches!(ws("ws://", "agent"), Err(UrlError::Parse(_))));
        let e = ws("ftp://user:hunter2@x", "a").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn query_values_are_percent_encoded_once() {
        assert_eq!(encode_query_value("deepgram/nova-3"), "deepgram/nova-3");
        assert_eq!(encode_query_value("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(encode_query_value("PA_a b"), "PA_a%20b");
        assert_eq!(encode_query_value("é"), "%C3%A9");
        let mut url = service_url("https://gw/v1", Scheme::WebSocket, "tts").unwrap();
        set_query(&mut url, [("model", "cartesia/sonic-2"), ("x y", "1%")]);
        assert_eq!(
            url.as_str(),
            "wss://gw/v1/tts?model=cartesia/sonic-2&x%20y=1%25"
        );
        set_query(&mut url, []);
        assert_eq!(url.as_str(), "wss://gw/v1/tts");
    }
}
