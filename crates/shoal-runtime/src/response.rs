//! Binary results: what a handler's `shoal.Response(body, content_type=..,
//! status=.., headers=.., cookies=..)` becomes.
//!
//! A result is JSON text everywhere (`Outcome::Succeeded`): records, job
//! results, the cache. A `Response` is the JSON object whose only member is
//! `$response` (the *envelope*), every field present but `cookies`, which
//! is there only when the response sets cookies (a list of `Set-Cookie`
//! values, each its own header in the HTTP answer):
//!
//! ```json
//! {"$response":{"status":200,"content_type":"image/png","headers":{"x-tile":"3"},"body_base64":"iVBORw0K"}}
//! {"$response":{"status":200,"content_type":"text/plain","headers":{},"body_base64":"","cookies":["sid=1; Path=/"]}}
//! ```
//!
//! The runner never produces that shape from a plain value (a handler's
//! dict of the single key `$response` is refused as `bad_result`), so the
//! envelope always means a `Response`. Only a synchronous invoke over HTTP
//! answers with the body's bytes themselves, its status, content type and
//! headers.
//!
//! The rules ([`BinaryResult::check`]) hold whatever runtime produced the
//! envelope: the engine turns an envelope that breaks them into a
//! `bad_result` failure, so a record never holds a `Response` that cannot
//! be answered.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use shoal_types::{Failure, FailureKind, Outcome};

/// The envelope's only key.
pub const RESPONSE_KEY: &str = "$response";
/// Most headers a response may set.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of one header's name or value (and of the content type).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most bytes of all header names and values together (cookies count).
pub const MAX_HEADERS_TOTAL: usize = 64 * 1024;
/// Most cookies a response may set.
pub const MAX_COOKIES: usize = 64;

/// Headers a function may not set: hop-by-hop ones, the framing the server
/// owns, and `content-type` (the `content_type` field sets it).
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
];
/// Names the node's own headers start with.
const RESERVED_PREFIX: &str = "shoal-";

/// A `Response` a handler returned, decoded from its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryResult {
    pub status: u16,
    pub content_type: String,
    /// Names in lowercase.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// `Set-Cookie` values, in order; one header each.
    pub cookies: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    status: u16,
    content_type: String,
    headers: BTreeMap<String, String>,
    body_base64: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "$response")]
    response: &'a Fields,
}

/// True when `output` (a result's JSON text) is an envelope — possibly a
/// broken one, which [`BinaryResult::parse`] reports. Cheap: a prefix test.
pub fn is_envelope(output: &str) -> bool {
    let rest = output.trim_start();
    let Some(rest) = rest.strip_prefix('{') else {
        return false;
    };
    rest.trim_start().starts_with("\"$response\"")
}

impl BinaryResult {
    /// The `Response` in `output`: `None` when it is a plain JSON result;
    /// `Some(Err(why))` for an envelope that is malformed or breaks the
    /// rules of [`BinaryResult::check`].
    pub fn parse(output: &str) -> Option<Result<BinaryResult, String>> {
        if !is_envelope(output) {
            return None;
        }
        let mut object: BTreeMap<String, serde_json::Value> = match serde_json::from_str(output) {
            Ok(o) => o,
            // Not an object after all (or not JSON): not an envelope.
            Err(_) => return None,
        };
        if object.len() != 1 {
            // `{"$response": .., "other": ..}` is a plain object.
            return None;
        }
        let inner = object.remove(RESPONSE_KEY)?;
        Some(Self::from_fields(inner))
    }

    fn from_fields(inner: serde_json::Value) -> Result<BinaryResult, String> {
        let fields: Fields =
            serde_json::from_value(inner).map_err(|e| format!("the response is malformed: {e}"))?;
        let body = STANDARD
            .decode(fields.body_base64.as_bytes())
            .map_err(|e| format!("the response's body_base64 is not base64: {e}"))?;
        let result = BinaryResult {
            status: fields.status,
            content_type: fields.content_type,
            headers: fields
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body,
            cookies: fields.cookies,
        };
        result.check()?;
        Ok(result)
    }

    /// The envelope's JSON text.
    pub fn to_json(&self) -> String {
        let fields = Fields {
            status: self.status,
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            body_base64: STANDARD.encode(&self.body),
            cookies: self.cookies.clone(),
        };
        serde_json::to_string(&Envelope { response: &fields })
            .expect("strings and maps always encode")
    }

