//! Users and the tokens that name them.

use shoal_types::Role;

use super::{T, unique};
use crate::{Backend, TokenRecord, UserRecord};

fn ours(all: Vec<UserRecord>, names: &[&str]) -> Vec<UserRecord> {
    all.into_iter()
        .filter(|u| names.contains(&u.name.as_str()))
        .collect()
}

/// Users are created, read, listed sorted by name, replaced (a new role)
/// and deleted; each write moves the catalog generation on stores that
/// keep one.
pub async fn users(backend: &Backend) {
    let c = &backend.catalog;
    let ana = unique("conf-user-a");
    let bo = unique("conf-user-b");
    assert_eq!(c.user(&ana).await.unwrap(), None);
    assert!(
        !c.delete_user(&ana).await.unwrap(),
        "deleting a user never made"
    );

    let gen0 = c.catalog_generation().await.unwrap();
    let a = UserRecord {
        name: ana.clone(),
        role: Role::Developer,
        created_at_ms: T,
    };
    c.put_user(a.clone()).await.unwrap();
    let gen1 = c.catalog_generation().await.unwrap();
    assert!(gen1 > gen0 || gen1 == 0, "put_user moves the generation");
    let b = UserRecord {
        name: bo.clone(),
        role: Role::Reader,
        created_at_ms: T + 1,
    };
    c.put_user(b.clone()).await.unwrap();
    assert_eq!(c.user(&ana).await.unwrap(), Some(a.clone()));
    let listed = ours(c.users().await.unwrap(), &[&ana, &bo]);
    assert_eq!(listed, vec![a.clone(), b.clone()], "sorted by name");
    let all = c.users().await.unwrap();
    let mut sorted: Vec<_> = all.iter().map(|u| u.name.clone()).collect();
    sorted.sort();
    assert_eq!(
        all.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
        sorted
    );

    // Replaced by name.
    let promoted = UserRecord {
        role: Role::Admin,
        ..a.clone()
    };
    c.put_user(promoted.clone()).await.unwrap();
    assert_eq!(c.user(&ana).await.unwrap(), Some(promoted));
    assert_eq!(ours(c.users().await.unwrap(), &[&ana]).len(), 1);

    let gen2 = c.catalog_generation().await.unwrap();
    assert!(c.delete_user(&ana).await.unwrap());
    let gen3 = c.catalog_generation().await.unwrap();
    assert!(gen3 > gen2 || gen3 == 0, "delete_user moves the generation");
    assert!(!c.delete_user(&ana).await.unwrap(), "second delete");
    assert_eq!(c.user(&ana).await.unwrap(), None);
    assert_eq!(ours(c.users().await.unwrap(), &[&ana, &bo]), vec![b]);
    assert!(c.delete_user(&bo).await.unwrap());
}

/// A token keeps its user and its resource scopes, and a token stored
/// without them (an older record) reads back with none.
pub async fn tokens_with_users_and_scopes(backend: &Backend) {
    let c = &backend.catalog;
    let id = unique("conf-utok");
    let sha = format!("{:0>64}", unique("sha"));
    let token = TokenRecord {
        id: id.clone(),
        secret_sha256: sha.clone(),
        role: Role::Invoker,
        name: "ci".into(),
        created_at_ms: T,
        channels: vec!["publish:board.*".into()],
        user: Some("ana".into()),
        scopes: vec!["function:resize-*".into(), "queue:jobs".into()],
    };
    c.put_token(token.clone()).await.unwrap();
    assert_eq!(
        c.token_by_secret_sha256(&sha).await.unwrap(),
        Some(token.clone())
    );
    let listed = c.tokens().await.unwrap();
    assert!(listed.contains(&token));
    assert!(c.revoke_token(&id).await.unwrap());

    // An older record, as JSON written before users existed.
    let old: TokenRecord = serde_json::from_str(&format!(
        r#"{{"id":"{id}","secret_sha256":"{sha}","role":"reader","name":"old","created_at_ms":1}}"#
    ))
    .unwrap();
    assert_eq!(old.user, None);
    assert!(old.scopes.is_empty());
    let json = serde_json::to_string(&old).unwrap();
    assert!(
        !json.contains("user") && !json.contains("scopes"),
        "absent fields are not written: {json}"
    );
}
