//! `/v1/kv`: the entry's shape, conditions and their conflicts, incr,
//! delete by version, list paging, percent-encoded keys, and every bad
//! input a 4xx with a JSON error that says why.

use shoal_types::Role;

use crate::app::{App, Caller, JSON, case, run_table};

#[tokio::test]
async fn set_get_incr_delete_and_the_entry_shape() {
    let app = App::new().await;
    let r = app
        .call(
            "PUT",
            "/v1/kv/cfg?ttl=30s",
            JSON,
            b"{\"a\": [1, 2]}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.json();
    assert_eq!(e["key"], "cfg");
    assert_eq!(e["value"], serde_json::json!({"a": [1, 2]}));
    let v1 = e["version"].as_u64().unwrap();
    let updated = e["updated_at_ms"].as_u64().unwrap();
    assert_eq!(e["expires_at_ms"].as_u64().unwrap(), updated + 30_000);

    let got = app.call("GET", "/v1/kv/cfg", None, vec![]).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json(), e);

    // Without a ttl: no expires_at_ms at all.
    let r = app.call("PUT", "/v1/kv/cfg", None, b"2".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json().get("expires_at_ms").is_none(), "{}", r.text);
    let v2 = r.json()["version"].as_u64().unwrap();
    assert!(v2 > v1);

    // A stale compare-and-set: 409 naming the current version.
    let r = app
        .call(
            "PUT",
            &format!("/v1/kv/cfg?version={v1}"),
            JSON,
            b"3".to_vec(),
        )
        .await;
    crate::app::check(&r, 409, "key_conflict", &format!("version {v2}")).unwrap();
    let r = app
        .call(
            "PUT",
            &format!("/v1/kv/cfg?version={v2}"),
            JSON,
            b"3".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = app
        .call("POST", "/v1/kv/cfg/incr?by=-5", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["value"], -2);
    let v3 = r.json()["version"].as_u64().unwrap();
    let r = app.call("POST", "/v1/kv/new/incr", None, vec![]).await;
    assert_eq!(r.json()["value"], 1, "{}", r.text);

    let r = app
        .call("DELETE", &format!("/v1/kv/cfg?version={v1}"), None, vec![])
        .await;
    crate::app::check(&r, 409, "key_conflict", &format!("version {v3}")).unwrap();
    let r = app
        .call("DELETE", &format!("/v1/kv/cfg?version={v3}"), None, vec![])
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    let r = app.call("GET", "/v1/kv/cfg", None, vec![]).await;
    crate::app::check(&r, 404, "key_not_found", "key `cfg` not found").unwrap();
    let r = app.call("DELETE", "/v1/kv/cfg", None, vec![]).await;
    crate::app::check(&r, 404, "key_not_found", "cfg").unwrap();
}

#[tokio::test]
async fn keys_are_percent_decoded_and_may_hold_slashes() {
    let app = App::new().await;
    let r = app
        .call("PUT", "/v1/kv/users%2F42%20x%3Fy", JSON, b"\"hi\"".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["key"], "users/42 x?y");
    let r = app
        .call("GET", "/v1/kv/users%2F42%20x%3Fy", None, vec![])
        .await;
    assert_eq!(r.json()["value"], "hi", "{}", r.text);
    let r = app
        .call("GET", "/v1/kv?prefix=users%2F", None, vec![])
        .await;
    assert_eq!(r.json()["entries"][0]["key"], "users/42 x?y", "{}", r.text);
}

#[tokio::test]
async fn nx_then_xx_and_list_pages() {
    let app = App::new().await;
    for k in ["a:1", "a:2", "a:3", "a:4", "b:1"] {
        let r = app
            .call("PUT", &format!("/v1/kv/{k}?nx=true"), JSON, b"1".to_vec())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = app
        .call("PUT", "/v1/kv/a:1?nx=true", JSON, b"1".to_vec())
        .await;
    crate::app::check(&r, 409, "key_conflict", "exists (nx)").unwrap();
    let r = app
        .call("PUT", "/v1/kv/zz?xx=true", JSON, b"1".to_vec())
        .await;
    crate::app::check(&r, 409, "key_conflict", "absent (xx)").unwrap();
    let r = app
        .call("PUT", "/v1/kv/a:1?xx=true&nx=false", JSON, b"5".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut keys = Vec::new();
    let mut path = "/v1/kv?prefix=a:&limit=3".to_string();
    loop {
        let page = app.call("GET", &path, None, vec![]).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let page = page.json();
        for e in page["entries"].as_array().unwrap() {
            keys.push(e["key"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => path = format!("/v1/kv?prefix=a:&limit=3&cursor={n}"),
            None => break,
        }
    }
    assert_eq!(keys, ["a:1", "a:2", "a:3", "a:4"]);
    let all = app.call("GET", "/v1/kv", None, vec![]).await.json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 5);
    assert!(all["next"].is_null());
}

#[tokio::test]
async fn reads_need_a_reader_and_writes_an_invoker() {
    let app = App::new().await;
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "PUT",
            "/v1/kv/k",
            JSON,
            b"1".to_vec(),
        )
        .await;
    crate::app::check(&r, 403, "forbidden", "invoker").unwrap();
    let r = app
        .call_as(
            Caller::As(Role::Invoker),
            "PUT",
            "/v1/kv/k",
            JSON,
            b"1".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .call_as(Caller::As(Role::Reader), "GET", "/v1/kv/k", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn bad_input_is_a_4xx_that_says_why() {
    let app = App::new().await;
    let r = app
        .call("PUT", "/v1/kv/word", JSON, b"\"text\"".to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let long = "k".repeat(513);
    let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
    let n = run_table(
        &app,
        "kv",
        vec![
            case(
                "GET",
                format!("/v1/kv/{long}"),
                None,
                "",
                400,
                "invalid_input",
                "at most 512",
            ),
            case(
                "GET",
                "/v1/kv/a%0Ab",
                None,
                "",
                400,
                "invalid_input",
                "control character U+000A",
            ),
            case(
                "GET",
                "/v1/kv/%FF",
                None,
                "",
                400,
                "invalid_input",
                "invalid path",
            ),
            case(
                "PUT",
                "/v1/kv/k",
                JSON,
                "",
                400,
                "invalid_input",
                "is empty",
            ),
            case(
                "PUT",
                "/v1/kv/k",
                JSON,
                "{",
                400,
                "invalid_input",
                "not one JSON value",
            ),
            case(
                "PUT",
                "/v1/kv/k",
                JSON,
                "1 2",
                400,
                "invalid_input",
                "not one JSON value",
            ),
            case(
                "PUT",
                "/v1/kv/k",
                JSON,
                deep,
                400,
                "invalid_input",
                "levels deep",
            ),
            case(
                "PUT",
                "/v1/kv/k",
                JSON,
                vec![b'"', 0xff, b'"'],
                400,
                "invalid_input",
                "UTF-8",
            ),
            case(
                "PUT",
                "/v1/kv/k",
                Some("text/plain"),
                "1",
                415,
                "unsupported_media_type",
                "application/json",
            ),
            case(
                "PUT",
                "/v1/kv/k?ttl=soon",
                JSON,
                "1",
                400,
                "invalid_input",
                "not a duration",
            ),
            case(
                "PUT",
                "/v1/kv/k?ttl=0s",
                JSON,
                "1",
                400,
                "invalid_input",
                "1 ms",
            ),
            case(
                "PUT",
                "/v1/kv/k?ttl=90000h",
                JSON,
                "1",
                400,
                "invalid_input",
                "10 years",
            ),
            case(
                "PUT",
                "/v1/kv/k?nx=true&xx=true",
                JSON,
                "1",
                400,
                "invalid_input",
                "exclusive",
            ),
            case(
                "PUT",
                "/v1/kv/k?nx=true&version=3",
                JSON,
                "1",
                400,
                "invalid_input",
                "exclusive",
            ),
            case(
                "PUT",
                "/v1/kv/k?version=-1",
                JSON,
                "1",
                400,
                "invalid_input",
                "invalid query",
            ),
            case(
                "PUT",
                "/v1/kv/k?nx=yes",
                JSON,
                "1",
                400,
                "invalid_input",
                "invalid query",
            ),
            case(
                "PUT",
                "/v1/kv/k?tll=1s",
                JSON,
                "1",
                400,
                "invalid_input",
                "unknown field",
            ),
            case(
                "POST",
                "/v1/kv/word/incr",
                None,
                "",
                409,
                "not_an_integer",
                "not an integer",
            ),
            case(
                "POST",
                "/v1/kv/k/incr?by=1.5",
                None,
                "",
                400,
                "invalid_input",
                "invalid query",
            ),
            case(
                "POST",
                "/v1/kv/k/incr?by=99999999999999999999",
                None,
                "",
                400,
                "invalid_input",
                "invalid query",
            ),
            case(
                "DELETE",
                "/v1/kv/k?version=x",
                None,
                "",
                400,
                "invalid_input",
                "invalid query",
            ),
            case(
                "GET",
                "/v1/kv?limit=0",
                None,
                "",
                400,
                "invalid_input",
                "limit",
            ),
            case(
                "GET",
                "/v1/kv?limit=1001",
                None,
                "",
                400,
                "invalid_input",
                "limit",
            ),
            case(
                "GET",
                format!("/v1/kv?prefix={long}"),
                None,
                "",
                400,
                "invalid_input",
                "prefix",
            ),
            case(
                "GET",
                "/v1/kv?cursor=",
                None,
                "",
                400,
                "invalid_input",
                "cursor",
            ),
            case("GET", "/v1/kv/", None, "", 404, "route_not_found", ""),
        ],
    )
    .await;
    assert_eq!(n, 26);
    // Nothing of the refused writes was stored.
    let r = app.call("GET", "/v1/kv/k", None, vec![]).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

/// The node never changes a value it was given: numbers beyond a double's
/// precision, and the text of floats, come back as they were sent.
#[tokio::test]
async fn values_come_back_as_sent() {
    let app = App::new().await;
    let value = r#"{"big":123456789012345678901234567890,"f":1.50,"e":1e400}"#;
    let r = app
        .call("PUT", "/v1/kv/n", JSON, value.as_bytes().to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains(&format!("\"value\":{value}")), "{}", r.text);
    let r = app.call("GET", "/v1/kv/n", None, vec![]).await;
    assert!(r.text.contains(&format!("\"value\":{value}")), "{}", r.text);
    let r = app.call("GET", "/v1/kv?prefix=n", None, vec![]).await;
    assert!(r.text.contains(&format!("\"value\":{value}")), "{}", r.text);
}
