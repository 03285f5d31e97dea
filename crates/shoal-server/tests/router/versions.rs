//! Versions, rollback, aliases, pinned invocations and dry runs: every bad
//! request is a 4xx JSON error that says what to do, and changes nothing.

use crate::app::{App, Case, JSON, TAR, case, run_table, tar_of};

#[tokio::test]
async fn bad_version_requests_are_4xx_and_change_nothing() {
    let app = App::seeded().await;
    let (bad, nf) = ("invalid_input", "function_not_found");
    let good = tar_of(&[
        ("shoal.toml", "name = \"ok\""),
        ("main.py", "def handler(e, ctx):\n    return 2\n"),
    ]);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case("GET", "/v1/functions/nope/versions", None, "", 404, nf, "nope"),
        case("GET", "/v1/functions/Bad/versions", None, "", 400, "invalid_name", ""),
        case("POST", "/v1/functions/ok/rollback", JSON, "nope", 400, bad, "{\"version\": N}"),
        case("POST", "/v1/functions/ok/rollback", JSON, r#"{"version": "two"}"#, 400, bad, "version"),
        case("POST", "/v1/functions/ok/rollback", JSON, r#"{"version": 9}"#, 404, nf, "ok@9"),
        case("POST", "/v1/functions/ok/rollback", None, "", 400, bad, "no version before version 1"),
        case("POST", "/v1/functions/nope/rollback", None, "", 404, nf, "nope"),
        case("PUT", "/v1/functions/ok/aliases/123", JSON, r#"{"version": 1}"#, 400, bad, "all digits"),
        case("PUT", "/v1/functions/ok/aliases/Prod", JSON, r#"{"version": 1}"#, 400, bad, "a-z"),
        case("PUT", "/v1/functions/ok/aliases/prod", JSON, r#"{"version": "x"}"#, 400, bad, ""),
        case("PUT", "/v1/functions/ok/aliases/prod", JSON, r#"{"version": 7}"#, 404, nf, "ok@7"),
        case("PUT", "/v1/functions/nope/aliases/prod", JSON, r#"{"version": 1}"#, 404, nf, "nope"),
        case("DELETE", "/v1/functions/ok/aliases/prod", None, "", 404, nf, "ok@prod"),
        case("POST", "/v1/functions/ok@prod/invoke", JSON, "{}", 404, nf, "ok@prod"),
        case("POST", "/v1/functions/ok@3/invoke", JSON, "{}", 404, nf, "ok@3"),
        case("POST", "/v1/functions/Bad@1/invoke", JSON, "{}", 400, "invalid_name", ""),
        case("POST", "/v1/functions?dry_run=maybe", TAR, good, 400, bad, ""),
    ];
    run_table(&app, "versions", cases).await;
    // Nothing changed: one version each, no aliases.
    assert_eq!(
        app.functions().await,
        [
            ("limited".to_string(), 1),
            ("ok".to_string(), 1),
            ("worker".to_string(), 1)
        ]
    );
    let r = app
        .call("GET", "/v1/functions/ok/versions", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["aliases"], serde_json::json!({}));
}