    /// The rules a response must follow to be answered over HTTP as it is:
    /// a status from 200 to 599 (no body with 204, 205 or 304); a content
    /// type and header values of visible ASCII, spaces and tabs; header
    /// names of HTTP token characters; no hop-by-hop header, no
    /// `content-length`, `content-type` (the field sets it) or `shoal-*`;
    /// at most [`MAX_HEADERS`] headers of [`MAX_HEADER_BYTES`] each and
    /// [`MAX_HEADERS_TOTAL`] together.
    pub fn check(&self) -> Result<(), String> {
        if !(200..=599).contains(&self.status) {
            return Err(format!(
                "the response's status {} is not between 200 and 599",
                self.status
            ));
        }
        if matches!(self.status, 204 | 205 | 304) && !self.body.is_empty() {
            return Err(format!(
                "a response with status {} cannot have a body",
                self.status
            ));
        }
        if self.content_type.is_empty() {
            return Err("the response's content type is empty".into());
        }
        check_value("the content type", &self.content_type)?;
        if self.headers.len() > MAX_HEADERS {
            return Err(format!(
                "the response sets {} headers; at most {MAX_HEADERS} are allowed",
                self.headers.len()
            ));
        }
        let mut total = 0;
        for (name, value) in &self.headers {
            check_name(name)?;
            check_value(&format!("header {name:?}"), value)?;
            total += name.len() + value.len();
        }
        if self.cookies.len() > MAX_COOKIES {
            return Err(format!(
                "the response sets {} cookies; at most {MAX_COOKIES} are allowed",
                self.cookies.len()
            ));
        }
        for cookie in &self.cookies {
            check_value("a cookie", cookie)?;
            let name = cookie.split(';').next().and_then(|c| c.split_once('='));
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if !name.is_some_and(|(n, _)| !n.trim().is_empty() && n.trim().bytes().all(token)) {
                return Err(format!(
                    "the response's cookie {cookie:?} is not a Set-Cookie value (NAME=VALUE, then attributes after ';')"
                ));
            }
            total += "set-cookie".len() + cookie.len();
        }
        if total > MAX_HEADERS_TOTAL {
            return Err(format!(
                "the response's headers take {total} bytes; at most {MAX_HEADERS_TOTAL} are allowed"
            ));
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_BYTES || !name.bytes().all(token) {
        return Err(format!(
            "the response's header name {name:?} is not a valid HTTP header name"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower == "content-type" {
        return Err("the response sets content-type as a header; use content_type".into());
    }
    if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "the response may not set the header {lower:?} (the node sets the framing of its answers)"
        ));
    }
    if lower.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "the response may not set the header {lower:?}: shoal-* headers are the node's"
        ));
    }
    Ok(())
}

