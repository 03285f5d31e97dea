//! Catalog cases: function versions, tokens, queue and limiter records.

use crate::{
    Backend, FunctionRecord, FunctionRefs, LimiterRecord, PinnedLive, QueueRecord, TokenRecord,
};
use shoal_types::Role;

use super::{T, sample_function, unique};

/// Deploys assign 1, 2, ...; latest vs specific versions; listing is sorted
/// and shows latest versions; removal removes every version.
pub async fn functions(backend: &Backend) {
    let c = &backend.catalog;
    let base = unique("conf-fn");
    let name = format!("{base}-m");

    assert_eq!(c.function(&name).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 1).await.unwrap(), None);

    let v1 = sample_function(&name, "main.one");
    assert_eq!(c.deploy_function(v1.clone()).await.unwrap(), 1);
    let v2 = sample_function(&name, "main.two");
    assert_eq!(c.deploy_function(v2.clone()).await.unwrap(), 2);

    let latest = c.function(&name).await.unwrap().expect("latest version");
    assert_eq!(latest.version, 2, "latest version");
    assert_eq!(
        latest,
        FunctionRecord {
            version: 2,
            ..v2.clone()
        }
    );
    let first = c.function_version(&name, 1).await.unwrap().expect("v1");
    assert_eq!(first, FunctionRecord { version: 1, ..v1 });
    assert_eq!(
        c.function_version(&name, 2).await.unwrap().unwrap().handler,
        "main.two"
    );
    assert_eq!(c.function_version(&name, 3).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 0).await.unwrap(), None);

    // Listing: latest version of each, sorted by name. Deploy out of order.
    let z = format!("{base}-z");
    let a = format!("{base}-a");
    assert_eq!(
        c.deploy_function(sample_function(&z, "z.h")).await.unwrap(),
        1
    );
    assert_eq!(
        c.deploy_function(sample_function(&a, "a.h")).await.unwrap(),
        1
    );
    assert_eq!(
        c.deploy_function(sample_function(&a, "a.h2"))
            .await
            .unwrap(),
        2
    );
    let all = c.functions().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "functions() must be sorted by name with one entry per function"
    );
    let ours: Vec<(String, u64, String)> = all
        .iter()
        .filter(|f| f.name.starts_with(&base))
        .map(|f| (f.name.to_string(), f.version, f.handler.clone()))
        .collect();
    assert_eq!(
        ours,
        vec![
            (a.clone(), 2, "a.h2".to_string()),
            (name.clone(), 2, "main.two".to_string()),
            (z.clone(), 1, "z.h".to_string()),
        ]
    );

    // Versions of one name do not leak into a name it prefixes.
    let longer = format!("{name}x");
    assert_eq!(c.function(&longer).await.unwrap(), None);

    for n in [&name, &a, &z] {
        assert!(c.remove_function(n).await.unwrap(), "remove {n}");
    }
    assert!(!c.remove_function(&name).await.unwrap(), "second remove");
    assert!(!c.remove_function(&unique("conf-fn-never")).await.unwrap());
    assert_eq!(c.function(&name).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 1).await.unwrap(), None);
    assert_eq!(c.function_version(&name, 2).await.unwrap(), None);
    let all = c.functions().await.unwrap();
    assert!(
        !all.iter().any(|f| f.name.starts_with(&base)),
        "removed functions listed"
    );
}

/// Version numbers are never reused, even after the function is removed.
pub async fn function_versions_after_remove(backend: &Backend) {
    let c = &backend.catalog;
    let name = unique("conf-fn-mono");
    for expected in 1..=3 {
        let v = c
            .deploy_function(sample_function(&name, "h"))
            .await
            .unwrap();
        assert_eq!(v, expected);
    }
    assert!(c.remove_function(&name).await.unwrap());
    let v = c
        .deploy_function(sample_function(&name, "again"))
        .await
        .unwrap();
    assert_eq!(v, 4, "a version number was reused after remove");
    let latest = c.function(&name).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.handler.as_str()), (4, "again"));
    for old in 1..=3 {
        assert_eq!(c.function_version(&name, old).await.unwrap(), None);
    }
    assert!(c.remove_function(&name).await.unwrap());
}

