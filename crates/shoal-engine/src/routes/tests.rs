//! Unit tests of `[[route]]` parsing, the route table and the rate limits.

use super::*;

fn route(method: &str, path: &str) -> RouteRecord {
    RouteRecord {
        method: method.into(),
        path: path.into(),
        public: true,
        rate_limit: None,
        cors: None,
    }
}

fn manifest(routes: &str) -> Result<Vec<RouteRecord>, String> {
    crate::manifest::Manifest::parse(&format!("name = \"a\"\n{routes}")).map(|m| m.routes)
}

#[test]
fn routes_parse_with_defaults() {
    let r = manifest(
        "[[route]]\nmethod = \"post\"\npath = \"/api/pixel/{id}\"\nauth = \"public\"\nrate_limit = { per_second = 2.5 }\ncors = { origins = [\"*\"] }\n[[route]]\nmethod = \"*\"\npath = \"/files/{*rest}\"",
    )
    .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].method, "POST");
    assert!(r[0].public);
    assert_eq!(
        r[0].rate_limit,
        Some(RouteRate {
            per_second: 2.5,
            burst: 3
        })
    );
    let cors = r[0].cors.clone().unwrap();
    assert_eq!(cors.methods, vec!["POST"]);
    assert_eq!(cors.max_age_s, 600);
    assert!(!r[1].public);
    assert_eq!(manifest("").unwrap(), vec![]);
}