fn check_value(what: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(format!(
            "{what} of the response is {} bytes; at most {MAX_HEADER_BYTES} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| !(c == '\t' || (' '..='~').contains(&c)))
    {
        return Err(format!(
            "{what} of the response holds {c:?}; only visible ASCII, spaces and tabs are allowed"
        ));
    }
    Ok(())
}

/// Turns a successful outcome whose result is a broken envelope into a
/// `bad_result` failure; every other outcome is left as it is.
pub fn check_outcome(outcome: &mut Outcome) {
    if let Outcome::Succeeded(output) = outcome
        && let Some(Err(why)) = BinaryResult::parse(output)
    {
        *outcome = Outcome::Failed(Failure::new(FailureKind::BadResult, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> BinaryResult {
        BinaryResult {
            status: 201,
            content_type: "image/png".into(),
            headers: [("x-tile".to_string(), "3/4".to_string())].into(),
            body: b"\x89PNG\r\n\x1a\n\x00\xff".to_vec(),
            cookies: vec![],
        }
    }

    #[test]
    fn envelopes_round_trip() {
        let r = png();
        let json = r.to_json();
        assert_eq!(
            json,
            r#"{"$response":{"status":201,"content_type":"image/png","headers":{"x-tile":"3/4"},"body_base64":"iVBORw0KGgoA/w=="}}"#
        );
        assert_eq!(BinaryResult::parse(&json), Some(Ok(r)));
        // Upper-case names are taken in lowercase.
        let upper = json.replace("x-tile", "X-Tile");
        assert_eq!(
            BinaryResult::parse(&upper).unwrap().unwrap().headers["x-tile"],
            "3/4"
        );
    }

    #[test]
    fn cookies_travel_only_when_set() {
        let mut r = png();
        r.cookies = vec!["sid=abc; Path=/; HttpOnly".into(), "theme=dark".into()];
        let json = r.to_json();
        assert!(
            json.ends_with(r#""cookies":["sid=abc; Path=/; HttpOnly","theme=dark"]}}"#),
            "{json}"
        );
        assert_eq!(BinaryResult::parse(&json), Some(Ok(r)));
        assert!(!png().to_json().contains("cookies"));
    }

    #[test]
    fn plain_results_are_not_envelopes() {
        for plain in [
            "1",
            "null",
            "\"$response\"",
            "{}",
            r#"{"a":{"$response":1}}"#,
            r#"{"$response":1,"other":2}"#,
            r#"[{"$response":1}]"#,
        ] {
            assert_eq!(BinaryResult::parse(plain), None, "{plain}");
        }
        assert!(is_envelope(r#" { "$response": 1}"#));
    }

    #[track_caller]
    fn refused(json: &str, expect: &str) {
        match BinaryResult::parse(json) {
            Some(Err(why)) => assert!(why.contains(expect), "{json}: {why}"),
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn broken_envelopes_are_refused() {
        refused(r#"{"$response":1}"#, "malformed");
        refused(
            r#"{"$response":{"status":200,"content_type":"a/b","headers":{}}}"#,
            "body_base64",
        );
        refused(
            r#"{"$response":{"status":200,"content_type":"a/b","headers":{},"body_base64":"","x":1}}"#,
            "unknown field",
        );
        refused(
            r#"{"$response":{"status":200,"content_type":"a/b","headers":{},"body_base64":"!!"}}"#,
            "not base64",
        );
    }

    #[track_caller]
    fn breaks(change: impl FnOnce(&mut BinaryResult), expect: &str) {
        let mut r = png();
        change(&mut r);
        let why = r.check().unwrap_err();
        assert!(why.contains(expect), "{why}");
        // The same through the envelope, and as an outcome.
        let mut outcome = Outcome::Succeeded(r.to_json());
        check_outcome(&mut outcome);
        match outcome {
            Outcome::Failed(f) => {
                assert_eq!(f.kind, FailureKind::BadResult);
                assert_eq!(f.message, why);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rules_hold() {
        assert_eq!(png().check(), Ok(()));
        breaks(|r| r.status = 199, "not between 200 and 599");
        breaks(|r| r.status = 600, "not between 200 and 599");
        breaks(|r| r.status = 204, "cannot have a body");
        breaks(|r| r.content_type = String::new(), "content type is empty");
        breaks(
            |r| r.content_type = "a/b\r\nx: y".into(),
            "only visible ASCII",
        );
        for name in [
            "connection",
            "transfer-encoding",
            "content-length",
            "keep-alive",
            "upgrade",
        ] {
            breaks(
                |r| {
                    r.headers.insert(name.into(), "1".into());
                },
                "may not set the header",
            );
        }
        breaks(
            |r| {
                r.headers.insert("content-type".into(), "a/b".into());
            },
            "use content_type",
        );
        breaks(
            |r| {
                r.headers.insert("shoal-invocation-id".into(), "x".into());
            },
            "shoal-* headers",
        );
        breaks(
            |r| {
                r.headers.insert("bad name".into(), "x".into());
            },
            "not a valid HTTP header name",
        );
        breaks(
            |r| {
                r.headers.insert("x-a".into(), "line\nbreak".into());
            },
            "only visible ASCII",
        );
        breaks(
            |r| {
                r.headers.insert("x-a".into(), "é".into());
            },
            "only visible ASCII",
        );
        breaks(
            |r| {
                for i in 0..=MAX_HEADERS {
                    r.headers.insert(format!("x-{i}"), "1".into());
                }
            },
            "at most 64",
        );
        breaks(
            |r| {
                for i in 0..9 {
                    r.headers.insert(format!("x-{i}"), "v".repeat(8000));
                }
            },
            "headers take",
        );
        breaks(
            |r| r.cookies = vec!["no-equals".into()],
            "not a Set-Cookie value",
        );
        breaks(|r| r.cookies = vec!["=v".into()], "not a Set-Cookie value");
        breaks(
            |r| r.cookies = vec!["a=b\r\nx: y".into()],
            "only visible ASCII",
        );
        breaks(
            |r| r.cookies = (0..=MAX_COOKIES).map(|i| format!("c{i}=1")).collect(),
            "cookies; at most 64",
        );
        let mut empty = png();
        empty.status = 204;
        empty.body.clear();
        assert_eq!(empty.check(), Ok(()));
    }

    #[test]
    fn good_outcomes_are_left_alone() {
        let mut ok = Outcome::Succeeded(png().to_json());
        check_outcome(&mut ok);
        assert_eq!(ok, Outcome::Succeeded(png().to_json()));
        let mut plain = Outcome::Succeeded(r#"{"$response":1,"b":2}"#.into());
        check_outcome(&mut plain);
        assert!(matches!(plain, Outcome::Succeeded(_)));
    }
}
