//! Users and attribution: a user's tokens have at most its role (now, not
//! only when made), deleting a user revokes its tokens, and every
//! invocation a token starts — and its children, fan-in and spawns — names
//! the token and its user.

mod common;

use common::{Node, Script};
use serde_json::value::RawValue;
use shoal_engine::{Conflict, Entity, Error, JobSpec};
use shoal_runtime::{HostCall, MapArgs, SpawnArgs};
use shoal_types::Role;

#[tokio::test]
async fn a_users_tokens_follow_its_role_and_go_with_it() {
    let node = Node::start().await;
    let e = &node.engine;
    let (admin, _) = e
        .create_token(Role::Admin, "root", Vec::new())
        .await
        .unwrap();
    e.create_user("ana", Role::Developer).await.unwrap();
    assert!(matches!(
        e.create_user("ana", Role::Reader).await,
        Err(Error::Conflict {
            kind: Conflict::UserExists,
            ..
        })
    ));
    // At most the user's role.
    let err = e
        .create_user_token(Role::Admin, "too much", Some("ana".into()), Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert!(matches!(
        e.create_user_token(Role::Reader, "x", Some("bo".into()), Vec::new())
            .await,
        Err(Error::NotFound {
            entity: Entity::User,
            ..
        })
    ));
    let (t1, s1) = e
        .create_user_token(Role::Developer, "laptop", Some("ana".into()), Vec::new())
        .await
        .unwrap();
    let (_, s2) = e
        .create_user_token(
            Role::Invoker,
            "ci",
            Some("ana".into()),
            vec!["function:resize-*".into()],
        )
        .await
        .unwrap();
    let c1 = e.caller(&s1).await.unwrap().unwrap();
    assert_eq!(
        (c1.role, c1.user.as_deref()),
        (Role::Developer, Some("ana"))
    );
    assert_eq!(c1.token_id, t1.id);
    let c2 = e.caller(&s2).await.unwrap().unwrap();
    assert!(c2.scoped());
    let (_, tokens) = e.user("ana").await.unwrap();
    assert_eq!(tokens.len(), 2);

    // Lowering the user lowers its tokens at once.
    e.set_user_role("ana", Role::Reader).await.unwrap();
    assert_eq!(e.caller(&s1).await.unwrap().unwrap().role, Role::Reader);

    // Deleting the user revokes both tokens.
    let revoked = e.delete_user("ana").await.unwrap();
    assert_eq!(revoked.len(), 2);
    assert_eq!(e.caller(&s1).await.unwrap(), None);
    assert_eq!(e.caller(&s2).await.unwrap(), None);
    assert!(e.tokens().await.unwrap().iter().all(|t| t.user.is_none()));
    assert!(matches!(
        e.user("ana").await,
        Err(Error::NotFound {
            entity: Entity::User,
            ..
        })
    ));

    // A user holding the last admin token is neither lowered nor deleted.
    e.create_user("root", Role::Admin).await.unwrap();
    let (_, rs) = e
        .create_user_token(Role::Admin, "root's", Some("root".into()), Vec::new())
        .await
        .unwrap();
    assert_eq!(e.caller(&rs).await.unwrap().unwrap().role, Role::Admin);
    e.revoke_token(&admin.id).await.unwrap();
    for err in [
        e.delete_user("root").await.unwrap_err(),
        e.set_user_role("root", Role::Developer).await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                Error::Conflict {
                    kind: Conflict::LastAdminToken,
                    ..
                }
            ),
            "{err}"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn invocations_name_the_token_and_user_that_started_them_and_their_children_inherit() {
    let node = Node::start().await;
    let e = &node.engine;
    for m in [
        "name = \"parent\"\nretries = 0",
        "name = \"child\"\nretries = 0",
        "name = \"fan_in\"\nretries = 0",
        "name = \"spawned\"\nretries = 0",
    ] {
        node.deploy(m).await;
    }
    node.fake.script_with("parent", |_| {
        Script::host_answer().host(HostCall::Map(MapArgs {
            function: "child".into(),
            events: vec![RawValue::from_string("1".into()).unwrap()],
            then: Some("fan_in".into()),
        }))
    });
    node.fake.script_with("child", |_| {
        Script::host_answer().host(HostCall::Spawn(SpawnArgs {
            function: "spawned".into(),
            event: None,
        }))
    });
    e.create_user("ana", Role::Invoker).await.unwrap();
    let (token, secret) = e
        .create_user_token(Role::Invoker, "ci", Some("ana".into()), Vec::new())
        .await
        .unwrap();
    let origin = e.caller(&secret).await.unwrap().unwrap().origin();
    assert_eq!(origin.token.as_deref(), Some(token.id.as_str()));

    let sync = e.invoke_by(&origin, "spawned", "{}".into()).await.unwrap();
    let r = node.wait_final(&sync.id).await;
    assert_eq!(
        (r.token.as_deref(), r.user.as_deref()),
        (Some(token.id.as_str()), Some("ana"))
    );

    let id = e
        .invoke_async_by(&origin, "parent", "{}".into())
        .await
        .unwrap();
    node.wait_final(&id).await;
    node.ended("fan_in", 1).await;
    node.ended("spawned", 2).await;
    let mut seen = 0;
    for call in node.fake.calls() {
        let r = node.wait_final(&call.invocation_id).await;
        assert_eq!(
            (r.token.as_deref(), r.user.as_deref()),
            (Some(token.id.as_str()), Some("ana")),
            "{} {}",
            call.function,
            r.id
        );
        seen += 1;
    }
    assert_eq!(seen, 5, "sync spawned, parent, child, fan_in, spawned");

    // Started by no token: nothing recorded.
    let plain = e.invoke("spawned", "{}".into()).await.unwrap();
    let r = node.wait_final(&plain.id).await;
    assert_eq!((r.token, r.user), (None, None));
    let job = e
        .start_job_by(
            &origin,
            JobSpec {
                function: "spawned".into(),
                events: vec!["{}".into()],
                then: None,
                max_in_flight: None,
            },
        )
        .await
        .unwrap();
    let view = node.wait_job(&job).await;
    let results = e.job_results(&view.record.id, 0, 10).await.unwrap();
    let child = node.wait_final(&results[0].invocation).await;
    assert_eq!(child.user.as_deref(), Some("ana"));
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retried_invocation_keeps_its_token_and_user() {
    let node = Node::start().await;
    node.deploy("name = \"flaky\"\nretries = 1\nretry_delay = \"1s\"")
        .await;
    node.fake.script_seq(
        "flaky",
        [
            Script::fail(shoal_types::FailureKind::Crashed),
            Script::ok(serde_json::json!("done")),
        ],
    );
    let e = &node.engine;
    e.create_user("ana", Role::Invoker).await.unwrap();
    let (token, secret) = e
        .create_user_token(Role::Invoker, "ci", Some("ana".into()), Vec::new())
        .await
        .unwrap();
    let origin = e.caller(&secret).await.unwrap().unwrap().origin();
    let id = e
        .invoke_async_by(&origin, "flaky", "{}".into())
        .await
        .unwrap();
    let r = node.wait_final(&id).await;
    assert_eq!(r.attempts, 2, "{r:?}");
    assert_eq!(
        (r.token.as_deref(), r.user.as_deref()),
        (Some(token.id.as_str()), Some("ana"))
    );
    node.stop().await;
}
