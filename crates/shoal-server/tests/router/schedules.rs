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
