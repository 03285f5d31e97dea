//! The golden JSON forms of `shoal.Response` (`tests/golden/response/`, see
//! its README): every result the runner sends decodes into the Response its
//! arguments describe and encodes back to the very same bytes. The Python
//! side checks that it sends these bytes
//! (`crates/shoal-runtime-python/tests/python/test_response_golden.py`).

use std::collections::BTreeMap;

use serde::Deserialize;

use shoal_runtime::response::BinaryResult;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    args: Args,
    result: String,
}

#[derive(Deserialize)]
struct Args {
    body_hex: Option<String>,
    body_text: Option<String>,
    content_type: Option<String>,
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cookies: Vec<String>,
}

#[test]
fn golden_responses_decode_and_encode_back() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/response/responses.json"
    );
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(golden.cases.len() >= 5);
    for case in golden.cases {
        let name = &case.name;
        let decoded = BinaryResult::parse(&case.result)
            .unwrap_or_else(|| panic!("{name}: not a Response"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (body, default_type) = match (&case.args.body_hex, &case.args.body_text) {
            (Some(hex), None) => (hex::decode(hex).unwrap(), "application/octet-stream"),
            (None, Some(text)) => (text.as_bytes().to_vec(), "text/plain; charset=utf-8"),
            _ => panic!("{name}: give body_hex or body_text"),
        };
        assert_eq!(decoded.body, body, "{name}");
        assert_eq!(decoded.status, case.args.status.unwrap_or(200), "{name}");
        let headers: BTreeMap<String, String> = case
            .args
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        assert_eq!(decoded.headers, headers, "{name}");
        assert_eq!(decoded.cookies, case.args.cookies, "{name}");
        match &case.args.content_type {
            // A str body's text type gains a charset; the runner's to say.
            Some(given) => assert!(decoded.content_type.starts_with(given.as_str()), "{name}"),
            None => assert_eq!(decoded.content_type, default_type, "{name}"),
        }
        assert_eq!(decoded.to_json(), case.result, "{name}: encodes back");
    }
}