/// Every version is listed oldest first; refs (live pin, aliases) are
/// stored per function, replaced whole, listed, and removed with the
/// function.
pub async fn function_refs(backend: &Backend) {
    let c = &backend.catalog;
    let name = unique("conf-fn-refs");
    assert_eq!(c.function_versions(&name).await.unwrap(), Vec::new());
    for handler in ["h1", "h2", "h3"] {
        c.deploy_function(sample_function(&name, handler))
            .await
            .unwrap();
    }
    let versions = c.function_versions(&name).await.unwrap();
    let seen: Vec<(u64, &str)> = versions
        .iter()
        .map(|v| (v.version, v.handler.as_str()))
        .collect();
    assert_eq!(seen, [(1, "h1"), (2, "h2"), (3, "h3")]);
    assert_eq!(
        versions[0].deployed_by,
        sample_function(&name, "h1").deployed_by,
        "who deployed is kept"
    );

    let mine = |all: Vec<FunctionRefs>| all.into_iter().find(|r| r.name.as_str() == name);
    assert_eq!(mine(c.function_refs().await.unwrap()), None);
    let refs = FunctionRefs {
        name: super::name(&name),
        pinned: Some(PinnedLive {
            version: 2,
            latest: 3,
        }),
        aliases: [("prod".to_string(), 2), ("canary".to_string(), 3)].into(),
    };
    c.put_function_refs(refs.clone()).await.unwrap();
    assert_eq!(mine(c.function_refs().await.unwrap()), Some(refs.clone()));
    assert_eq!(refs.live(3), 2, "the pin holds while 3 is the latest");
    assert_eq!(refs.live(4), 4, "a newer deploy is live");

    // Replaced whole.
    let moved = FunctionRefs {
        pinned: None,
        aliases: [("prod".to_string(), 3)].into(),
        ..refs
    };
    c.put_function_refs(moved.clone()).await.unwrap();
    assert_eq!(mine(c.function_refs().await.unwrap()), Some(moved));
    let all = c.function_refs().await.unwrap();
    assert!(all.windows(2).all(|w| w[0].name < w[1].name), "sorted");

    // Removing the function removes its refs.
    assert!(c.remove_function(&name).await.unwrap());
    assert_eq!(mine(c.function_refs().await.unwrap()), None);
    assert_eq!(c.function_versions(&name).await.unwrap(), Vec::new());
}