#[test]
fn bad_routes_say_what_to_fix() {
    for (text, needle) in [
        ("method = \"FETCH\"\npath = \"/a\"", "method must be one of"),
        ("method = \"GET\"\npath = \"a\"", "must start with /"),
        (
            "method = \"GET\"\npath = \"/v1/mine\"",
            "prefix the node serves",
        ),
        (
            "method = \"GET\"\npath = \"/healthz\"",
            "prefix the node serves",
        ),
        (
            "method = \"GET\"\npath = \"/ui/x\"",
            "prefix the node serves",
        ),
        ("method = \"GET\"\npath = \"/a?b=1\"", "may not hold '?'"),
        ("method = \"GET\"\npath = \"/café\"", "may not hold 'é'"),
        ("method = \"GET\"\npath = \"/a b\"", "may not hold ' '"),
        (
            "method = \"GET\"\npath = \"/a/{*r}/b\"",
            "not a valid pattern",
        ),
        ("method = \"GET\"\npath = \"/a/{\"", "not a valid pattern"),
        (
            "method = \"GET\"\npath = \"/a\"\nauth = \"open\"",
            "use \"public\" or \"token\"",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\nrate_limit = { per_second = 0 }",
            "per_second",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\nrate_limit = { per_second = 1, burst = 0 }",
            "burst",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\ncors = { origins = [] }",
            "at least one origin",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\ncors = { origins = [\"example.com\"] }",
            "like \"https://example.com\"",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\ncors = { origins = [\"*\"], credentials = true }",
            "needs the origins listed",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\ncors = { origins = [\"*\"], methods = [\"FETCH\"] }",
            "cors methods",
        ),
        (
            "method = \"GET\"\npath = \"/a\"\ncors = { origins = [\"*\"], max_age_s = 100000 }",
            "max_age_s",
        ),
    ] {
        let err = manifest(&format!("[[route]]\n{text}")).unwrap_err();
        assert!(err.contains(needle), "{text}: {err}");
        assert!(err.contains("[[route]] 1"), "{text}: {err}");
    }
    let err = manifest("[[route]]\nmethod = \"GET\"\npath = \"/a\"\ntimeout = 3").unwrap_err();
    assert!(err.contains("unknown field `timeout`"), "{err}");
    let err = manifest(
        "[[route]]\nmethod = \"GET\"\npath = \"/a/{x}\"\n[[route]]\nmethod = \"*\"\npath = \"/a/{y}\"",
    )
    .unwrap_err();
    assert!(err.contains("overlaps GET /a/{x}"), "{err}");
    // Other methods, or a static segment beside a parameter, are fine.
    manifest(
        "[[route]]\nmethod = \"GET\"\npath = \"/a/{x}\"\n[[route]]\nmethod = \"POST\"\npath = \"/a/{y}\"\n[[route]]\nmethod = \"GET\"\npath = \"/a/me\"",
    )
    .unwrap();
    assert!(!is_reserved("/v1abc"));
    assert!(is_reserved("/v1"));
}

#[test]
fn the_table_finds_routes_and_names_overlaps() {
    let a = [
        route("GET", "/api/pixel/{id}"),
        route("*", "/files/{*rest}"),
    ];
    let b = [route("POST", "/api/pixel/{id}")];
    let (table, left_out) = RouteTable::build([("a", &a[..]), ("b", &b[..])]);
    assert!(left_out.is_empty());
    let RouteMatch::Hit(hit) = table.find("GET", "/api/pixel/7") else {
        panic!()
    };
    assert_eq!(hit.function, "a");
    assert_eq!(hit.params, vec![("id".to_string(), "7".to_string())]);
    let RouteMatch::Hit(hit) = table.find("POST", "/api/pixel/7") else {
        panic!()
    };
    assert_eq!(hit.function, "b");
    let RouteMatch::Hit(hit) = table.find("DELETE", "/files/x/y.txt") else {
        panic!()
    };
    assert_eq!(
        hit.params,
        vec![("rest".to_string(), "x/y.txt".to_string())]
    );
    match table.find("PUT", "/api/pixel/7") {
        RouteMatch::OtherMethods(m) => assert_eq!(m, vec!["GET", "POST"]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(table.find("GET", "/nope"), RouteMatch::None));

    let o = table
        .overlap("c", &[route("GET", "/api/pixel/{n}")])
        .unwrap();
    assert_eq!(
        (o.method, o.function.as_str(), o.other_path.as_str()),
        ("GET", "a", "/api/pixel/{id}")
    );
    let o = table.overlap("c", &[route("*", "/files/{*all}")]).unwrap();
    assert_eq!(o.function, "a");
    assert_eq!(table.overlap("c", &[route("GET", "/api/pixel/me")]), None);
    assert_eq!(table.overlap("c", &[route("PUT", "/api/pixel/{n}")]), None);

    // Built from functions that overlap (deployed through two nodes at
    // once): the later one is left out.
    let c = [route("GET", "/api/pixel/{n}")];
    let (_, left_out) = RouteTable::build([("a", &a[..]), ("c", &c[..])]);
    assert_eq!(left_out.len(), 1);
    assert_eq!(left_out[0].function, "a");
}

#[test]
fn limits_allow_the_burst_then_the_rate() {
    let l = RouteLimits::new(100);
    let rate = RouteRate {
        per_second: 10.0,
        burst: 2,
    };
    assert_eq!(l.take("k", rate, 1000), Ok(()));
    assert_eq!(l.take("k", rate, 1000), Ok(()));
    assert_eq!(l.take("k", rate, 1000), Err(Duration::from_millis(100)));
    assert_eq!(l.take("other", rate, 1000), Ok(()));
    assert_eq!(l.take("k", rate, 1100), Ok(()));
    assert!(l.take("k", rate, 1100).is_err());
}

#[test]
fn the_limit_map_stays_bounded() {
    let l = RouteLimits::new(10);
    let rate = RouteRate {
        per_second: 1.0,
        burst: 1,
    };
    for i in 0..1000 {
        l.take(&format!("client-{i}"), rate, 5000).unwrap();
        assert!(l.len() <= 10);
    }
    // Idle entries go first: a later call finds the bucket full again.
    let l = RouteLimits::new(4);
    for i in 0..4 {
        l.take(&format!("c{i}"), rate, 0).unwrap();
    }
    l.take("busy", rate, 2000).unwrap();
    assert_eq!(l.len(), 1);
    assert!(l.take("busy", rate, 2000).is_err());
}
