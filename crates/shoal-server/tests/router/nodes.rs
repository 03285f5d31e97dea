//! `GET /v1/nodes` on a node whose store only it uses: the list is the
//! node itself, alive, with its heartbeat's fields.

use shoal_types::Role;

use crate::app::{App, Caller, check};

/// A reader sees the node itself: its id, address, version, times from
/// the node's clock, counts and state; no token is 401.
#[tokio::test]
async fn a_lone_node_lists_itself_alive() {
    let app = App::with(|o| o.node.address = "10.1.2.3:7700".into()).await;
    let r = app
        .call_as(Caller::As(Role::Reader), "GET", "/v1/nodes", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "only `nodes`: {v}");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{v}");
    let n = &nodes[0];
    let fields: Vec<&str> = n.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "address",
        "id",
        "last_seen_ms",
        "load",
        "running",
        "started_at_ms",
        "state",
        "this",
        "version",
        "workers",
    ];
    want.sort_unstable();
    let mut got = fields.clone();
    got.sort_unstable();
    assert_eq!(got, want, "{n}");
    assert_eq!(n["address"], "10.1.2.3:7700");
    assert_eq!(n["this"], true);
    assert_eq!(n["state"], "alive");
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(n["running"], 0);
    assert_eq!(n["workers"], 0, "the fake runtime has no workers yet");
    let id = n["id"].as_str().unwrap();
    assert_eq!(id.len(), 12, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    // The fake clock starts at 1_700_000_000_000 and follows tokio's.
    let started = n["started_at_ms"].as_u64().unwrap();
    let seen = n["last_seen_ms"].as_u64().unwrap();
    assert!(started >= 1_700_000_000_000, "{n}");
    assert!(seen >= started, "{n}");
    assert!(
        n["load"].is_null() || n["load"].as_f64().unwrap() >= 0.0,
        "{n}"
    );

    // The same node (id) at each call; it is seen again, later or now.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = app.call("GET", "/v1/nodes", None, vec![]).await.json();
    assert_eq!(again["nodes"][0]["id"], id);
    assert_eq!(again["nodes"][0]["started_at_ms"], started);
    assert!(again["nodes"][0]["last_seen_ms"].as_u64().unwrap() >= seen);

    let r = app
        .call_as(Caller::Nobody, "GET", "/v1/nodes", None, vec![])
        .await;
    check(
        &r,
        401,
        "unauthorized",
        "missing `Authorization: Bearer <token>` header",
    )
    .unwrap();
}

/// The OpenAPI document describes the answer.
#[tokio::test]
async fn the_openapi_document_describes_the_list() {
    let app = App::new().await;
    let doc = app
        .call("GET", "/v1/openapi.json", None, vec![])
        .await
        .json();
    let op = &doc["paths"]["/v1/nodes"]["get"];
    assert_eq!(op["tags"][0], "nodes", "{op}");
    let schema = &op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(schema, "#/components/schemas/NodeList", "{op}");
    let view = &doc["components"]["schemas"]["NodeView"]["properties"];
    for field in [
        "id",
        "address",
        "started_at_ms",
        "last_seen_ms",
        "state",
        "this",
    ] {
        assert!(view.get(field).is_some(), "{field}: {view}");
    }
}