/// Tokens are found by the hash of their secret, listed, replaced by id and revoked.
pub async fn tokens(backend: &Backend) {
    let c = &backend.catalog;
    let id = unique("conf-tok");
    let other = unique("conf-tok");
    let sha = format!("{:0>64}", unique("sha"));
    let sha2 = format!("{:0>64}", unique("sha"));
    let other_sha = format!("{:0>64}", unique("sha"));

    assert_eq!(c.token_by_secret_sha256(&sha).await.unwrap(), None);
    let t = sample_token(&id, &sha);
    c.put_token(t.clone()).await.unwrap();
    let o = sample_token(&other, &other_sha);
    c.put_token(o.clone()).await.unwrap();
    assert_eq!(
        c.token_by_secret_sha256(&sha).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(
        c.token_by_secret_sha256(&other_sha).await.unwrap(),
        Some(o.clone())
    );
    let listed = c.tokens().await.unwrap();
    assert!(
        listed.contains(&t) && listed.contains(&o),
        "tokens() lists both"
    );

    // Replacing a token by id (a new secret) moves the lookup to the new hash.
    let rotated = TokenRecord {
        secret_sha256: sha2.clone(),
        role: Role::Reader,
        ..t.clone()
    };
    c.put_token(rotated.clone()).await.unwrap();
    assert_eq!(
        c.token_by_secret_sha256(&sha).await.unwrap(),
        None,
        "old secret still valid"
    );
    assert_eq!(
        c.token_by_secret_sha256(&sha2).await.unwrap(),
        Some(rotated.clone())
    );
    let listed = c.tokens().await.unwrap();
    assert_eq!(listed.iter().filter(|x| x.id == id).count(), 1);

    assert!(c.revoke_token(&id).await.unwrap());
    assert!(!c.revoke_token(&id).await.unwrap(), "second revoke");
    assert_eq!(
        c.token_by_secret_sha256(&sha2).await.unwrap(),
        None,
        "revoked token valid"
    );
    assert!(!c.tokens().await.unwrap().iter().any(|x| x.id == id));
    // The other token is untouched.
    assert_eq!(c.token_by_secret_sha256(&other_sha).await.unwrap(), Some(o));
    assert!(c.revoke_token(&other).await.unwrap());
    assert!(!c.revoke_token(&unique("conf-tok-never")).await.unwrap());
}

/// Queue and limiter records: put (create or replace), read, list sorted, remove.
pub async fn queue_and_limiter_records(backend: &Backend) {
    let c = &backend.catalog;
    let base = unique("conf-rec");
    let (a, b) = (format!("{base}-a"), format!("{base}-b"));

    assert_eq!(c.queue(&a).await.unwrap(), None);
    c.put_queue(sample_queue(&b, 3)).await.unwrap();
    c.put_queue(sample_queue(&a, 5)).await.unwrap();
    assert_eq!(c.queue(&a).await.unwrap(), Some(sample_queue(&a, 5)));
    c.put_queue(sample_queue(&a, 1)).await.unwrap();
    assert_eq!(c.queue(&a).await.unwrap(), Some(sample_queue(&a, 1)));
    let all = c.queues().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "queues() must be sorted by name, one entry per queue"
    );
    let ours: Vec<QueueRecord> = all
        .into_iter()
        .filter(|q| q.name.starts_with(&base))
        .collect();
    assert_eq!(ours, vec![sample_queue(&a, 1), sample_queue(&b, 3)]);
    assert_eq!(c.queue(&format!("{a}x")).await.unwrap(), None);

    // Issued together: the remove comes after the put.
    let put = c.put_queue(sample_queue(&a, 9));
    let removed = c.remove_queue(&a);
    put.await.unwrap();
    assert!(removed.await.unwrap());
    assert!(!c.remove_queue(&a).await.unwrap());
    assert_eq!(c.queue(&a).await.unwrap(), None);
    assert_eq!(c.queue(&b).await.unwrap(), Some(sample_queue(&b, 3)));
    assert!(c.remove_queue(&b).await.unwrap());
    assert!(
        !c.queues()
            .await
            .unwrap()
            .iter()
            .any(|q| q.name.starts_with(&base))
    );

    let ours = |all: Vec<LimiterRecord>| -> Vec<LimiterRecord> {
        all.into_iter()
            .filter(|l| l.name.starts_with(&base))
            .collect()
    };
    c.put_limiter(sample_limiter(&b, 0.5)).await.unwrap();
    c.put_limiter(sample_limiter(&a, 100.0)).await.unwrap();
    c.put_limiter(sample_limiter(&a, 2.25)).await.unwrap();
    let all = c.limiters().await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "limiters() must be sorted by name, one entry per limiter"
    );
    assert_eq!(
        ours(all),
        vec![sample_limiter(&a, 2.25), sample_limiter(&b, 0.5)]
    );
    assert!(c.remove_limiter(&a).await.unwrap());
    assert!(!c.remove_limiter(&a).await.unwrap());
    assert_eq!(
        ours(c.limiters().await.unwrap()),
        vec![sample_limiter(&b, 0.5)]
    );
    assert!(c.remove_limiter(&b).await.unwrap());
    assert!(ours(c.limiters().await.unwrap()).is_empty());
}

fn sample_token(id: &str, secret_sha256: &str) -> TokenRecord {
    TokenRecord {
        id: id.to_string(),
        secret_sha256: secret_sha256.to_string(),
        role: Role::Admin,
        name: format!("token {id}"),
        created_at_ms: T,
        channels: vec!["subscribe:board.*".to_string()],
        user: None,
        scopes: Vec::new(),
    }
}

fn sample_queue(name: &str, max_attempts: u32) -> QueueRecord {
    QueueRecord {
        name: name.to_string(),
        max_attempts,
        visibility_ms: 30_000,
        retry_delay_ms: 1_000,
        dedup_window_ms: 300_000,
        created_at_ms: T,
    }
}

fn sample_limiter(name: &str, per_second: f64) -> LimiterRecord {
    LimiterRecord {
        name: name.to_string(),
        per_second,
        burst: 10,
        updated_at_ms: T,
    }
}
