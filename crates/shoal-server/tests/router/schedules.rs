//! `GET /v1/schedules`: every `[[schedule]]` of the live versions, with
//! its next fire times.

use shoal_types::Role;

use crate::app::{App, Caller};

#[tokio::test]
async fn schedules_are_listed_with_their_next_fire_times() {
    let app = App::new().await;
    app.deploy_ok(
        "name = \"beat\"\nhandler = \"main:handler\"\n\
         [[schedule]]\nevery = \"30s\"\nevent = { kind = \"beat\" }\n\
         [[schedule]]\ncron = \"0 */5 * * * *\"\nmissed = \"catch_up\"\n",
    )
    .await;
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/schedules",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let list = v["schedules"].as_array().expect("schedules");
    assert_eq!(list.len(), 2, "{v}");
    let every = &list[0];
    assert_eq!(every["function"], "beat");
    assert_eq!(every["index"], 0);
    assert_eq!(every["every_ms"], 30_000);
    assert!(every.get("cron").is_none(), "{every}");
    assert_eq!(every["event"], serde_json::json!({"kind": "beat"}));
    assert_eq!(every["missed"], "skip");
    assert_eq!(every["timezone"], "UTC");
    let next: Vec<u64> = every["next_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(next.len(), 5, "{every}");
    assert!(next.iter().all(|n| n % 30_000 == 0), "{next:?}");
    assert!(next.windows(2).all(|w| w[1] - w[0] == 30_000), "{next:?}");

    let cron = &list[1];
    assert_eq!(cron["index"], 1);
    assert_eq!(cron["cron"], "0 */5 * * * *");
    assert_eq!(cron["event"], serde_json::json!({}));
    assert_eq!(cron["missed"], "catch_up");
    let next: Vec<u64> = cron["next_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(next.windows(2).all(|w| w[1] - w[0] == 300_000), "{next:?}");
    assert!(next.iter().all(|n| n % 300_000 == 0), "{next:?}");
}

#[tokio::test]
async fn a_schedule_is_paused_resumed_and_its_history_listed() {
    let app = App::new().await;
    app.deploy_ok(
        "name = \"beat\"\nhandler = \"main:handler\"\n\
         [[schedule]]\nevery = \"1h\"\n",
    )
    .await;
    let dev = Caller::As(Role::Developer);
    let r = app
        .call_as(dev, "POST", "/v1/schedules/beat/0/pause", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["function"], "beat");
    assert_eq!(v["paused"], true, "{v}");
    assert!(v.get("last").is_none(), "nothing fired yet: {v}");
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/schedules",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.json()["schedules"][0]["paused"], true);
    let r = app
        .call_as(dev, "POST", "/v1/schedules/beat/0/resume", None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["paused"], false);

    // History: empty (an hourly schedule just deployed), then its errors.
    let r = app
        .call_as(
            Caller::As(Role::Reader),
            "GET",
            "/v1/schedules/beat/0/history?limit=10",
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), serde_json::json!({"items": []}));
    let cases = [
        (
            "POST",
            "/v1/schedules/beat/1/pause",
            404,
            "schedule_not_found",
        ),
        (
            "POST",
            "/v1/schedules/nope/0/resume",
            404,
            "function_not_found",
        ),
        (
            "GET",
            "/v1/schedules/beat/7/history",
            404,
            "schedule_not_found",
        ),
        ("POST", "/v1/schedules/beat/x/pause", 400, "invalid_input"),
        (
            "GET",
            "/v1/schedules/beat/0/history?limit=0",
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/v1/schedules/beat/0/history?cursor=z",
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/v1/schedules/beat/0/history?lmit=2",
            400,
            "invalid_input",
        ),
    ];
    for (method, path, status, code) in cases {
        let r = app.call_as(dev, method, path, None, vec![]).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        let (got, _) = r.error().unwrap();
        assert_eq!(got, code, "{method} {path}: {}", r.text);
    }
}
