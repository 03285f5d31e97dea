//! Tokens: the last admin token cannot be revoked.

mod common;

use common::Node;

use shoal_engine::{Conflict, Error};
use shoal_types::Role;

#[tokio::test]
async fn only_the_last_admin_token_is_kept() {
    let node = Node::start().await;
    let (admin, _) = node
        .engine
        .create_token(Role::Admin, "admin", Vec::new())
        .await
        .unwrap();
    let (dev, _) = node
        .engine
        .create_token(Role::Developer, "dev", Vec::new())
        .await
        .unwrap();
    node.engine.revoke_token(&dev.id).await.unwrap();
    let err = node.engine.revoke_token(&admin.id).await.unwrap_err();
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
    assert!(
        err.to_string().contains("shoal tokens create --role admin"),
        "{err}"
    );
    // Unknown ids are still 404s.
    assert!(matches!(
        node.engine.revoke_token("tok_nope").await,
        Err(Error::NotFound { .. })
    ));
    node.stop().await;
}
